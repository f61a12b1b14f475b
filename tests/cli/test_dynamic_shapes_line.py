"""``analyze`` on a model with a dynamic height and width says which shapes its MACs were
computed for: the symbols it counted as 1 without ``--input-shape``, the numbers with it."""

from __future__ import annotations

import onnx
from dynmodels import dynamic_cnn
from typer.testing import CliRunner

from drpopt.cli.main import app

runner = CliRunner()


def _analyze(tmp_path, *extra: str) -> str:
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_cnn(), str(path))
    result = runner.invoke(app, ["analyze", str(path), *extra], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


def test_symbolic_dims_are_named_as_counted_as_one(tmp_path):
    text = _analyze(tmp_path)
    assert "computed for input shapes x: (N, 3, H, W); MACs count N, H, W" in text


def test_given_shapes_are_the_ones_stated(tmp_path):
    text = _analyze(tmp_path, "--input-shape", "x:1,3,64,48")
    assert "computed for input shapes x: 1x3x64x48" in text and "MACs count" not in text
