"""The conformance suite's own checks can fail, and its wiring works on any folder (run in the
default suite on bundled models: no corpus needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from corpus_checks import (
    CONFIGS,
    TOLERANCE,
    CheckTimeout,
    DegenerateOutput,
    compact_counts,
    compare_outputs,
    prune,
    time_limit,
)
from deadchannels import random_feeds, run_model
from onnx import numpy_helper

from drpopt.zoo import build

REPO = Path(__file__).resolve().parents[2]


def test_compare_outputs_scales_by_spread_and_detects_a_difference():
    ref = [np.linspace(-2.0, 2.0, 100, dtype=np.float32).reshape(1, 100)]
    assert compare_outputs(ref, [ref[0].copy()]) == 0.0
    moved = ref[0].copy()
    moved[0, 3] += 4e-3  # 1e-3 of the spread (4)
    assert compare_outputs(ref, [moved]) == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(AssertionError, match="shape"):
        compare_outputs(ref, [ref[0].reshape(100, 1)])


@pytest.mark.parametrize("where", ["reference", "candidate"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_compare_outputs_refuses_non_finite(where, bad):
    good = np.arange(6, dtype=np.float32)
    broken = good.copy()
    broken[2] = bad
    ref, got = (broken, good) if where == "reference" else (good, broken)
    with pytest.raises(DegenerateOutput, match="not finite"):
        compare_outputs([ref], [got])


def test_compare_outputs_refuses_a_constant_reference():
    ref = np.full((1, 10), 3.0, dtype=np.float32)
    with pytest.raises(DegenerateOutput, match="constant"):
        compare_outputs([ref], [ref.copy()])


def test_time_limit_interrupts_a_hang_and_restores_the_alarm():
    if not hasattr(__import__("signal"), "SIGALRM"):
        pytest.skip("no SIGALRM on this platform")
    start = time.perf_counter()
    with (
        pytest.raises(CheckTimeout, match=r"spin did not finish in 0\.2 s"),
        time_limit(0.2, "spin"),
    ):
        while True:
            pass
    assert time.perf_counter() - start < 5
    with time_limit(0.0, "no limit"):
        time.sleep(0.01)


@pytest.mark.parametrize("config", ["rate0.5", "drpai"])
def test_prune_agrees_on_a_bundled_model_and_a_broken_compact_fails(config):
    model = build("resnet18")
    pruned = prune(model, CONFIGS[config])
    assert pruned.plan.pruned_channels > 0
    feeds = random_feeds(model)
    sparse = run_model(pruned.masked, feeds)
    assert compare_outputs(sparse, run_model(pruned.compact, feeds)) < TOLERANCE
    assert compact_counts(pruned.compact) == (pruned.expected_params, pruned.expected_macs)
    # a compact model that computes something else is caught
    broken = onnx.ModelProto()
    broken.CopyFrom(pruned.compact)
    weight = next(t for t in broken.graph.initializer if len(t.dims) == 4)
    arr = numpy_helper.to_array(weight).copy()
    arr.flat[0] += 1.0
    weight.CopyFrom(numpy_helper.from_array(arr, weight.name))
    assert compare_outputs(sparse, run_model(broken, feeds)) > TOLERANCE


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_suite_runs_on_any_folder_and_skips_without_one(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(build("se"), str(folder / "se.onnx"))
    suite = "tests/corpus/test_conformance.py"
    ran = _pytest(suite, "-m", "corpus", "--corpus", str(folder), "-k", "rate0.5 or dead")
    assert ran.returncode == 0, ran.stdout[-2000:]
    assert "2 passed" in ran.stdout, ran.stdout[-2000:]
    missing = tmp_path / "absent"
    skipped = _pytest(suite, "-m", "corpus", env={"DRPOPT_CORPUS": str(missing)})
    assert skipped.returncode == 0, skipped.stdout[-2000:]
    assert f"no corpus: $DRPOPT_CORPUS={missing} is not a folder" in skipped.stdout
