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
    torch exports it (Reshape, InstanceNormalization, Reshape: ``axes`` 1 to the last);
  - ``drpopt.MaskedReduceMean(X, Mask)``, attribute ``axes`` (kept dims): ``ReduceSum(X *
    Mask, axes) / ReduceSum(Expand(Mask, Shape(X)), axes)``, for GRN's mean over the
    channels (ConvNeXt V2).

  ``Mask`` is a channel constant of the group like a scale or bias (zeroed by
  ``apply-masks``, sliced by ``compact``); the masked op's ``finish`` turns a node whose
  mask is all ones back into the plain form it came from: a LayerNormalization (written
  out before opset 17), the written-out LayerNorm, the Reshape / InstanceNormalization /
  Reshape of GroupNorm(1, C), the ReduceMean. So the sparse model computes exactly what
  the compact one does. The written-out patterns are matched in ``ir/patterns.py``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import AttributeProto, helper

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.patterns import grn_statistic, match_groupnorm_one, reduced_axes
from drpopt.ir.rules import RULES, lock_axis, rule
from drpopt.ir.rules_compact import KeptChannels

DOMAIN = "drpopt"
OP = "MaskedLayerNormalization"
MEAN_OP = "MaskedReduceMean"


# ---- the functions -----------------------------------------------------------------------
def _ref(node: onnx.NodeProto, name: str, kind: int) -> onnx.NodeProto:
    """Makes the first attribute of ``node`` a reference to the function's ``name``."""
    attr = node.attribute[0]
    attr.ref_attr_name, attr.type = name, kind
    for field in ("f", "i", "ints", "t"):
        attr.ClearField(field)
    return node


def _reduce_sum(x: str, out: str, opset: int) -> onnx.NodeProto:
    """ReduceSum of ``x`` over the function's ``axes`` (kept dims), in the ops of ``opset``:
    before 13 ReduceSum takes its axes as an attribute."""
    if opset >= 13:
        return helper.make_node("ReduceSum", [x, "Axes"], [out], keepdims=1)
    node = helper.make_node("ReduceSum", [x], [out], axes=[0], keepdims=1)
    node.attribute.sort(key=lambda a: a.name != "axes")
    return _ref(node, "axes", AttributeProto.INTS)


def _count(opset: int) -> list[onnx.NodeProto]:
    """``Axes`` (opset 13 on) and ``K``: how many kept entries each statistic reads."""
    axes = helper.make_node("Constant", [], ["Axes"], value_ints=[0])
    return [
        *([_ref(axes, "axes", AttributeProto.INTS)] if opset >= 13 else []),
        helper.make_node("Shape", ["X"], ["XShape"]),
        helper.make_node("Expand", ["Mask", "XShape"], ["MaskX"]),
        _reduce_sum("MaskX", "K", opset),
    ]


def function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedLayerNormalization``, written with the
    ops of the model's own default opset (onnxruntime inlines it at that version): before
    15 there is no CastLike (the epsilon is then float32, as models of those opsets are),
    before 12 Constant takes only a tensor (the node's ``epsilon`` is then a 0-d float32
    tensor)."""
    nodes = [
        *_count(opset),
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        _reduce_sum("XM", "S", opset),
        helper.make_node("Div", ["S", "K"], ["Mean"]),
        helper.make_node("Sub", ["XM", "Mean"], ["D0"]),
        helper.make_node("Mul", ["D0", "Mask"], ["D"]),
        helper.make_node("Mul", ["D", "D"], ["D2"]),
        _reduce_sum("D2", "SS", opset),
        helper.make_node("Div", ["SS", "K"], ["Var"]),
    ]
    if opset >= 12:
        nodes.append(
            _ref(
                helper.make_node("Constant", [], ["Eps0"], value_float=0.0),
                "epsilon",
                AttributeProto.FLOAT,
            )
        )
    else:  # Constant has no value_float: the node's epsilon is a 0-d tensor there
        eps = helper.make_node(
            "Constant", [], ["Eps0"], value=helper.make_tensor("e", 1, [], [0.0])
        )
        nodes.append(_ref(eps, "epsilon", AttributeProto.TENSOR))
    if opset >= 15:
        nodes.append(helper.make_node("CastLike", ["Eps0", "X"], ["Eps"]))
    nodes += [
        helper.make_node("Add", ["Var", "Eps" if opset >= 15 else "Eps0"], ["VE"]),
        helper.make_node("Sqrt", ["VE"], ["Std"]),
        helper.make_node("Div", ["D", "Std"], ["N"]),
        helper.make_node("Mul", ["N", "Scale"], ["NS"]),
        helper.make_node("Add", ["NS", "Bias"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP,
        ["X", "Scale", "Bias", "Mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["axes", "epsilon"],
    )


def mean_function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedReduceMean``."""
    nodes = [
        *_count(opset),
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        _reduce_sum("XM", "S", opset),
        helper.make_node("Div", ["S", "K"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN,
        MEAN_OP,
        ["X", "Mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["axes"],
    )


def _ensure_function(graph: Graph, op: str) -> None:
    if not any(f.domain == DOMAIN and f.name == op for f in graph.functions):
        make = function_proto if op == OP else mean_function_proto
        graph.functions.append(make(graph.opsets.get("", 17)))
    graph.opsets.setdefault(DOMAIN, 1)


# ---- masking -----------------------------------------------------------------------------
def _const(graph: Graph, base: str, array: np.ndarray) -> Value:
    return graph.value(
        graph.fresh_name(base), const=array, shape=tuple(array.shape), dtype=array.dtype
    )


def _dtype(x: Value | None) -> np.dtype:
    return np.dtype(x.dtype if x is not None and x.dtype is not None else np.float32)


def _channel_shaped(keep: np.ndarray, axis: int, rank: int, dtype) -> np.ndarray:
    """``keep`` as a constant that broadcasts along ``axis`` of a tensor of ``rank``."""
    return keep.astype(dtype).reshape((keep.size,) + (1,) * (rank - 1 - axis))


def _epsilon_attr(graph: Graph, eps: float):
    return np.array(eps, np.float32) if graph.opsets.get("", 17) < 12 else eps  # see function_proto


def mask_layernorm(graph: Graph, node: Node, keep: np.ndarray) -> None:
    """Turns the LayerNormalization ``node`` (over its last axis) into its masked form."""
    x = node.input(0)
    dtype, eps = _dtype(x), float(node.attr("epsilon", 1e-5))
    if node.input(2) is None:
        graph.set_input(node, 2, _const(graph, f"{node.name}.bias", np.zeros(keep.size, dtype)))
    graph.set_input(node, 3, _const(graph, f"{node.name}.mask", keep.astype(dtype)))
    for extra in node.outputs[1:]:
        extra.producer = None
    node.outputs = node.outputs[:1]
    node.op_type, node.domain = OP, DOMAIN
    node.attrs = {"axes": [-1], "epsilon": _epsilon_attr(graph, eps)}
    _ensure_function(graph, OP)


def _masked_norm(graph, x, scale, bias, keep, channel_axis, axes, eps, out, base, before):
    """Adds ``MaskedLayerNormalization`` of ``x`` writing ``out``'s readers' new value."""
    mask = _channel_shaped(keep, channel_axis, x.rank, _dtype(x))
    result = graph.value(graph.fresh_name(f"{out.name}.masked"), shape=out.shape, dtype=out.dtype)
    node = graph.add_node(
        OP,
        graph.fresh_name(f"{base}.Masked"),
        [x, scale, bias, _const(graph, f"{base}.mask", mask)],
        [result],
        {"axes": list(axes), "epsilon": _epsilon_attr(graph, eps)},
        domain=DOMAIN,
        before=before,
    )
    graph.replace_all_uses_with(out, result)
    _ensure_function(graph, OP)
    return node


def _remove(graph: Graph, nodes: list[Node]) -> None:
    """Removes ``nodes`` (readers last), then what computed only their inputs' shapes."""
    inputs = [v for n in nodes for v in n.inputs if v is not None]
    for n in reversed(nodes):
        graph.remove_node(n)
    for v in inputs:  # a Shape(x) that only the last Reshape read
        p = v.producer
        unread = p is not None and not v.uses and v not in graph.outputs and p in graph.nodes
        if unread and p.op_type in ("Shape", "Constant"):
            graph.remove_node(p)


def fold_layernorm(graph: Graph, ln, keep: np.ndarray) -> Node:
    """Replaces a LayerNorm written out in plain ops (``ir.patterns.DecomposedLayerNorm``,
    over the last axis or axis 1) by its masked form keeping ``keep`` along its axis (unit
    scale, zero bias: the pattern's own scale and bias ops stay after it)."""
    x, out = ln.x, ln.div.outputs[0]
    ones = _channel_shaped(np.ones(keep.size, bool), ln.axis, x.rank, _dtype(x))
    scale = _const(graph, f"{ln.div.name}.scale", ones)
    bias = _const(graph, f"{ln.div.name}.bias", np.zeros_like(ones))
    node = _masked_norm(
        graph, x, scale, bias, keep, ln.axis, [ln.axis], ln.epsilon, out, ln.div.name, ln.div
    )
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


# ---- putting the plain forms back -----------------------------------------------------------
def _unit(v: Value | None, value: float) -> bool:
    return v is None or (v.is_const and bool(np.all(np.asarray(v.const) == value)))


def _drop_mask(node: Node, keep_inputs: int) -> bool:
    """Whether the mask (last input) keeps every channel; if so it is dropped."""
    mask = node.inputs[-1] if node.inputs else None
    if mask is None or not mask.is_const or not np.all(np.asarray(mask.const) == 1):
        return False
    mask.uses = [(n, j) for n, j in mask.uses if n is not node]
    node.inputs = node.inputs[:keep_inputs]
    return True


def _axes(node: Node, rank: int) -> list[int]:
    return sorted({int(a) % rank for a in node.attrs.get("axes", [-1])})


def _reduce_mean(graph, x, out, axes, base, before) -> None:
    """``out = ReduceMean(x, axes, keepdims=1)`` in the ops of the model's opset."""
    if graph.opsets.get("", 17) >= 18:
        axes_value = _const(graph, f"{base}.axes", np.array(axes, np.int64))
        graph.add_node(
            "ReduceMean",
            graph.fresh_name(f"{base}_ReduceMean"),
            [x, axes_value],
            [out],
            {"keepdims": 1},
            before=before,
        )
    else:
        graph.add_node(
            "ReduceMean",
            graph.fresh_name(f"{base}_ReduceMean"),
            [x],
            [out],
            {"axes": list(axes), "keepdims": 1},
            before=before,
        )


def write_out_layernorm(graph: Graph, node: Node, axes: list[int] | None = None) -> None:
    """A LayerNorm (over the last axis, or ``axes``) as plain ops: mean, centred, variance,
    sqrt, divide, scale, shift (the scale and shift only where they do something)."""
    x, scale, bias, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    dtype, base = _dtype(x), node.name
    axes = axes if axes is not None else [x.rank - 1]
    stats = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if x.shape else None
    eps = _const(
        graph, f"{base}.epsilon", np.array(float(np.asarray(node.attr("epsilon", 1e-5))), dtype)
    )
    steps = [
        ("ReduceMean", ["x"], "mean", stats),
        ("Sub", ["x", "mean"], "centred", y.shape),
        ("Mul", ["centred", "centred"], "square", y.shape),
        ("ReduceMean", ["square"], "var", stats),
        ("Add", ["var", "eps"], "var_eps", stats),
        ("Sqrt", ["var_eps"], "std", stats),
        ("Div", ["centred", "std"], "normalised", y.shape),
    ]
    if not _unit(scale, 1):
        steps.append(("Mul", ["normalised", "scale"], "scaled", y.shape))
    if not _unit(bias, 0):
        steps.append(("Add", [steps[-1][2], "bias"], "shifted", y.shape))
    values = {"x": x, "eps": eps, "scale": scale, "bias": bias}
    for op, ins, out, shape in steps:
        values[out] = graph.value(graph.fresh_name(f"{base}.{out}"), shape=shape, dtype=dtype)
        name = graph.fresh_name(f"{base}.{out}_{op}")
        if op == "ReduceMean":
            _reduce_mean(graph, values[ins[0]], values[out], axes, name, node)
        else:
            graph.add_node(op, name, [values[i] for i in ins], [values[out]], before=node)
    graph.replace_all_uses_with(y, values[steps[-1][2]])
    graph.remove_node(node)


def _write_groupnorm_one(graph: Graph, node: Node) -> None:
    """GroupNorm(1, C) as torch exports it: Reshape(x, [0, 1, -1]), InstanceNormalization
    with the node's one-element scale and bias, Reshape back to ``Shape(x)``."""
    x, y, base = node.input(0), node.outputs[0], node.name
    rest = x.shape[1:] if x.shape else None
    known = rest is not None and all(isinstance(d, int) for d in rest)
    flat_shape = (x.shape[0], 1, int(np.prod(rest))) if known else None
    values = [
        graph.value(graph.fresh_name(f"{base}.{n}"), shape=s, dtype=x.dtype)
        for n, s in (("flat", flat_shape), ("normalised", flat_shape))
    ]
    shape = graph.value(
        graph.fresh_name(f"{base}.shape"), shape=(x.rank,), dtype=np.dtype(np.int64)
    )
    target = _const(graph, f"{base}.flat_shape", np.array([0, 1, -1], np.int64))
    graph.add_node(
        "Reshape", graph.fresh_name(f"{base}.Reshape"), [x, target], [values[0]], before=node
    )
    graph.add_node(
        "InstanceNormalization",
        graph.fresh_name(f"{base}.InstanceNormalization"),
        [values[0], node.input(1), node.input(2)],
        [values[1]],
        {"epsilon": float(np.asarray(node.attr("epsilon", 1e-5)))},
        before=node,
    )
    graph.add_node("Shape", graph.fresh_name(f"{base}.Shape"), [x], [shape], before=node)
    out = graph.value(graph.fresh_name(f"{base}.out"), shape=y.shape, dtype=y.dtype)
    graph.add_node(
        "Reshape", graph.fresh_name(f"{base}.Reshape_1"), [values[1], shape], [out], before=node
    )
    graph.replace_all_uses_with(y, out)
    graph.remove_node(node)


def unmask_layernorm(node: Node) -> bool:
    """A masked LayerNormalization over the last axis with a 1-D mask that keeps every
    channel becomes a plain one."""
    x, mask = node.input(0), node.input(3)
    if x is None or x.rank is None or _axes(node, x.rank) != [x.rank - 1]:
        return False
    if (
        mask is None
        or mask.rank != 1
        or any(p is not None and (p.rank or 0) > 1 for p in node.inputs[1:3])
    ):
        return False
    if not _drop_mask(node, 3):
        return False
    node.op_type, node.domain = "LayerNormalization", ""
    node.attrs = {"axis": -1, "epsilon": float(np.asarray(node.attrs.get("epsilon", 1e-5)))}
    return True


def finish_masked_layernorm(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """The ``finish`` hook of the masked form: once ``compact`` has cut the pruned channels
    the mask is all ones, and the node is the plain form it came from again."""
    x = node.input(0)
    if x is None or x.rank is None:
        return
    if unmask_layernorm(node):
        if graph.opsets.get("", 17) < 17:
            write_out_layernorm(graph, node)
        return
    axes = _axes(node, x.rank)
    one = all(
        p is not None and p.is_const and np.asarray(p.const).size == 1 and p.rank == 1
        for p in node.inputs[1:3]
    )
    if not _drop_mask(node, 3):
        return
    if axes == list(range(1, x.rank)) and one:
        _write_groupnorm_one(graph, node)
    else:
        write_out_layernorm(graph, node, axes)


def finish_masked_mean(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """``MaskedReduceMean`` with a mask of all ones is a ReduceMean again."""
    x = node.input(0)
    if x is None or x.rank is None or not _drop_mask(node, 1):
        return
    axes = _axes(node, x.rank)
    out = node.outputs[0]
    node.outputs = []
    out.producer = None
    _reduce_mean(graph, x, out, axes, node.name, node)
    x.uses = [(n, j) for n, j in x.uses if n is not node]
    graph.nodes.remove(node)


# ---- the rule objects ---------------------------------------------------------------------
def _couple_masked(node: Node, cg: ChannelGraph, params: list[Value | None]) -> None:
    """The masked forms: parameters (scale, bias, mask) broadcast against ``X`` follow its
    axes; the reduced axes the mask does not cover are locked (statistics read them). The
    output has ``X``'s shape (the normalisation) or 1 on the reduced axes (the mean)."""
    x, y = node.input(0), node.outputs[0]
    if x is None or x.rank is None or y.rank != x.rank:
        cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    axes, masked = _axes(node, x.rank), set()
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
    same = node.op_type == OP  # the normalisation keeps every axis
    for ax in range(x.rank):
        if same or ax not in axes:
            cg.identity(cg.space(x, ax), cg.space(y, ax), node)
    cg.independent(x, sorted(masked & set(axes)))
    locked = [a for a in axes if a not in masked]
    lock_axis(cg, node, [x, y] if same else [x], locked, "normalises over this axis")


@rule(f"{DOMAIN}::{OP}")
def _couple_masked_layernorm(node: Node, cg: ChannelGraph) -> None:
    _couple_masked(node, cg, node.inputs[1:4])


@rule(f"{DOMAIN}::{MEAN_OP}")
def _couple_masked_mean(node: Node, cg: ChannelGraph) -> None:
    _couple_masked(node, cg, node.inputs[1:2])


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


def sparse_reduce_mean(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of ReduceMean: GRN's mean over masked channels becomes
    ``MaskedReduceMean``."""
    axis = grn_statistic(node, graph)
    x = node.input(0)
    keep = kept.mask(x, axis) if axis is not None else None
    if keep is None or keep.all():
        return False
    mask = _const(graph, f"{node.name}.mask", _channel_shaped(keep, axis, x.rank, _dtype(x)))
    axes = reduced_axes(node)
    for i in range(1, len(node.inputs)):
        graph.set_input(node, i, None)
    node.inputs = [x]
    graph.set_input(node, 1, mask)
    node.op_type, node.domain, node.attrs = MEAN_OP, DOMAIN, {"axes": axes}
    _ensure_function(graph, MEAN_OP)
    return True


RULES["LayerNormalization"] = replace(RULES["LayerNormalization"], sparse=sparse_layernorm)
RULES["InstanceNormalization"] = replace(
    RULES["InstanceNormalization"], sparse=sparse_instance_norm
)
RULES["ReduceMean"] = replace(RULES["ReduceMean"], sparse=sparse_reduce_mean)
RULES["BatchNormalization"] = replace(RULES["BatchNormalization"], unmasked_inputs=(3, 4))
RULES[f"{DOMAIN}::{OP}"] = replace(RULES[f"{DOMAIN}::{OP}"], finish=finish_masked_layernorm)
RULES[f"{DOMAIN}::{MEAN_OP}"] = replace(RULES[f"{DOMAIN}::{MEAN_OP}"], finish=finish_masked_mean)
