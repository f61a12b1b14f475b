"""Example models built in code (random weights, no download): the bundled models the demo,
the tests and the benchmarks run on."""

from __future__ import annotations

from drpopt.zoo.builder import OnnxBuilder
from drpopt.zoo.models import MODELS, build

__all__ = ["MODELS", "OnnxBuilder", "build"]
