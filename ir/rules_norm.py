"""How normalisations are written when channels are masked (the ``sparse`` and
``unmasked_inputs`` of their ``OpRule``), and how ``compact`` puts them back.

- BatchNormalization: its running mean and variance (inputs 3 and 4) are not zeroed
  (``unmasked_inputs``); the zeroed scale and shift already make the channel zero;
- LayerNormalization over a pruned channel axis (``sparse``): it computes its mean and
  variance over every channel. In the compact model the pruned channels are gone, so the
  statistics are over the kept ones; in the sparse model (dense shapes with zeros) they
  would still count the pruned channels, and the two would differ. In the sparse model such
  a node becomes ``drpopt.MaskedLayerNormalization(X, Scale, Bias, Mask)``: a model-local
  ONNX function (plain ONNX ops inside, which onnxruntime runs and
  ``onnx.inliner.inline_local_functions`` expands) that normalises over the channels where
  ``Mask`` is 1:

      XM = X * Mask;  k = ReduceSum(Mask)
      D  = (XM - ReduceSum(XM) / k) * Mask
      Y  = D / sqrt(ReduceSum(D * D) / k + epsilon) * Scale + Bias

  ``Mask`` is a channel constant of the group like the scale and bias (zeroed by
  ``apply-masks``, sliced by ``compact``); the masked op's ``finish`` turns a node whose
  mask is all ones back into a plain LayerNormalization (written out in plain ops before
  opset 17). So the sparse model computes exactly what the compact one does. A LayerNorm
  written out in plain ops is folded into one node first (``fold_layernorm``, by
  ``apply-masks``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node
from drpopt.ir.rules import RULES, rule, same_axes
from drpopt.ir.rules_compact import KeptChannels

DOMAIN = "drpopt"
OP = "MaskedLayerNormalization"


def function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedLayerNormalization``, written with the
    ops of the model's own default opset (onnxruntime inlines it at that version): before
    opset 13 ReduceSum takes its axes as an attribute, before 15 there is no CastLike (the
    epsilon is then float32, as models of those opsets are), before 12 Constant takes only a
    tensor (the node's ``epsilon`` is then a 0-d float32 tensor)."""

    def reduce_sum(x: str, out: str) -> onnx.NodeProto:
        if opset >= 13:
            return helper.make_node("ReduceSum", [x, "Axes"], [out], keepdims=1)
        return helper.make_node("ReduceSum", [x], [out], axes=[-1], keepdims=1)

    nodes = [helper.make_node("Constant", [], ["Axes"], value_ints=[-1])] if opset >= 13 else []
    nodes += [
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        helper.make_node("ReduceSum", ["Mask"], ["K"], keepdims=0),
        reduce_sum("XM", "S"),
        helper.make_node("Div", ["S", "K"], ["Mean"]),
        helper.make_node("Sub", ["XM", "Mean"], ["D0"]),
        helper.make_node("Mul", ["D0", "Mask"], ["D"]),
        helper.make_node("Mul", ["D", "D"], ["D2"]),
        reduce_sum("D2", "SS"),
        helper.make_node("Div", ["SS", "K"], ["Var"]),
        helper.make_node("Constant", [], ["Eps0"], value_float=1e-5),
    ]
    nodes[-1].attribute[0].ref_attr_name = "epsilon"
    nodes[-1].attribute[0].ClearField("f")
    if opset < 12:  # Constant has no value_float: the node's epsilon is a 0-d tensor there
        nodes[-1].attribute[0].name = "value"
        nodes[-1].attribute[0].type = onnx.AttributeProto.TENSOR
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
        attributes=["epsilon"],
    )


def _ensure_function(graph: Graph) -> None:
    if not any(f.domain == DOMAIN and f.name == OP for f in graph.functions):
        graph.functions.append(function_proto(graph.opsets.get("", 17)))
    graph.opsets.setdefault(DOMAIN, 1)


def mask_layernorm(graph: Graph, node: Node, keep: np.ndarray) -> None:
    """Turns the LayerNormalization ``node`` (over its last axis) into its masked form."""
    x = node.input(0)
    dtype = np.dtype(x.dtype if x is not None and x.dtype is not None else np.float32)
    eps = float(node.attr("epsilon", 1e-5))
    size = keep.size
    if node.input(2) is None:
        zeros = np.zeros(size, dtype=dtype)
        graph.set_input(node, 2, _const(graph, f"{node.name}.bias", zeros))
    graph.set_input(node, 3, _const(graph, f"{node.name}.mask", keep.astype(dtype)))
    for extra in node.outputs[1:]:
        extra.producer = None
    node.outputs = node.outputs[:1]
    if graph.opsets.get("", 17) < 12:  # see function_proto
        node.op_type, node.domain, node.attrs = OP, DOMAIN, {"epsilon": np.array(eps, np.float32)}
    else:
        node.op_type, node.domain, node.attrs = OP, DOMAIN, {"epsilon": eps}
    _ensure_function(graph)


def unmask_layernorm(node: Node) -> bool:
    """A masked LayerNormalization whose mask keeps every channel becomes a plain one."""
    mask = node.input(3)
    if mask is None or not mask.is_const or not np.all(np.asarray(mask.const) == 1):
        return False
    mask.uses = [(n, j) for n, j in mask.uses if n is not node]
    node.inputs = node.inputs[:3]
    node.op_type, node.domain = "LayerNormalization", ""
    node.attrs = {"axis": -1, "epsilon": float(np.asarray(node.attrs.get("epsilon", 1e-5)))}
    return True


def _const(graph: Graph, base: str, array: np.ndarray):
    return graph.value(
        graph.fresh_name(base), const=array, shape=tuple(array.shape), dtype=array.dtype
    )


def fold_layernorm(graph: Graph, ln) -> Node:
    """Replaces a LayerNorm written out in plain ops (``ir.patterns.DecomposedLayerNorm``)
    by one ``LayerNormalization``-shaped node (unit scale, no bias: the pattern's own scale
    and bias ops stay after it), for ``mask_layernorm`` to turn into its masked form."""
    x, out = ln.x, ln.div.outputs[0]
    narrow = x.dtype is not None and np.dtype(x.dtype) != np.float32
    back = None  # a float16 pattern without its own cast: the result cast back to float16
    if ln.cast is not None or (narrow and graph.opsets.get("", 17) < 15):
        # statistics in float32: a float16 model's own cast (torch casts to double), or a
        # model converted to float16 whole at an opset where the masked function's epsilon
        # is float32 (no CastLike before opset 15)
        cast = graph.value(graph.fresh_name(f"{x.name}.cast"), shape=x.shape, dtype=np.float32)
        graph.add_node("Cast", f"{ln.div.name}.Cast", [x], [cast], {"to": 1}, before=ln.div)
        back = None if ln.cast is not None else x.dtype
        x = cast
    dtype = np.dtype(x.dtype if x.dtype is not None else np.float32)
    scale = _const(graph, f"{ln.div.name}.scale", np.ones(int(x.shape[-1]), dtype=dtype))
    kind = dtype if x is not ln.x else out.dtype
    result = graph.value(graph.fresh_name(f"{out.name}.ln"), shape=out.shape, dtype=kind)
    node = graph.add_node(
        "LayerNormalization",
        f"{ln.div.name}.LayerNorm",
        [x, scale],
        [result],
        {"axis": -1, "epsilon": ln.epsilon},
        before=ln.div,  # where the division was: its readers come after it
    )
    if back is not None:
        narrowed = graph.value(graph.fresh_name(f"{out.name}.f16"), shape=out.shape, dtype=back)
        to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(back))
        graph.add_node(
            "Cast", f"{ln.div.name}.CastBack", [result], [narrowed], {"to": to}, before=ln.div
        )
        result = narrowed
    graph.replace_all_uses_with(out, result)
    for n in reversed(ln.nodes):
        graph.remove_node(n)
    return node


def write_out_layernorm(graph: Graph, node: Node) -> None:
    """A ``LayerNormalization`` (over the last axis) as the plain ops of opsets before 17,
    where the op does not exist: mean, centred, variance, sqrt, divide, scale, shift."""
    x, scale, bias, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    dtype = np.dtype(x.dtype if x is not None and x.dtype is not None else np.float32)
    base = node.name
    stats = (*x.shape[:-1], 1) if x is not None and x.shape is not None else None
    eps = _const(graph, f"{base}.epsilon", np.array(node.attr("epsilon", 1e-5), dtype=dtype))
    steps = [
        ("ReduceMean", ["x"], "mean", stats, {"axes": [-1], "keepdims": 1}),
        ("Sub", ["x", "mean"], "centred", y.shape, {}),
        ("Mul", ["centred", "centred"], "square", y.shape, {}),
        ("ReduceMean", ["square"], "var", stats, {"axes": [-1], "keepdims": 1}),
        ("Add", ["var", "eps"], "var_eps", stats, {}),
        ("Sqrt", ["var_eps"], "std", stats, {}),
        ("Div", ["centred", "std"], "normalised", y.shape, {}),
    ]
    last = "normalised"
    # a unit scale and a zero bias (those fold_layernorm gave a written-out LayerNorm,
    # whose own scale and shift follow it) are left out: the model gets its ops back
    if not (scale.is_const and np.all(np.asarray(scale.const) == 1)):
        steps.append(("Mul", [last, "scale"], "scaled", y.shape, {}))
        last = "scaled"
    if bias is not None and not (bias.is_const and not np.any(np.asarray(bias.const))):
        steps.append(("Add", [last, "bias"], "shifted", y.shape, {}))
    values = {"x": x, "eps": eps, "scale": scale, "bias": bias}
    for op, ins, out, shape, attrs in steps:
        values[out] = graph.value(graph.fresh_name(f"{base}.{out}"), shape=shape, dtype=dtype)
        name = graph.fresh_name(f"{base}.{out}_{op}")
        graph.add_node(op, name, [values[i] for i in ins], [values[out]], attrs, before=node)
    graph.replace_all_uses_with(y, values[steps[-1][2]])
    graph.remove_node(node)


# ---- the rule objects -------------------------------------------------------------------
@rule(f"{DOMAIN}::{OP}")
def _couple_masked_layernorm(node: Node, cg: ChannelGraph) -> None:
    """Scale, bias and mask follow the channel axis (the last)."""
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
            cg.lock_value(p, "rule", f"{OP} '{node.name}': not 1-D", node)


def sparse_layernorm(graph: Graph, node: Node, kept: KeptChannels) -> bool:
    """The ``sparse`` hook of LayerNormalization: the masked form where its channel axis
    (the last, the only one its rule leaves prunable) is masked."""
    x = node.input(0)
    keep = kept.mask(x, -1) if x is not None and x.rank is not None else None
    if keep is None or keep.all():
        return False
    mask_layernorm(graph, node, keep)
    return True


def finish_masked_layernorm(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """The ``finish`` hook of the masked form: once ``compact`` has cut the pruned channels
    the mask is all ones, and the node is a plain LayerNormalization again."""
    if unmask_layernorm(node) and graph.opsets.get("", 17) < 17:
        write_out_layernorm(graph, node)


RULES["LayerNormalization"] = replace(RULES["LayerNormalization"], sparse=sparse_layernorm)
RULES["BatchNormalization"] = replace(RULES["BatchNormalization"], unmasked_inputs=(3, 4))
RULES[f"{DOMAIN}::{OP}"] = replace(RULES[f"{DOMAIN}::{OP}"], finish=finish_masked_layernorm)
