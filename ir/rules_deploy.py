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

``Attention`` (opset 23) on 3-D inputs, without a mask, a cache or grouped key/value heads:
whole heads prune (Q, K, V and the output together); ``compact`` sets ``q_num_heads`` and
``kv_num_heads`` to the heads kept. Any other form locks its axes, naming the node.
``RotaryEmbedding`` (opset 23) on 3-D input with ``num_heads``: whole heads prune (its
cos/sin caches are per position); on 4-D input the heads axis passes through.

onnxruntime's fused GELUs (com.microsoft ``Gelu``, ``QuickGelu``, ``FastGelu``, ``BiasGelu``,
as its transformers optimizer writes them): elementwise; a bias over the last axis follows
it. Its other fused ops (``Attention``, ``EmbedLayerNormalization``, ...) have no rule: they
lock what they read and write, naming the node. ``SkipLayerNormalization`` and the fusions
of onnxruntime's graph optimizer (``FusedConv``, ``FusedGemm``, ``FusedMatMul``, the NCHWc
layout) are in ``ir/rules_ort.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from drpopt.ir import rules_ort  # noqa: F401  (registers onnxruntime's fused layers, NCHWc)
from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node
from drpopt.ir.rules import RULES, lock_axis, rule, same_axes

if TYPE_CHECKING:  # rules_compact imports this module to register its rules
    from drpopt.ir.rules_compact import KeptChannels


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


@rule("Attention")
def _attention(node: Node, cg: ChannelGraph) -> None:
    q, k, v, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    heads, kv_heads = node.attr("q_num_heads"), node.attr("kv_num_heads")
    values = [x for x in (q, k, v, y) if x is not None]
    simple = (
        len(values) == 4
        and all(x.rank == 3 and isinstance(x.dim(2), int) for x in values)
        and len([i for i in node.inputs if i is not None]) == 3
        and len([o for o in node.outputs if o is not None and o.uses]) <= 1
        and isinstance(heads, int)
        and heads == kv_heads
        and not node.attr("qk_matmul_output_mode", 0)
    )
    if not simple:
        for x in node.inputs + node.outputs:
            if x is not None and x.rank is not None:
                lock_axis(cg, node, [x], range(x.rank), "is not a plain 3-D attention")
        return
    units = cg.virtual(f"{node.name}.heads", heads)
    cg.role(units, "structure", node, attr="q_num_heads")
    for x in (q, k, v, y):
        cg.expand(cg.space(x, 2), units, x.dim(2) // heads, node)  # type: ignore[operator]
    for x in (k, v, y):
        cg.identity(cg.space(q, 0), cg.space(x, 0), node)
    cg.identity(cg.space(q, 1), cg.space(y, 1), node)
    cg.identity(cg.space(k, 1), cg.space(v, 1), node)


def compact_attention(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """``q_num_heads`` and ``kv_num_heads`` become the count of heads kept."""
    mask = kept.virtual(f"{node.name}.heads")
    if mask is not None:
        node.attrs["q_num_heads"] = node.attrs["kv_num_heads"] = int(mask.sum())


RULES["Attention"] = replace(RULES["Attention"], compact=compact_attention)


@rule("RotaryEmbedding")
def _rotary_embedding(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    heads = node.attr("num_heads")
    if x is None or x.rank not in (3, 4) or y.rank != x.rank:
        for v in (x, y):
            cg.lock_value(v, "rule", f"RotaryEmbedding '{node.name}': rank unknown", node)
        return
    for caches in node.inputs[1:]:
        cg.independent(caches)  # per position, whatever the heads
    same_axes(cg, node, x, y, axes=range(2))
    if x.rank == 4:  # (batch, heads, sequence, head size): the rotated pairs lie in axis 3
        same_axes(cg, node, x, y, axes=[2])
        lock_axis(cg, node, [x, y], [3], "rotates pairs of this axis")
        return
    if not isinstance(heads, int) or not heads or not isinstance(x.dim(2), int):
        lock_axis(cg, node, [x, y], [2], "rotates pairs of this axis (heads unknown)")
        return
    units = cg.virtual(f"{node.name}.heads", heads)
    cg.role(units, "structure", node, attr="num_heads")
    for v in (x, y):
        cg.expand(cg.space(v, 2), units, x.dim(2) // heads, node)  # type: ignore[operator]


def compact_rotary_embedding(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """``num_heads`` becomes the count of heads kept."""
    mask = kept.virtual(f"{node.name}.heads")
    if mask is not None:
        node.attrs["num_heads"] = int(mask.sum())


RULES["RotaryEmbedding"] = replace(RULES["RotaryEmbedding"], compact=compact_rotary_embedding)
