"""`drpopt analyze` reads no weight (issue 8, item 5): a model whose external data is gone
or unreadable analyses the same, a model with its weights inline has none of them read, and
the zero counts (the only figures that need the weights) come with --count-zeros."""

from __future__ import annotations

import importlib
import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.ir.onnx_scan import FileWeights, tensor_array
from drpopt.zoo import build

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
TOTALS = {  # the --json totals: the analysis' own, the shared figures, the group shares
    *("params", "macs", "prunable_params", "prunable_macs", "groups", "prunable_groups"),
    *("locked_groups", "prunable_channels", "channels", "locked_by", "unsupported_ops"),
    *("nonzero_params", "macs_nonzero", "locked_params", "locked_macs", "ungrouped_params"),
    *("ungrouped_macs", "removable_params", "removable_macs"),
}


def _sparse_resnet() -> onnx.ModelProto:
    """resnet18 with the first half of every conv's output channels zeroed: zeros to count."""
    model = build("resnet18")
    for t in model.graph.initializer:
        if len(t.dims) == 4:
            w = numpy_helper.to_array(t).copy()
            w[: w.shape[0] // 2] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return model


def _analyze(*args: str) -> str:
    result = runner.invoke(app, ["analyze", *map(str, args)], env=WIDE)
    assert result.exit_code == 0, result.output
    return re.sub(r"analysed (\d+) nodes in [\d.]+ s", r"analysed \1 nodes", result.stdout)


def _outputs(path) -> tuple[str, dict]:
    return _analyze(path), json.loads(_analyze(path, "--json"))


@pytest.fixture(scope="module")
def sparse_model() -> onnx.ModelProto:
    return _sparse_resnet()


def test_external_data_gone_or_unreadable_analyses_the_same(sparse_model, tmp_path):
    path = tmp_path / "ext.onnx"
    external = onnx.ModelProto()
    external.CopyFrom(sparse_model)  # saving with external data rewrites the proto it is given
    onnx.save_model(
        external, str(path), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    text, data = _outputs(path)
    assert "Coupled channel groups" in text and data["totals"]["params"] > 10**5
    with open(tmp_path / "ext.data", "r+b") as fh:
        fh.truncate(0)  # any read of a weight now fails
    assert _outputs(path) == (text, data)
    counted = runner.invoke(app, ["analyze", str(path), "--count-zeros"])
    assert counted.exit_code == 2  # counting zeros reads the weights, and says what is wrong
    assert counted.stderr.count("\n") == 1
    assert "ext.data: the external data of '" in counted.stderr
    assert "keep the model's complete .data file beside it" in counted.stderr


def test_inline_weights_are_not_read(sparse_model, tmp_path, monkeypatch):
    """Neither from the file (``FileWeights``) nor from a parsed tensor: every lazy weight
    of the IR is read through one of the two."""
    from_onnx_module = importlib.import_module("drpopt.ir.from_onnx")  # not the function
    path = tmp_path / "inline.onnx"
    onnx.save(sparse_model, str(path))
    want = _outputs(path)
    read = []

    def refuse(self, offset, length, name):
        raise AssertionError(f"analyze read the weight {name}")

    def parsed(tensor, base_dir=""):
        read.append(tensor.name)
        return tensor_array(tensor, base_dir)

    monkeypatch.setattr(FileWeights, "_read", refuse)
    monkeypatch.setattr(from_onnx_module, "tensor_array", parsed)
    assert _outputs(path) == want
    assert read == []
    counted = runner.invoke(app, ["analyze", str(path), "--count-zeros"])
    assert counted.exit_code == 2 and "analyze read the weight" in counted.stderr  # it reads


def test_count_zeros_adds_the_zero_figures_and_nothing_else(sparse_model, tmp_path):
    from drpopt.ir.analysis import analyze
    from drpopt.passes.figures import model_figures

    path = tmp_path / "m.onnx"
    onnx.save(sparse_model, str(path))
    text, data = _outputs(path)
    counted_text = _analyze(path, "--count-zeros")
    counted = json.loads(_analyze(path, "--json", "--count-zeros"))
    assert set(data["totals"]) == set(counted["totals"]) == TOTALS  # the schema stays
    assert data["totals"]["nonzero_params"] is None and data["totals"]["macs_nonzero"] is None
    assert counted == {
        **data,
        "totals": {**data["totals"], **{k: counted["totals"][k] for k in ("nonzero_params",
                                                                          "macs_nonzero")}},
    }  # fmt: skip
    expected = model_figures(analyze(sparse_model).graph)  # what prune's "before" states
    assert counted["totals"]["nonzero_params"] == expected["nonzero_params"]
    assert counted["totals"]["macs_nonzero"] == expected["macs_nonzero"]
    assert expected["nonzero_params"] < 0.6 * expected["params"]  # half of the convs zeroed
    assert "nonzero" not in text and "zeros not counted" in text
    assert re.search(r"^\s*nonzero\s+\S+\s+[\d.]+%", counted_text, re.M)
    assert re.search(r"^\s*zeros skipped\s+\S+\s+[\d.]+%", counted_text, re.M)
    assert "zeros not counted" not in counted_text
    assert counted_text.replace("\n", "") != text.replace("\n", "")


def test_an_initializer_defined_twice_is_one_line_exit_2(tmp_path):
    w4 = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    w8 = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w4, w8],
    )
    path = tmp_path / "twice.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    for command in (["analyze"], ["check"], ["report", "-o", str(tmp_path / "r.html")]):
        result = runner.invoke(app, [command[0], str(path), *command[1:]])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert result.stderr.endswith(
            "twice.onnx: initializer 'w' is defined twice, as float32 (4, 3, 1, 1) and as "
            "float32 (8, 3, 1, 1) (onnxruntime refuses such a model too); re-export the "
            "model, or keep one of the two initializers\n"
        )
