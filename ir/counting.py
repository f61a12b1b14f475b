"""Counting for ``analyze()``: which constants are parameters, MACs per node (recurrent
layers once per step), how often each weight is used, and each group's parameter and MAC
shares (``params`` / ``macs``) and the union removed by the prunable groups (the counting
rules are in ``ir/analysis.py``'s docstring)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drpopt.ir.channels import Group
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.ort_shapes import FUSED_COMPUTE

WEIGHT_OPS = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "PRelu",
    ]
)
SHAPE_OPS = frozenset(
    ["Reshape", "Slice", "Resize", "Pad", "Expand", "Tile", "ConstantOfShape", "Range"]
)


# integer inputs that hold a layer's weights or bias (input indices), by op type
_QUANT_WEIGHTS = {
    "DequantizeLinear": (0,),
    "QLinearConv": (3, 8),
    "QLinearMatMul": (3,),
    "ConvInteger": (1,),
    "MatMulInteger": (1,),
    "QGemm": (3, 6),  # com.microsoft
}


def _is_param(v: Value) -> bool:
    """Weights of layers count whatever their size; other float constants count unless
    they are scalars (Clip bounds, a scale) or feed only shape-like inputs."""
    if not v.is_const or v.dtype is None:
        return False
    dtype = v.dtype
    kind = dtype.kind if isinstance(dtype, np.dtype) else np.dtype(dtype).kind
    if kind in "iu":  # a quantized weight or bias: what a DequantizeLinear (QDQ) or a
        # QOperator layer reads as one
        return (v.numel or 0) > 1 and any(k in _QUANT_WEIGHTS.get(n.op_type, ()) for n, k in v.uses)
    if kind != "f":
        return False
    if any(n.op_type in WEIGHT_OPS for n, _ in v.uses):
        return True
    return (v.numel or 0) > 1 and any(n.op_type not in SHAPE_OPS for n, _ in v.uses)


RECURRENT_OPS = frozenset(["LSTM", "GRU", "RNN"])


def recurrent_steps(node: Node) -> int:
    """Time steps times batch of a recurrent node's input: how often each element of its
    W and R takes part in a multiply-accumulate (1 where the shape is unknown)."""
    x = node.input(0)
    if x is None or x.shape is None or len(x.shape) < 2:
        return 1
    steps, batch = x.shape[0], x.shape[1]
    if node.attr("layout", 0):
        steps, batch = batch, steps
    return _int(steps) * _int(batch)


def recurrent_weights(node: Node) -> list[Value]:
    """W and R of an LSTM, GRU or RNN where they are known constants."""
    return [w for w in (node.input(1), node.input(2)) if w is not None and w.is_const and w.numel]


def node_macs(node: Node) -> int:
    """Multiply-accumulates of one Conv, ConvTranspose, Gemm or MatMul, or of an LSTM, GRU
    or RNN (its W and R once per time step and batch element; gates' elementwise work not
    counted); 0 for other ops."""
    op = node.op_type
    if node.domain == "com.microsoft":  # onnxruntime's fused layers (``ir/rules_ort.py``)
        op = FUSED_COMPUTE.get(op, "")
    if op in RECURRENT_OPS:
        return recurrent_steps(node) * sum(w.numel or 0 for w in recurrent_weights(node))
    if op in ("Conv", "ConvTranspose"):
        x, w, y = node.input(0), node.input(1), node.outputs[0]
        if w is None or w.shape is None or y.shape is None or x is None or x.shape is None:
            return 0
        kernel = math.prod(_int(d) for d in w.shape[2:])
        if op == "Conv":
            return math.prod(_int(d) for d in y.shape) * _int(w.shape[1]) * kernel
        return math.prod(_int(d) for d in x.shape) * _int(w.shape[1]) * kernel
    if op in ("Gemm", "MatMul"):
        a, y = node.input(0), node.outputs[0]
        if a is None or a.shape is None or y.shape is None or not a.shape:
            return 0
        k = _int(a.shape[-2 if op == "MatMul" else 0] if node.attr("transA", 0) else a.shape[-1])
        return math.prod(_int(d) for d in y.shape) * k
    return 0


def _int(d: Any) -> int:
    return d if isinstance(d, int) and d > 0 else 1


def weight_uses(graph: Graph) -> dict[str, float]:
    """MACs each element of a weight tensor takes part in, summed over the nodes using it."""
    return macs_and_weight_uses(graph)[1]


def macs_and_weight_uses(graph: Graph) -> tuple[int, dict[str, float]]:
    """The graph's MACs (``node_macs`` summed) and ``weight_uses``, in one pass."""
    uses: dict[str, float] = {}
    total = 0
    for node in graph.nodes:
        macs = node_macs(node)
        if not macs:
            continue
        total += macs
        if node.op_type in RECURRENT_OPS:  # W and R both take part, each element alike
            for w in recurrent_weights(node):
                uses[w.name] = uses.get(w.name, 0.0) + recurrent_steps(node)
            continue
        for i in (1, 0):
            w = node.input(i)
            if w is not None and w.is_const and w.numel:
                uses[w.name] = uses.get(w.name, 0.0) + macs / w.numel
                break
    return total, uses


def _distinct_params(params: dict[str, Value], info: dict[str, tuple] | None = None) -> int:
    """Elements of the parameter tensors, a tensor shared by several values (an exporter's
    shared constant, un-shared on load) counted once; ``info`` is ``param_info``'s, where
    the caller has it."""
    if info is not None:
        sizes = {where: numel for _shape, numel, where, _use in info.values()}
    else:
        sizes = {v.storage: v.numel or 0 for v in params.values()}
    return sum(sizes.values())


def _union_length(intervals: list[tuple[int, int]], dim: int) -> int:
    """How many of ``range(dim)`` the half-open intervals cover together."""
    if len(intervals) == 1:
        lo, hi = intervals[0]
        return max(0, min(hi, dim) - max(lo, 0))
    covered, end = 0, 0
    for lo, hi in sorted(intervals):  # comparisons, not max/min calls: it runs per piece
        if lo < end:
            lo = end
        if hi > dim:
            hi = dim
        if hi > lo:
            covered += hi - lo
            end = hi
    return covered


Pieces = list[tuple[int, int]]  # half-open intervals [lo, hi) of one axis
# a group's ``member_spans``: tensor -> (axis, pieces), and whether pieces come in order
OneAxis = tuple[dict[str, tuple[int, Pieces]], bool]


def member_spans(g: Group, params: dict[str, Value]) -> OneAxis | None:
    """The pieces of each parameter tensor a group's members slice, as the members come (a
    piece that starts where the one before ends extends it: the union is the same), and
    whether each tensor's pieces come in order without overlapping (what the one-pass count
    needs); None where a tensor is sliced along two axes. One pass over the members, shared
    by the group's count and the count of all prunable groups."""
    spans: dict[str, tuple[int, Pieces]] = {}
    ordered = True
    runs = 0  # runs of members of one parameter tensor (and axis)
    last_name, axis, iv = None, 0, None
    for m in g.members:
        name = m.tensor
        if name is None:
            continue
        # members come by tensor, axis and start: a space's members share their name
        if name is not last_name or m.axis != axis:
            last_name, axis = name, m.axis
            if name not in params:
                iv = None
                continue
            lo = m.start
            iv = [(lo, lo + m.length * m.block)]
            spans[name] = (axis, iv)
            runs += 1
            continue
        if iv is None:
            continue
        lo = m.start
        hi = lo + m.length * m.block
        last = iv[-1]
        if lo == last[1]:
            iv[-1] = (last[0], hi)
            continue
        if lo < last[1]:
            ordered = False
        iv.append((lo, hi))
    # a tensor in two runs is one sliced along two axes (a space, one tensor and axis,
    # has one block of members)
    return (spans, ordered) if runs == len(spans) else None


def _all_spans(g: Group, params: dict[str, Value]) -> list[tuple[str, tuple[int, Pieces]]]:
    """The pieces of each parameter tensor a group's members slice, per tensor and axis
    (any group)."""
    spans: dict[str, dict[int, Pieces]] = {}
    for m in g.members:
        name = m.tensor
        if name is not None and name in params:
            lo = m.start
            spans.setdefault(name, {}).setdefault(m.axis, []).append((lo, lo + m.length * m.block))
    return [(name, (a, iv)) for name, axes in spans.items() for a, iv in axes.items()]


def _removed(
    graph: Graph,
    groups: list[Group],
    params: dict[str, Value],
    uses: dict[str, float],
    info: dict[str, tuple] | None = None,
    spans: dict[int, OneAxis | None] | None = None,
) -> tuple[int, int]:
    """Parameters and MACs covered by the channels of ``groups`` (each element once: a
    tensor shared by several layers, un-shared per use on load, is one tensor whose element
    counts when any of its uses covers it; MACs count per use, as each layer runs).
    ``info`` is ``param_info(params, uses)``, ``spans`` the groups' ``member_spans`` by
    ``id``, where the caller has them."""
    if info is None:
        info = param_info(params, uses)
    merged: dict[str, list[tuple[int, Pieces]]] = {}  # tensor -> (axis, pieces) per group
    for g in groups:
        one = spans[id(g)] if spans and id(g) in spans else member_spans(g, params)
        for name, span in one[0].items() if one is not None else _all_spans(g, params):
            got = merged.get(name)
            if got is None:
                merged[name] = [span]
            else:
                got.append(span)
    return _spans_totals(merged, info)


def _spans_totals(merged: dict[str, list[tuple[int, Pieces]]], info: dict[str, tuple]):
    """``_removed``'s count of the pieces of each tensor (tensor -> (axis, pieces) per
    group): MACs per tensor, parameters per storage (a storage one tensor has counts as
    that tensor)."""
    total_macs = 0.0
    by_storage: dict[int, list] = {}  # storage -> [count or None, shape, (axis, pieces)...]
    for name, got in merged.items():
        shape, numel, where, use = info[name]
        n = _count(shape, numel, got)
        total_macs += n * use
        same = by_storage.get(where)
        if same is None:
            by_storage[where] = [n, shape, got]
        else:  # a storage several tensors are: the union of their pieces
            same[0] = None
            same[2].extend(got)  # (the first tensor's list: counted already)
    total_params = sum(
        n if n is not None else _count(shape, math.prod(shape), got)
        for n, shape, got in by_storage.values()
    )
    return total_params, round(total_macs)


def _count(shape: tuple, numel: int, got: list[tuple[int, Pieces]]) -> int:
    """Elements of a tensor of ``shape`` (``numel`` of them) inside the pieces of some
    ``(axis, pieces)``."""
    axis, pieces = got[0]
    if len(got) > 1:
        pieces = list(pieces)
        for a, more in got[1:]:
            if a != axis:  # several axes of the tensor
                return _covered(shape, _joined(got))
            pieces += more
    return _axis_covered(shape, numel, axis, pieces)


def _axis_covered(shape: tuple, numel: int, axis: int, pieces: Pieces) -> int:
    """Elements of a tensor of ``shape`` (``numel`` of them) inside ``pieces`` of ``axis``."""
    dim = shape[axis]
    return _union_length(pieces, dim) * (numel // dim) if dim else 0


def _joined(got: list[tuple[int, Pieces]]) -> dict[int, Pieces]:
    """The pieces of every axis, of several ``(axis, pieces)``."""
    axes: dict[int, Pieces] = {}
    for axis, pieces in got:
        axes.setdefault(axis, []).extend(pieces)
    return axes


def _group_totals(
    graph: Graph,
    groups: list[Group],
    params: dict[str, Value],
    uses: dict[str, float],
    info: dict[str, tuple] | None = None,
    spans: dict[int, OneAxis | None] | None = None,
) -> None:
    """Sets each group's ``params`` and ``macs``, as ``_removed`` counts them for the
    group alone. The usual group takes one pass over its members: its members slice each
    weight along one axis in disjoint pieces (they come sorted by tensor, axis and start),
    and the tensors that are one weight (an exporter's deduplicated constant, un-shared on
    load) are sliced alike; any other group is counted by ``_removed``. ``info`` is
    ``param_info(params, uses)``, ``spans`` the groups' ``member_spans`` by ``id``, where
    the caller has them."""
    if info is None:
        info = param_info(params, uses)
    for g in groups:
        one = spans[id(g)] if spans and id(g) in spans else member_spans(g, params)
        totals = _one_axis_count(one, info) if one is not None else None
        if totals is None:  # the general count, from the pieces read above
            totals = _removed(graph, [g], params, uses, info, {id(g): one})
        g.params, g.macs = totals


def param_info(params: dict[str, Value], uses: dict[str, float]) -> dict[str, tuple]:
    """Per parameter tensor what the counts read: (shape, elements, storage, MACs per
    element), read once per analysis."""
    return _tensor_info(params, {name: v.storage for name, v in params.items()}, uses)


def _tensor_info(
    params: dict[str, Value], storage: dict[str, int], uses: dict[str, float]
) -> dict[str, tuple]:
    """Per parameter tensor what a group's count reads: (shape, elements, storage, MACs
    per element), read once for all groups."""
    return {
        name: (v.shape, math.prod(v.shape), storage[name], uses.get(name, 0.0))  # type: ignore[arg-type]
        for name, v in params.items()
    }


def _one_axis_totals(
    g: Group,
    params: dict[str, Value],
    storage: dict[str, int],
    uses: dict[str, float],
    info: dict[str, tuple] | None = None,
) -> tuple[int, int] | None:
    """``_removed`` for one group in one pass, or None where that does not apply: each
    tensor sliced along one axis in disjoint pieces, and the tensors that are one weight
    (a BN's zero bias and zero mean, deduplicated by the exporter) sliced alike."""
    one = member_spans(g, params)
    if one is None:
        return None  # a tensor sliced along two axes
    if info is None:
        info = _tensor_info({name: params[name] for name in one[0]}, storage, uses)
    return _one_axis_count(one, info)


def _one_axis_count(one: OneAxis, info: dict[str, tuple]) -> tuple[int, int] | None:
    """``_one_axis_totals`` from a group's ``member_spans``."""
    spans, ordered = one
    if not ordered:
        return None  # pieces that overlap
    total_params, total_macs = 0, 0.0
    counted: dict[int, tuple] = {}  # storage -> the span counted for it
    for name, span in spans.items():
        axis, pieces = span
        shape, numel, where, use = info[name]
        dim = shape[axis]
        if pieces[-1][1] > dim:
            return None
        if len(pieces) == 1:
            lo, hi = pieces[0]
            covered = hi - lo
        else:
            covered = sum([hi for _lo, hi in pieces]) - sum([lo for lo, _hi in pieces])
        n = covered * (numel // dim) if dim else 0
        total_macs += n * use
        first = counted.setdefault(where, span)
        if first is span:
            total_params += n
        elif first != span:
            return None  # one weight sliced two ways: the union is _removed's
    return total_params, round(total_macs)


def _covered(shape, axes: dict[int, Pieces]) -> int:
    """Elements of a tensor of ``shape`` with an index inside the intervals of some axis."""
    if len(axes) == 1:  # the common case: one axis of the tensor
        ((a, iv),) = axes.items()
        return _axis_covered(shape, math.prod(shape), a, iv)
    kept = math.prod(
        dim - _union_length(axes[a], dim) if a in axes else dim for a, dim in enumerate(shape)
    )
    return math.prod(shape) - kept
