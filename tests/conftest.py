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


@pytest.fixture(scope="session")
def zoo_models():
    from drpopt.zoo import MODELS

    return {name: fn() for name, fn in MODELS.items()}
