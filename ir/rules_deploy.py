"""Coupling rules of ops that deployment exports carry (registered into ``ir.rules.RULES``
on import; ``ir/rules_compact.py`` imports this).

``QuantizeLinear`` and ``DequantizeLinear`` (QDQ models, as onnxruntime's ``quantize_static``
writes them):
- per-tensor (a scalar scale and zero point): an elementwise op, every axis passes through;
- per-axis (a 1-D scale and zero point as long as ``axis``): the scale and zero point follow
  the channels of that axis. A ``DequantizeLinear`` of a constant int8 weight is that
  weight to the layer reading it (``ir/solve.py`` passes the layer's roles back to the int8
  tensor, as through a layout op): ``compact`` cuts the int8 weight, its scale and its zero
  point together; ``apply-masks`` zeroes the scale too, so the masked weight dequantizes to
  exact zeros whatever its zero point;
- blocked quantization (opset 21 ``block_size``) and any other parameter shape lock the
  node's axes, naming it.

``DeformConv`` (opset 19): channels as through a Conv; its offsets and mask lock.

onnxruntime's fused GELUs (com.microsoft ``Gelu``, ``QuickGelu``, ``FastGelu``, ``BiasGelu``,
as its transformers optimizer writes them): elementwise; a bias over the last axis follows
it. Its other fused ops (``Attention``, ``SkipLayerNormalization``, ...) have no rule: they
lock what they read and write, naming the node.
"""

from __future__ import annotations

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node
from drpopt.ir.rules import lock_axis, rule, same_axes


@rule("QuantizeLinear", "DequantizeLinear")
def _quantize_linear(node: Node, cg: ChannelGraph) -> None:
    x, scale, y = node.input(0), node.input(1), node.outputs[0]
    if x is None or x.rank is None or y.rank is None or scale is None or scale.shape is None:
        for v in (x, y):
            cg.lock_value(v, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    params = [p for p in node.inputs[1:3] if p is not None]
    if all(p.numel == 1 for p in params):  # per-tensor: no parameter has a channel
        same_axes(cg, node, x, y)
        return
    axis = int(node.attr("axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    per_axis = (
        not node.attr("block_size", 0)
        and 0 <= axis < x.rank
        and all(p.rank == 1 and p.shape == (x.dim(axis),) for p in params)
    )
    if not per_axis:
        why = "has blocked or unknown quantization parameters"
        lock_axis(cg, node, [x, y], range(x.rank), why)
        for p in params:
            cg.lock_value(p, "rule", f"{node.op_type} '{node.name}' {why}", node)
        return
    same_axes(cg, node, x, y)
    channels = cg.space(x, axis)
    for p in params:
        cg.identity(cg.space(p, 0), channels, node)
        cg.role(cg.space(p, 0), "follower", node)


@rule("DeformConv")
def _deform_conv(node: Node, cg: ChannelGraph) -> None:
    """DeformConv (opset 19; DCNv2 as mmdeploy exports it): with one group, channels map as
    through a Conv (output rows produce, input columns read, the bias, input 3, follows).
    The offsets and the modulation mask are per kernel tap and offset group, not per
    channel: their channel axes lock (the convs computing them keep their outputs).
    Grouped: every channel axis locks."""
    x, w, offset, b, mask = (node.input(i) for i in range(5))
    y = node.outputs[0]
    values = [v for v in (x, w, offset, mask, y) if v is not None]
    if any(v.rank is None for v in values) or x is None or w is None:
        for v in values:
            cg.lock_value(v, "rule", f"DeformConv '{node.name}': rank unknown", node)
        return
    lock_axis(cg, node, [offset, mask], [1], "reads offsets and masks per kernel tap")
    if int(node.attr("group", 1)) != 1:
        lock_axis(cg, node, [x, w, y], [0, 1], "is grouped")
        return
    out_channels, rows = cg.space(y, 1), cg.space(w, 0)
    cg.identity(out_channels, rows, node)
    cg.role(rows, "producer", node)
    if b is not None:
        cg.identity(cg.space(b, 0), out_channels, node)
        cg.role(cg.space(b, 0), "follower", node)
    for v in (offset, mask, y):
        if v is not None:
            cg.identity(cg.space(x, 0), cg.space(v, 0), node)
    columns = cg.space(w, 1)
    cg.identity(cg.space(x, 1), columns, node)
    cg.role(columns, "consumer", node)


@rule(*(f"com.microsoft::{op}" for op in ("Gelu", "QuickGelu", "FastGelu", "BiasGelu")))
def _fused_gelu(node: Node, cg: ChannelGraph) -> None:
    x, bias, y = node.input(0), node.input(1), node.outputs[0]
    same_axes(cg, node, x, y)
    if bias is None or x is None or x.rank is None:
        return
    if bias.rank == 1 and bias.shape == x.shape[-1:]:  # type: ignore[index]
        cg.identity(cg.space(bias, 0), cg.space(x, x.rank - 1), node)
        cg.role(cg.space(bias, 0), "follower", node)
    else:
        lock_axis(cg, node, [x, y], [x.rank - 1], "adds a bias of another shape")
        cg.lock_value(bias, "rule", f"{node.op_type} '{node.name}': bias not 1-D", node)
