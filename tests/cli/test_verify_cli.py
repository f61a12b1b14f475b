"""`drpopt verify A.onnx B.onnx` through typer's runner: table, JSON, exit codes 0/1/2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from drpopt.cli import verify_cmd
from drpopt.cli.main import app
from drpopt.passes.cleanup import CleanupPass
from drpopt.passes.fold_batchnorm import FoldBatchNormPass
from drpopt.passes.manager import PassManager
from drpopt.zoo import build

verify_cmd.register(app)
verify_cmd.register(app)  # a second registration is harmless

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """resnet18 (A), A with its BNs folded (B), and A with one weight perturbed (C)."""
    root = tmp_path_factory.mktemp("verify")
    model = build("resnet18")
    folded = PassManager([FoldBatchNormPass(), CleanupPass()])(model).to_onnx()
    perturbed = onnx.ModelProto()
    perturbed.CopyFrom(model)
    for t in perturbed.graph.initializer:
        if t.name == "fc.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.05, t.name))
    paths = {}
    for key, proto in (("a", model), ("b", folded), ("c", perturbed)):
        paths[key] = root / f"{key}.onnx"
        onnx.save(proto, str(paths[key]))
    return paths


def test_registered_once():
    names = [verify_cmd._command_name(c) for c in app.registered_commands]
    assert names.count("verify") == 1


def test_matching_models_exit_0_with_a_table(models):
    result = runner.invoke(
        app, ["verify", str(models["a"]), str(models["b"])], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("output", "shape", "max abs", "spread", "cosine", "fc", "1x10", "yes", "match"):
        assert word in out


def test_differing_models_exit_1_with_one_error_line(models):
    result = runner.invoke(
        app, ["verify", str(models["a"]), str(models["c"])], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1
    assert "no" in result.stdout and "match" not in result.stdout  # the verdict is said once
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "worst output 'fc'" in lines[0] and "max abs" in lines[0] and "differ" in lines[0]


def test_loose_tolerance_passes(models):
    result = runner.invoke(app, ["verify", str(models["a"]), str(models["c"]), "--rtol", "0.5"])
    assert result.exit_code == 0, result.output


def test_json(models):
    result = runner.invoke(app, ["verify", str(models["a"]), str(models["b"]), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["worst"] == "fc" and data["problems"] == []
    (out,) = data["outputs"]
    assert out["name"] == "fc" and out["shape"] == [1, 10] and out["ok"] is True
    for key in ("max_abs", "max_rel", "max_ref", "message"):
        assert key in out
    bad = runner.invoke(app, ["verify", str(models["a"]), str(models["c"]), "--json"])
    assert bad.exit_code == 1 and json.loads(bad.stdout)["ok"] is False


def test_inputs_file(models, tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, input=np.ones((1, 3, 64, 64), np.float32))
    ok = runner.invoke(app, ["verify", str(models["a"]), str(models["b"]), "--inputs", str(path)])
    assert ok.exit_code == 0, ok.output
    np.savez(path, image=np.ones((1, 3, 64, 64), np.float32))
    bad = runner.invoke(app, ["verify", str(models["a"]), str(models["b"]), "--inputs", str(path)])
    assert bad.exit_code == 2 and "no array for input(s) input" in bad.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file"),
        ("text", "not a readable ONNX model"),
        ("dir", "is a directory"),
    ],
)
def test_bad_model_file_is_one_line_exit_2(models, tmp_path, setup, message):
    path = tmp_path / "bad.onnx"
    if setup == "text":
        path.write_text("hello\n")
    elif setup == "dir":
        path.mkdir()
    for args in ([str(models["a"]), str(path)], [str(path), str(models["a"])]):
        result = runner.invoke(app, ["verify", *args])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
        assert "Traceback" not in result.output


def test_bad_inputs_file_is_exit_2(models, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_text("junk")
    for path, message in ((junk, "not a readable .npz"), (tmp_path / "no.npz", "no such")):
        args = ["verify", str(models["a"]), str(models["b"]), "--inputs", str(path)]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.stderr
