"""Coupling rules of the ops that compute: activations (casts: ``ir/rules_cast.py``),
elementwise ops, normalisations, reductions, softmax, and the weighted layers (Conv,
ConvTranspose, Gemm, MatMul). Registered into ``ir.rules.RULES`` on import (``ir/rules.py``
imports this)."""

from __future__ import annotations

import math

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node, Value
from drpopt.ir.patterns import grn_statistic, layernorm_statistic, match_groupnorm_one
from drpopt.ir.rules import (
    ELEMENTWISE_OPS,
    NO_DATA_OPS,
    POOL_OPS,
    REDUCE_OPS,
    SUM_LIKE,
    UNARY_OPS,
    batch_statistics,
    broadcast,
    lock_axis,
    node_opset,
    reduce_axes,
    rule,
    same_axes,
)
from drpopt.ir.shape_expr import (
    Dim,
    const_ints,
    shape_entries,
)
from drpopt.ir.solve import weight_like


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


@rule(*ELEMENTWISE_OPS)
def _elementwise(node: Node, cg: ChannelGraph) -> None:
    broadcast(cg, node, node.inputs, node.outputs[0])
    if node.op_type == "PRelu":
        slope = node.input(1)
        if slope is not None and slope.is_const and slope.rank:
            for ax in range(slope.rank):
                cg.role(cg.space(slope, ax), "follower", node)
    elif node.op_type in ("Add", "Sub"):
        # a per-channel constant added after a producer (a bias, RTMPose's GAU offset
        # ``base * gamma + beta``) keeps a pruned channel alive: zeroed with it, as a
        # bias is, where no consumer weight cuts the channel off (``q @ k^T`` of two
        # activations sums the products of both offsets)
        for c in node.inputs:
            if c is not None and c.is_const and c.rank and c.shape is not None:
                for ax in range(c.rank):
                    if c.shape[ax] != 1:
                        cg.role(cg.space(c, ax), "follower", node)


@rule("Expand")
def _expand(node: Node, cg: ChannelGraph) -> None:
    """Input axes broadcast to the output's. An output axis the input only repeats (size 1
    or absent there) takes its size from the shape input: where that entry is the size of
    another tensor's axis (``expand_as(x)``: ``Shape(x)``, F.normalize's norm expanded to
    ``x``) the two axes are one space, so they prune together and the computed shape
    follows; a size in a constant shape is free (``compact`` rewrites it); any other size
    stays locked (the central default lock)."""
    x, y = node.input(0), node.outputs[0]
    broadcast(cg, node, [x], y)
    if x is None or x.shape is None or y.shape is None:
        return
    entries = shape_entries(node.input(1), cg.shape_memo)
    off = len(y.shape) - len(x.shape)
    if entries is None or len(entries) > len(y.shape):
        return
    at = len(y.shape) - len(entries)
    for k, dim in enumerate(y.shape):
        if dim == 1 or (k >= off and x.shape[k - off] != 1) or k < at:
            continue
        entry = entries[k - at]
        if isinstance(entry, Dim) and entry.value.shape is not None:
            if entry.value.shape[entry.axis] == dim:
                cg.identity(cg.space(y, k), cg.space(entry.value, entry.axis), node)
        elif isinstance(entry, int) and node.input(1).is_const:
            # (a literal inside a computed shape would not be rewritten: it stays locked)
            cg.independent(y, [k])


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
        _depth_space(node, cg)
        return
    for y in node.outputs:
        same_axes(cg, node, node.input(0), y)


def _depth_space(node: Node, cg: ChannelGraph) -> None:
    """DepthToSpace / SpaceToDepth (PixelShuffle, EDSR's and NAFNet's upsampling) map the
    channels of the narrow side to blocks of the wide side: DepthToSpace ``CRD`` reads
    channel ``c`` from ``c * b * b + k`` (an expansion with blocks of ``b * b``); ``DCR`` and
    SpaceToDepth from ``k * C + c`` (``b * b`` repeats of the channels). Pruning channel
    ``c`` of the narrow side removes its whole block or every repeat, so the op stays what
    it was. The spatial axes change size (locked)."""
    x, y = node.input(0), node.outputs[0]
    b = node.attr("blocksize")
    depth_to_space = node.op_type == "DepthToSpace"
    wide, narrow = (x, y) if depth_to_space else (y, x)
    known = (
        x is not None
        and x.shape is not None
        and y.shape is not None
        and len(x.shape) == len(y.shape) == 4
        and isinstance(b, int)
        and isinstance(narrow.shape[1], int)
    )
    if not known:
        lock_axis(cg, node, [x, y], [1], "moves pixels into channels (shapes unknown)")
        same_axes(cg, node, x, y)
        return
    same_axes(cg, node, x, y, axes=[0, 2, 3])
    big, small = cg.space(wide, 1), cg.space(narrow, 1)
    if depth_to_space and node.attr("mode", "DCR") == "CRD":
        cg.expand(big, small, b * b, node)
        return
    parts = [cg.virtual(f"{node.name}.repeat{r}", narrow.shape[1]) for r in range(b * b)]
    cg.concat(big, parts, node)  # type: ignore[arg-type]
    for part in parts:
        cg.identity(part, small, node)


@rule("BatchNormalization", "InstanceNormalization")
def _norm(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None or x.rank < 2:
        return
    if node.op_type == "InstanceNormalization":  # statistics over every axis after 1, which
        # carry channels behind a reshape (GroupNorm(1, C): Reshape(N, 1, -1) before it)
        gn = None if "torch_path" in cg.graph.meta else match_groupnorm_one(node, cg.graph)
        if gn is None:
            lock_axis(cg, node, [x, y], range(2, x.rank), "normalises over this axis")
        else:  # matched as a whole: apply-masks gives it the masked form (ir/rules_norm.py)
            lock_axis(cg, node, [gn.x], range(2, gn.x.rank), "normalises over this axis")
    elif batch_statistics(node, cg.graph):  # of this batch, over every axis but 1
        # (NF-ResNet's ScaledStdConv2d: the weight's rows over its merged input channels)
        axes = [0, *range(2, x.rank)]
        lock_axis(cg, node, [x, y], axes, "normalises over this axis (training mode)")
    channels = cg.space(x, 1)
    for p in node.inputs[1:]:
        if p is not None and p.rank == 1:
            param = cg.space(p, 0)
            cg.identity(param, channels, node)
            cg.role(param, "follower", node)
    for stat in node.outputs[1:]:
        if stat.rank == 1:
            cg.identity(cg.space(stat, 0), channels, node)


@rule("GridSample")
def _grid_sample(node: Node, cg: ChannelGraph) -> None:
    """``Y[n, c, ...] = X[n, c]`` sampled at ``grid[n, ...]``: the batch of X, grid and Y
    is one axis (deformable attention folds its heads into it), X's channels are Y's, the
    grid's output positions are Y's; X's spatial axes are read at computed points and the
    grid's last axis holds the coordinates (both locked)."""
    x, grid, y = node.input(0), node.input(1), node.outputs[0]
    if x is None or grid is None or x.rank is None or grid.rank is None or y.rank is None:
        for v in (x, grid, y):
            cg.lock_value(v, "rule", f"GridSample '{node.name}': rank unknown", node)
        return
    cg.identity(cg.space(x, 0), cg.space(y, 0), node)
    cg.identity(cg.space(grid, 0), cg.space(y, 0), node)
    cg.identity(cg.space(x, 1), cg.space(y, 1), node)
    for ax in range(2, y.rank):
        cg.identity(cg.space(grid, ax - 1), cg.space(y, ax), node)
    lock_axis(cg, node, [x], range(2, x.rank), "samples this axis at computed points")
    lock_axis(cg, node, [grid], [grid.rank - 1], "holds the sampling coordinates")


@rule("Col2Im")
def _col2im(node: Node, cg: ChannelGraph) -> None:
    """``F.fold`` (MobileViT-v2 folds its patches back): input ``(N, C * prod(block), L)``,
    output ``(N, C, *image)``; channel ``c`` is rows ``[c * prod(block), ...)`` of the input
    (an expansion by the block's size), the batch is one axis; the columns ``L`` are summed
    into the image positions (locked, as the image's axes)."""
    x, y, block = node.input(0), node.outputs[0], const_ints(node.input(2))
    if x is None or x.rank != 3 or y.rank is None or block is None:
        for v in (x, y):
            cg.lock_value(v, "rule", f"Col2Im '{node.name}': shapes or block unknown", node)
        return
    cg.identity(cg.space(x, 0), cg.space(y, 0), node)
    cg.expand(cg.space(x, 1), cg.space(y, 1), math.prod(block), node)
    lock_axis(cg, node, [x], [2], "sums these columns into image positions")
    lock_axis(cg, node, [y], range(2, y.rank), "places the columns on these axes")


@rule("GroupNormalization", "LRN", "MeanVarianceNormalization")
def channel_mixing_norm(node: Node, cg: ChannelGraph) -> None:
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
    counts_all = "torch_path" in cg.graph.meta and not (
        params and params[0].name in cg.graph.meta.get("masked_norms", ())
    )  # a torch LayerNorm, unless its module counts only kept channels (retrain/masked_norm)
    if axis == x.rank - 1 and per_channel and not stats_used and not counts_all:
        channels = cg.space(x, axis)
        for p in params:
            cg.identity(cg.space(p, 0), channels, node)
            cg.role(cg.space(p, 0), "follower", node)
        return
    broadcast(cg, node, params, y)
    lock_axis(cg, node, [x, y], range(axis, x.rank), "normalises over these axes")


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None:
        return
    axis = node.attr("axis", -1 if node_opset(node, cg.graph) >= 13 else 1) % x.rank
    axes = [axis] if node_opset(node, cg.graph) >= 13 else range(axis, x.rank)
    lock_axis(cg, node, [x, y], axes, "normalises over this axis")


# reductions with a masked form over pruned channels (``ir/rules_reduce.py``)
MASKED_REDUCTIONS = SUM_LIKE | {"ReduceMean", "ReduceMax", "ReduceMin"}
# why the others lock the axes they reduce
_REDUCE_LOCKS = {
    "ArgMax": "returns an index along this axis (pruning renumbers it)",
    "ArgMin": "returns an index along this axis (pruning renumbers it)",
    "ReduceProd": "reduces over this axis (no masked form: a product needs the pruned at 1)",
    "ReduceLogSumExp": "reduces over this axis (no masked form: exp(0) of a pruned one adds 1)",
}


@rule(*REDUCE_OPS, "TopK", "CumSum")
def _reduce(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    if x is None or x.rank is None or y.rank is None:
        cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    if node.op_type == "ReduceMean" and _masked_statistic(node, cg):
        return
    if node.op_type in ("ArgMax", "ArgMin", "TopK", "CumSum"):
        axis = node.attr("axis", -1 if node.op_type in ("TopK",) else 0)
        if node.op_type == "CumSum":
            axis = (const_ints(node.input(1)) or [0])[0]
        axes = [axis % x.rank]
    else:
        axes = reduce_axes(node)
        if axes is None:
            cg.lock_value(x, "rule", f"{node.op_type} '{node.name}' has computed axes", node)
            cg.lock_value(y, "rule", f"{node.op_type} '{node.name}' has computed axes", node)
            return
    if node.op_type in MASKED_REDUCTIONS and "torch_path" not in cg.graph.meta:
        # apply-masks makes a sum, mean, max or min over channels one over the kept ones
        # (``ir/rules_reduce.py``): the reduced axes neither couple nor lock here
        cg.independent(x, axes)
    else:
        lock_axis(cg, node, [x], axes, _REDUCE_LOCKS.get(node.op_type, "reduces over this axis"))
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


def _masked_statistic(node: Node, cg: ChannelGraph) -> bool:
    """A mean or variance of a LayerNorm written out in plain ops (opset < 17 exports, or
    ConvNeXt's channels-first one over axis 1), or GRN's mean over the channels: matched as
    a whole (``ir/patterns.py``), its channel axis can be pruned (``apply-masks`` gives it
    the masked form that counts only the kept channels), so the reduction neither couples
    nor locks it."""
    if "torch_path" in cg.graph.meta:
        return False
    ln = layernorm_statistic(node, cg.graph)
    axis = ln.axis if ln is not None else grn_statistic(node, cg.graph)
    if axis is None:
        return False
    x, y = node.input(0), node.outputs[0]
    spatial = list(ln.spatial) if ln is not None else []
    cg.independent(x, [axis])
    lock_axis(cg, node, [x], spatial, "normalises over this axis")
    reduced = [axis, *spatial]
    keep = node.attr("keepdims", 1)  # 0: the dynamo exporter's variance (a Reshape follows)
    for ax in range(x.rank):  # type: ignore[arg-type]
        if ax not in reduced:
            j = ax if keep else ax - sum(a < ax for a in reduced)
            cg.identity(cg.space(x, ax), cg.space(y, j), node)
    return True


@rule("Conv")
def _conv(node: Node, cg: ChannelGraph) -> None:
    x, w, b, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    if x is None or w is None or x.rank is None or w.rank is None or y.rank is None:
        for v in (x, w, y):
            cg.lock_value(v, "rule", f"Conv '{node.name}': rank unknown", node)
        return
    groups = int(node.attrs.get("group", 1))
    space = cg.space  # each space asked for once, in the order the relations name them
    out_channels, rows = space(y, 1), space(w, 0)
    cg.identity(out_channels, rows, node)
    cg.role(rows, "producer", node)
    if b is not None:
        bias = space(b, 0)
        cg.identity(bias, out_channels, node)
        cg.role(bias, "follower", node)
    cg.identity(space(x, 0), space(y, 0), node)
    if groups == 1:
        in_channels, columns = space(x, 1), space(w, 1)
        cg.identity(in_channels, columns, node)
        cg.role(columns, "consumer", node)
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
    if weight_like(b):
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
    if weight_like(b):
        cg.role(cg.space(b, -1), "producer", node)
        cg.role(cg.space(b, -2), "consumer", node)
    elif weight_like(a):  # W @ x, the constant on the left: its rows produce, columns read
        # (found by tests/ir/test_properties_ops.py: the columns were a plain 'param')
        cg.role(cg.space(a, -2), "producer", node)
        cg.role(cg.space(a, -1), "consumer", node)
