"""Sum-like reductions over pruned channels (``ReduceSum``, ``ReduceL1``, ``ReduceL2``,
``ReduceSumSquare``: RTMPose's ScaleNorm ``x / ||x||_2``, ``F.normalize`` over channels,
a channel sum).

Such a reduction over the kept channels is its value over every channel once the pruned
ones are zero: ``sum``, ``|.|``, ``(.)**2`` all vanish at 0. The coupling rule
(``rules_layers._reduce``) therefore declares the reduced axes independent (neither coupled
nor locked) in ONNX models. What makes the pruned channels zero *at the reduction* is not
left to the producers (a Sigmoid, an Exp, a constant added after the producer would make
them nonzero; the dead-channel check scrambles them): where channels of a reduced axis are
masked, ``apply-masks`` (the ``sparse`` hook here) multiplies the reduction's input by the
keep-mask, as ``drpopt.ChannelMask(X, Mask)``, a model-local function ``Y = X * Mask``. So
the sparse model sums exactly the channels the compact one keeps, whatever feeds it.
``Mask`` follows the channels (a ``follower``: zeroed by ``apply-masks``, cut by
``compact``); ``compact`` drops a ``ChannelMask`` whose mask keeps everything (``finish``),
so the compact model has the plain reduction. A mean over channels outside a matched
normalisation, ``ReduceMax``/``ReduceMin``, ``ReduceProd`` and ``ReduceLogSumExp`` keep
their lock; so do all reductions of a torch model (its forward sums what its masked layers
leave, not provably zero).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node
from drpopt.ir.norm_forms import DOMAIN, channel_shaped, const_value, dtype_of, ensure_function
from drpopt.ir.rules import RULES, SUM_LIKE, broadcast, reduce_axes, rule
from drpopt.ir.rules_compact import KeptChannels

MASK_OP = "ChannelMask"


def mask_function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.ChannelMask``: ``Y = X * Mask``."""
    return helper.make_function(
        DOMAIN,
        MASK_OP,
        ["X", "Mask"],
        ["Y"],
        [helper.make_node("Mul", ["X", "Mask"], ["Y"])],
        [helper.make_opsetid("", opset)],
    )


def sparse_channel_sum(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of the sum-like reductions: where a reduced axis of the input
    has masked channels, the input is multiplied by the keep-mask first (every masked
    reduced axis: the mask is their outer product, shaped to broadcast against ``X``)."""
    x = node.input(0)
    axes = reduce_axes(node) if node.op_type in SUM_LIKE else None
    if x is None or x.rank is None or not axes:
        return False
    mask = None
    for ax in axes:
        keep = kept.mask(x, ax)
        if keep is not None and not keep.all():
            m = channel_shaped(keep, ax, x.rank, dtype_of(x))
            mask = m if mask is None else mask * m
    if mask is None:
        return False
    masked = graph.value(graph.fresh_name(f"{x.name}.masked"), shape=x.shape, dtype=x.dtype)
    graph.add_node(
        MASK_OP,
        graph.fresh_name(f"{node.name}.ChannelMask"),
        [x, const_value(graph, f"{node.name}.mask", mask)],
        [masked],
        domain=DOMAIN,
        before=node,
    )
    graph.set_input(node, 0, masked)
    ensure_function(graph, MASK_OP, mask_function_proto)
    return True


@rule(f"{DOMAIN}::{MASK_OP}")
def _couple_channel_mask(node: Node, cg: ChannelGraph) -> None:
    """``X * Mask``: broadcast like a Mul; the mask's channel axes follow ``X``'s."""
    x, mask, y = node.input(0), node.input(1), node.outputs[0]
    broadcast(cg, node, [x, mask], y)
    if mask is not None and mask.shape is not None:
        for j, size in enumerate(mask.shape):
            if size != 1:
                cg.role(cg.space(mask, j), "follower", node)


def finish_channel_mask(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """A ``ChannelMask`` whose mask keeps every channel (after ``compact``'s cut) goes:
    its readers read ``X`` again."""
    x, mask, y = node.input(0), node.input(1), node.outputs[0]
    if x is None or mask is None or not mask.is_const or x.shape != y.shape:
        return
    if not np.all(np.asarray(mask.const) == 1) or y in graph.outputs:
        return
    graph.replace_all_uses_with(y, x)
    graph.remove_node(node)


for _op in SUM_LIKE:
    RULES[_op] = replace(RULES[_op], sparse=sparse_channel_sum)
RULES[f"{DOMAIN}::{MASK_OP}"] = replace(RULES[f"{DOMAIN}::{MASK_OP}"], finish=finish_channel_mask)
