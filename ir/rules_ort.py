"""Coupling rules and shapes of the ops onnxruntime's own graph optimizer writes into a model
it saves (``SessionOptions.optimized_model_filepath``), registered into ``ir.rules.RULES`` on
import (``ir/rules_deploy.py`` imports this).

- ``ORT_ENABLE_BASIC``: standard ops only (BatchNormalization folded into its conv, constants
  folded): the ordinary rules apply.
- ``ORT_ENABLE_EXTENDED``: com.microsoft fusions. ``FusedConv`` (a Conv, its activation in
  the ``activation`` attribute, optionally plus a fourth input ``Z`` added before the
  activation) couples and compacts like a Conv (``Z`` passes every axis, like the Add it
  was); ``FusedGemm`` like a Gemm (its activation elementwise); ``FusedMatMul`` like a
  MatMul with its ``transA``/``transB`` (the scalar ``alpha`` touches no channel), and
  locks, naming the node, where ``transBatchA``/``transBatchB`` move a batch axis. The fused
  GELUs are in ``ir/rules_deploy.py``. ``SkipLayerNormalization`` (``S = input + skip +
  bias``, output 3; ``Y = LayerNorm(S)``) over its last axis: that axis is a channel axis
  (gamma, beta, bias follow); ``apply-masks`` writes it as ``Add`` nodes and the masked
  LayerNormalization of ``ir/rules_norm.py`` (statistics over the kept channels), which
  ``compact`` turns into a plain LayerNormalization, so sparse equals compact. A broadcast
  skip or read statistics (outputs 1, 2) lock that axis, naming the node.
- ``ORT_ENABLE_ALL`` on x86 adds the NCHWc layout (domain ``com.microsoft.nchwc``): its
  ``Conv``/pooling/``Upsample`` read and write channels padded and interleaved in blocks of
  8 or 16 (the CPU's vector width, chosen when the session was made), their weights stored
  already reordered to that block layout, ``ReorderInput``/``ReorderOutput`` converting at the
  borders. Which weight element is which channel depends on the machine that saved the
  model, and compacting would have to re-block weights and pad channel counts: every axis of
  every NCHWc node locks, naming the node and the remedy (save at ``ORT_ENABLE_EXTENDED``);
  the rest of the graph (a transformer's MLP between the reorders) prunes as usual (the
  shapes of all these ops are in ``ir/ort_shapes.py``).
  ``NCHWC_REASON`` is that reason; ``nchwc_nodes`` finds such nodes (the CLI warns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node
from drpopt.ir.ort_shapes import FUSED_LAYERS, ORT_SHAPES
from drpopt.ir.rules import RULES, OpRule, follow_members, lock_axis, rule, same_axes
from drpopt.ir.solve import weight_like

if TYPE_CHECKING:
    from drpopt.ir.rules_compact import KeptChannels

NCHWC_DOMAIN = "com.microsoft.nchwc"
NCHWC_REASON = (
    "is in onnxruntime's NCHWc blocked layout (saved at ORT_ENABLE_ALL: channels padded and "
    "interleaved per CPU vector width); save the model at ORT_ENABLE_EXTENDED to prune it"
)


def nchwc_nodes(graph: Graph) -> list[Node]:
    """The nodes of onnxruntime's NCHWc layout (``com.microsoft.nchwc`` domain)."""
    return [n for n in graph.nodes if n.domain == NCHWC_DOMAIN]


def _fused_layer(node: Node, cg: ChannelGraph) -> None:
    """FusedConv / FusedGemm: the layer's rule; ``Z`` (FusedConv input 3) has the output's
    shape and passes every axis to it."""
    RULES[FUSED_LAYERS[node.op_type]].couple(node, cg)
    z, y = node.input(3), node.outputs[0]
    if node.op_type == "FusedConv" and z is not None:
        same_axes(cg, node, z, y)


def _compact_fused_layer(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """The layer's own compaction (looked up when called: ``rules_compact`` sets the
    Conv's after this module is imported)."""
    hook = RULES[FUSED_LAYERS[node.op_type]].compact
    if hook is not None:
        hook(graph, node, kept)


for _op in FUSED_LAYERS:
    RULES[f"com.microsoft::{_op}"] = OpRule(_fused_layer, compact=_compact_fused_layer)


@rule("com.microsoft::FusedMatMul")
def _fused_matmul(node: Node, cg: ChannelGraph) -> None:
    """``alpha * op(A) @ op(B)``, ``op`` transposing the last two axes where ``transA`` /
    ``transB`` say: the MatMul relations on the axes so chosen."""
    a, b, y = node.input(0), node.input(1), node.outputs[0]
    plain = (
        a is not None
        and b is not None
        and y.rank is not None
        and (a.rank or 0) >= 2
        and (b.rank or 0) >= 2
        and not node.attr("transBatchA", 0)
        and not node.attr("transBatchB", 0)
    )
    if not plain:
        for v in (a, b, y):
            if v is not None and v.rank is not None:
                lock_axis(cg, node, [v], range(v.rank), "has batch transposes or 1-D operands")
        if b is not None and b.rank and weight_like(b):  # a locked group names the node
            cg.role(cg.space(b, 0 if node.attr("transB", 0) else -1), "producer", node)
        return
    assert a is not None and b is not None and y.rank is not None
    am, ak = (-1, -2) if node.attr("transA", 0) else (-2, -1)
    bk, bn = (-1, -2) if node.attr("transB", 0) else (-2, -1)
    cg.identity(cg.space(a, ak), cg.space(b, bk), node)
    cg.identity(cg.space(y, -2), cg.space(a, am), node)
    cg.identity(cg.space(y, -1), cg.space(b, bn), node)
    for x in (a, b):  # batch dims broadcast against the output's
        off = y.rank - x.rank  # type: ignore[operator]
        for ax in range(x.rank - 2):  # type: ignore[operator]
            if x.shape[ax] != 1:  # type: ignore[index]
                cg.identity(cg.space(x, ax), cg.space(y, off + ax), node)
    if weight_like(b):
        cg.role(cg.space(b, bn), "producer", node)
        cg.role(cg.space(b, bk), "consumer", node)
    elif weight_like(a):
        cg.role(cg.space(a, am), "producer", node)
        cg.role(cg.space(a, ak), "consumer", node)


@rule(*(f"{domain}::{op}" for domain, op in ORT_SHAPES if domain == NCHWC_DOMAIN))
def _nchwc(node: Node, cg: ChannelGraph) -> None:
    """Locks every axis; a Conv's weight rows are still its output channels' producer, so
    the analysis lists them as a locked group with this reason (not in no group at all)."""
    for v in (*node.inputs, *node.outputs):
        cg.lock_value(v, "rule", f"{node.op_type} '{node.name}' {NCHWC_REASON}", node)
    w = node.input(1)
    if node.op_type == "Conv" and w is not None and w.is_const and w.rank:
        cg.role(cg.space(w, 0), "producer", node)


# ---- SkipLayerNormalization ---------------------------------------------------------------
def _skip_layer_norm(node: Node, cg: ChannelGraph) -> None:
    """com.microsoft SkipLayerNormalization: ``S = input + skip (+ bias)`` (output 3), ``Y =
    LayerNorm(S) * gamma + beta`` over the last axis. With ``skip`` of the input's shape,
    1-D constant parameters and its statistics (outputs 1, 2) unread, the last axis is a
    channel axis (gamma, beta, bias follow; ``apply-masks`` writes the masked form, so the
    statistics count the kept channels only); otherwise that axis locks, naming the node."""
    x, skip, y = node.input(0), node.input(1), node.outputs[0]
    total = node.outputs[3] if len(node.outputs) > 3 and node.outputs[3].name else None
    if x is None or x.rank is None:
        for v in (x, skip, y):
            cg.lock_value(v, "rule", f"SkipLayerNormalization '{node.name}': rank unknown", node)
        return
    same_axes(cg, node, x, y)
    same_axes(cg, node, skip, x)
    if total is not None:
        same_axes(cg, node, x, total)
    params = [p for p in node.inputs[2:5] if p is not None]
    stats_used = any(o.name and (o.uses or o in cg.graph.outputs) for o in node.outputs[1:3])
    plain = (
        skip is not None
        and skip.shape == x.shape
        and all(p.rank == 1 and p.is_const for p in params)
        and not stats_used
        and (total is None or total not in cg.graph.outputs)
    )
    if plain:
        channels = cg.space(x, x.rank - 1)
        for p in params:
            cg.identity(cg.space(p, 0), channels, node)
            cg.role(cg.space(p, 0), "follower", node)
        return
    why = "normalises over this axis (a broadcast skip or its statistics read)"
    lock_axis(cg, node, [v for v in (x, skip, y, total) if v is not None], [x.rank - 1], why)
    for p in params:
        cg.lock_value(p, "rule", f"SkipLayerNormalization '{node.name}' {why}", node)


def sparse_skip_layer_norm(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """With masked channels: ``Add(input, skip)`` (and the bias), writing output 3, then the
    masked LayerNormalization of ``ir/rules_norm.py`` (whose ``finish`` makes it a plain
    LayerNormalization once ``compact`` has cut the channels)."""
    from drpopt.ir.rules_norm import mask_layernorm  # (rules_norm imports this module)

    x, skip = node.input(0), node.input(1)
    keep = kept.mask(x, -1) if x is not None and x.rank is not None else None
    if keep is None or keep.all() or skip is None:
        return False
    total = node.outputs[3] if len(node.outputs) > 3 and node.outputs[3].name else None
    if total is not None:
        # the last Add writes output 3's own value: a later SkipLayerNormalization reading
        # it (a pre-LN residual stream) finds its kept channels by it
        node.outputs = node.outputs[:1]
    parts = [skip, node.input(4)] if node.input(4) is not None else [skip]
    s = x
    for i, part in enumerate(parts):
        out = total if total is not None and i == len(parts) - 1 else None
        if out is None:
            name = graph.fresh_name(f"{node.name}.sum{i}")
            out = graph.value(name, shape=x.shape, dtype=x.dtype)
        graph.add_node(
            "Add", graph.fresh_name(f"{node.name}.Add{i}"), [s, part], [out], before=node
        )
        s = out
    gamma, beta = node.input(2), node.input(3)
    for i in range(len(node.inputs)):
        graph.set_input(node, i, None)
    node.inputs = []
    for i, v in enumerate((s, gamma, beta)):
        graph.set_input(node, i, v)
    node.inputs = node.inputs[:3] if beta is not None else node.inputs[:2]
    mask_layernorm(graph, node, keep)
    return True


RULES["com.microsoft::SkipLayerNormalization"] = OpRule(
    _skip_layer_norm, compact=follow_members, sparse=sparse_skip_layer_norm
)
