"""Coupling rules: one table, keyed by ONNX op type, of how each op ties channel spaces.

A rule gets the node and the ``ChannelGraph`` and states relations between ``(value, axis)``
spaces (``identity``, ``concat``, ``expand``), the roles weights play (``producer`` rows make
the channels, ``consumer`` columns read them, ``follower`` slices ride along), and locks.
An op with no entry here locks every space of its inputs and outputs (``apply_rules``).
Size-1 axes have no space: a broadcast of size 1 couples nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.patterns import layernorm_statistic
from drpopt.ir.shape_expr import (
    DERIVED,
    Dim,
    const_ints,
    literal_source,
    resolve_reshape,
    shape_entries,
    shape_values,
)

Rule = Callable[[Node, ChannelGraph], None]
RULES: dict[str, Rule] = {}

UNARY_OPS = [
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Mish",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Neg",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Not",
    "IsNaN",
    "IsInf",
    "Identity",
    "Cast",
    "CastLike",
    "Dropout",
    "Clip",
    "Shrink",
    "BitwiseNot",
]
ELEMENTWISE_OPS = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Pow",
    "Where",
    "PRelu",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
]
POOL_OPS = [
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
]
REDUCE_OPS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
]
RESHAPE_OPS = ["Reshape", "Flatten", "Squeeze", "Unsqueeze"]
NO_DATA_OPS = ["Shape", "Size", "Constant"]


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Registers a rule for the given op types (later registrations win)."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return deco


def register_rule(op_type: str, fn: Rule) -> None:
    """Adds or replaces the rule of ``op_type`` (for custom ops)."""
    RULES[op_type] = fn


# ---- helpers ----------------------------------------------------------------------------
def same_axes(cg: ChannelGraph, node: Node, x: Value | None, y: Value, axes=None) -> None:
    """Identity on every axis where the sizes agree; axes that change size are locked."""
    if x is None:
        return
    if x.rank is None or y.rank is None or x.rank != y.rank:
        cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    for ax in range(x.rank) if axes is None else axes:
        if x.shape[ax] == y.shape[ax]:  # type: ignore[index]
            cg.identity(cg.space(x, ax), cg.space(y, ax), node)
        else:
            why = f"{node.op_type} '{node.name}' changes the size of axis {ax}"
            cg.lock(cg.space(x, ax), "resized", why, node)
            cg.lock(cg.space(y, ax), "resized", why, node)


def broadcast(cg: ChannelGraph, node: Node, inputs: list[Value | None], out: Value) -> None:
    """Numpy broadcasting: an input axis of the output's size couples with it; size 1 does not."""
    if out.rank is None:
        for x in inputs:
            cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': output rank unknown", node)
        cg.lock_value(out, "rule", f"{node.op_type} '{node.name}': output rank unknown", node)
        return
    for x in inputs:
        if x is None:
            continue
        if x.rank is None:
            cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': input rank unknown", node)
            continue
        off = out.rank - x.rank
        for ax in range(x.rank):
            if x.shape[ax] == 1:  # type: ignore[index]
                continue
            cg.identity(cg.space(x, ax), cg.space(out, off + ax), node)


def lock_axis(cg: ChannelGraph, node: Node, values, axes, why: str) -> None:
    for v in values:
        if v is None or v.rank is None:
            continue
        for ax in axes:
            if -v.rank <= ax < v.rank:
                cg.lock(cg.space(v, ax), "rule", f"{node.op_type} '{node.name}' {why}", node)


# ---- rules ------------------------------------------------------------------------------
@rule(*NO_DATA_OPS)
def _no_data(node: Node, cg: ChannelGraph) -> None:
    """Shape/Size read only metadata; Constant has no input."""
    for v in (*node.inputs, *node.outputs):
        cg.independent(v)


@rule(*UNARY_OPS)
def _unary(node: Node, cg: ChannelGraph) -> None:
    x = node.input(0)
    for y in node.outputs[:1] if node.op_type != "Dropout" else node.outputs:
        same_axes(cg, node, x, y)


@rule("Cast", "CastLike")
def _cast(node: Node, cg: ChannelGraph) -> None:
    """A cast couples like any unary op. A tensor size cast to floating point is data (an
    attention scale ``1/sqrt(head_dim)``): when its value is known for the model's static
    shapes, ``compact`` freezes it to that constant (so sparse and compact agree); otherwise
    the axes it reads may not change size and are locked."""
    _unary(node, cg)
    if frozen_size_cast(node, cg.numeric_memo) is not None:
        return
    x = node.input(0)
    if not is_size_cast(node) or x is None:
        return
    entries = shape_entries(x, cg.shape_memo)
    why = f"{node.op_type} '{node.name}' uses its size as a number"
    if entries is None or any(isinstance(e, type(DERIVED)) for e in entries):
        for v in _shapes_read(x):
            cg.lock_value(v, "shape-as-data", why, node)
        return
    for e in entries:
        if isinstance(e, Dim):
            cg.lock(cg.space(e.value, e.axis), "shape-as-data", why, node)


def is_size_cast(node: Node) -> bool:
    """A Cast of a computed (non-constant) integer to floating point."""
    x, y = node.input(0), node.outputs[0]
    if node.op_type not in ("Cast", "CastLike") or x is None or x.is_const:
        return False
    if x.dtype is None or y.dtype is None:
        return False
    return np.dtype(x.dtype).kind in "iu" and np.dtype(y.dtype).kind == "f"


def frozen_size_cast(node: Node, memo=None) -> np.ndarray | None:
    """The value a size cast to float reads, for the model's static shapes, or None."""
    if not is_size_cast(node):
        return None
    x = node.input(0)
    numbers = shape_values(x, memo)
    if numbers is None or x.shape is None or any(not isinstance(d, int) for d in x.shape):
        return None
    try:
        return np.array(numbers, dtype=x.dtype).reshape(x.shape)
    except ValueError:
        return None


def _shapes_read(value: Value, limit: int = 256) -> list[Value]:
    """The tensors whose ``Shape`` an integer value is computed from (a bounded walk)."""
    found: list[Value] = []
    seen: set[int] = set()
    todo = [value]
    while todo and len(seen) < limit:
        v = todo.pop()
        if id(v) in seen or v.producer is None:
            continue
        seen.add(id(v))
        node = v.producer
        if node.op_type in ("Shape", "Size"):
            if node.input(0) is not None:
                found.append(node.input(0))
            continue
        if v.dtype is not None and np.dtype(v.dtype).kind not in "iu":
            continue
        todo.extend(i for i in node.inputs if i is not None)
    return found


@rule(*ELEMENTWISE_OPS)
def _elementwise(node: Node, cg: ChannelGraph) -> None:
    broadcast(cg, node, node.inputs, node.outputs[0])
    if node.op_type == "PRelu":
        slope = node.input(1)
        if slope is not None and slope.is_const and slope.rank:
            for ax in range(slope.rank):
                cg.role(cg.space(slope, ax), "follower", node)


@rule("Expand")
def _expand(node: Node, cg: ChannelGraph) -> None:
    broadcast(cg, node, [node.input(0)], node.outputs[0])


@rule("Tile")
def _tile(node: Node, cg: ChannelGraph) -> None:
    x, y, reps = node.input(0), node.outputs[0], const_ints(node.input(1))
    if reps is None or x is None or x.rank is None:
        cg.lock_value(x, "rule", f"Tile '{node.name}' has computed repeats", node)
        cg.lock_value(y, "rule", f"Tile '{node.name}' has computed repeats", node)
        return
    same_axes(cg, node, x, y)


@rule(*POOL_OPS, "Resize", "Upsample", "SpaceToDepth", "DepthToSpace")
def _pointwise_channels(node: Node, cg: ChannelGraph) -> None:
    """Pooling and resizing keep channels apart; an axis whose size changes is locked."""
    if node.op_type in ("SpaceToDepth", "DepthToSpace"):
        lock_axis(cg, node, [node.input(0), node.outputs[0]], [1], "moves pixels into channels")
    for y in node.outputs:
        same_axes(cg, node, node.input(0), y)


@rule("BatchNormalization", "InstanceNormalization")
def _norm(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None or x.rank < 2:
        return
    channels = cg.space(x, 1)
    for p in node.inputs[1:]:
        if p is not None and p.rank == 1:
            cg.identity(cg.space(p, 0), channels, node)
            cg.role(cg.space(p, 0), "follower", node)
    for stat in node.outputs[1:]:
        if stat.rank == 1:
            cg.identity(cg.space(stat, 0), channels, node)


@rule("GroupNormalization", "LRN", "MeanVarianceNormalization")
def _channel_mixing_norm(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    lock_axis(
        cg,
        node,
        [x, y, *node.inputs[1:]],
        [1] if node.op_type != "MeanVarianceNormalization" else [0, 1],
        "mixes channels",
    )


@rule("LayerNormalization")
def _layernorm(node: Node, cg: ChannelGraph) -> None:
    """Over the last axis alone, that axis is a channel axis coupled with the scale and bias
    (ONNX models: ``apply-masks`` then restricts the statistics to the kept channels, so
    sparse equals compact); over several axes, or in a torch model whose forward always
    counts every channel, the normalised axes are locked."""
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None:
        return
    axis = node.attr("axis", -1) % x.rank
    params = [p for p in node.inputs[1:3] if p is not None]
    stats_used = any(o.uses or o in cg.graph.outputs for o in node.outputs[1:])
    per_channel = all(p.rank == 1 and p.is_const for p in params)
    if axis == x.rank - 1 and per_channel and not stats_used and "torch_path" not in cg.graph.meta:
        channels = cg.space(x, axis)
        for p in params:
            cg.identity(cg.space(p, 0), channels, node)
            cg.role(cg.space(p, 0), "follower", node)
        return
    broadcast(cg, node, params, y)
    lock_axis(cg, node, [x, y], range(axis, x.rank), "normalises over these axes")


@rule("drpopt::MaskedLayerNormalization")
def _masked_layernorm(node: Node, cg: ChannelGraph) -> None:
    """The sparse form of a LayerNormalization over pruned channels (passes/masked_norm.py):
    scale, bias and mask follow the channel axis."""
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None:
        return
    channels = cg.space(x, -1)
    for p in node.inputs[1:4]:
        if p is not None and p.rank == 1:
            cg.identity(cg.space(p, 0), channels, node)
            cg.role(cg.space(p, 0), "follower", node)
        else:
            cg.lock_value(p, "rule", f"MaskedLayerNormalization '{node.name}': not 1-D", node)


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None:
        return
    axis = node.attr("axis", -1 if node_opset(node, cg.graph) >= 13 else 1) % x.rank
    axes = [axis] if node_opset(node, cg.graph) >= 13 else range(axis, x.rank)
    lock_axis(cg, node, [x, y], axes, "normalises over this axis")


@rule(*REDUCE_OPS, "TopK", "CumSum")
def _reduce(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    if x is None or x.rank is None or y.rank is None:
        cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    if node.op_type == "ReduceMean" and _layernorm_statistic(node, cg):
        return
    if node.op_type in ("ArgMax", "ArgMin", "TopK", "CumSum"):
        axis = node.attr("axis", -1 if node.op_type in ("TopK",) else 0)
        if node.op_type == "CumSum":
            axis = (const_ints(node.input(1)) or [0])[0]
        axes = [axis % x.rank]
    else:
        axes = node.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.input(1) is not None:
            axes = const_ints(node.input(1))
            if axes is None:
                cg.lock_value(x, "rule", f"{node.op_type} '{node.name}' has computed axes", node)
                cg.lock_value(y, "rule", f"{node.op_type} '{node.name}' has computed axes", node)
                return
        if not axes:
            axes = [] if node.attr("noop_with_empty_axes", 0) else list(range(x.rank))
        axes = sorted(a % x.rank for a in axes)
    lock_axis(cg, node, [x], axes, "reduces over this axis")
    if node.op_type in ("TopK", "CumSum"):
        lock_axis(cg, node, node.outputs, axes, "reduces over this axis")
    keep = node.attr("keepdims", 1)
    j = 0
    for ax in range(x.rank):
        if ax in axes:
            if keep:
                j += 1
            continue
        for out in node.outputs:
            if out.rank == y.rank:
                cg.identity(cg.space(x, ax), cg.space(out, j), node)
        j += 1


def _layernorm_statistic(node: Node, cg: ChannelGraph) -> bool:
    """A mean or variance of a LayerNorm written out in plain ops (opset < 17 exports):
    matched as a whole (``ir/patterns.py``), its channel axis is a LayerNorm's (``apply-masks``
    gives the pattern the masked form), so the reduction neither couples nor locks it."""
    if "torch_path" in cg.graph.meta or layernorm_statistic(node, cg.graph) is None:
        return False
    x, y = node.input(0), node.outputs[0]
    cg.independent(x, [x.rank - 1])  # type: ignore[operator]
    for ax in range(x.rank - 1):  # type: ignore[operator]
        cg.identity(cg.space(x, ax), cg.space(y, ax), node)
    return True


@rule("Conv")
def _conv(node: Node, cg: ChannelGraph) -> None:
    x, w, b, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    if x is None or w is None or x.rank is None or w.rank is None or y.rank is None:
        for v in (x, w, y):
            cg.lock_value(v, "rule", f"Conv '{node.name}': rank unknown", node)
        return
    groups = int(node.attr("group", 1))
    cg.identity(cg.space(y, 1), cg.space(w, 0), node)
    cg.role(cg.space(w, 0), "producer", node)
    if b is not None:
        cg.identity(cg.space(b, 0), cg.space(y, 1), node)
        cg.role(cg.space(b, 0), "follower", node)
    cg.identity(cg.space(x, 0), cg.space(y, 0), node)
    if groups == 1:
        cg.identity(cg.space(x, 1), cg.space(w, 1), node)
        cg.role(cg.space(w, 1), "consumer", node)
        return
    cin, cout = x.dim(1), w.dim(0)
    if not isinstance(cin, int) or not isinstance(cout, int):
        lock_axis(cg, node, [x, y], [1], "is grouped and its channel counts are unknown")
        return
    if cin // groups > 1 and cout // groups > 1 and groups <= MAX_GROUPS:
        _within_groups(node, cg, x, w, y, groups)
        return
    g = cg.virtual(f"{node.name}.groups", groups)
    cg.role(g, "structure", node, attr="group")
    cg.expand(cg.space(x, 1), g, cin // groups, node)
    cg.expand(cg.space(y, 1), g, cout // groups, node)


MAX_GROUPS = 256


def _within_groups(node: Node, cg: ChannelGraph, x: Value, w: Value, y: Value, groups: int):
    """A grouped convolution (ResNeXt, RegNet) prunes the same positions inside every
    conv group, so each group keeps an equal count and ``group`` stays: input channel j of
    every group is column j of the weight; output position j of every group is one unit."""
    cin, cout = x.dim(1), w.dim(0)
    assert isinstance(cin, int) and isinstance(cout, int)
    columns = cg.space(w, 1)
    parts = [cg.virtual(f"{node.name}.in{r}", cin // groups) for r in range(groups)]
    cg.concat(cg.space(x, 1), parts, node)  # type: ignore[arg-type]
    for part in parts:
        cg.identity(part, columns, node)
    cg.role(columns, "consumer", node)
    position = cg.virtual(f"{node.name}.out_position", cout // groups)
    parts = [cg.virtual(f"{node.name}.out{r}", cout // groups) for r in range(groups)]
    cg.concat(cg.space(y, 1), parts, node)  # type: ignore[arg-type]
    for part in parts:
        cg.identity(part, position, node)


@rule("ConvTranspose")
def _conv_transpose(node: Node, cg: ChannelGraph) -> None:
    x, w, b, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    if x is None or w is None or x.rank is None or w.rank is None or y.rank is None:
        for v in (x, w, y):
            cg.lock_value(v, "rule", f"ConvTranspose '{node.name}': rank unknown", node)
        return
    groups = int(node.attr("group", 1))
    cg.identity(cg.space(x, 1), cg.space(w, 0), node)
    cg.identity(cg.space(x, 0), cg.space(y, 0), node)
    if b is not None:
        cg.identity(cg.space(b, 0), cg.space(y, 1), node)
        cg.role(cg.space(b, 0), "follower", node)
    if groups == 1:
        cg.identity(cg.space(y, 1), cg.space(w, 1), node)
        cg.role(cg.space(w, 1), "producer", node)
        cg.role(cg.space(w, 0), "consumer", node)
        return
    cin, cout = x.dim(1), y.dim(1)
    if not isinstance(cin, int) or not isinstance(cout, int):
        lock_axis(cg, node, [x, y], [1], "is grouped and its channel counts are unknown")
        return
    g = cg.virtual(f"{node.name}.groups", groups)
    cg.role(g, "structure", node, attr="group")
    cg.role(cg.space(w, 0), "producer", node)
    cg.expand(cg.space(x, 1), g, cin // groups, node)
    cg.expand(cg.space(y, 1), g, cout // groups, node)


@rule("Gemm")
def _gemm(node: Node, cg: ChannelGraph) -> None:
    a, b, c, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    if a is None or b is None or a.rank != 2 or b.rank != 2 or y.rank != 2:
        for v in (a, b, y):
            cg.lock_value(v, "rule", f"Gemm '{node.name}': operands are not 2-D", node)
        return
    ak, am = (0, 1) if node.attr("transA", 0) else (1, 0)
    bn, bk = (0, 1) if node.attr("transB", 0) else (1, 0)
    cg.identity(cg.space(a, ak), cg.space(b, bk), node)
    cg.identity(cg.space(y, 0), cg.space(a, am), node)
    cg.identity(cg.space(y, 1), cg.space(b, bn), node)
    if b.is_const:
        cg.role(cg.space(b, bn), "producer", node)
        cg.role(cg.space(b, bk), "consumer", node)
    if c is not None:
        broadcast(cg, node, [c], y)
        if c.rank:
            cg.role(cg.space(c, -1), "follower", node)


@rule("MatMul")
def _matmul(node: Node, cg: ChannelGraph) -> None:
    a, b, y = node.input(0), node.input(1), node.outputs[0]
    if a is None or b is None or a.rank is None or b.rank is None or y.rank is None:
        for v in (a, b, y):
            cg.lock_value(v, "rule", f"MatMul '{node.name}': rank unknown", node)
        return
    if a.rank < 2 or b.rank < 2:
        for v in (a, b, y):
            cg.lock_value(v, "rule", f"MatMul '{node.name}' has a 1-D operand", node)
        return
    cg.identity(cg.space(a, -1), cg.space(b, -2), node)
    cg.identity(cg.space(y, -2), cg.space(a, -2), node)
    cg.identity(cg.space(y, -1), cg.space(b, -1), node)
    for x in (a, b):  # batch dims broadcast against the output's
        off = y.rank - x.rank
        for ax in range(x.rank - 2):
            if x.shape[ax] != 1:
                cg.identity(cg.space(x, ax), cg.space(y, off + ax), node)
    if b.is_const:
        cg.role(cg.space(b, -1), "producer", node)
        cg.role(cg.space(b, -2), "consumer", node)


@rule("Concat")
def _concat(node: Node, cg: ChannelGraph) -> None:
    y = node.outputs[0]
    if y.rank is None or any(x is not None and x.rank != y.rank for x in node.inputs):
        for v in (*node.inputs, y):
            cg.lock_value(v, "rule", f"Concat '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis") % y.rank
    parts = [x for x in node.inputs if x is not None and x.shape[axis] != 0]  # type: ignore[index]
    cg.concat(cg.space(y, axis), [_part_space(cg, x, axis, node) for x in parts], node)
    for x in parts:
        same_axes(cg, node, x, y, axes=[a for a in range(y.rank) if a != axis])


def _part_space(cg: ChannelGraph, x: Value, axis: int, node: Node) -> int:
    """A part of a concat/split; a part of size 1 gets a virtual space of its own."""
    sid = cg.space(x, axis)
    if sid is None:
        sid = cg.virtual(f"{x.name}[{axis}]", 1)
    return sid


@rule("Split")
def _split(node: Node, cg: ChannelGraph) -> None:
    x = node.input(0)
    if x is None or x.rank is None or any(y.rank != x.rank for y in node.outputs):
        for v in (x, *node.outputs):
            cg.lock_value(v, "rule", f"Split '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis", 0) % x.rank
    parts = [y for y in node.outputs if y.shape[axis] != 0]  # type: ignore[index]
    cg.concat(cg.space(x, axis), [_part_space(cg, y, axis, node) for y in parts], node)
    for y in parts:
        same_axes(cg, node, x, y, axes=[a for a in range(x.rank) if a != axis])


@rule("Slice")
def _slice(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    axes, steps = const_ints(node.input(3)), const_ints(node.input(4))
    if (
        (starts is None or ends is None)
        and x is not None
        and x.shape is not None
        and (axes is not None or node.input(3) is None)
    ):
        numbers = _static_bounds(node, x, y, cg.numeric_memo)
        if numbers is None:
            _slice_computed(node, cg, x, y, axes)
            return
        starts, ends = numbers
    if x is None or x.rank is None or y.rank != x.rank or starts is None or ends is None:
        cg.lock_value(x, "rule", f"Slice '{node.name}' has computed bounds", node)
        cg.lock_value(y, "rule", f"Slice '{node.name}' has computed bounds", node)
        return
    if (node.input(3) is not None and axes is None) or (
        node.input(4) is not None and steps is None
    ):
        cg.lock_value(x, "rule", f"Slice '{node.name}' has computed axes or steps", node)
        cg.lock_value(y, "rule", f"Slice '{node.name}' has computed axes or steps", node)
        return
    axes = [a % x.rank for a in (axes if axes is not None else range(len(starts)))]
    steps = steps if steps is not None else [1] * len(axes)
    sliced = dict(zip(axes, zip(starts, ends, steps, strict=False), strict=False))
    for ax in range(x.rank):
        if ax not in sliced:
            same_axes(cg, node, x, y, axes=[ax])
            continue
        start, end, step = sliced[ax]
        dim = x.shape[ax]  # type: ignore[index]
        if not isinstance(dim, int):
            lock_axis(cg, node, [x, y], [ax], "slices an axis of unknown size")
            continue
        lo, hi, st = slice(start, end, step).indices(dim)
        if st != 1:
            lock_axis(cg, node, [x, y], [ax], "takes a strided slice of this axis")
            continue
        hi = max(hi, lo)
        if lo == 0 and hi == dim:
            same_axes(cg, node, x, y, axes=[ax])
            continue
        parts = []
        if lo > 0:
            parts.append(cg.virtual(f"{node.name}.dropped_head", lo))
        parts.append(_part_space(cg, y, ax, node) if hi > lo else None)
        if hi < dim:
            parts.append(cg.virtual(f"{node.name}.dropped_tail", dim - hi))
        parts = [p for p in parts if p is not None]
        cg.concat(cg.space(x, ax), parts, node)


def _static_bounds(
    node: Node, x: Value, y: Value, memo: dict
) -> tuple[list[int], list[int]] | None:
    """The numbers computed Slice bounds take for this model's static shapes, when input
    and output shapes are static (``torch.chunk`` exported as ``Slice`` with bounds
    ``(C + 1) // 2 * k`` read from the sliced tensor's own shape: a channel split like any
    other; ``compact`` writes the kept bounds as constants). None otherwise."""
    if x.static_shape is None or y.static_shape is None:
        return None
    starts = shape_values(node.input(1), memo)  # type: ignore[arg-type]
    ends = shape_values(node.input(2), memo)  # type: ignore[arg-type]
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    return starts, ends


def _slice_computed(node: Node, cg: ChannelGraph, x: Value, y: Value, axes) -> None:
    """Bounds computed at run time (Swin's crop of window padding): the sliced axes are
    locked, every other axis passes through (and keeps its size where inference lost it)."""
    rank = x.rank or 0
    n = len(shape_entries(node.input(1), cg.shape_memo) or []) if axes is None else len(axes)
    sliced = {a % rank for a in axes} if axes is not None else set(range(n))
    if not sliced and axes is None:
        sliced = set(range(rank))
    old = y.shape if y.shape is not None and len(y.shape) == rank else (None,) * rank
    starts = shape_values(node.input(1), cg.numeric_memo)
    ends = shape_values(node.input(2), cg.numeric_memo)
    steps = const_ints(node.input(4)) if node.input(4) is not None else None
    bounds = {}
    if starts is not None and ends is not None and axes is not None and steps is None:
        for a, s, e in zip(axes, starts, ends, strict=False):
            dim = x.shape[a % rank]
            if isinstance(dim, int):
                lo, hi, _ = slice(s, e).indices(dim)
                bounds[a % rank] = max(hi - lo, 0)
    y.shape = tuple(
        bounds.get(a, old[a])
        if a in sliced
        else (x.shape[a] if old[a] is None or not isinstance(old[a], int) else old[a])
        for a in range(rank)
    )
    same_axes(cg, node, x, y, axes=[a for a in range(rank) if a not in sliced])
    lock_axis(cg, node, [x, y], sorted(sliced), "slices this axis with computed bounds")


@rule("Transpose")
def _transpose(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    if x is None or x.rank is None:
        cg.lock_value(x, "rule", f"Transpose '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"Transpose '{node.name}': rank unknown", node)
        return
    perm = node.attr("perm") or list(reversed(range(x.rank)))
    for i, p in enumerate(perm):
        cg.identity(cg.space(x, p), cg.space(y, i), node)


@rule("Pad")
def _pad(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    pads = node.attr("pads") if node.attr("pads") is not None else const_ints(node.input(1))
    if pads is None and node.input(1) is not None:
        # pads computed from shapes (Swin's window padding): only literal zeros leave an
        # axis unpadded; every entry computed at run time counts as padding it
        entries = shape_entries(node.input(1), cg.shape_memo)
        numbers = shape_values(node.input(1), cg.numeric_memo)
        if numbers is not None and x is not None and x.static_shape is not None:
            half = len(numbers) // 2
            if half == x.rank and (y.shape is None or y.static_shape is None):
                y.shape = tuple(d + numbers[a] + numbers[a + half] for a, d in enumerate(x.shape))
        if entries is not None:
            pads = [e if isinstance(e, int) else 1 for e in entries]
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    if x is None or x.rank is None or pads is None or (node.input(3) is not None and axes is None):
        cg.lock_value(x, "rule", f"Pad '{node.name}' has computed pads", node)
        cg.lock_value(y, "rule", f"Pad '{node.name}' has computed pads", node)
        return
    axes = [a % x.rank for a in axes] if axes is not None else list(range(x.rank))
    n = len(axes)
    padded = {a for i, a in enumerate(axes) if pads[i] or pads[i + n]}
    if x.shape is not None and (y.shape is None or len(y.shape) == x.rank):
        # shape inference leaves every dim unknown after computed pads: unpadded axes keep
        # their size
        old = y.shape or (None,) * x.rank
        y.shape = tuple(
            x.shape[a] if a not in padded and not isinstance(old[a], int) else old[a]
            for a in range(x.rank)
        )
    same_axes(cg, node, x, y, axes=[a for a in range(x.rank) if a not in padded])
    lock_axis(cg, node, [x, y], sorted(padded), "pads this axis")


@rule("Gather")
def _gather(node: Node, cg: ChannelGraph) -> None:
    """Other axes pass through; along the gathered axis constant indices that pick one
    entry or a contiguous ascending range map channels exactly (like a Slice); any other
    selection (a permutation, repeats, computed indices) locks the axis on both sides."""
    x, idx, y = node.input(0), node.input(1), node.outputs[0]
    if x is None or idx is None or x.rank is None or idx.rank is None or y.rank is None:
        cg.lock_value(x, "rule", f"Gather '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"Gather '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis", 0) % x.rank
    for ax in range(x.rank):
        if ax < axis:
            cg.identity(cg.space(x, ax), cg.space(y, ax), node)
        elif ax > axis:
            cg.identity(cg.space(x, ax), cg.space(y, ax - 1 + idx.rank), node)
    picked = gathered_range(x, idx, axis)
    if picked is None:
        why = "gathers along this axis (not one entry or a contiguous range of constants)"
        lock_axis(cg, node, [x], [axis], why)
        lock_axis(cg, node, [y], range(axis, axis + idx.rank), why)
        return
    lo, hi = picked
    dim = x.shape[axis]  # type: ignore[index]
    parts: list[int | None] = []
    if lo > 0:
        parts.append(cg.virtual(f"{node.name}.dropped_head", lo))
    if idx.rank == 0:
        parts.append(cg.virtual(f"{node.name}.picked", 1))
    else:
        parts.append(_part_space(cg, y, axis, node))
    if hi < dim:
        parts.append(cg.virtual(f"{node.name}.dropped_tail", dim - hi))
    cg.concat(cg.space(x, axis), parts, node)


def gathered_range(x: Value, idx: Value, axis: int) -> tuple[int, int] | None:
    """``(lo, hi)`` when a Gather's constant indices pick entry ``lo`` (a scalar index) or
    the contiguous ascending range ``[lo, hi)`` of ``axis``; None otherwise."""
    indices = const_ints(idx)
    dim = x.shape[axis] if x.shape is not None else None
    if indices is None or not isinstance(dim, int) or idx.rank not in (0, 1) or not indices:
        return None
    if any(not -dim <= i < dim for i in indices):
        return None
    indices = [i % dim for i in indices]
    lo = indices[0]
    if indices != list(range(lo, lo + len(indices))):
        return None
    return lo, lo + len(indices)


@rule(*RESHAPE_OPS)
def _reshape(node: Node, cg: ChannelGraph) -> None:
    """Maps axes by matching products of dims: an axis kept as is couples 1:1, axes merged
    into one make the first of them an expansion of it (each element a block), axes split
    from one the reverse; every other axis of a merge or split is locked."""
    x, y = node.input(0), node.outputs[0]
    entries = None
    if node.op_type == "Reshape" and const_ints(node.input(1)) is None:
        entries = shape_entries(node.input(1), cg.shape_memo)
        if entries is None:
            why = "has a target shape computed in a way drpopt cannot read"
            cg.lock_value(x, "reshape", f"Reshape '{node.name}' {why}", node)
            cg.lock_value(y, "reshape", f"Reshape '{node.name}' {why}", node)
            return
    if node.op_type == "Reshape" and x is not None and x.shape is not None:
        target = entries if entries is not None else const_ints(node.input(1))
        resolved = resolve_reshape(x.shape, target, bool(node.attr("allowzero", 0)))
        if resolved is None and entries is not None:
            # sizes computed from static shapes (Swin's window partition): use their values
            numbers = shape_values(node.input(1), cg.numeric_memo)
            if numbers is not None:
                resolved = resolve_reshape(x.shape, numbers, bool(node.attr("allowzero", 0)))
        if resolved is not None and resolved != y.shape:
            # shape inference often leaves exported reshapes unknown ('unk__0'): refine
            y.shape = resolved
    if node.op_type == "Flatten" and x is not None and x.shape is not None:
        axis = node.attr("axis", 1) % (x.rank or 1) if x.rank else 0
        flat = (_product(x.shape[:axis]), _product(x.shape[axis:]))
        if y.shape is None or any(not isinstance(d, int) for d in y.shape):
            y.shape = tuple(
                f if f is not None else d for f, d in zip(flat, y.shape or flat, strict=False)
            )
    if x is None or x.shape is None or y.shape is None:
        cg.lock_value(x, "reshape", f"{node.op_type} '{node.name}' has unknown shapes", node)
        cg.lock_value(y, "reshape", f"{node.op_type} '{node.name}' has unknown shapes", node)
        return
    out_shape = y.shape
    if entries is not None:
        # a size fixed inside a computed shape follows pruning only where compaction can
        # rewrite the constant it comes from; lock the axis otherwise
        for k, e in enumerate(entries[: len(y.shape)]):
            if isinstance(e, int) and e not in (-1, 0) and out_shape[k] != 1:
                if literal_source(node.input(1), k, cg.shape_memo) is not None:
                    continue
                why = f"fixes the size of axis {k} inside a computed target shape"
                cg.lock(cg.space(y, k), "reshape", f"Reshape '{node.name}' {why}", node)
    ins = [(a, d) for a, d in enumerate(x.shape) if d != 1]
    outs = [(a, d) for a, d in enumerate(out_shape) if d != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        if ins[i][1] == outs[j][1]:
            cg.identity(cg.space(x, ins[i][0]), cg.space(y, outs[j][0]), node)
            i, j = i + 1, j + 1
            continue
        bi, bj = [ins[i]], [outs[j]]
        pi, pj = ins[i][1], outs[j][1]
        while isinstance(pi, int) and isinstance(pj, int) and pi != pj:
            if pi < pj and i + len(bi) < len(ins):
                bi.append(ins[i + len(bi)])
                pi = pi * bi[-1][1] if isinstance(bi[-1][1], int) else None
            elif pj < pi and j + len(bj) < len(outs):
                bj.append(outs[j + len(bj)])
                pj = pj * bj[-1][1] if isinstance(bj[-1][1], int) else None
            else:
                break
        if not isinstance(pi, int) or pi != pj:
            _lock_block(
                cg, node, x, ins[i:], y, outs[j:], "maps axes in a way drpopt cannot follow"
            )
            return
        _map_block(cg, node, x, bi, y, bj)
        i, j = i + len(bi), j + len(bj)
    if i < len(ins) or j < len(outs):
        _lock_block(cg, node, x, ins[i:], y, outs[j:], "maps axes in a way drpopt cannot follow")


def _product(dims) -> int | str | None:
    """The product of dims: an int, a lone symbol (times 1), or None."""
    ints = [d for d in dims if isinstance(d, int)]
    other = [d for d in dims if not isinstance(d, int)]
    if not other:
        return math.prod(ints)
    if len(other) == 1 and isinstance(other[0], str) and math.prod(ints) == 1:
        return other[0]
    return None


MAX_REPEATS = 64  # parts a level-t mapping may repeat (3 for q/k/v, 3 x heads ...)


def _map_block(cg: ChannelGraph, node: Node, x: Value, bi, y: Value, bj) -> None:
    """One axis (``single``) against several (``many``) of the same total size.

    At level t (default 1) the t-th of the many axes carries the channels: ``single`` is
    ``prod(many[:t-1])`` repeats of ``prod(many[t-1:])`` entries, each repeat an expansion
    of axis t with blocks of ``prod(many[t:])``; the other axes are locked. Level 1 is the
    coarse index (a Flatten, attention heads); the analysis raises a level when the coarse
    axis ends up locked (torchvision's q/k/v axis of size 3 before the heads)."""
    if len(bj) == 1:
        single, many, kind = (y, bj[0][0]), (x, bi), "merges"
    elif len(bi) == 1:
        single, many, kind = (x, bi[0][0]), (y, bj), "splits"
    else:
        if not _map_factor(cg, node, x, bi, y, bj):
            _lock_block(cg, node, x, bi, y, bj, "mixes several axes into several others")
        return
    value, axes = many
    level = min(cg.reshape_levels.get(node, 1), len(axes))
    repeats = math.prod(d for _, d in axes[: level - 1])
    block = math.prod(d for _, d in axes[level:])
    if repeats > MAX_REPEATS:
        level, repeats, block = 1, 1, math.prod(d for _, d in axes[1:])
    whole = cg.space(single[0], single[1])
    target = cg.space(value, axes[level - 1][0])
    if repeats == 1:
        cg.expand(whole, target, block, node)
    else:
        length = math.prod(d for _, d in axes[level - 1 :])
        parts = [cg.virtual(f"{node.name}.repeat{r}", length) for r in range(repeats)]
        cg.concat(whole, parts, node)  # type: ignore[arg-type]
        for part in parts:
            cg.expand(part, target, block, node)
    cg.splits.append((node, value, axes[level - 1][0], level, len(axes)))
    others = [a for a in axes if a[0] != axes[level - 1][0]]
    why = f"{kind} axis {single[1]} of '{single[0].name}' with other axes"
    if kind == "merges":
        _lock_block(cg, node, x, others, y, [], why)
    else:
        _lock_block(cg, node, x, [], y, others, why)


def _map_factor(cg: ChannelGraph, node: Node, x: Value, bi, y: Value, bj) -> bool:
    """Several axes against several, where the leading size of one side is a whole multiple
    of the other's: ``(N, C, H, W) -> (N, G, C // G * H * W)``, torch's GroupNorm export
    (opset < 18: InstanceNormalization over the groups), and back. Entry ``c`` of the
    larger axis lies in entry ``c // (C // G)`` of the smaller, whatever the trailing sizes:
    the larger is an expansion of the smaller with blocks of their ratio, so whole groups
    prune together; every trailing axis is locked. False when neither divides."""
    (ax, dx), (ay, dy) = bi[0], bj[0]
    if not isinstance(dx, int) or not isinstance(dy, int) or dx == dy:
        return False
    if dx % dy == 0:
        cg.expand(cg.space(x, ax), cg.space(y, ay), dx // dy, node)
        why = f"splits axis {ax} of '{x.name}' and merges the rest with other axes"
    elif dy % dx == 0:
        cg.expand(cg.space(y, ay), cg.space(x, ax), dy // dx, node)
        why = f"merges axis {ax} of '{x.name}' with part of another axis"
    else:
        return False
    _lock_block(cg, node, x, bi[1:], y, bj[1:], why)
    return True


def _lock_block(cg: ChannelGraph, node: Node, x: Value, bi, y: Value, bj, why: str) -> None:
    msg = f"{node.op_type} '{node.name}' {why}"
    for a, _ in bi:
        cg.lock(cg.space(x, a), "reshape", msg, node)
    for a, _ in bj:
        cg.lock(cg.space(y, a), "reshape", msg, node)


# ---- driver -----------------------------------------------------------------------------
def node_opset(node: Node, graph: Graph) -> int:
    return graph.opsets.get(node.domain or "", graph.opsets.get("", 17))


_plugins_loaded = False
_plugin_loader: Callable[[], None] | None = None


def set_plugin_loader(loader: Callable[[], None]) -> None:
    """Sets what loads rule plugins before the first rule is looked up. The package root
    wires ``drpopt.plugins`` here, so ``ir`` imports nothing above it."""
    global _plugin_loader, _plugins_loaded
    _plugin_loader, _plugins_loaded = loader, False


def load_rule_plugins() -> None:
    """Registers the rules of plugins (entry point group ``drpopt.rules``), once."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        if _plugin_loader is not None:
            _plugin_loader()


def rule_for(node: Node) -> Rule | None:
    """The coupling rule of ``node``: by ``domain::OpType`` for custom domains, else by
    op type (plugin rules included)."""
    if not _plugins_loaded:
        load_rule_plugins()
    if node.domain not in ("", "ai.onnx"):
        # the fx frontend names unknown ops "fx::<name>" already
        key = node.op_type if "::" in node.op_type else f"{node.domain}::{node.op_type}"
        return RULES.get(key)
    return RULES.get(node.op_type)


def apply_rules(graph: Graph, reshape_levels: dict[Node, int] | None = None) -> ChannelGraph:
    """Runs every node's rule over ``graph``; nodes without one lock what they touch, and
    every axis of a node's inputs and outputs that its rule did not mention is locked.
    ``reshape_levels`` says which axis carries the channels in a reshape's split or merge."""
    cg = ChannelGraph(graph)
    cg.reshape_levels = dict(reshape_levels or {})
    for v in graph.inputs:
        cg.lock_value(v, "graph-input", f"graph input '{v.name}'")
    cg.touched.clear()
    for node in graph.nodes:
        fn = rule_for(node)
        if node.meta.get("folded"):
            cg.touched.clear()
            continue  # a constant computed from constants: independent of its source
        if fn is None or node.subgraphs:
            if fn is None:
                cg.unsupported.append(node)
            why = "has no coupling rule" if fn is None else "has subgraphs"
            kind = "no-rule" if fn is None else "subgraph"
            for v in (*node.inputs, *node.outputs):
                cg.lock_value(v, kind, f"{node.op_type} '{node.name}' {why}", node)
        else:
            fn(node, cg)
        cg.lock_untouched(node)
        for v in node.meta.get("captured", ()):
            cg.lock_value(
                v, "subgraph", f"used inside a subgraph of {node.op_type} '{node.name}'", node
            )
    _tie_shared_weights(graph, cg)
    for v in graph.outputs:
        cg.lock_value(v, "graph-output", f"graph output '{v.name}'")
    return cg


_LAYER_OPS = frozenset(["Conv", "ConvTranspose", "Gemm", "MatMul"])


def _tie_shared_weights(graph: Graph, cg: ChannelGraph) -> None:
    """A layer applied several times reads one weight tensor from several nodes
    (torchvision's FCOS/RetinaNet run one conv tower over every pyramid level); the frontend
    gives each use a value of its own. Their axes are tied, so every use prunes the same
    channels and the compact model keeps one tensor (cut apart, each copy would be a tensor
    of its own: a head shared by five levels compacts to more than the dense model). Only
    layer weights (input 1 of the same op, same shape): biases and norm constants that an
    exporter or onnxsim shares because they are equal (a zero bias read by 36 convs) stay
    apart."""
    copies: dict[tuple, list[tuple[Value, Node]]] = {}
    for v in graph.values.values():
        if len(v.uses) != 1 or v.shape is None or not v.is_const:
            continue
        node, index = v.uses[0]
        if index == 1 and node.op_type in _LAYER_OPS:
            copies.setdefault((v.storage, node.op_type, v.shape), []).append((v, node))
    for uses in copies.values():
        first = uses[0][0]
        for v, node in uses[1:]:
            for axis in range(len(v.shape)):  # type: ignore[arg-type]
                cg.identity(cg.space(first, axis), cg.space(v, axis), node)
