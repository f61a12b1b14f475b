"""`drpopt prune --calib`: data-aware pruning from the command line, with a drift report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.zoo import build

runner = CliRunner()


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    onnx.save(build("resnet18"), str(d / "r18.onnx"))
    x = np.random.default_rng(0).standard_normal((20, 3, 64, 64)).astype(np.float32)
    np.savez(d / "c.npz", input=x)
    return d


def test_prune_with_calibration_reports_drift(r18, tmp_path):
    out = tmp_path / "o.onnx"
    args = ["prune", str(r18 / "r18.onnx"), "-r", "0.5", "--calib", str(r18 / "c.npz")]
    result = runner.invoke(app, [*args, "-o", str(out), "--json", "--calib-opts", "batch=5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    drift = summary["drift"]
    assert drift["held_out"] and drift["samples"] == 4
    (fc,) = drift["outputs"]
    assert 0.9 < fc["cosine"] <= 1.0 and fc["rel_error"] < 0.5
    assert out.exists()
    # without reconstruction (magnitude only) the same rate drifts further
    plain = runner.invoke(
        app,
        [*args, "-o", str(tmp_path / "p.onnx"), "--json", "--post", "none", "--criterion", "l2"],
    )
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["drift"]["outputs"][0]["rel_error"] > fc["rel_error"]


def test_large_drift_warns(r18, tmp_path):
    args = ["prune", str(r18 / "r18.onnx"), "-r", "0.9", "--calib", str(r18 / "c.npz")]
    result = runner.invoke(
        app, [*args, "--post", "none", "--criterion", "l2", "-o", str(tmp_path / "o.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert "drift on 4 held-out samples" in result.stdout
    assert "warning: large drift" in result.stderr


def test_data_options_without_data_are_bad_input(r18, tmp_path):
    base = ["prune", str(r18 / "r18.onnx"), "-o", str(tmp_path / "o.onnx")]
    for extra in (
        ["--criterion", "activation"],
        ["--post", "reconstruct"],
        ["--calib-opts", "batch=2"],
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and "--calib" in result.stderr
    result = runner.invoke(app, [*base, "--calib", str(tmp_path / "none.npz")])
    assert result.exit_code == 2 and "no such calibration data" in result.stderr


def test_prune_with_an_image_folder(tmp_path):
    image = pytest.importorskip("PIL.Image")
    onnx.save(build("mobilenetv2"), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    for i in range(6):
        image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    opts = "mean=0.485|0.456|0.406:std=0.229|0.224|0.225:batch=3:holdout=0.5"
    result = runner.invoke(
        app,
        [
            "prune",
            str(tmp_path / "m.onnx"),
            "-r",
            "0.3",
            "--calib",
            str(tmp_path),
            "--calib-opts",
            opts,
            "--target",
            "drpai",
            "-o",
            str(tmp_path / "o.onnx"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "drift on 3 held-out samples" in result.stdout
