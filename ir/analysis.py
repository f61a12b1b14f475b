"""``analyze()``: the coupled channel groups of a model with their parameter and MAC shares.

Counting rules:
- parameters are the elements of floating-point initializers (and Constant outputs) that a
  Conv/ConvTranspose/Gemm/MatMul/normalisation/PRelu reads, whatever their size, plus other
  non-scalar float constants (a per-channel scale) that are not shape arguments;
- MACs are those of Conv, ConvTranspose, Gemm and MatMul (symbolic dims count as 1);
- a group's ``params`` are the elements its channels cover in every member tensor (a tensor
  sliced on two axes by the same group counts each element once); its ``macs`` are the MACs
  those weight elements take part in, so pruning the whole group would save exactly that;
- ``prunable_params`` / ``prunable_macs`` in the totals are the union over prunable groups.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drpopt.ir.channels import Group, Lock
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.rules import apply_rules
from drpopt.ir.solve import CUT_BLOCK

SCHEMA_VERSION = 1


@dataclass
class Analysis:
    """The result of ``analyze``: groups, totals, and the IR they refer to."""

    graph: Graph
    groups: list[Group]
    params: int
    macs: int
    prunable_params: int
    prunable_macs: int
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (op_type, node name)
    seconds: float = 0.0

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def locked_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    def locked_by(self) -> dict[str, int]:
        """How many locked groups each cause (a node, a graph input or output) locks."""
        count: Counter[str] = Counter()
        for g in self.locked_groups:
            for cause in dict.fromkeys(_cause(lock) for lock in g.locks) or ["size 1"]:
                count[cause] += 1
        return dict(count.most_common())

    def group(self, producer: str) -> Group:
        """The group whose producers include the node ``producer``."""
        for g in self.groups:
            if producer in g.producers:
                return g
        raise KeyError(f"no group is produced by a node named {producer!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (schema in the README)."""
        return {
            "schema": SCHEMA_VERSION,
            "model": {
                "source": self.graph.meta.get("source"),
                "opset": self.graph.opsets.get(""),
                "nodes": len(self.graph.nodes),
            },
            "groups": [_group_dict(g) for g in self.groups],
            "totals": {
                "params": self.params,
                "macs": self.macs,
                "prunable_params": self.prunable_params,
                "prunable_macs": self.prunable_macs,
                "groups": len(self.groups),
                "prunable_groups": len(self.prunable_groups),
                "locked_groups": len(self.locked_groups),
                "prunable_channels": sum(g.size for g in self.prunable_groups),
                "channels": sum(g.size for g in self.groups),
                "locked_by": self.locked_by(),
                "unsupported_ops": [{"op": op, "node": n} for op, n in self.unsupported],
            },
        }


def _cause(lock: Lock) -> str:
    if lock.kind in ("graph-input", "graph-output"):
        return lock.message
    if lock.node:
        return f"{lock.op} '{lock.node}'"
    return lock.message


def _group_dict(g: Group) -> dict[str, Any]:
    return {
        "id": g.id,
        "size": g.size,
        "prunable": g.prunable,
        "reason": g.reason,
        "producers": g.producers,
        "params": g.params,
        "macs": g.macs,
        "members": [
            {
                "role": m.role,
                "node": m.node,
                "tensor": m.tensor,
                "attr": m.attr,
                "axis": m.axis,
                "start": m.start,
                "block": m.block,
                "length": m.length,
            }
            for m in g.members
        ],
        "locks": [
            {"kind": lock.kind, "message": lock.message, "node": lock.node} for lock in g.locks
        ],
    }


def analyze(model: Any, where: str | None = None, input_shapes: Any = None) -> Analysis:
    """Finds the coupled channel groups of an ONNX model (a path, an ``onnx.ModelProto``,
    or an IR ``Graph``) and what each would save if pruned; ``input_shapes`` ({input name
    or None: dims}) fixes symbolic input dims first (see ``from_onnx``)."""
    start = time.perf_counter()
    # the analysis makes many small long-lived objects; collection passes over them would
    # make it superlinear on large graphs, and it creates no cycles worth collecting early
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _analyze(model, where, start, input_shapes)
    finally:
        if gc_was_enabled:
            gc.enable()


def _analyze(model: Any, where: str | None, start: float, input_shapes: Any = None) -> Analysis:
    if isinstance(model, Graph):
        graph = model
    else:
        from drpopt.ir.from_onnx import from_onnx

        graph = from_onnx(model, where=where or _where(model), input_shapes=input_shapes)
    macs, uses = macs_and_weight_uses(graph)
    params = {v.name: v for v in graph.values.values() if _is_param(v)}
    cg, groups, pp, pm = _best_mapping(graph, params, uses)
    _group_totals(graph, groups, params, uses)
    result = Analysis(
        graph=graph,
        groups=groups,
        params=_distinct_params(params),
        macs=macs,
        prunable_params=pp,
        prunable_macs=pm,
        unsupported=[(n.op_type, n.name) for n in cg.unsupported],
        seconds=time.perf_counter() - start,
    )
    return result


def _solve(graph: Graph, levels: dict[Node, int], params, uses, memos=None):
    cg = apply_rules(graph, levels, memos)
    groups, _ = cg.groups()
    for g in groups:
        _finish_group(g, params)
    pp, pm = _removed(graph, [g for g in groups if g.prunable], params, uses)
    return cg, groups, pp, pm


def _best_mapping(graph: Graph, params, uses, rounds: int = 3):
    """Solves the channel graph; where a reshape's split or merge leaves the axis that
    carries the channels locked (q/k/v stacked on an axis of 3 before the heads), solves
    again with the next axis carrying them, and keeps whichever prunes more parameters."""
    levels: dict[Node, int] = {}
    values = list(graph.values.values())
    shapes = [v.shape for v in values]
    best = _solve(graph, levels, params, uses)
    if not best[0].splits:
        return best  # no reshape split or merge: nothing to map another way
    # the shape tensors read in the first round read the same in the next ones unless a
    # rule refined a shape (a reshape inference left unknown): then they are read again
    same = len(graph.values) == len(values)
    same = same and all(a == v.shape for a, v in zip(shapes, values, strict=True))
    memos = (best[0].shape_memo, best[0].numeric_memo) if same else None
    for _ in range(rounds):
        cg, groups = best[0], best[1]
        where = {(s.value, s.axis): g for g in groups for s in g.segments if s.value}
        stuck = {
            node: (level, where.get((value.name, axis)))
            for node, value, axis, level, n in cg.splits
            if level < n and not getattr(where.get((value.name, axis)), "prunable", False)
        }
        # a mapping locked only because another stuck one locks its component waits for
        # that one to move (the heads after torchvision's q/k/v split stay heads)
        names = {node.name for node in stuck}
        raise_ = {
            node: level + 1
            for node, (level, group) in stuck.items()
            if group is not None and not any(lk.node in names - {node.name} for lk in group.locks)
        }
        raise_.update(_past_bare_axes(cg.splits, stuck, where))
        if not raise_:
            break
        trial_levels = {**levels, **raise_}
        trial = _solve(graph, trial_levels, params, uses, memos)
        if _gain(trial) <= _gain(best):
            break
        best, levels = trial, trial_levels
    return best


def _past_bare_axes(splits, stuck, where) -> dict:
    """A merge whose coarse axes no group holds (no parameters read them: timm's Swin patch
    merging, ``reshape(B, H/2, 2, W/2, 2, C).permute(...).flatten(3)``, merges two spatial
    parities with the channels) maps at the first deeper axis a group holds."""
    out = {}
    for node, value, axis, level, n in splits:
        if node not in stuck or stuck[node][1] is not None or value.shape is None:
            continue
        while level < n:
            axis = next((a for a in range(axis + 1, len(value.shape)) if value.shape[a] != 1), None)
            if axis is None:
                break
            level += 1
            if where.get((value.name, axis)) is not None:
                out[node] = level
                break
    return out


def _gain(solved) -> tuple[int, int]:
    """What a mapping prunes: the parameters its prunable groups cover, then how many weight
    axes they slice (a q/k/v weight whose input axis a prunable stream already covers gains
    its output axis when the heads map: the same parameters, one more prunable axis)."""
    groups = [g for g in solved[1] if g.prunable]
    axes = {(m.tensor, m.axis) for g in groups for m in g.members if m.tensor}
    return solved[2], len(axes)


def _where(model: Any) -> str:
    return os.fspath(model) if isinstance(model, str | os.PathLike) else "model"


def _finish_group(g: Group, params: dict[str, Value]) -> None:
    """Locks a group with locks (its reason says why) and a group of one channel, except
    one unit of an expansion (a channel shuffle's position deep in a ShuffleNet stage,
    several channels of later layers; or an entry whose block a later split cuts, locked
    only for that and tied to each piece of its block): where its layers have other
    channels it prunes as a whole; where it is all of a layer's channels, that says why."""
    if g.size == 1 and all(lk.kind == CUT_BLOCK for lk in g.locks):
        whole = _expansion_unit(g, params)
        if whole is None:
            g.locks = []
            return
        if whole:
            g.locks.insert(0, whole)
    if g.locks:
        g.prunable = False
        g.reason = "; ".join(dict.fromkeys(lock.message for lock in g.locks[:50]))
        extra = len(g.locks) - 50
        if extra > 0:
            g.reason += f"; and {extra} more"
    elif g.size < 2:
        g.prunable = False
        g.reason = "a single channel (a group keeps at least one)"


def _expansion_unit(g: Group, params: dict[str, Value]) -> Lock | bool | None:
    """For a group of one unit: None when it may prune as a whole (it spans several
    channels somewhere, an expansion's entry; no part of it is a single channel, since a
    size-1 axis broadcasts and where it goes next the analysis does not follow; it cuts
    weights and leaves each weight axis it cuts other channels); else a lock naming the
    layer whose every channel it is, or False (not such a unit)."""
    spans: dict[str, int] = {}  # channels of each space the unit covers
    for s in g.segments:
        if s.space_length < 2:
            return False
        spans[s.label] = spans.get(s.label, 0) + s.block
    if max(spans.values(), default=0) < 2:
        return False
    cut: dict[tuple[str, int], list] = {}
    for m in g.members:
        if m.tensor in params:
            entry = cut.setdefault((m.tensor, m.axis), [0, m.node])
            entry[0] += m.block * m.length
    if not cut:
        return False
    for (name, axis), (n, node) in cut.items():
        if n >= (params[name].shape or (0,) * (axis + 1))[axis]:
            why = (
                f"one unit that is all {n} channels of '{name}' (axis {axis}) of "
                f"'{node}': removing it would leave that layer none"
            )
            return Lock("whole-layer", why, node)
    return None


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


def _is_param(v: Value) -> bool:
    """Weights of layers count whatever their size; other float constants count unless
    they are scalars (Clip bounds, a scale) or feed only shape-like inputs."""
    if not v.is_const or v.dtype is None:
        return False
    dtype = v.dtype
    if (dtype.kind if isinstance(dtype, np.dtype) else np.dtype(dtype).kind) != "f":
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
        k = _int(a.shape[0] if op == "Gemm" and node.attr("transA", 0) else a.shape[-1])
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


def _distinct_params(params: dict[str, Value]) -> int:
    """Elements of the parameter tensors, a tensor shared by several values (an exporter's
    shared constant, un-shared on load) counted once."""
    sizes = {v.storage: v.numel or 0 for v in params.values()}
    return sum(sizes.values())


def _union_length(intervals: list[tuple[int, int]], dim: int) -> int:
    """How many of ``range(dim)`` the half-open intervals cover together."""
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


def _removed(
    graph: Graph, groups: list[Group], params: dict[str, Value], uses: dict[str, float]
) -> tuple[int, int]:
    """Parameters and MACs covered by the channels of ``groups`` (each element once: a
    tensor shared by several layers, un-shared per use on load, is one tensor whose element
    counts when any of its uses covers it; MACs count per use, as each layer runs)."""
    spans: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for g in groups:
        for m in g.members:
            name = m.tensor
            if name is None or name not in params:
                continue
            axes = spans.get(name)
            if axes is None:
                axes = spans[name] = {}
            iv = axes.get(m.axis)
            if iv is None:
                iv = axes[m.axis] = []
            lo = m.start
            iv.append((lo, lo + m.length * m.block))
    total_macs = 0.0
    by_storage: dict[int, tuple[tuple, dict[int, list[tuple[int, int]]]]] = {}
    for name, axes in spans.items():
        shape = params[name].shape  # type: ignore[union-attr]
        total_macs += _covered(shape, axes) * uses.get(name, 0.0)
        merged = by_storage.setdefault(params[name].storage, (shape, {}))[1]
        for a, iv in axes.items():
            merged.setdefault(a, []).extend(iv)
    total_params = sum(_covered(shape, axes) for shape, axes in by_storage.values())
    return total_params, round(total_macs)


def _group_totals(
    graph: Graph, groups: list[Group], params: dict[str, Value], uses: dict[str, float]
) -> None:
    """Sets each group's ``params`` and ``macs``, as ``_removed`` counts them for the
    group alone. The usual group takes one pass over its members: its members slice each
    weight along one axis in disjoint pieces (they come sorted by tensor, axis and start),
    and the tensors that are one weight (an exporter's deduplicated constant, un-shared on
    load) are sliced alike; any other group is counted by ``_removed``."""
    storage = {name: v.storage for name, v in params.items()}
    info = _tensor_info(params, storage, uses)
    for g in groups:
        totals = _one_axis_totals(g, params, storage, uses, info)
        g.params, g.macs = totals if totals is not None else _removed(graph, [g], params, uses)


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
    spans: dict[str, tuple[int, list[int]]] = {}  # tensor -> (axis, [lo, hi, lo, hi, ...])
    for m in g.members:
        name = m.tensor
        if name is None or name not in params:
            continue
        lo = m.start
        span = spans.get(name)
        if span is None:
            spans[name] = (m.axis, [lo, lo + m.length * m.block])
        elif span[0] == m.axis and lo >= span[1][-1]:
            span[1].extend((lo, lo + m.length * m.block))
        else:
            return None  # another axis, or pieces that overlap
    total_params, total_macs = 0, 0.0
    counted: dict[int, tuple] = {}  # storage -> the span counted for it
    if info is None:
        info = _tensor_info({name: params[name] for name in spans}, storage, uses)
    for name, span in spans.items():
        axis, pieces = span
        shape, numel, where, use = info[name]
        dim = shape[axis]
        if pieces[-1] > dim:
            return None
        if len(pieces) == 2:
            covered = pieces[1] - pieces[0]
        else:
            covered = sum(pieces[1::2]) - sum(pieces[::2])
        n = covered * (numel // dim) if dim else 0
        total_macs += n * use
        first = counted.setdefault(where, span)
        if first is span:
            total_params += n
        elif first != span:
            return None  # one weight sliced two ways: the union is _removed's
    return total_params, round(total_macs)


def _covered(shape, axes: dict[int, list[tuple[int, int]]]) -> int:
    """Elements of a tensor of ``shape`` with an index inside the intervals of some axis."""
    if len(axes) == 1:  # the common case: one axis of the tensor
        ((a, iv),) = axes.items()
        dim = shape[a]
        if len(iv) == 1:
            lo, hi = iv[0]
            covered = max(0, min(hi, dim) - max(lo, 0))
        else:
            covered = _union_length(iv, dim)
        return covered * (math.prod(shape) // dim) if dim else 0
    kept = math.prod(
        dim - _union_length(axes[a], dim) if a in axes else dim for a, dim in enumerate(shape)
    )
    return math.prod(shape) - kept
