"""``edge_layers``' first layers (what ``keep_first`` leaves dense) are those that read the
input's data: a Shape of the input reaching a later reshape's target does not make the
layers after it first, and a token model's first layer is its embedding lookup. Before,
GPT-2 as optimum exports it (the ids' Shape builds the position ids and every view's
target; the residual adds carry the embedding to every block) had every layer first: the
cpu and drpai targets pruned nothing."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from drpopt.ir.from_onnx import from_onnx
from drpopt.passes.common import edge_layers


def test_a_shape_of_the_input_does_not_make_later_layers_first():
    """x -> Conv -> Relu -> Reshape(to Shape(x)) -> Conv: only the first Conv is first."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["r", "s"], ["rr"], name="reshape"),
        helper.make_node("Conv", ["rr", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_of_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    first, last = edge_layers(from_onnx(model))
    assert first == {"conv1"} and last == {"conv2"}


def test_a_token_model_starts_at_its_embedding():
    from round5c_seq_torch import gpt2

    first, last = edge_layers(from_onnx(gpt2()))
    assert "/wte/Gather" in first and last == {"/lm_head/MatMul"}
    # the attention mask's path to each block's output projection stays; nothing else
    assert not [n for n in first if "c_attn" in n or "c_fc" in n or "mlp_proj" in n], first
