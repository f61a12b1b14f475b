"""The Python API: one door for toolchains and the CLI.

``analyze(model)``, ``prune(model, PruneOptions(...))``, ``run(model, pipeline)``,
``check(reference, model)`` and ``export(module, inputs, path)``. A model is a path, an
``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph`` or a drpopt IR
``Graph``; results hand back the kind given (a path gives an ``onnx.ModelProto``), see
``passes/interop.py``.

Rules:
- options are typed dataclasses, validated once when they are built (before any model is
  read): a bad rate, target, criterion or pattern fails there, as ``BadInputError``;
- values reach the passes as Python objects, never through a pipeline string: a plan path
  may hold ``,`` or ``:`` and an exclude list holds any patterns;
- the target profile is resolved once per ``PruneOptions``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import onnx

from drpopt.errors import BadInputError
from drpopt.ir.analysis import Analysis
from drpopt.ir.core import Graph
from drpopt.passes.base import Pass
from drpopt.passes.interop import (
    check_structure,
    checkable_proto,
    from_graph,
    model_kind,
    to_graph,
    to_proto,
)

OnStep = Callable[[str, int], None]  # (what runs now, how many steps just finished)
POSTS = ("reconstruct", "bias-correct", "none")


class InputsSource(Protocol):
    """Verification inputs: ``load(reference)`` gives ``(feeds, description)``."""

    def load(self, reference: onnx.ModelProto) -> tuple[Any, str]: ...


def _no_step(description: str, advance: int) -> None:
    del description, advance


# ---- analyze -----------------------------------------------------------------------------
def analyze(model: Any, input_shapes: dict | None = None) -> Analysis:
    """The coupled channel groups of ``model`` (symbolic input dims fixed by ``input_shapes``,
    ``{input name or None: dims}``); ``drpopt.analyze`` for every model kind."""
    from drpopt.ir.analysis import analyze as run_analysis

    kind = model_kind(model)
    if kind == "onnx_ir":  # weights read from the model's tensors, not copied
        from drpopt.ir.from_onnx_ir import from_onnx_ir

        return run_analysis(from_onnx_ir(model, where=kind, input_shapes=input_shapes))
    if kind == "graphsurgeon":
        return run_analysis(to_proto(model), where=kind, input_shapes=input_shapes)
    where = os.fspath(model) if kind == "path" else None
    return run_analysis(model, where=where, input_shapes=input_shapes)


# ---- loading -----------------------------------------------------------------------------
def load(
    model: Any,
    input_shapes: dict | None = None,
    inputs: InputsSource | None = None,
    verifies: bool = False,
) -> Graph:
    """The drpopt graph of ``model``, ready for a pipeline: a model ``onnx.checker`` rejects is
    bad input now (not a failure of a pass that rewrote it); ``inputs`` go to the graph's
    pipeline context (``verify_inputs``); ``verifies`` without ``inputs``: random inputs will be
    needed, so input dims left unknown fail now, before any pass runs."""
    if model_kind(model) != "drpopt":
        _check_valid(model)
    graph = to_graph(model, input_shapes or {})
    from drpopt.passes.context import context_of
    from drpopt.passes.manager import reference_model

    if verifies and inputs is None:
        from drpopt.passes.feeds import random_inputs

        random_inputs(reference_model(graph))  # raises, naming the dims and --input-shape
    if inputs is not None:
        context_of(graph).verify_inputs = inputs.load(reference_model(graph))
    return graph


def _check_valid(model: Any) -> None:
    """Raises ``BadInputError`` for a model ``onnx.checker`` rejects (``check_structure``:
    an input or output typed without a shape is no error)."""
    try:
        check_structure(checkable_proto(model))  # an onnx_ir model's weights not copied
    except ValueError:  # over 2 GB: the checker needs the path; the passes will tell
        return
    except Exception as err:
        text = " ".join(str(err).split())[:300]
        where = os.fspath(model) if model_kind(model) == "path" else "the model"
        raise BadInputError(f"{where}: not a valid ONNX model ({text}); export it again") from err


# ---- run ---------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """How ``run`` runs: per-pass timing, the model after each pass written to ``dump_dir``,
    input shapes, verification inputs."""

    time_passes: bool = False
    dump_dir: Path | None = None
    input_shapes: dict | None = None
    inputs: InputsSource | None = None


@dataclass
class RunResult:
    """The model (the kind given), its drpopt graph, one record per pass, and the pipeline
    context (plan, verify report)."""

    model: Any
    graph: Graph
    modified: bool
    records: list
    context: Any  # passes.context.PipelineContext

    @property
    def verify(self) -> Any:
        """The ``verify`` pass's report, or None."""
        return self.context.verify

    @property
    def plan(self) -> Any:
        """The sparsity plan the pipeline made or applied, or None."""
        return self.context.plan


def passes_of(pipeline: str | Path | Sequence[Pass]) -> list[Pass]:
    """The passes of a pipeline string, a ``.toml`` path or a list of pass objects."""
    from drpopt.passes.pipeline import parse_pipeline

    if isinstance(pipeline, str | Path):
        return parse_pipeline(pipeline)
    passes = list(pipeline)
    bad = [p for p in passes if not isinstance(p, Pass)]
    if bad:
        raise BadInputError(f"{bad[0]!r} is not a drpopt pass; give pass objects or a string")
    return passes


def run(
    model: Any,
    pipeline: str | Path | Sequence[Pass],
    options: RunOptions | None = None,
    on_step: OnStep | None = None,
) -> RunResult:
    """Runs ``pipeline`` on ``model``; a failing pass raises ``PassFailedError``."""
    options = options or RunOptions()
    passes = passes_of(pipeline)
    kind = model_kind(model)
    verifies = any(p.name == "verify" for p in passes)
    if options.inputs is not None and not verifies:
        raise BadInputError("verification inputs feed the verify pass; add verify to the pipeline")
    graph = (
        model
        if kind == "drpopt"
        else load(model, options.input_shapes, options.inputs, verifies=verifies)
    )
    result = _manager(passes, on_step or _no_step, options.time_passes, options.dump_dir)(graph)
    out = from_graph(result.model, kind)
    return RunResult(out, result.model, result.modified, result.records, result.context)


def _manager(passes: list[Pass], on_step: OnStep, time_passes: bool = False, dump_dir=None):
    from drpopt.passes.manager import PassManager

    def on_pass(i: int, p: Pass) -> None:
        on_step(p.spec(), 1 if i else 0)

    return PassManager(passes, time_passes=time_passes, dump_dir=dump_dir, on_pass=on_pass)


# ---- prune -------------------------------------------------------------------------------
@dataclass
class PruneOptions:
    """What ``prune`` does, validated once here.

    ``rate``: fraction of eligible channels removed (None: the target's default);
    ``target``: a profile name or ``.toml`` path; ``form``: ``compact`` (channels removed) or
    ``sparse`` (dense shapes with zeros), None: the target's; ``criterion`` (None: ``l2``,
    ``reconstruction`` with calibration); ``exclude``: fnmatch layer patterns left dense;
    ``plan``: a saved plan applied instead of choosing channels (then rate, criterion,
    allocation and exclude must stay unset); ``calibrate``: calibration data for data-aware
    scores and ``post`` (``reconstruct``, the default with data, ``bias-correct`` or ``none``).
    """

    rate: float | None = None
    target: str = "generic"
    form: Literal["compact", "sparse"] | None = None
    criterion: str | None = None
    allocation: str = "uniform"
    exclude: Sequence[str] = ()
    plan: str | os.PathLike | None = None
    rtol: float = 1e-4
    calibrate: Any = None  # passes.CalibratePass
    post: str | None = None
    input_shapes: dict | None = None
    inputs: InputsSource | None = None
    profile: Any = field(init=False, repr=False)
    first: list[Pass] = field(init=False, repr=False)
    second: list[Pass] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from drpopt.passes.targets import get_target
        from drpopt.passes.verify import check_tolerances

        check_tolerances(self.rtol, 0.0)
        if self.form not in (None, "compact", "sparse"):
            raise BadInputError(f"form {self.form!r} is not compact or sparse")
        if self.plan is not None:
            given = [
                name
                for name, value in (
                    ("rate", self.rate),
                    ("criterion", self.criterion),
                    ("exclude", list(self.exclude) or None),
                    ("allocation", None if self.allocation == "uniform" else self.allocation),
                )
                if value is not None
            ]
            if given:
                verb, them = ("has", "it") if len(given) == 1 else ("have", "them")
                raise BadInputError(
                    f"{', '.join(given)} {verb} no effect with --plan: the plan fixes "
                    f"the channels; drop {them} or drop the plan"
                )
            from drpopt.passes.plan import Plan

            Plan.load(self.plan)  # a missing or malformed plan fails before any model is read
        self.profile = get_target(self.target)  # the one resolution of the target
        if self.form is None:
            self.form = self.profile.output
        self.first = self._first_passes()
        self.second = ([_pass("compact")] if self.compact else []) + [
            _pass("cleanup"),
            _pass("verify", rtol=self.rtol),
        ]

    @property
    def compact(self) -> bool:
        """True when the output has its pruned channels removed."""
        return self.form == "compact"

    def _first_passes(self) -> list[Pass]:
        """calibrate?, score, mask, apply-masks, post?, sparsify?"""
        pre, criterion, post = self._calibration()
        if self.plan is not None:
            mask = _pass("mask", plan=os.fspath(self.plan), target=self.target)
        else:
            rate = self.profile.default_rate if self.rate is None else float(self.rate)
            mask = _pass(
                "mask",
                rate=rate,
                target=self.target,
                allocation=self.allocation,
                exclude=list(self.exclude),
            )
        first = [*pre, _pass("score", criterion=criterion), mask, _pass("apply-masks"), *post]
        if self.profile.pattern_rate > 0:  # the target's fine-grained pattern in kept channels
            first.append(_pass("sparsify", target=self.target))
        return first

    def _calibration(self) -> tuple[list[Pass], str, list[Pass]]:
        if self.post is not None and self.post not in POSTS:
            raise BadInputError(f"post {self.post!r} is not one of {', '.join(POSTS)}")
        if self.calibrate is None:
            if self.post not in (None, "none") or self.criterion in (
                "activation",
                "reconstruction",
            ):
                what = (
                    f"post {self.post}"
                    if self.post not in (None, "none")
                    else f"criterion {self.criterion}"
                )
                raise BadInputError(
                    f"{what} needs calibration data: give it (--calib DATA, an .npz or a "
                    "folder of images; calibrate= in Python)"
                )
            return [], self.criterion or "l2", []
        post = self.post or "reconstruct"
        after = [] if post == "none" else [_pass(post)]
        return [self.calibrate], self.criterion or "reconstruction", after


def _pass(name: str, **arguments: Any) -> Pass:
    from drpopt.passes.pipeline import make_pass, registry

    return make_pass(registry()[name], arguments)


@dataclass
class PruneResult:
    """The pruned model (the kind given) and what the CLI reports about it: the final
    graph and proto, the plan, the verify report, figures before, pass records, and the
    context of the masking pipeline (its calibration hold-out feeds a drift report)."""

    model: Any
    graph: Graph
    proto: onnx.ModelProto
    plan: Any
    verify: Any
    records: list
    before: dict
    layers_before: dict
    context: Any  # passes.context.PipelineContext of score .. apply-masks
    options: PruneOptions
    # a sparse result measured against its target as ``drpopt check`` measures it
    # (passes.check.CheckReport; None for a compact one, whose zeros are gone)
    target_check: Any = None


def _check_sparse(pruned: Graph, proto, compact_proto, options: PruneOptions, context, step):
    """A sparse result computes what its compact form computes (raises otherwise); and how it
    measures against its target, as ``drpopt check`` measures it (the report)."""
    from drpopt.passes.check import check_model

    step("checking the sparse model against its compact form", 0)
    _check_sparse_matches_compact(proto, compact_proto, options.rtol, context.verify_inputs)
    report = check_model(pruned, options.profile)
    step("checked", 1)
    return report


def prune_steps(options: PruneOptions) -> int:
    """How many progress steps ``prune`` reports, with one for loading (the caller's when it
    passes a loaded graph) and one for writing (always the caller's)."""
    return 2 + len(options.first) + len(options.second) + (0 if options.compact else 3)


def prune(
    model: Any, options: PruneOptions | None = None, on_step: OnStep | None = None
) -> PruneResult:
    """Prunes ``model`` one-shot: score, mask, zero, optionally compact, clean up, verify.

    A sparse result is also checked against its own compact form (its zeros are whole
    channels). Raises ``CheckFailedError`` when a check fails, ``BadInputError`` on bad
    input; nothing is written (``PruneResult.proto`` is the model to save)."""
    from drpopt.ir.to_onnx import to_onnx
    from drpopt.passes.common import get_analysis, layer_sparsity
    from drpopt.passes.context import PipelineContext
    from drpopt.passes.figures import model_figures
    from drpopt.passes.manager import load_graph

    options = options or PruneOptions()
    step = on_step or _no_step
    kind = model_kind(model)
    if kind == "drpopt":  # loaded by the caller (the CLI, with its own progress)
        graph = model
    else:
        graph = load(model, options.input_shapes, options.inputs, verifies=True)
        step("loaded", 1)
    # the figures with the group shares; the analysis is cached for the score pass
    before = model_figures(graph, analysis=get_analysis(graph))
    layers_before = {s.node: list(s.shape) for s in layer_sparsity(graph)}
    r1 = _manager(options.first, step)(graph)
    step("done", 1)
    if options.compact:
        r2 = _manager(options.second, step)(r1.model, context=r1.context.fork())
        step("done", 1)
    else:
        # the masked model as ONNX; compact the graph itself (its analysis cached: nothing
        # is analysed twice), clean up and verify the sparse model from it
        masked = to_onnx(r1.model)
        compacting = _manager([_pass("compact"), _pass("cleanup")], step)
        compact_proto = to_onnx(compacting(r1.model, context=r1.context.fork(reference=None)).model)
        step("done", 1)
        second = PipelineContext(plan=r1.plan, verify_inputs=r1.context.verify_inputs)
        g2 = load_graph(masked, context=second)  # the masked model is the reference
        r2 = _manager(options.second, step)(g2, context=second)
        step("done", 1)
    pruned = r2.model
    proto = to_onnx(pruned)
    target_check = None
    if not options.compact:  # (compact_proto: made above for a sparse result)
        target_check = _check_sparse(pruned, proto, compact_proto, options, r1.context, step)
    return PruneResult(
        model=from_graph(pruned, kind) if kind != "path" else proto,
        graph=pruned,
        proto=proto,
        plan=r2.plan,
        verify=r2.verify,
        records=r1.records + r2.records,
        before=before,
        layers_before=layers_before,
        context=r1.context,
        options=options,
        target_check=target_check,
    )


def _check_sparse_matches_compact(sparse, compact, rtol: float, verify_inputs) -> None:
    """The sparse model must compute what its channel-removed form computes: proof that its
    zeros are whole channels a runtime (or DRP-AI) may skip."""
    from drpopt.errors import CheckFailedError
    from drpopt.passes.verify import compare_models

    feeds = desc = None
    if verify_inputs is not None:
        feeds, desc = verify_inputs
    report = compare_models(sparse, compact, feeds, rtol=rtol, inputs_desc=desc)
    if not report.ok:
        raise CheckFailedError(f"the sparse model and its compact form differ: {report.summary()}")


# ---- check -------------------------------------------------------------------------------
@dataclass
class CheckOptions:
    """Tolerances (``rtol`` relative to the reference output's spread) and inputs: given
    ``inputs``, or ``samples`` random ones from ``seed``."""

    rtol: float = 1e-4
    atol: float = 1e-6
    seed: int = 0
    samples: int = 2
    input_shapes: dict | None = None
    inputs: InputsSource | None = None

    def __post_init__(self) -> None:
        from drpopt.passes.verify import check_tolerances

        check_tolerances(self.rtol, self.atol)
        if self.samples < 1:
            raise BadInputError(f"samples {self.samples} must be at least 1")
        if self.inputs is not None and (self.seed != 0 or self.samples != 2):
            raise BadInputError(
                "--seed and --samples choose random inputs; drop them with --inputs"
            )


def check(reference: Any, model: Any, options: CheckOptions | None = None) -> Any:
    """Does ``model`` compute the outputs of ``reference`` (onnxruntime, same inputs)? The
    ``VerifyReport``: ``ok`` says it; a degenerate reference output (constant or near zero,
    or every output the same for every input sample) proves nothing and fails."""
    from drpopt.ir.input_shapes import fix_input_shapes
    from drpopt.passes.verify import compare_models

    options = options or CheckOptions()
    ref = fix_input_shapes(to_proto(reference), options.input_shapes or {})
    other = fix_input_shapes(to_proto(model), options.input_shapes or {})
    feeds = desc = None
    if options.inputs is not None:
        feeds, desc = options.inputs.load(ref)
    return compare_models(
        ref,
        other,
        feeds,
        rtol=options.rtol,
        atol=options.atol,
        seed=options.seed,
        samples=options.samples,
        inputs_desc=desc,
        input_dependent=True,
    )


# ---- export ------------------------------------------------------------------------------
@dataclass
class ExportOptions:
    """How a pruned torch module becomes ONNX: ``form`` and ``opset`` (None: the target's,
    else sparse and 17), BatchNorm folding (None: on for a sparse export to a target),
    tolerances against torch, input and output names."""

    form: Literal["compact", "sparse"] | None = None
    opset: int | None = None
    target: str | None = None
    fold_batchnorm: bool | None = None
    rtol: float = 1e-4
    atol: float = 1e-6
    input_names: list[str] | None = None
    output_names: list[str] | None = None

    def __post_init__(self) -> None:
        from drpopt.passes.verify import check_tolerances

        check_tolerances(self.rtol, 0.0)
        if self.form not in (None, "compact", "sparse"):
            raise BadInputError(f"form {self.form!r} is not compact or sparse")
        from drpopt.passes.verify import check_tolerances

        check_tolerances(self.rtol, self.atol)
        if self.target is not None:
            from drpopt.passes.targets import get_target

            profile = get_target(self.target)
            self.form = self.form or profile.output
            self.opset = profile.opset if self.opset is None else self.opset
        if self.fold_batchnorm is None:
            self.fold_batchnorm = self.target is not None and self.form == "sparse"
        self.form = self.form or "sparse"
        self.opset = 17 if self.opset is None else self.opset


def export(
    module: Any, example_inputs: Any, path: str | os.PathLike, options: ExportOptions | None = None
) -> Any:
    """Exports a pruned torch ``module`` to ``path`` as sparse or compact ONNX, verified
    against torch (``retrain.export.export_onnx``; its ``ExportResult``)."""
    from drpopt.retrain.export import export_onnx

    options = options or ExportOptions()
    return export_onnx(
        module,
        example_inputs,
        path,
        compact=options.form == "compact",
        opset=int(options.opset or 17),
        rtol=options.rtol,
        atol=options.atol,
        input_names=options.input_names,
        output_names=options.output_names,
        fold_batchnorm=bool(options.fold_batchnorm),
    )
