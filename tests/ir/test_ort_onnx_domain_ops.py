"""An op onnxruntime registers in the ONNX domain below the opset that defines it: its
transformers optimizer (``optimize_model``, default level) writes ``LayerNormalization``
into GPT-2's opset-13 export. ONNX's inference has no schema for it at 13, so every value
after it stayed untyped: on GPT-2 no group and no lock at all, every parameter "in no
group" and every plan empty; here the layers around it lock as "rank unknown". Typed by
the op's first definition, which onnxruntime's agrees with, it prunes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from deadchannels import assert_groups_complete
from onnx import TensorProto, helper, numpy_helper

from drpopt import analyze

sys.path.insert(0, str(Path(__file__).parents[1] / "corpus"))
from unseen_battery import check_exact


def _model():
    """``x @ W1`` -> LayerNormalization (opset 13) -> ``@ W2`` -> com.microsoft FastGelu
    -> ``@ W3`` (with a com.microsoft op the model is typed node by node after ONNX's
    whole-model inference gave up)."""
    rng = np.random.default_rng(0)

    def const(name, *shape, shift=0.0):
        arr = (rng.standard_normal(shape) * (0.2 if shift else 1.0) + shift).astype(np.float32)
        return numpy_helper.from_array(arr, name)

    inits = [const("w1", 8, 16), const("g", 16, shift=1.0), const("b", 16, shift=1e-3)]
    inits += [const("w2", 16, 12), const("w3", 12, 5)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["n", "w2"], ["m"]),
        helper.make_node("FastGelu", ["m"], ["r"], domain="com.microsoft"),
        helper.make_node("MatMul", ["r", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "layernorm_at_13",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5])],
        inits,
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 7
    return model


def test_layernorm_below_opset_17_is_typed_and_prunes():
    model = _model()
    a = analyze(model)
    assert sorted(g.size for g in a.prunable_groups) == [12, 16], a.groups
    assert_groups_complete(a, model)
    # the drpai and cpu targets keep the 16 channels whole (their alignment): the written
    # model keeps the input's LayerNormalization at opset 13, which onnxruntime runs and
    # onnx.checker refuses, as it refuses the input
    for config in ("rate0.3", "rate0.5", "rate0.7"):
        pruned = check_exact(model, config)
        assert pruned.expected_params < pruned.before.params
