"""The PassManager: runs passes in order, with timing and IR dumps as instruments.

Rules:
- the input may be an ``ir.Graph``, an ``onnx.ModelProto`` or a path; it is loaded once;
- the passes share one :class:`~drpopt.passes.context.PipelineContext` (given, or a fresh
  one), bound while they run and returned in the result: the plan, the verify report, ...;
- ``context.reference`` holds the model ``verify`` compares against: the input, then the
  model right after each pass that does not preserve outputs (``apply-masks``);
- after a pass that changes the graph, only the analyses it declares preserved stay valid
  (``passes/analyses.py``);
- a failing pass raises ``PassFailedError`` naming it and the passes that ran before it;
  the exit code is the cause's (1 for a failed check, 2 for bad input);
- ``time_passes`` records wall time per pass; ``dump_dir`` writes the model after each
  pass as ``NN-name.onnx``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from drpopt.errors import DrpoptError
from drpopt.ir.core import Graph, gc_paused
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.context import PipelineContext, context_of, remember

log = logging.getLogger(__name__)


class PassFailedError(DrpoptError):
    """A pass failed; ``pass_name`` and ``ran_before`` say where."""

    def __init__(self, pass_name: str, ran_before: list[str], cause: BaseException) -> None:
        before = f" after {', '.join(ran_before)}" if ran_before else " (the first pass)"
        super().__init__(f"pass '{pass_name}' failed{before}: {cause}")
        self.pass_name = pass_name
        self.ran_before = ran_before
        self.exit_code = getattr(cause, "exit_code", 2)


@dataclass
class PassRecord:
    """One pass run: its spec, whether it changed the model, and how long it took."""

    spec: str
    modified: bool
    seconds: float


@dataclass
class PipelineResult:
    """The final graph, one record per pass, and the pipeline context (plan, verify report)."""

    model: Graph
    modified: bool
    records: list[PassRecord] = field(default_factory=list)
    context: PipelineContext = field(default_factory=PipelineContext)

    @property
    def plan(self) -> Any:
        """The sparsity plan the pipeline made or applied (None when none)."""
        return self.context.plan

    @property
    def scores(self) -> dict[str, Any] | None:
        """The final graph's channel scores by group key, if valid scores exist for it."""
        from drpopt.passes.analyses import ANALYSES, Scores

        found = ANALYSES.cached(self.model, Scores)
        return None if found is None else found.by_group

    @property
    def verify(self) -> Any:
        """The last verify report (None when no verify ran)."""
        return self.context.verify

    def to_onnx(self) -> onnx.ModelProto:
        from drpopt.ir.to_onnx import to_onnx

        return to_onnx(self.model)


def load_graph(
    model: Any, input_shapes: Any = None, context: PipelineContext | None = None
) -> Graph:
    """An IR graph from a Graph, ModelProto or path; a loaded model becomes the reference of
    ``context`` (default: the context the new graph remembers). ``input_shapes`` ({input
    name or None: dims}) fixes symbolic input dims first: the graph and the reference both
    have them."""
    if isinstance(model, Graph):
        return model
    from drpopt.ir.from_onnx import from_onnx, load_model
    from drpopt.ir.input_shapes import fix_input_shapes

    where = os.fspath(model) if isinstance(model, str | os.PathLike) else "model"
    proto = fix_input_shapes(load_model(model), input_shapes or {})
    graph = from_onnx(proto, where=where)
    (context_of(graph) if context is None else context).reference = proto
    return graph


def reference_model(graph: Graph) -> onnx.ModelProto:
    """The model ``verify`` compares against: the pipeline context's reference (the graph
    itself, snapshot now, when none was recorded; an onnx_ir model, serialised now)."""
    context = context_of(graph)
    if context.reference is None:
        from drpopt.ir.to_onnx import to_onnx

        context.reference = to_onnx(graph)
    elif not isinstance(context.reference, onnx.ModelProto):
        from drpopt.passes.interop import to_proto

        context.reference = to_proto(context.reference)
    return context.reference


def _call(p: Pass, graph: Graph, records: list[PassRecord]) -> PassResult:
    """``p.call(graph)``; a drpopt error becomes ``PassFailedError`` naming the pass and the
    passes before it, any other error gets a note naming the pass."""
    try:
        result = p.call(graph)
    except Exception as err:
        if isinstance(err, DrpoptError):
            raise PassFailedError(p.spec(), [r.spec for r in records], err) from err
        if hasattr(err, "add_note"):
            err.add_note(f"while running pass '{p.spec()}'")
        raise
    if not isinstance(result, PassResult):
        raise TypeError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult")
    return result


class PassManager:
    """Runs a sequence of passes; call it on a Graph, an ONNX model or a path."""

    def __init__(
        self,
        passes: Sequence[Pass],
        time_passes: bool = False,
        dump_dir: str | os.PathLike | None = None,
        on_pass: Callable[[int, Pass], None] | None = None,
        input_shapes: Any = None,
    ) -> None:
        self.passes = list(passes)
        self.input_shapes = input_shapes
        self.time_passes = time_passes
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.on_pass = on_pass

    def __call__(self, model: Any, context: PipelineContext | None = None) -> PipelineResult:
        """Runs the passes on ``model`` sharing ``context`` (None: the context the graph
        remembers from an earlier pipeline or pass, else a fresh one)."""
        if context is None:
            context = context_of(model) if isinstance(model, Graph) else PipelineContext()
        with context.bound(), gc_paused():  # (see ``gc_paused``: linear, not superlinear)
            result = self._run(model, context)
        remember(result.model, context)
        return result

    def run(self, model: Any, context: PipelineContext | None = None) -> PipelineResult:
        """The same as calling the manager."""
        return self(model, context)

    def _run(self, model: Any, context: PipelineContext) -> PipelineResult:
        graph = load_graph(model, self.input_shapes, context)
        records: list[PassRecord] = []
        modified = False
        needs_reference = {
            i
            for i, p in enumerate(self.passes)
            if any(q.name == "verify" for q in self.passes[i + 1 :])
        }
        if needs_reference and context.reference is None:
            from drpopt.ir.to_onnx import to_onnx

            context.reference = to_onnx(graph)  # a Graph given directly: snapshot it now
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(self.passes):
            if self.on_pass is not None:
                self.on_pass(i, p)
            start = time.perf_counter()
            result = _call(p, graph, records)
            seconds = time.perf_counter() - start
            if result.modified and not getattr(type(p).call, "__drpopt_tracked__", False):
                graph.touch()  # a pass that is no Pass subclass: nothing it saw survives
            replaced, graph = result.model is not graph, result.model
            if replaced:  # (see ``__call__``: collections are paused)
                gc.collect(1)  # the graph it replaced is cyclic garbage holding its weights
            modified |= result.modified
            records.append(PassRecord(p.spec(), result.modified, seconds))
            log.info(
                "%s: %s in %.3f s",
                p.spec(),
                "modified" if result.modified else "unchanged",
                seconds,
            )
            if result.modified and not p.preserves_outputs:
                # outputs changed on purpose: later checks compare against this model
                if i in needs_reference:
                    from drpopt.ir.to_onnx import to_onnx

                    context.reference = to_onnx(graph)
                else:
                    context.reference = None  # a later verify snapshots it
            if self.dump_dir is not None:
                from drpopt.ir.to_onnx import to_onnx

                path = self.dump_dir / f"{i:02d}-{p.name}.onnx"
                onnx.save(to_onnx(graph), str(path))
        return PipelineResult(graph, modified, records, context)
