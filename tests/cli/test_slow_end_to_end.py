"""Slow end-to-end runs (`pytest -m slow`): the PP-OCR models of rapidocr-onnxruntime at
real shapes with image inputs (skipped when not installed), and the fuzz corpus through real
processes, where native log lines would show."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from dynmodels import ppocr_models
from test_fuzz_cli import MUTATIONS, base

from drpopt.passes.inputs import write_png

pytestmark = pytest.mark.slow
PPOCR = ppocr_models()


def drpopt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "drpopt", *args], capture_output=True, text=True, check=False
    )


def text_images(folder, count: int = 2) -> None:
    """White pages with dark letter-like boxes: what a text detector reacts to."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for k in range(count):
        img = np.full((480, 640, 3), 235, np.uint8)
        for line in range(6):
            y, x = 40 + line * 70, 30
            while x < 600:
                w, h = rng.integers(8, 30), rng.integers(20, 40)
                img[y : y + h, x : x + w] = rng.integers(0, 60)
                img[y + 4 : y + h - 4, x + 3 : x + w - 3] = 235
                x += w + rng.integers(3, 12)
        write_png(folder / f"page{k}.png", img)


IMAGE_ARGS = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


@pytest.mark.skipif("det" not in PPOCR, reason="rapidocr-onnxruntime not installed")
def test_ppocr_detector_pruned_drifts_and_verification_says_so(tmp_path):
    images = tmp_path / "images"
    text_images(images)
    det = PPOCR["det"]
    shape = ["--input-shape", "x:1,3,640,640"]
    small = tmp_path / "det_p50.onnx"
    done = drpopt(
        "run", det, *shape, "-p", "score,mask:rate=0.5,apply-masks,compact,cleanup", "-o",
        str(small),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    same = drpopt("verify", det, det, *shape, "--inputs", str(images), *IMAGE_ARGS)
    assert same.returncode == 0, same.stderr
    differ = drpopt("verify", det, str(small), *shape, "--inputs", str(images), *IMAGE_ARGS)
    assert differ.returncode == 1 and "match" not in differ.stderr
    assert len(differ.stderr.strip().splitlines()) == 1
    drift = drpopt(
        "verify", det, str(small), *shape, "--inputs", str(images), *IMAGE_ARGS,
        "--report-only", "--json",
    )  # fmt: skip
    assert drift.returncode == 0, drift.stderr
    import json

    data = json.loads(drift.stdout)
    assert data["mode"] == "drift" and data["outputs"][0]["cosine"] < 0.99
    # prune's own check refuses when the pruned detector's output collapses on the images
    pruned = drpopt(
        "prune", det, *shape, "--inputs", str(images), *IMAGE_ARGS, "-r", "0.5", "-o",
        str(tmp_path / "p.onnx"),
    )  # fmt: skip
    assert pruned.returncode in (0, 1)
    if pruned.returncode == 1:
        assert "cannot verify" in pruned.stderr and len(pruned.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(len(PPOCR) < 3, reason="rapidocr-onnxruntime not installed")
@pytest.mark.parametrize(
    ("key", "shape", "low"), [("rec", "1,3,48,320", 6e8), ("cls", "1,3,48,192", 1e7)]
)
def test_ppocr_recogniser_and_classifier_at_real_shapes(key, shape, low, tmp_path):
    import json

    done = drpopt("analyze", PPOCR[key], "--input-shape", shape, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["macs"] > low
    out = tmp_path / f"{key}.onnx"
    pruned = drpopt("prune", PPOCR[key], "--input-shape", shape, "-r", "0.3", "-o", str(out))
    assert pruned.returncode in (0, 1), pruned.stderr  # 1: a refused (degenerate) check
    assert "Traceback" not in pruned.stderr and len(pruned.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_fuzz_corpus_in_real_processes(case, tmp_path):
    import onnx

    model = base()
    MUTATIONS[case](model)
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(model.SerializeToString())
    good = tmp_path / "good.onnx"
    onnx.save(base(), str(good))
    for args in (
        ["prune", str(path), "-o", str(tmp_path / "o.onnx")],
        ["verify", str(good), str(path)],
        ["report", str(path), "--compare", str(good), "-o", str(tmp_path / "r.html")],
    ):
        done = drpopt(*args)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert "Traceback" not in done.stderr, done.stderr
        if done.returncode:
            assert done.returncode in (1, 2) and len(lines) <= 2, (args, done.stderr)
            assert lines[-1].startswith("error:"), done.stderr
