"""The digits demo: the whole flow runs, and its numbers hold together."""

from __future__ import annotations

import subprocess
import sys

import onnx

from drpopt.retrain.demo import DemoConfig, run_demo


def test_short_demo_flow(tmp_path):
    r = run_demo(tmp_path, DemoConfig(dense_epochs=3, finetune_epochs=3))
    for name in ("dense.onnx", "sparse.onnx", "compact.onnx"):
        onnx.checker.check_model(onnx.load(str(tmp_path / name)))
    assert r.dense_accuracy > 0.9 and r.pruned_accuracy > 0.85
    # onnxruntime runs the same pruned network torch does
    assert abs(r.onnx_sparse_accuracy - r.pruned_accuracy) < 0.01
    assert abs(r.onnx_compact_accuracy - r.pruned_accuracy) < 0.01
    assert r.pruned_params < 0.5 * r.dense_params and r.pruned_macs < r.dense_macs
    assert r.pruned_channels >= 0.65 * r.eligible_channels
    assert max(r.max_rel_error.values()) < 1e-4


def test_demo_command_end_to_end(tmp_path):
    """The README's first command, as a new user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "drpopt", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and "Dense vs pruned" in done.stdout
    assert (tmp_path / "sparse.onnx").exists() and (tmp_path / "compact.onnx").exists()
