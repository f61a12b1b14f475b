"""``acme::ChannelNorm``, a custom normalisation for the plugin tests: an RMS norm over the
channel axis, ``y = x / sqrt(sum_c x^2 / channels + eps) * scale``, whose ``channels``
attribute states the channel count. Like a LayerNorm it reads every channel for its
statistic, so its plugin rule says all three things an op can need:

- ``couple``: channels pass through, the scale (``[C, 1, 1]``) is cut with them;
- ``compact``: the ``channels`` attribute becomes the kept count;
- ``sparse``: where channels are masked the node becomes ``acme::MaskedChannelNorm(x,
  scale, mask)``, which divides by the number of kept channels; its own rule's ``finish``
  puts the plain op back once ``compact`` has cut the pruned ones (mask all ones).

Both ops are model-local functions: onnxruntime runs them. Self-contained (the plugin test
installs this file as a module of its package)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, helper

from drpopt.ir.rules import OpRule, follow_members, same_axes

DOMAIN = "acme"
EPSILON = 1e-5


def _statistic(x: str, count: str) -> list[onnx.NodeProto]:
    """``x / sqrt(ReduceSum(x * x, channels) / count + eps) * scale`` into ``y``."""
    return [
        helper.make_node("Constant", [], ["axes"], value_ints=[1]),
        helper.make_node("Mul", [x, x], ["x2"]),
        helper.make_node("ReduceSum", ["x2", "axes"], ["sum"], keepdims=1),
        helper.make_node("Div", ["sum", count], ["mean"]),
        helper.make_node("Constant", [], ["eps"], value_float=EPSILON),
        helper.make_node("Add", ["mean", "eps"], ["var"]),
        helper.make_node("Sqrt", ["var"], ["rms"]),
        helper.make_node("Div", [x, "rms"], ["normed"]),
        helper.make_node("Mul", ["normed", "scale"], ["y"]),
    ]


def channel_norm_function() -> onnx.FunctionProto:
    """``ChannelNorm(x, scale)``, its count from the ``channels`` attribute."""
    count = helper.make_node("Constant", [], ["n"])
    count.attribute.append(
        AttributeProto(name="value_int", ref_attr_name="channels", type=AttributeProto.INT)
    )
    nodes = [count, helper.make_node("Cast", ["n"], ["count"], to=onnx.TensorProto.FLOAT)]
    return helper.make_function(
        DOMAIN,
        "ChannelNorm",
        ["x", "scale"],
        ["y"],
        nodes + _statistic("x", "count"),
        [helper.make_opsetid("", 17)],
        attributes=["channels"],
    )


def masked_channel_norm_function() -> onnx.FunctionProto:
    """``MaskedChannelNorm(x, scale, mask)``: the statistic over the channels where the mask
    (``[C, 1, 1]``) is 1."""
    nodes = [
        helper.make_node("Mul", ["x", "mask"], ["xm"]),
        helper.make_node("ReduceSum", ["mask"], ["count"], keepdims=0),
    ]
    return helper.make_function(
        DOMAIN,
        "MaskedChannelNorm",
        ["x", "scale", "mask"],
        ["y"],
        nodes + _statistic("xm", "count"),
        [helper.make_opsetid("", 17)],
    )


# ---- the plugin's rules ---------------------------------------------------------------
def couple_channel_norm(node, cg) -> None:
    """Channels pass through; the scale (and the mask of the masked form) is cut with them."""
    x, y = node.input(0), node.outputs[0]
    same_axes(cg, node, x, y)
    for p in node.inputs[1:]:
        cg.identity(cg.space(p, 0), cg.space(x, 1), node)
        cg.role(cg.space(p, 0), "follower", node)


def compact_channel_norm(graph, node, kept) -> None:
    """The ``channels`` attribute states the count: the kept count replaces it."""
    count = kept.count(node.outputs[0], 1)
    if count is not None:
        node.attrs["channels"] = count


def sparse_channel_norm(graph, node, kept) -> bool:
    """Masked channels: the masked form, which counts only the kept ones."""
    keep = kept.mask(node.input(0), 1)
    if keep is None or keep.all():
        return False
    mask = keep.astype(np.float32).reshape(-1, 1, 1)
    name = graph.fresh_name(f"{node.name}.mask")
    graph.set_input(node, 2, graph.value(name, const=mask, shape=mask.shape, dtype=mask.dtype))
    node.op_type, node.attrs = "MaskedChannelNorm", {}
    if not any(f.name == "MaskedChannelNorm" for f in graph.functions):
        graph.functions.append(masked_channel_norm_function())
    return True


def finish_masked_channel_norm(graph, node, kept) -> None:
    """Once the pruned channels are cut the mask is all ones: the plain op again."""
    mask = node.input(2)
    if mask is None or not mask.is_const or not np.all(np.asarray(mask.const) == 1):
        return
    graph.set_input(node, 2, None)
    node.inputs = node.inputs[:2]
    node.op_type, node.attrs = "ChannelNorm", {"channels": int(mask.shape[0])}


RULES = {
    f"{DOMAIN}::ChannelNorm": OpRule(
        couple_channel_norm, compact=compact_channel_norm, sparse=sparse_channel_norm
    ),
    f"{DOMAIN}::MaskedChannelNorm": OpRule(
        couple_channel_norm, compact=follow_members, finish=finish_masked_channel_norm
    ),
}


def channel_norm_model() -> onnx.ModelProto:
    """conv c1 (8) > Relu > conv c2 (16) > Relu > ``acme::ChannelNorm`` > conv out (4)."""
    from drpopt.zoo.builder import OnnxBuilder

    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(b.relu(b.conv(x, 8, name="c1")), 16, name="c2"))
    scale = b.const("cn.scale", np.linspace(0.5, 2.0, 16).astype(np.float32).reshape(16, 1, 1))
    node = helper.make_node("ChannelNorm", [y, scale], ["cn"], name="cn", channels=16)
    node.domain = DOMAIN
    b.nodes.append(node)
    b.shapes["cn"] = b.shapes[y]
    b.output(b.conv("cn", 4, name="out"))
    model = b.build(check=False, infer_shapes=False)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    model.functions.append(channel_norm_function())  # the masked form comes with pruning
    model.graph.value_info.append(
        helper.make_tensor_value_info("cn", onnx.TensorProto.FLOAT, [1, 16, 8, 8])
    )
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
    )
    return model
