"""LayerNormalization over a pruned channel axis, in sparse and in compact form.

A LayerNormalization over the channel axis computes its mean and variance over every
channel. In the compact model the pruned channels are gone, so the statistics are over the
kept ones; in the sparse model (dense shapes with zeros) they would still count the pruned
channels, and the two would differ. In the sparse model such a node becomes
``drpopt.MaskedLayerNormalization(X, Scale, Bias, Mask)``: a model-local ONNX function (plain
ONNX ops inside, which onnxruntime runs and ``onnx.inliner.inline_local_functions`` expands)
that normalises over the channels where ``Mask`` is 1:

    XM = X * Mask;  k = ReduceSum(Mask)
    D  = (XM - ReduceSum(XM) / k) * Mask
    Y  = D / sqrt(ReduceSum(D * D) / k + epsilon) * Scale + Bias

``Mask`` is a channel constant of the group like the scale and bias (zeroed by
``apply-masks``, sliced by ``compact``); ``compact`` turns a node whose mask is all ones back
into a plain LayerNormalization. So the sparse model computes exactly what the compact one
does.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from drpopt.ir.core import Graph, Node

DOMAIN = "drpopt"
OP = "MaskedLayerNormalization"


def function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedLayerNormalization``."""
    axes = helper.make_node("Constant", [], ["Axes"], value_ints=[-1])
    nodes = [
        axes,
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        helper.make_node("ReduceSum", ["Mask"], ["K"], keepdims=0),
        helper.make_node("ReduceSum", ["XM", "Axes"], ["S"], keepdims=1),
        helper.make_node("Div", ["S", "K"], ["Mean"]),
        helper.make_node("Sub", ["XM", "Mean"], ["D0"]),
        helper.make_node("Mul", ["D0", "Mask"], ["D"]),
        helper.make_node("Mul", ["D", "D"], ["D2"]),
        helper.make_node("ReduceSum", ["D2", "Axes"], ["SS"], keepdims=1),
        helper.make_node("Div", ["SS", "K"], ["Var"]),
        helper.make_node("Constant", [], ["Eps0"], value_float=1e-5),
    ]
    nodes[-1].attribute[0].ref_attr_name = "epsilon"
    nodes[-1].attribute[0].ClearField("f")
    nodes += [
        helper.make_node("CastLike", ["Eps0", "X"], ["Eps"]),
        helper.make_node("Add", ["Var", "Eps"], ["VE"]),
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
        graph.functions.append(function_proto(max(graph.opsets.get("", 17), 17)))
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
    node.attrs = {"axis": -1, "epsilon": node.attrs.get("epsilon", 1e-5)}
    return True


def _const(graph: Graph, base: str, array: np.ndarray):
    return graph.value(
        graph.fresh_name(base), const=array, shape=tuple(array.shape), dtype=array.dtype
    )
