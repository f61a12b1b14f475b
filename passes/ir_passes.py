"""drpopt passes as ``onnx_ir.passes`` passes, for a toolchain's own ``PassManager``::

    import onnx_ir, onnx_ir.passes.common
    from drpopt import passes

    pm = onnx_ir.passes.PassManager([
        passes.FoldBatchNorm(), passes.Score(), passes.Mask(rate=0.5),
        passes.ApplyMasks(), passes.Compact(),
        onnx_ir.passes.common.RemoveUnusedNodesPass(),
    ])
    pruned = pm(onnx_ir.load("model.onnx")).model

Rules:
- analyses (``Score``, ``Mask``, ``Calibrate``, ``Verify``) are ``InPlacePass``: the graph is
  untouched, ``modified`` is False, their results (the score criterion, the plan, the
  calibration data, the report) go into ``model.meta["drpopt"]``, the ``PipelineContext``
  the next drpopt pass reads (scores themselves are analyses of one graph object: ``Mask``
  recomputes them with the criterion ``Score`` recorded);
- transforms (``ApplyMasks``, ``Compact``, ``FoldBatchNorm``, ``Cleanup``, ``Sparsify``,
  ``BiasCorrect``, ``Reconstruct``) are ``FunctionalPass``: the input model is left as it
  was and a new ``onnx_ir.Model`` is returned, carrying the context;
- ``requires``: ``ApplyMasks`` and ``Compact`` need a plan (run ``Mask`` first),
  ``BiasCorrect`` and ``Reconstruct`` calibration data and a plan;
  ``ensures``: ``Score`` leaves a score request, ``Mask`` a plan, ``Verify`` a report that passed;
- ``Drpopt(...)`` runs several drpopt passes (objects or a pipeline string) as one
  functional pass: one conversion for all of them.

Cost: drpopt's IR is still its own (``ir/core.py``), so each adapter converts
``onnx_ir.Model -> drpopt graph`` and back (``ir/from_onnx_ir.py``, ``ir/to_onnx_ir.py``,
via ``passes/interop.py``) without copying a weight: a weight is read from its onnx_ir
tensor when a pass first needs it, and an unchanged one goes back as the same tensor
object. What each conversion still costs: the structure serialised once without weights
(for ONNX shape inference and shape folding) and read by ``from_onnx``, the onnx_ir model
rebuilt node by node, and the channel analysis for passes that need it; a ``Cleanup``
rebuilds its graph from a proto, so weights after it are copies. The verification
reference is a clone of the input model (tensors shared), serialised only when ``Verify``
runs. Group consecutive drpopt passes with ``Drpopt`` to pay the conversion once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import onnx_ir
import onnx_ir.passes

from drpopt.ir.core import Graph
from drpopt.passes import (
    ApplyMasksPass,
    BiasCorrectPass,
    CalibratePass,
    CleanupPass,
    CompactPass,
    FoldBatchNormPass,
    MaskPass,
    ReconstructPass,
    ScorePass,
    SparsifyPass,
    VerifyPass,
)
from drpopt.passes.base import Pass
from drpopt.passes.context import PipelineContext
from drpopt.passes.interop import from_graph, to_graph, to_proto

CONTEXT = "drpopt"  # model.meta key of the PipelineContext drpopt passes hand each other


def context(model: onnx_ir.Model) -> PipelineContext:
    """The drpopt pipeline context riding on ``model`` (empty before any drpopt pass)."""
    found = model.meta.get(CONTEXT)
    return found if isinstance(found, PipelineContext) else PipelineContext()


def _run(model: onnx_ir.Model, passes: list[Pass]) -> tuple[Graph, bool, PipelineContext]:
    """Runs ``passes`` on a drpopt graph of ``model`` in a copy of its context (the input's
    context is never changed); this model is the reference unless an earlier pass set one."""
    from drpopt.passes.manager import PassManager

    ctx = context(model).fork()
    carried = ctx.reference
    graph = to_graph(model, context=ctx)
    # an in-place pass after this one may change ``model``: the reference is a snapshot
    # (tensors shared, serialised only when verify runs)
    ctx.reference = _snapshot(model) if carried is None else carried
    result = PassManager(passes)(graph, context=ctx)
    return result.model, result.modified, result.context


def _snapshot(model: onnx_ir.Model) -> Any:
    """``model`` as it is now: a clone (tensors shared), or its proto when it cannot be
    cloned (a node reading a value no graph defines)."""
    try:
        return model.clone()
    except Exception:
        return to_proto(model)


class _Adapter:
    """Shared by both kinds: the drpopt pass(es) it wraps and how it prints."""

    passes: list[Pass]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({','.join(p.spec() for p in self.passes)!r})"


class AnalysisAdapter(_Adapter, onnx_ir.passes.InPlacePass):
    """A drpopt analysis as an in-place onnx_ir pass: the graph is untouched."""

    drpopt_pass: ClassVar[type[Pass]]

    def __init__(self, **arguments: Any) -> None:
        self.passes = [self.drpopt_pass(**arguments)]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        _, _, ctx = _run(model, self.passes)
        model.meta[CONTEXT] = ctx  # the graph is untouched: only the context changed
        return onnx_ir.passes.PassResult(model, modified=False)


class TransformAdapter(_Adapter, onnx_ir.passes.FunctionalPass):
    """A drpopt transform as a functional onnx_ir pass: a new model, the input untouched."""

    drpopt_pass: ClassVar[type[Pass]]

    def __init__(self, **arguments: Any) -> None:
        self.passes = [self.drpopt_pass(**arguments)]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        graph, modified, ctx = _run(model, self.passes)
        out = from_graph(graph, "onnx_ir")
        out.meta[CONTEXT] = ctx
        return onnx_ir.passes.PassResult(out, modified=modified)


def _need(model: onnx_ir.Model, key: str, why: str) -> None:
    if getattr(context(model), key) is None:
        raise onnx_ir.passes.PreconditionError(why)


class Score(AnalysisAdapter):
    """``score``: channel importance per group (``criterion``: l1, l2, bn-gamma, ...)."""

    drpopt_pass = ScorePass

    def ensures(self, model: onnx_ir.Model) -> None:
        _need(model, "score_request", "score left no score request")


class Mask(AnalysisAdapter):
    """``mask``: the channels each group keeps at ``rate``, as a plan in the context."""

    drpopt_pass = MaskPass

    def ensures(self, model: onnx_ir.Model) -> None:
        _need(model, "plan", "mask left no plan")


class Calibrate(AnalysisAdapter):
    """``calibrate``: calibration batches (``data=``) for data-aware passes."""

    drpopt_pass = CalibratePass


class Verify(AnalysisAdapter):
    """``verify``: the model computes what the reference computes (onnxruntime)."""

    drpopt_pass = VerifyPass

    def ensures(self, model: onnx_ir.Model) -> None:
        report = context(model).verify
        if report is None or not report.ok:
            raise onnx_ir.passes.PostconditionError("verify left no passing report")


def _plan_first(model: onnx_ir.Model, name: str) -> None:
    _need(model, "plan", f"{name} needs a plan: run drpopt.passes.Mask() before it")


class ApplyMasks(TransformAdapter):
    """``apply-masks``: zero the pruned channels of the plan (shapes stay dense)."""

    drpopt_pass = ApplyMasksPass

    def requires(self, model: onnx_ir.Model) -> None:
        _plan_first(model, "ApplyMasks")


class Compact(TransformAdapter):
    """``compact``: remove the plan's pruned channels (smaller tensors)."""

    drpopt_pass = CompactPass

    def requires(self, model: onnx_ir.Model) -> None:
        _plan_first(model, "Compact")


class Sparsify(TransformAdapter):
    """``sparsify``: the target's fine-grained pattern inside kept channels."""

    drpopt_pass = SparsifyPass


class BiasCorrect(TransformAdapter):
    """``bias-correct``: consumers' biases absorb the mean of removed channels."""

    drpopt_pass = BiasCorrectPass

    def requires(self, model: onnx_ir.Model) -> None:
        _plan_first(model, "BiasCorrect")
        _need(model, "calibration", "BiasCorrect needs calibration data: run Calibrate first")


class Reconstruct(TransformAdapter):
    """``reconstruct``: least-squares refit of the consumers of pruned channels."""

    drpopt_pass = ReconstructPass

    def requires(self, model: onnx_ir.Model) -> None:
        _plan_first(model, "Reconstruct")
        _need(model, "calibration", "Reconstruct needs calibration data: run Calibrate first")


class FoldBatchNorm(TransformAdapter):
    """``fold-batchnorm``: BatchNormalization folded into the layer before it."""

    drpopt_pass = FoldBatchNormPass


class Cleanup(TransformAdapter):
    """``cleanup``: constant folding, dead nodes and identities removed."""

    drpopt_pass = CleanupPass


class Drpopt(_Adapter, onnx_ir.passes.FunctionalPass):
    """Several drpopt passes (objects, or a pipeline string such as
    ``"score,mask:rate=0.5,apply-masks,compact"``) as one functional onnx_ir pass."""

    def __init__(self, *passes: Pass | str) -> None:
        from drpopt.passes.pipeline import parse_pipeline

        self.passes = [
            q for p in passes for q in (parse_pipeline(p) if isinstance(p, str) else [p])
        ]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        graph, modified, ctx = _run(model, self.passes)
        out = from_graph(graph, "onnx_ir")
        out.meta[CONTEXT] = ctx
        return onnx_ir.passes.PassResult(out, modified=modified)


ADAPTERS = (
    Score,
    Mask,
    Calibrate,
    Verify,
    ApplyMasks,
    Compact,
    Sparsify,
    BiasCorrect,
    Reconstruct,
    FoldBatchNorm,
    Cleanup,
    Drpopt,
)
