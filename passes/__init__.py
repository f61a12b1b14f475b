"""Compiler passes over the drpopt IR, and the PassManager that runs them.

``PASSES`` below is the registry: the CLI (``drpopt passes``, ``drpopt run``) and pipeline
strings find passes by their ``name`` here.
"""

from __future__ import annotations

from drpopt.passes.apply_masks import ApplyMasksPass
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.compact import CompactPass
from drpopt.passes.manager import PassFailedError, PassManager, PipelineResult
from drpopt.passes.mask import MaskPass
from drpopt.passes.pipeline import parse_pipeline
from drpopt.passes.plan import Plan
from drpopt.passes.score import ScorePass

PASSES: list[type[Pass]] = [
    ScorePass,
    MaskPass,
    ApplyMasksPass,
    CompactPass,
]

__all__ = [
    "PASSES",
    "ApplyMasksPass",
    "CompactPass",
    "MaskPass",
    "Pass",
    "PassFailedError",
    "PassManager",
    "PassResult",
    "PipelineResult",
    "Plan",
    "ScorePass",
    "parse_pipeline",
]
