"""String attributes are decoded once, on load: the IR holds ``str`` (lists of ``str``),
every reader compares against ``str``, and both writers encode them back to the same bytes,
so a model goes through drpopt with its attributes byte-identical and runs the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import pytest
from deadchannels import run_model
from onnx import TensorProto, helper, numpy_helper

from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.from_onnx_ir import from_onnx_ir
from drpopt.ir.rules_rnn import unsupported
from drpopt.ir.to_onnx import to_onnx
from drpopt.ir.to_onnx_ir import to_onnx_ir

H = 4  # LSTM hidden size
STRINGS = {  # node name -> its string attributes
    "pad": {"mode": "reflect"},
    "resize": {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    "d2s": {"mode": "CRD"},
    "einsum": {"equation": "bchw,bchw->bhw"},
    "lstm": {
        "direction": "bidirectional",
        "activations": ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Tanh", "Tanh"],
    },
}


def string_model() -> onnx.ModelProto:
    """Pad (reflect) > Resize (linear, align_corners) > DepthToSpace (CRD) > Einsum
    ``[1, 16, 16]`` > a bidirectional LSTM with its activations spelled out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(rng.standard_normal((2, 4 * H, 16)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((2, 4 * H, H)).astype(np.float32), "R"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", **STRINGS["pad"]),
        helper.make_node("Resize", ["p", "", "scales"], ["r"], name="resize", **STRINGS["resize"]),
        helper.make_node("DepthToSpace", ["r"], ["d"], name="d2s", blocksize=2, **STRINGS["d2s"]),
        helper.make_node("Einsum", ["d", "d"], ["e"], name="einsum", **STRINGS["einsum"]),
        helper.make_node(
            "LSTM", ["e", "W", "R"], ["y"], name="lstm", hidden_size=H, **STRINGS["lstm"]
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def attributes(model: onnx.ModelProto) -> dict[str, list[bytes]]:
    """Each node's attributes, serialised (in name order)."""
    return {
        n.name: sorted(a.SerializeToString(deterministic=True) for a in n.attribute)
        for n in model.graph.node
    }


def test_string_attributes_are_str_in_the_ir():
    graph = from_onnx(string_model())
    nodes = {n.name: n for n in graph.nodes}
    for name, attrs in STRINGS.items():
        for key, want in attrs.items():
            assert nodes[name].attr(key) == want, (name, key)  # str, not bytes


@pytest.mark.parametrize("path", ["proto", "onnx_ir"])
def test_string_attributes_round_trip_byte_identical_and_run_the_same(path):
    model = string_model()
    if path == "proto":
        back = to_onnx(from_onnx(model))
    else:
        back = onnx_ir.to_proto(to_onnx_ir(from_onnx_ir(onnx_ir.from_proto(model))))
    assert attributes(back) == attributes(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 8, 2, 2)).astype(np.float32)}
    (ref,), (got,) = run_model(model, feeds), run_model(back, feeds)
    spread = float(ref.max() - ref.min())
    assert spread > 1e-3 * max(1.0, float(np.abs(ref).max())), "degenerate reference"
    assert float(np.abs(ref - got).max()) / spread < 1e-6


def test_bytes_that_are_not_utf8_are_written_back_unchanged():
    """A string attribute that is not text (a custom op's blob) stays bytes, and both
    writers give back the same bytes."""
    node = helper.make_node("Blob", ["x"], ["y"], name="blob", domain="acme", data=b"\xff\x00ok")
    graph = helper.make_graph(
        [node],
        "blob",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)]
    )
    assert from_onnx(model).nodes[0].attr("data") == b"\xff\x00ok"
    assert attributes(to_onnx(from_onnx(model))) == attributes(model)
    via_ir = onnx_ir.to_proto(to_onnx_ir(from_onnx(model)))
    assert attributes(via_ir) == attributes(model)


def test_readers_compare_against_str():
    """The LSTM rule reads ``direction`` and ``activations`` as text: a bidirectional LSTM
    with its default activations spelled out has prunable hidden units; with a non-default
    activation the same model is locked (the rule read the strings, not passed them by)."""
    model = string_model()
    lstm = model.graph.node[-1]
    acts = next(a for a in lstm.attribute if a.name == "activations")
    acts.strings[1] = b"Relu"
    graph = from_onnx(model)
    (node,) = [n for n in graph.nodes if n.op_type == "LSTM"]
    assert "activations" in (unsupported(node) or "")
    (ok,) = [n for n in from_onnx(string_model()).nodes if n.op_type == "LSTM"]
    assert unsupported(ok) is None
