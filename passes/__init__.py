"""Compiler passes over the drpopt IR, and the PassManager that runs them.

``PASSES`` below is the registry: the CLI (``drpopt passes``, ``drpopt run``) and pipeline
strings find passes by their ``name`` here.
"""

from __future__ import annotations

from drpopt.passes.base import Pass, PassResult
from drpopt.passes.manager import PassFailedError, PassManager, PipelineResult
from drpopt.passes.pipeline import parse_pipeline

PASSES: list[type[Pass]] = []

__all__ = [
    "PASSES",
    "Pass",
    "PassFailedError",
    "PassManager",
    "PassResult",
    "PipelineResult",
    "parse_pipeline",
]
