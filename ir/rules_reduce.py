"""Reductions over pruned channels: sums (``ReduceSum``, ``ReduceL1``, ``ReduceL2``,
``ReduceSumSquare``: RTMPose's ScaleNorm ``x / ||x||_2``, ``F.normalize`` over channels, a
channel sum), means, maxima and minima (``ReduceMean``, ``ReduceMax``, ``ReduceMin``: CBAM's
spatial attention ``cat(x.mean(1), x.amax(1))``, T5/LLaMA's RMSNorm written out,
``torch.max(x, 1)[0]``).

In the compact model such a reduction reads only the kept channels, so the sparse model
(dense shapes, the pruned channels still there) must reduce over the kept channels too. The
coupling rule (``rules_layers._reduce``) therefore declares the reduced axes of these ops
independent (neither coupled nor locked) in ONNX models, and where channels of a reduced
axis are masked, ``apply-masks`` (the ``sparse`` hooks here) rewrites the reduction so it
ignores them, whatever its producers leave in them (a Sigmoid, an Exp, a constant added
after the producer make them nonzero; the dead-channel check scrambles them):

- a sum reads ``drpopt.ChannelMask(X, Mask)``, a model-local function ``Y = X * Mask``:
  ``sum``, ``|.|``, ``(.)**2`` all vanish at 0;
- a mean becomes ``drpopt.MaskedReduceMean(X, Mask)`` (``ir/norm_forms.py``): the sum of
  the kept entries over their count, the statistics of the masked normalisations;
- a max (min) becomes ``drpopt.MaskedReduceMax(X, Mask)`` (``MaskedReduceMin``): a masked
  entry takes the least (greatest) value the reduction reads, so it never wins.

``Mask`` is the outer product of the masked reduced axes' keep-masks, shaped to broadcast
against ``X``, a ``follower`` of those channels (zeroed by ``apply-masks``, cut by
``compact``; a reduced axis it does not cover widens it when masked later). Once ``compact``
has cut the pruned channels the mask keeps everything and ``finish`` writes the plain op
back (the ChannelMask goes; the masked reductions become ReduceMean/Max/Min with their axes
and ``keepdims``), so the compact model has the plain reduction over the kept channels.
``ReduceProd``, ``ReduceLogSum``, ``ReduceLogSumExp`` and ``ArgMax``/``ArgMin`` (an index
along the channels) keep their lock; so do all reductions of a torch model (its forward
reduces what its masked layers leave, not provably ignored).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.norm_forms import (
    DOMAIN,
    EXTREMES,
    MEAN_OP,
    channel_shaped,
    const_value,
    drop_mask,
    dtype_of,
    ensure_function,
    normalised_axes,
    reduction_axes,
)
from drpopt.ir.rules import RULES, SUM_LIKE, broadcast, reduce_axes, rule
from drpopt.ir.rules_compact import KeptChannels
from drpopt.ir.rules_norm import couple_masked

MASK_OP = "ChannelMask"
# the reductions that become a masked form, and the plain op each masked form goes back to
MASKED_FORMS = {"ReduceMean": MEAN_OP, **{op: masked for masked, (op, _) in EXTREMES.items()}}
PLAIN_FORMS = {masked: op for op, masked in MASKED_FORMS.items()}


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


def reduction_mask(x: Value, axes, kept: KeptChannels) -> np.ndarray | None:
    """The keep-masks of the axes of ``x`` among ``axes`` whose channels are masked, as one
    constant in ``x``'s dtype that broadcasts against ``x`` (their outer product); None
    when none is masked."""
    mask = None
    for ax in axes:
        keep = kept.mask(x, ax)
        if keep is not None and not keep.all():
            m = channel_shaped(keep, ax, x.rank, dtype_of(x))
            mask = m if mask is None else mask * m
    return mask


def sparse_channel_sum(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of the sum-like reductions: where a reduced axis of the input
    has masked channels, the input is multiplied by the keep-mask first (every masked
    reduced axis: the mask is their outer product, shaped to broadcast against ``X``)."""
    x = node.input(0)
    axes = reduce_axes(node) if node.op_type in SUM_LIKE else None
    if x is None or x.rank is None or not axes:
        return False
    mask = reduction_mask(x, axes, kept)
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


def _drop_inputs(graph: Graph, node: Node, keep: int) -> None:
    """Drops the inputs of ``node`` after the first ``keep``, and a Constant node that only
    they read (the axes of an opset-18 reduction)."""
    for i in range(keep, len(node.inputs)):
        old = node.inputs[i]
        graph.set_input(node, i, None)
        p = old.producer if old is not None else None
        if p is not None and p.op_type == "Constant" and not old.uses and old not in graph.outputs:
            graph.remove_node(p)
    node.inputs = node.inputs[:keep]


def sparse_reduction(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of ReduceMean, ReduceMax and ReduceMin: where a reduced axis has
    masked channels the node becomes its masked form (``MASKED_FORMS``) over the same axes,
    with the same ``keepdims``."""
    x = node.input(0)
    axes = reduce_axes(node)
    if x is None or x.rank is None or not axes:
        return False
    mask = reduction_mask(x, axes, kept)
    if mask is None:
        return False
    keepdims = int(node.attr("keepdims", 1))
    _drop_inputs(graph, node, 1)
    graph.set_input(node, 1, const_value(graph, f"{node.name}.mask", mask))
    node.op_type, node.domain = MASKED_FORMS[node.op_type], DOMAIN
    node.attrs = {"axes": axes, "keepdims": keepdims}
    ensure_function(graph, node.op_type)
    return True


def sparse_masked_reduction(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """A masked reduction of a sparse model masked again: ``apply-masks`` already zeroed
    its mask where it covers the channels; a reduced axis it did not cover (size 1 in the
    mask) that is masked now is multiplied in."""
    x, old = node.input(0), node.input(1)
    if x is None or x.rank is None or old is None or not old.is_const:
        return False
    have = np.asarray(old.const)
    shape = (1,) * (x.rank - have.ndim) + have.shape
    axes = [a for a in normalised_axes(node, x.rank) if shape[a] == 1]
    mask = reduction_mask(x, axes, kept)
    if mask is None:
        return False
    wider = (have * mask).astype(have.dtype)
    graph.set_input(node, 1, const_value(graph, f"{node.name}.mask", wider))
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


@rule(*(f"{DOMAIN}::{masked}" for masked in PLAIN_FORMS))
def _couple_masked_reduction(node: Node, cg: ChannelGraph) -> None:
    """``MaskedReduceMean``/``Max``/``Min``: the mask follows the axes of ``X`` it covers;
    every reduced axis is independent (``rules_norm.couple_masked``)."""
    couple_masked(node, cg, node.inputs[1:2])


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


def finish_masked_reduction(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """A masked reduction whose mask keeps every channel (after ``compact``'s cut) is the
    plain op again, its axes an input from opset 18 (an attribute before)."""
    x = node.input(0)
    if x is None or x.rank is None or not drop_mask(node, 1):
        return
    axes, keepdims = normalised_axes(node, x.rank), int(node.attrs.get("keepdims", 1))
    node.op_type, node.domain = PLAIN_FORMS[node.op_type], ""
    more, attrs = reduction_axes(graph, axes, node.name)
    node.attrs = {**attrs, "keepdims": keepdims}
    for value in more:
        graph.set_input(node, 1, value)
    graph.touch()


for _op in SUM_LIKE:
    RULES[_op] = replace(RULES[_op], sparse=sparse_channel_sum)
RULES[f"{DOMAIN}::{MASK_OP}"] = replace(RULES[f"{DOMAIN}::{MASK_OP}"], finish=finish_channel_mask)
for _op, _masked in MASKED_FORMS.items():
    RULES[_op] = replace(RULES[_op], sparse=sparse_reduction)
    _key = f"{DOMAIN}::{_masked}"
    RULES[_key] = replace(
        RULES[_key], sparse=sparse_masked_reduction, finish=finish_masked_reduction
    )
