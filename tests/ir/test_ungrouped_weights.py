"""Weights no group indexes are counted "in no group" by ``analyze``; each is listed in
``Analysis.ungrouped`` (and ``--json``'s ``"ungrouped"``, and ``analyze``'s output) with
why: the lock of an axis no rule mapped, or the node reading it and what it lacks. Before,
the share was a bare number (41% of onnxruntime's fused BERT, a conv after an op whose
output shape nothing infers) with no reason anywhere."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from drpopt import analyze
from drpopt.cli.main import app
from drpopt.passes.figures import group_shares
from drpopt.zoo import build


def behind_an_unknown_op() -> onnx.ModelProto:
    """Conv -> an op of a domain nothing knows (no shape for its output) -> Relu -> Conv:
    the second conv's weight has no channel space at all."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mystery", ["c1"], ["m"], name="mystery", domain="vendor"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w1, w2],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("vendor", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_a_weight_in_no_group_is_listed_with_why():
    a = analyze(behind_an_unknown_op())
    assert a.ungrouped == [("w2", 32, "read by Conv 'conv2'; no shape is known for its input 'r'")]
    # what the totals count in no group is what is listed
    assert group_shares(a).ungrouped_params == sum(n for _, n, _ in a.ungrouped)
    assert a.to_dict()["ungrouped"] == [{"tensor": "w2", "params": 32, "reason": a.ungrouped[0][2]}]


def test_a_fully_grouped_model_lists_nothing():
    a = analyze(build("resnet18"))
    assert a.ungrouped == [] and group_shares(a).ungrouped_params == 0


def test_analyze_prints_why_and_json_lists_them(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(behind_an_unknown_op(), path)
    runner = CliRunner()
    out = runner.invoke(app, ["analyze", str(path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "weights in no group" in out.output
    assert "'w2' (32 elements): read by Conv 'conv2'; no shape is known" in out.output
    js = runner.invoke(app, ["analyze", str(path), "--json"])
    assert json.loads(js.stdout)["ungrouped"][0]["tensor"] == "w2"
