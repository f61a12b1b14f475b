"""Shared fixtures: example models are built once per session (they are deterministic)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# torch's OpenMP threads spin-wait; with anything else on the second core (onnxruntime's
# pool, a parallel job) they collapse by 50x. The tests' models are tiny: one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent / "ir"))  # shared check helpers (deadchannels)


def pytest_addoption(parser):
    group = parser.getgroup("corpus", "real-model conformance suite (tests/corpus, -m corpus)")
    group.addoption(
        "--corpus",
        default=None,
        metavar="DIR",
        help="folder of .onnx models (default: $DRPOPT_CORPUS, else ../shared/corpus)",
    )
    group.addoption(
        "--corpus-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds one model's analysis, or one check, may take before it fails",
    )


@pytest.fixture(scope="session")
def zoo_models():
    from drpopt.zoo import MODELS

    return {name: fn() for name, fn in MODELS.items()}
