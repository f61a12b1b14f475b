"""`drpopt analyze` and `drpopt demo`, through typer's runner and as real subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.zoo import build
from drpopt.zoo.builder import OnnxBuilder

runner = CliRunner()


@pytest.fixture(scope="module")
def yolox_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "yolox.onnx"
    onnx.save(build("yolox_s_like"), str(path))
    return path


@pytest.fixture(scope="module")
def custom_op_path(tmp_path_factory):
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 8, name="c1"))
    b.nodes.append(helper.make_node("Frobnicate", [y], ["fro"], name="fro", domain="acme"))
    b.shapes["fro"] = b.shapes[y]
    b.output(b.conv("fro", 4, name="out"))
    model = b.build(check=False, infer_shapes=False)
    model.opset_import.append(helper.make_opsetid("acme", 1))
    path = tmp_path_factory.mktemp("m") / "custom.onnx"
    onnx.save(model, str(path))
    return path


def test_table_and_totals(yolox_path):
    result = runner.invoke(app, ["analyze", str(yolox_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Coupled channel groups" in out
    assert "backbone.stem.conv.conv" in out
    assert "graph output 'head.transpose'" in out
    for word in ("parameters", "MACs", "prunable", "locked by"):
        assert word in out


def test_json_schema(yolox_path):
    result = runner.invoke(app, ["analyze", str(yolox_path), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["schema"] == 1
    group = data["groups"][0]
    for key in ("id", "size", "prunable", "reason", "members", "params", "macs", "producers"):
        assert key in group
    member = group["members"][0]
    for key in ("role", "node", "tensor", "axis", "start", "block", "length"):
        assert key in member
    totals = data["totals"]
    assert totals["groups"] == len(data["groups"])
    assert totals["prunable_groups"] + totals["locked_groups"] == totals["groups"]
    assert 0 < totals["prunable_params"] <= totals["params"]
    assert totals["unsupported_ops"] == []
    assert any(not g["prunable"] and "head.transpose" in g["reason"] for g in data["groups"])


def test_strict_fails_on_an_op_without_rule(custom_op_path):
    ok = runner.invoke(app, ["analyze", str(custom_op_path)])
    assert ok.exit_code == 0
    assert "without a coupling rule" in ok.output
    strict = runner.invoke(app, ["analyze", str(custom_op_path), "--strict", "--json"])
    assert strict.exit_code == 1
    assert json.loads(strict.stdout)["totals"]["unsupported_ops"] == [
        {"op": "Frobnicate", "node": "fro"}
    ]
    assert "Frobnicate 'fro'" in strict.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file"),
        ("text", "not a readable ONNX model"),
        ("truncated", "not a readable ONNX model"),
        ("dir", "is a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, yolox_path, setup, message):
    path = tmp_path / "bad.onnx"
    if setup == "text":
        path.write_text("hello\n")
    elif setup == "truncated":
        path.write_bytes(yolox_path.read_bytes()[:5000])
    elif setup == "dir":
        path.mkdir()
    result = runner.invoke(app, ["analyze", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.output


def test_demo_runs_and_saves(tmp_path):
    out = tmp_path / "example.onnx"
    result = runner.invoke(app, ["demo", "--model", "resnet18", "--save", str(out)])
    assert result.exit_code == 0, result.output
    assert "layer1.0.conv1" in result.output
    assert onnx.load(str(out)).graph.node


def test_demo_rejects_unknown_model():
    result = runner.invoke(app, ["demo", "--model", "nope"])
    assert result.exit_code == 2 and "choose one of" in result.stderr


def test_console_script_and_module_entry_points(yolox_path, tmp_path):
    exe = shutil.which("drpopt")
    commands = [[sys.executable, "-m", "drpopt"]] + ([[exe]] if exe else [])
    for cmd in commands:
        ok = subprocess.run(
            [*cmd, "analyze", str(yolox_path), "--json"], capture_output=True, text=True
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["totals"]["groups"] > 0
        bad = subprocess.run(
            [*cmd, "analyze", str(tmp_path / "missing.onnx")], capture_output=True, text=True
        )
        assert bad.returncode == 2
        assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from drpopt.ir.files import atomic_write_bytes

    out = tmp_path / "x.bin"
    atomic_write_bytes(out, b"data")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert out.read_bytes() == b"data"
