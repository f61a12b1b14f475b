"""Compiler passes over the drpopt IR, and the PassManager that runs them.

``PASSES`` below is the registry: the CLI (``drpopt passes``, ``drpopt run``) and pipeline
strings find passes by their ``name`` here.

The same passes as ``onnx_ir.passes`` passes (``Score``, ``Mask``, ``ApplyMasks``,
``Compact``, ``FoldBatchNorm``, ``Cleanup``, ..., and ``Drpopt`` for a whole pipeline) come
from ``passes/ir_passes.py``, imported on first use (onnx_ir loads only then).
"""

from __future__ import annotations

from drpopt.passes.analyses import ANALYSES, AnalysisManager, Scores
from drpopt.passes.apply_masks import ApplyMasksPass
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.bias_correct import BiasCorrectPass
from drpopt.passes.calibrate import CalibratePass, CalibrationData, Preprocess
from drpopt.passes.cleanup import CleanupPass
from drpopt.passes.compact import CompactPass
from drpopt.passes.context import PipelineContext, context_of
from drpopt.passes.fold_batchnorm import FoldBatchNormPass
from drpopt.passes.manager import PassFailedError, PassManager, PipelineResult
from drpopt.passes.mask import MaskPass
from drpopt.passes.pipeline import parse_pipeline
from drpopt.passes.plan import Plan
from drpopt.passes.policy import SelectionPolicy, choose_channels
from drpopt.passes.reconstruct import ReconstructPass
from drpopt.passes.score import ScorePass
from drpopt.passes.sparsify import SparsifyPass
from drpopt.passes.verify import VerifyPass, compare_models

PASSES: list[type[Pass]] = [
    FoldBatchNormPass,
    ScorePass,
    CalibratePass,
    MaskPass,
    ApplyMasksPass,
    BiasCorrectPass,
    ReconstructPass,
    SparsifyPass,
    CompactPass,
    CleanupPass,
    VerifyPass,
]

__all__ = [
    "ANALYSES",
    "PASSES",
    "AnalysisManager",
    "ApplyMasksPass",
    "BiasCorrectPass",
    "CalibratePass",
    "CalibrationData",
    "CleanupPass",
    "CompactPass",
    "FoldBatchNormPass",
    "MaskPass",
    "Pass",
    "PassFailedError",
    "PassManager",
    "PassResult",
    "PipelineContext",
    "PipelineResult",
    "Plan",
    "Preprocess",
    "ReconstructPass",
    "ScorePass",
    "Scores",
    "SelectionPolicy",
    "SparsifyPass",
    "VerifyPass",
    "choose_channels",
    "compare_models",
    "context_of",
    "parse_pipeline",
]

_IR_PASSES = (
    "ApplyMasks",
    "BiasCorrect",
    "Calibrate",
    "Cleanup",
    "Compact",
    "Drpopt",
    "FoldBatchNorm",
    "Mask",
    "Reconstruct",
    "Score",
    "Sparsify",
    "Verify",
)


def __getattr__(name: str):  # the onnx_ir adapters, imported on first use
    if name in _IR_PASSES:
        from drpopt.passes import ir_passes

        return getattr(ir_passes, name)
    raise AttributeError(f"module 'drpopt.passes' has no attribute {name!r}")
