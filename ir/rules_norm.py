"""How normalisations are written when channels are masked (the ``sparse`` and
``unmasked_inputs`` of their ``OpRule``), and how ``compact`` puts them back.

- BatchNormalization: its running mean and variance (inputs 3 and 4) are not zeroed
  (``unmasked_inputs``); the zeroed scale and shift already make the channel zero;
- normalisations whose statistics read across the channel axis: in the compact model the
  pruned channels are gone, so the statistics are over the kept ones; in the sparse model
  (dense shapes with zeros) they would still count the pruned channels, and the two would
  differ. Where channels are masked (``sparse``) such a node becomes a masked form, a
  model-local ONNX function (plain ONNX ops inside, which onnxruntime runs and
  ``onnx.inliner.inline_local_functions`` expands) that counts only the channels where its
  ``Mask`` is 1:

  - ``drpopt.MaskedLayerNormalization(X, Scale, Bias, Mask)``, attributes ``axes`` (the
    normalised axes) and ``epsilon``; ``Mask`` broadcasts against ``X`` (``[C]`` over the
    last axis, ``[C, 1, 1]`` over axis 1 of NCHW)::

        XM = X * Mask;  K = ReduceSum(Expand(Mask, Shape(X)), axes)
        D  = (XM - ReduceSum(XM, axes) / K) * Mask
        Y  = D / sqrt(ReduceSum(D * D, axes) / K + epsilon) * Scale + Bias

    for a LayerNormalization over its last axis, a LayerNorm written out in plain ops over
    the last axis or over axis 1 (ConvNeXt's channels-first one), and GroupNorm(1, C) as
    torch exports it (Reshape, InstanceNormalization, Reshape: ``axes`` 1 to the last),
    as the opset-21 GroupNormalization op, or written out over axes 1 to the last;
  - ``drpopt.MaskedRMSNormalization(X, Scale, Mask)`` (attributes ``axes``, ``epsilon``,
    ``stash_type``) for the opset-23 RMSNormalization over its last axis::

        XS = Cast(X * Mask, stash_type);  K = ReduceSum(Expand(Mask, Shape(X)), axes)
        Y  = CastLike(XS / sqrt(ReduceSum(XS * XS, axes) / K + epsilon), X) * Scale

  - GRN's mean over the channels (ConvNeXt V2), as any ReduceMean over pruned channels,
    becomes ``drpopt.MaskedReduceMean(X, Mask)`` (``ir/rules_reduce.py``): ``ReduceSum(X *
    Mask, axes) / ReduceSum(Expand(Mask, Shape(X)), axes)``.

  ``Mask`` is a channel constant of the group like a scale or bias (zeroed by
  ``apply-masks``, sliced by ``compact``); the masked op's ``finish`` turns a node whose
  mask is all ones back into the plain form it came from: a LayerNormalization (written
  out before opset 17), the written-out LayerNorm, the Reshape / InstanceNormalization /
  Reshape of GroupNorm(1, C), the RMSNormalization. So the sparse model computes exactly what
  the compact one does. The written-out patterns are matched in ``ir/patterns.py``, the
  functions and the plain forms written in ``ir/norm_forms.py``;
- GroupNormalization with several groups: whole groups prune (``num_groups`` follows);
  each group's statistics read only its own channels, so zeros alone suffice.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.norm_forms import (
    DOMAIN,
    OP,
    RMS_OP,
    channel_shaped,
    const_value,
    drop_mask,
    dtype_of,
    ensure_function,
    epsilon_attr,
    filled_with,
    normalised_axes,
    write_group_normalization,
    write_groupnorm_one,
    write_out_layernorm,
)
from drpopt.ir.patterns import match_groupnorm_one
from drpopt.ir.rules import RULES, broadcast, lock_axis, rule, same_axes
from drpopt.ir.rules_compact import KeptChannels
from drpopt.ir.rules_layers import channel_mixing_norm


def mask_layernorm(graph: Graph, node: Node, keep: np.ndarray) -> None:
    """Turns the LayerNormalization ``node`` (over its last axis) into its masked form."""
    x = node.input(0)
    dtype, eps = dtype_of(x), float(node.attr("epsilon", 1e-5))
    if node.input(2) is None:
        graph.set_input(
            node, 2, const_value(graph, f"{node.name}.bias", np.zeros(keep.size, dtype))
        )
        # the masked form reads its mask 4th: unmask_layernorm drops this zero bias again
        # (compact kept it: 3 parameters more than the plan said, tests/ir/test_properties_ops)
        node.meta["masked_zero_bias"] = True
    graph.set_input(node, 3, const_value(graph, f"{node.name}.mask", keep.astype(dtype)))
    for extra in node.outputs[1:]:
        extra.producer = None
    node.outputs = node.outputs[:1]
    node.op_type, node.domain = OP, DOMAIN
    node.attrs = {"axes": [-1], "epsilon": epsilon_attr(graph, eps)}
    ensure_function(graph, OP)


def _masked_norm(
    graph, x, scale, bias, keep, channel_axis, axes, eps, out, base, before, back=None
):
    """Adds ``MaskedLayerNormalization`` of ``x`` writing ``out``'s readers' new value (cast
    to ``back`` when given: statistics computed in float32 for a float16 model)."""
    mask = channel_shaped(keep, channel_axis, x.rank, dtype_of(x))
    kind = out.dtype if back is None else np.dtype(np.float32)
    result = graph.value(graph.fresh_name(f"{out.name}.masked"), shape=out.shape, dtype=kind)
    node = graph.add_node(
        OP,
        graph.fresh_name(f"{base}.Masked"),
        [x, scale, bias, const_value(graph, f"{base}.mask", mask)],
        [result],
        {"axes": list(axes), "epsilon": epsilon_attr(graph, eps)},
        domain=DOMAIN,
        before=before,
    )
    if back is not None:
        narrowed = graph.value(graph.fresh_name(f"{out.name}.f16"), shape=out.shape, dtype=back)
        to = onnx.helper.np_dtype_to_tensor_dtype(back)
        graph.add_node(
            "Cast", f"{node.name}.CastBack", [result], [narrowed], {"to": to}, before=before
        )
        result = narrowed
    graph.replace_all_uses_with(out, result)
    ensure_function(graph, OP)
    return node


def _remove(graph: Graph, nodes: list[Node]) -> None:
    """Removes ``nodes`` (readers last), then what computed only their inputs' shapes."""
    inputs = [v for n in nodes for v in n.inputs if v is not None]
    for n in reversed(nodes):
        graph.remove_node(n)
    for v in inputs:  # a Shape(x) that only the last Reshape read
        p = v.producer
        # (a removed producer is no value's producer any more: no search of the node list)
        unread = p is not None and not v.uses and v not in graph.outputs
        if unread and p.op_type in ("Shape", "Constant"):
            graph.remove_node(p)


def _float32_statistics(graph: Graph, ln) -> tuple[Value, np.dtype | None]:
    """The input the masked form of ``ln`` normalises, and the dtype its result is cast back
    to (None: none). Statistics run in float32 where a float16 model's own pattern casts
    (torch casts ``x - mean`` to float), or where the model is float16 whole at an opset
    where the masked function's epsilon is float32 (no CastLike before opset 15)."""
    x = ln.x
    narrow = x.dtype is not None and np.dtype(x.dtype) != np.float32
    if ln.cast is None and not (narrow and graph.opsets.get("", 17) < 15):
        return x, None
    cast = graph.value(graph.fresh_name(f"{x.name}.cast"), shape=x.shape, dtype=np.float32)
    graph.add_node("Cast", f"{ln.div.name}.Cast", [x], [cast], {"to": 1}, before=ln.div)
    return cast, (None if ln.cast is not None else np.dtype(x.dtype))


def fold_layernorm(graph: Graph, ln, keep: np.ndarray) -> Node:
    """Replaces a LayerNorm written out in plain ops (``ir.patterns.DecomposedLayerNorm``,
    over the last axis, axis 1, or axes 1 to the last) by its masked form keeping ``keep``
    along its channel axis (unit scale, zero bias: the pattern's own scale and bias ops
    stay after it)."""
    out = ln.div.outputs[0]
    x, back = _float32_statistics(graph, ln)
    ones = channel_shaped(np.ones(keep.size, bool), ln.axis, x.rank, dtype_of(x))
    scale = const_value(graph, f"{ln.div.name}.scale", ones)
    bias = const_value(graph, f"{ln.div.name}.bias", np.zeros_like(ones))
    node = _masked_norm(
        graph, x, scale, bias, keep, ln.axis, ln.axes, ln.epsilon, out, ln.div.name, ln.div, back
    )
    # finish writes it out in plain ops again, also over the last axis where the unit scale
    # and zero bias alone would make it a LayerNormalization with 2 C parameters the plan
    # does not count (tests/ir/test_properties_ops.py)
    node.meta["written_out"] = True
    _remove(graph, ln.nodes)
    return node


def fold_groupnorm(graph: Graph, gn, keep: np.ndarray) -> Node:
    """Replaces GroupNorm(1, C) as torch exports it (``ir.patterns.GroupNormOne``) by its
    masked form over axes 1 to the last, keeping ``keep`` along axis 1 (its one-element
    scale and bias stay its own; the per-channel weight and bias ops stay after it)."""
    x, norm = gn.x, gn.norm
    eps = float(norm.attr("epsilon", 1e-5))
    node = _masked_norm(
        graph,
        x,
        norm.input(1),
        norm.input(2),
        keep,
        1,
        range(1, x.rank),
        eps,
        gn.back.outputs[0],
        norm.name,
        gn.back,
    )
    _remove(graph, gn.nodes)
    return node


# ---- putting the plain forms back ---------------------------------------------------------
def unmask_layernorm(node: Node) -> bool:
    """A masked LayerNormalization over the last axis with a 1-D mask that keeps every
    channel becomes a plain one."""
    x, mask = node.input(0), node.input(3)
    if x is None or x.rank is None or normalised_axes(node, x.rank) != [x.rank - 1]:
        return False
    if (
        mask is None
        or mask.rank != 1
        or any(p is not None and (p.rank or 0) > 1 for p in node.inputs[1:3])
    ):
        return False
    if not drop_mask(node, 3):
        return False
    bias = node.input(2)
    added = node.meta.pop("masked_zero_bias", False) and bias is not None and bias.is_const
    if added and not np.any(np.asarray(bias.const)):  # the zero bias mask_layernorm added
        bias.uses = [(n, j) for n, j in bias.uses if n is not node]
        node.inputs = node.inputs[:2]
    node.op_type, node.domain = "LayerNormalization", ""
    node.attrs = {"axis": -1, "epsilon": float(np.asarray(node.attrs.get("epsilon", 1e-5)))}
    return True


def finish_masked_layernorm(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """The ``finish`` hook of the masked form: once ``compact`` has cut the pruned channels
    the mask is all ones, and the node is the plain form it came from again."""
    x = node.input(0)
    if x is None or x.rank is None:
        return
    if not node.meta.get("written_out") and unmask_layernorm(node):
        if graph.opsets.get("", 17) < 17:
            write_out_layernorm(graph, node)
        return
    axes = normalised_axes(node, x.rank)
    one = all(
        p is not None and p.is_const and np.asarray(p.const).size == 1 and p.rank == 1
        for p in node.inputs[1:3]
    )
    # a written-out norm was folded with a unit scale and a zero bias (its own follow it)
    written_out = node.meta.get("written_out") or (
        filled_with(node.input(1), 1) and filled_with(node.input(2), 0) and not one
    )
    if not drop_mask(node, 3):
        return
    if axes == list(range(1, x.rank)) and one:
        write_groupnorm_one(graph, node)
    elif axes == list(range(1, x.rank)) and not written_out and graph.opsets.get("", 17) >= 21:
        write_group_normalization(graph, node)
    else:
        write_out_layernorm(graph, node, axes)


# ---- the rule objects ---------------------------------------------------------------------
def couple_masked(node: Node, cg: ChannelGraph, params: list[Value | None]) -> None:
    """The masked forms: parameters (scale, bias, mask) broadcast against ``X`` follow its
    axes. A normalisation (output of ``X``'s shape) locks the normalised axes its mask does
    not cover (its statistics read them); a masked reduction (the reduced axes of size 1,
    or gone without ``keepdims``) leaves every reduced axis independent (its ``sparse``
    hook widens the mask to an axis masked later: ``ir/rules_reduce.py``)."""
    x, y = node.input(0), node.outputs[0]
    same = node.op_type in (OP, RMS_OP)  # the normalisations keep every axis
    axes = normalised_axes(node, x.rank) if x is not None and x.rank is not None else []
    keep = same or bool(node.attrs.get("keepdims", 1))
    if x is None or x.rank is None or y.rank != (x.rank if keep else x.rank - len(axes)):
        cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    masked = set()
    for p in params:
        if p is None or p.rank is None or p.rank > x.rank:
            why = f"{node.op_type} '{node.name}': parameter of unknown rank"
            cg.lock_value(p, "rule", why, node)
            continue
        for j, size in enumerate(p.shape or ()):
            if size != 1:
                axis = j + x.rank - p.rank
                cg.identity(cg.space(p, j), cg.space(x, axis), node)
                cg.role(cg.space(p, j), "follower", node)
                masked.add(axis)
    for ax in range(x.rank):
        if same or ax not in axes:
            j = ax if keep else ax - sum(a < ax for a in axes)
            cg.identity(cg.space(x, ax), cg.space(y, j), node)
    cg.independent(x, sorted(masked & set(axes)) if same else axes)
    locked = [a for a in axes if a not in masked] if same else []
    lock_axis(cg, node, [x, y], locked, "normalises over this axis")


@rule(f"{DOMAIN}::{OP}")
def _couple_masked_layernorm(node: Node, cg: ChannelGraph) -> None:
    couple_masked(node, cg, node.inputs[1:4])


def sparse_layernorm(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of LayerNormalization: the masked form where its channel axis
    (the last, the only one its rule leaves prunable) is masked."""
    x = node.input(0)
    keep = kept.mask(x, -1) if x is not None and x.rank is not None else None
    if keep is None or keep.all():
        return False
    mask_layernorm(graph, node, keep)
    return True


def sparse_instance_norm(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of InstanceNormalization: GroupNorm(1, C) (the only form whose
    statistics its rule lets channels through) with masked channels is folded into its
    masked form."""
    gn = match_groupnorm_one(node, graph)
    keep = kept.mask(gn.x, 1) if gn is not None else None
    if keep is None or keep.all():
        return False
    fold_groupnorm(graph, gn, keep)
    return True


@rule("RMSNormalization")
def _rms_normalization(node: Node, cg: ChannelGraph) -> None:
    """RMSNormalization (opset 23; ``axis``: it and every later axis are normalised). Over
    the last axis alone with a per-channel constant scale (torch's ``nn.RMSNorm``), in an
    ONNX model, that axis is a channel axis with the scale following it (``apply-masks``
    gives it the masked form, statistics over the kept channels; ``compact`` the op
    back); otherwise the normalised axes lock."""
    x, scale, y = node.input(0), node.input(1), node.outputs[0]
    same_axes(cg, node, x, y)
    if x is None or x.rank is None:
        return
    axis = node.attr("axis", -1) % x.rank
    per_channel = scale is not None and scale.is_const and scale.shape == x.shape[-1:]
    if axis == x.rank - 1 and per_channel and "torch_path" not in cg.graph.meta:
        cg.identity(cg.space(scale, 0), cg.space(x, axis), node)
        cg.role(cg.space(scale, 0), "follower", node)
        return
    broadcast(cg, node, [p for p in (scale,) if p is not None], y)
    lock_axis(cg, node, [x, y], range(axis, x.rank), "normalises over these axes")


def sparse_rms_normalization(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of RMSNormalization: the masked form where its channel axis (the
    last, the only one its rule leaves prunable) is masked."""
    x = node.input(0)
    keep = kept.mask(x, -1) if x is not None and x.rank is not None else None
    if keep is None or keep.all():
        return False
    graph.set_input(node, 2, const_value(graph, f"{node.name}.mask", keep.astype(dtype_of(x))))
    node.attrs = {
        "axes": [-1],
        "epsilon": float(node.attr("epsilon", 1e-5)),
        "stash_type": int(node.attr("stash_type", 1)),
    }
    node.op_type, node.domain = RMS_OP, DOMAIN
    ensure_function(graph, RMS_OP)
    return True


def finish_masked_rms(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """``MaskedRMSNormalization`` with a mask of all ones is an RMSNormalization again."""
    if not drop_mask(node, 2):
        return
    node.op_type, node.domain = "RMSNormalization", ""
    node.attrs = {
        "axis": -1,
        "epsilon": float(node.attrs.get("epsilon", 1e-5)),
        "stash_type": int(node.attrs.get("stash_type", 1)),
    }
    graph.touch()


@rule(f"{DOMAIN}::{RMS_OP}")
def _couple_masked_rms(node: Node, cg: ChannelGraph) -> None:
    couple_masked(node, cg, node.inputs[1:3])


@rule("GroupNormalization")
def _couple_group_normalization(node: Node, cg: ChannelGraph) -> None:
    """Statistics per group of ``num_groups`` over the channels and every later axis. One
    group (GroupNorm(1, C)): channels prune, the scale and bias (per channel from opset 21)
    with them, and ``apply-masks`` gives it the masked form. More groups: whole groups
    prune (each group's statistics read only its own channels); the scale and bias follow
    the channels (opset 21) or the groups (opset 18). Spatial axes are locked."""
    x, y = node.input(0), node.outputs[0]
    groups, params = int(node.attr("num_groups", 1)), node.inputs[1:3]
    channels = x.dim(1) if x is not None and x.rank is not None and x.rank >= 2 else None
    if not isinstance(channels, int) or channels % groups or "torch_path" in cg.graph.meta:
        channel_mixing_norm(node, cg)
        return
    same_axes(cg, node, x, y)
    lock_axis(cg, node, [x, y], range(2, x.rank), "normalises over this axis")
    space = cg.space(x, 1)
    if groups > 1:
        g = cg.virtual(f"{node.name}.groups", groups)
        cg.role(g, "structure", node, attr="num_groups")
        cg.expand(space, g, channels // groups, node)
    for p in params:
        if p is None or p.rank != 1 or not p.is_const:
            cg.lock_value(p, "rule", f"GroupNormalization '{node.name}': parameter not 1-D", node)
            continue
        if p.shape[0] == channels:
            cg.identity(cg.space(p, 0), space, node)
        elif p.shape[0] == groups and groups > 1:
            cg.identity(cg.space(p, 0), g, node)
        else:
            continue
        cg.role(cg.space(p, 0), "follower", node)


def compact_group_normalization(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """``num_groups`` becomes the count of groups kept."""
    mask = kept.virtual(f"{node.name}.groups")
    if mask is not None:
        node.attrs["num_groups"] = int(mask.sum())


def sparse_group_normalization(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """GroupNormalization with one group and masked channels becomes the masked form (with
    more groups only whole groups are masked: the others' statistics do not read them)."""
    x, y = node.input(0), node.outputs[0]
    keep = kept.mask(x, 1) if x is not None and x.rank is not None else None
    if keep is None or keep.all() or int(node.attr("num_groups", 1)) != 1:
        return False
    params = []
    for p in node.inputs[1:3]:
        arr = np.asarray(p.const) if p is not None and p.is_const else np.ones(1, dtype_of(x))
        if arr.size > 1:
            arr = channel_shaped(arr, 1, x.rank, arr.dtype)
        params.append(const_value(graph, f"{node.name}.param", arr))
    eps = float(node.attr("epsilon", 1e-5))
    _masked_norm(graph, x, *params, keep, 1, range(1, x.rank), eps, y, node.name, node)
    graph.remove_node(node)
    return True


RULES["GroupNormalization"] = replace(
    RULES["GroupNormalization"],
    compact=compact_group_normalization,
    sparse=sparse_group_normalization,
)
RULES["LayerNormalization"] = replace(RULES["LayerNormalization"], sparse=sparse_layernorm)
RULES["InstanceNormalization"] = replace(
    RULES["InstanceNormalization"], sparse=sparse_instance_norm
)
RULES["RMSNormalization"] = replace(RULES["RMSNormalization"], sparse=sparse_rms_normalization)
RULES[f"{DOMAIN}::{RMS_OP}"] = replace(RULES[f"{DOMAIN}::{RMS_OP}"], finish=finish_masked_rms)
RULES["BatchNormalization"] = replace(RULES["BatchNormalization"], unmasked_inputs=(3, 4))
RULES[f"{DOMAIN}::{OP}"] = replace(RULES[f"{DOMAIN}::{OP}"], finish=finish_masked_layernorm)
