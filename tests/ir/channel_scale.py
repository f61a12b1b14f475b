"""``acme::ChannelScale``, a custom op for the op-rule tests: ``y = x * scale`` per channel,
whose ``shape`` attribute (``[1, C, 1, 1]``) states the channel count, so compaction has to
rewrite it. Models carry the op as a model-local function: onnxruntime runs them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, helper

from drpopt.ir.rules import OpRule, same_axes
from drpopt.zoo.builder import OnnxBuilder


def channel_scale_function() -> onnx.FunctionProto:
    """``Mul(x, Reshape(scale, @shape))``: the op's body, with its shape from the attribute."""
    const = helper.make_node("Constant", [], ["shape"])
    const.attribute.append(
        AttributeProto(name="value_ints", ref_attr_name="shape", type=AttributeProto.INTS)
    )
    nodes = [
        const,
        helper.make_node("Reshape", ["scale", "shape"], ["column"]),
        helper.make_node("Mul", ["x", "column"], ["y"]),
    ]
    return helper.make_function(
        "acme",
        "ChannelScale",
        ["x", "scale"],
        ["y"],
        nodes,
        [helper.make_opsetid("", 17)],
        attributes=["shape"],
    )


def channel_scale_model(op: str = "ChannelScale") -> onnx.ModelProto:
    """conv c1 (8) > Relu > conv c2 (16) > Relu > ``acme::<op>`` > conv out (4). ``op`` other
    than ChannelScale: a one-input op with no body (its output shape given as value_info)."""
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(b.relu(b.conv(x, 8, name="c1")), 16, name="c2"))
    if op == "ChannelScale":
        scale = b.const("cs.scale", np.linspace(0.5, 2.0, 16).astype(np.float32))
        node = helper.make_node(op, [y, scale], ["cs"], name="cs", shape=[1, 16, 1, 1])
    else:
        node = helper.make_node(op, [y], ["cs"], name="cs")
    node.domain = "acme"
    b.nodes.append(node)
    b.shapes["cs"] = b.shapes[y]
    b.output(b.conv("cs", 4, name="out"))
    model = b.build(check=False, infer_shapes=False)
    model.opset_import.append(helper.make_opsetid("acme", 1))
    if op == "ChannelScale":
        model.functions.append(channel_scale_function())
    # shape inference cannot see into a custom op without a body: state the shapes after it
    model.graph.value_info.append(
        helper.make_tensor_value_info("cs", onnx.TensorProto.FLOAT, [1, 16, 8, 8])
    )
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
    )
    return model


def couple_channel_scale(node, cg) -> None:
    """Channels pass through; the scale is cut with them."""
    x, scale, y = node.input(0), node.input(1), node.outputs[0]
    same_axes(cg, node, x, y)
    cg.identity(cg.space(scale, 0), cg.space(x, 1), node)
    cg.role(cg.space(scale, 0), "follower", node)


def compact_channel_scale(graph, node, kept) -> None:
    """The ``shape`` attribute states the channel count: the kept count replaces it."""
    count = kept.count(node.outputs[0], 1)
    if count is not None:
        shape = list(node.attrs["shape"])
        shape[1] = count
        node.attrs["shape"] = shape


CHANNEL_SCALE = OpRule(couple_channel_scale, compact=compact_channel_scale)
