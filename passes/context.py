"""The pipeline context: what passes hand each other besides the graph.

Rules:
- a :class:`PipelineContext` holds the sparsity plan, the verification reference and its
  inputs, the verify report, calibration data, the dense weights ``apply-masks`` set aside,
  what was done to the graph (compacted, sparsified) and the last score request; none of it
  lives in ``graph.meta``, so a pass that makes a new graph (``cleanup``) cannot copy a stale
  entry, and analyses (groups, scores) are not here at all (``passes/analyses.py``);
- ``PassManager(passes)(model, context=ctx)`` binds ``ctx`` while its passes run (one
  context per pipeline; a fresh one when none is given) and returns it in the result;
- a pass reads it with ``context_of(graph)``: the bound pipeline context, or, for a pass
  called on its own outside a PassManager, a context kept for that graph object alone;
- the graph a pipeline returns remembers that pipeline's context (by object, weakly): a
  PassManager called on it without a context continues it (``mask`` in one pipeline,
  ``compact`` in the next); a new graph object starts with an empty one.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from drpopt.ir.core import Graph
    from drpopt.passes.plan import Plan


@dataclass
class PipelineContext:
    """State a pipeline's passes share: see the module docstring."""

    plan: Plan | None = None
    reference: onnx.ModelProto | Any = None  # or an onnx_ir.Model: see reference_model
    verify_inputs: tuple[dict[str, Any], str] | None = None  # (samples, description)
    verify: Any = None  # the last VerifyReport
    calibration: Any = None  # CalibrationData
    calibration_holdout: Any = None
    dense_weights: dict[str, np.ndarray] | None = None
    compacted: bool = False
    sparsified: bool = False
    score_request: tuple[str, int] | None = None  # (criterion, seed) of the last score pass
    extra: dict[str, Any] = field(default_factory=dict)  # for plugin passes

    def fork(self, **changes: Any) -> PipelineContext:
        """A copy for a second pipeline that starts from this one's state."""
        return replace(self, extra=dict(self.extra), **changes)

    @contextlib.contextmanager
    def bound(self) -> Iterator[PipelineContext]:
        """Makes this the context ``context_of`` returns while the block runs."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


_ACTIVE: ContextVar[PipelineContext | None] = ContextVar("drpopt_pipeline", default=None)
_STANDALONE: weakref.WeakKeyDictionary[Graph, PipelineContext] = weakref.WeakKeyDictionary()


def context_of(graph: Graph) -> PipelineContext:
    """The running pipeline's context, else the one kept for ``graph`` (a pass called alone)."""
    active = _ACTIVE.get()
    if active is not None:
        return active
    ctx = _STANDALONE.get(graph)
    if ctx is None:
        ctx = _STANDALONE[graph] = PipelineContext()
    return ctx


def remember(graph: Graph, context: PipelineContext) -> None:
    """Makes ``context`` the one ``context_of(graph)`` returns outside a pipeline."""
    _STANDALONE[graph] = context


def active_context() -> PipelineContext | None:
    """The context a running PassManager bound, or None."""
    return _ACTIVE.get()
