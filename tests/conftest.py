"""Shared fixtures: example models are built once per session (they are deterministic)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "ir"))  # shared check helpers (deadchannels)


@pytest.fixture(scope="session")
def zoo_models():
    from drpopt.zoo import MODELS

    return {name: fn() for name, fn in MODELS.items()}
