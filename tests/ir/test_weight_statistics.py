"""Weights computed in the graph from statistics of a weight (NF-ResNet's and NFNet's
``ScaledStdConv2d``: ``F.batch_norm(weight.reshape(1, out, -1), training=True)``, exported
as a BatchNormalization with ``training_mode=1`` over the weight). Its statistics mix every
input channel of the conv: the conv's input channels must lock, naming the node (they
pruned, and the compact model standardised over fewer columns than the sparse one); its
output channels (one statistic each) still prune."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import assert_groups_complete
from onnx import TensorProto, helper, numpy_helper

from drpopt import analyze


def _std_conv_model(opset: int = 17) -> onnx.ModelProto:
    """Conv (8 channels) -> Relu -> Conv whose (6, 8, 3, 3) weight is a training-mode
    BatchNormalization of the (1, 6, 72) weight -> Relu -> Conv to 4 outputs. Below opset
    14 the mode is its five outputs (no ``training_mode`` attribute)."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        init("w1", 8, 3, 3, 3),
        init("w2", 1, 6, 72),
        init("gain", 6),
        numpy_helper.from_array(np.zeros(6, np.float32), "beta"),
        numpy_helper.from_array(np.zeros(6, np.float32), "mean"),
        numpy_helper.from_array(np.ones(6, np.float32), "var"),
        numpy_helper.from_array(np.array([6, 8, 3, 3], np.int64), "wshape"),
        init("w3", 4, 6, 1, 1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node(
            "BatchNormalization",
            ["w2", "gain", "beta", "mean", "var"],
            ["wn", "rm", "rv", *(["sm", "sv"] if opset < 14 else [])],
            momentum=1.0,
            **({"training_mode": 1} if opset >= 14 else {}),
        ),
        helper.make_node("Reshape", ["wn", "wshape"], ["w2r"]),
        helper.make_node("Conv", ["r1", "w2r"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "std_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 13])
def test_training_mode_batchnorm_of_a_weight_locks_the_conv_inputs_only(opset):
    model = onnx.shape_inference.infer_shapes(_std_conv_model(opset))
    a = analyze(model)
    (inputs,) = [g for g in a.groups if g.size == 8]
    assert not inputs.prunable and "BatchNormalization" in inputs.reason, inputs.reason
    assert [g.size for g in a.prunable_groups] == [6]  # one statistic per output channel
    assert_groups_complete(a, model)
