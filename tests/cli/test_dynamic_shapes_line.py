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


def test_prune_with_real_inputs_keeps_a_dynamic_export_dynamic(tmp_path):
    """``prune --inputs`` without ``--input-shape`` on a dynamic batch+H+W export whose
    tokens go through ``flatten(2).transpose`` and back: the layers prune (before, every
    group was locked by the reshapes over the symbolic ``h*w``), and the compact model keeps
    its symbolic dims and runs at other sizes."""
    import numpy as np
    import onnxruntime as ort
    from test_symbolic_dims import _export, _tokens_module

    axes = {"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch", 2: "h", 3: "w"}}
    model = _export(_tokens_module(), (1, 3, 16, 16), axes)
    src, out, data = tmp_path / "tok.onnx", tmp_path / "small.onnx", tmp_path / "in.npz"
    onnx.save(model, str(src))
    np.savez(data, x=np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("f4"))
    result = runner.invoke(app, ["prune", str(src), "--inputs", str(data), "-o", str(out)])
    assert result.exit_code == 0, result.output
    small = onnx.load(str(out))
    dims = [d.dim_param for d in small.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    weights = {t.name: t.dims for t in small.graph.initializer}
    assert weights["fc.bias"][0] < 24 and weights["down.weight"][0] < 32
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros((2, 3, 32, 24), np.float32)})
    assert y.shape == (2, 5, 8, 6)
