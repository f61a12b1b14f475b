"""``verify``: run the model and its reference in onnxruntime and compare every output.

``compare_models`` is the reusable core (the ``drpopt verify`` command uses it too);
``VerifyPass`` compares the graph with ``reference_model(graph)`` inside a pipeline.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from drpopt.errors import BadInputError, CheckFailedError
from drpopt.ir.core import Graph
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.feeds import (  # noqa: F401 (load_inputs, random_inputs: public here too)
    GUESSED_DIMS,
    ModelRunError,
    _fit_inputs,
    _graph_inputs,
    _run,
    _short,
    describe_random,
    load_inputs,
    random_inputs,
)

log = logging.getLogger(__name__)


FLOAT16_RTOL = 2e-3  # two float16 steps: the least tolerance of a model computing in float16
NEAR_ZERO = 1e-6  # a reference output whose RMS is below this proves nothing
CONSTANT = 1e-6  # nor one whose spread is below this share of its largest value
SAME_FOR_EVERY_INPUT = "the same for every input sample"  # nor a collapsed reference


@dataclass
class OutputReport:
    """The comparison of one output over every input sample.

    ``spread`` is the reference's range, max - min over all elements of all samples: the
    scale errors are measured in (a standard deviation would make a peaked output, a
    softmax over thousands of classes, fail on float rounding). ``max_abs`` / ``mean_abs``
    are the largest and mean absolute differences, ``max_rel`` is ``max_abs / spread``,
    ``cosine`` the cosine similarity of the two outputs (flattened), ``max_ref`` the largest finite
    ``|reference|``. ``ok`` iff the reference is not degenerate and
    ``max_abs <= atol + rtol * spread``. ``degenerate`` says why the reference proves nothing
    (constant or near zero over the inputs); integer and boolean outputs must be equal.
    A shape mismatch or a NaN/Inf where the reference has none gives ``max_abs = inf``.
    """

    name: str
    shape: tuple[int, ...] | None
    max_abs: float
    max_rel: float
    max_ref: float
    ok: bool
    message: str = ""
    mean_abs: float = 0.0
    spread: float = 0.0
    cosine: float = 1.0
    degenerate: str = ""

    def excess(self, rtol: float, atol: float) -> float:
        """``max_abs`` over the tolerance it had (above 1 fails); orders outputs by badness."""
        return _ratio(self.max_abs, atol + rtol * self.spread)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; infinities and NaN become the strings "inf" and "nan"."""
        return {
            "name": self.name,
            "shape": list(self.shape) if self.shape is not None else None,
            "max_abs": _json_float(self.max_abs),
            "mean_abs": _json_float(self.mean_abs),
            "max_rel": _json_float(self.max_rel),
            "spread": _json_float(self.spread),
            "max_ref": _json_float(self.max_ref),
            "cosine": _json_float(self.cosine),
            "ok": self.ok,
            "degenerate": self.degenerate or None,
            "message": self.message,
        }


@dataclass
class VerifyReport:
    """Every output's comparison, the overall verdict and the worst output.

    ``problems`` lists what fails beyond single outputs (output names that differ, inputs
    the model needs that the reference does not have); any problem makes ``ok`` False.
    ``inputs`` says what the models were fed; ``degenerate`` names the reference outputs
    that prove nothing (any makes ``ok`` False: the check refuses rather than passes).
    """

    outputs: dict[str, OutputReport]
    ok: bool
    worst: str | None
    rtol: float
    atol: float
    problems: list[str] = field(default_factory=list)
    inputs: str = ""

    @property
    def degenerate(self) -> list[str]:
        return [n for n, o in self.outputs.items() if o.degenerate]

    def summary(self) -> str:
        """One line: the verdict with the worst output and its errors, and the inputs."""
        fed = f" on {self.inputs}" if self.inputs else ""
        if self.degenerate and not self.problems:
            o = self.outputs[self.degenerate[0]]
            more = len(self.degenerate) - 1
            random = "random" in self.inputs
            hint = (
                "the reference's outputs do not depend on its input (a collapsed model: if it "
                "is a pruned one, prune less or retrain before verifying)"
                if o.degenerate == SAME_FOR_EVERY_INPUT
                else "give real inputs (--inputs)"
                + (
                    " and the input shapes the model is used at (--input-shape)"
                    if GUESSED_DIMS in self.inputs
                    else ""
                )
                if random
                else "on these inputs the reference gives no signal (if it is a pruned model, "
                "pruning removed it: prune less, or retrain before verifying)"
            )
            return (
                f"cannot verify: the reference output '{o.name}' is {o.degenerate}{fed}"
                + (f" (and {more} more output(s))" if more > 0 else "")
                + f"; an output that does not vary proves nothing: {hint}"
            )
        if not self.outputs and self.problems:  # nothing was run: the inputs differ
            return f"cannot compare the models: {'; '.join(self.problems)}"
        head = "outputs match" if self.ok else "outputs differ from the reference"
        parts = [f"{head} (rtol {self.rtol:g} of the reference's spread, atol {self.atol:g})"]
        if self.worst is not None:
            w = self.outputs[self.worst]
            detail = f"worst output '{w.name}': max error {w.max_rel:.3g} x spread "
            detail += f"(max abs {w.max_abs:.3g}, mean abs {w.mean_abs:.3g}, "
            detail += f"spread {w.spread:.3g}, cosine {w.cosine:.6f})"
            if w.message:
                detail += f" ({w.message})"
            parts.append(detail)
        parts.extend(self.problems)
        return "; ".join(parts) + fed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the verdict, the worst output, tolerances, problems, every output."""
        return {
            "ok": self.ok,
            "worst": self.worst,
            "rtol": self.rtol,
            "atol": self.atol,
            "inputs": self.inputs,
            "degenerate": self.degenerate,
            "problems": list(self.problems),
            "outputs": [o.to_dict() for o in self.outputs.values()],
        }


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _compare(name: str, ref: np.ndarray, out: np.ndarray, rtol: float, atol: float) -> OutputReport:
    """One output (all samples concatenated on a new first axis, or a single array)."""
    shape = tuple(int(d) for d in ref.shape)
    if ref.shape != out.shape:
        message = f"shape {tuple(out.shape)} differs from the reference's {shape}"
        return OutputReport(name, shape, math.inf, math.inf, 0.0, False, message, math.inf)
    if ref.dtype.kind not in "fc" or out.dtype.kind not in "fc":
        same = bool(np.array_equal(ref, out))
        err = 0.0 if same else math.inf
        msg = "" if same else "differ (integer, boolean or string outputs must be equal)"
        return OutputReport(name, shape, err, err, 0.0, same, msg, err)
    r = ref.astype(np.float64).ravel()
    o = out.astype(np.float64).ravel()
    finite = r[np.isfinite(r)]
    max_ref = float(np.abs(finite).max()) if finite.size else 0.0
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    rms = float(np.sqrt(np.mean(finite * finite))) if finite.size else 0.0
    degenerate = ""
    if not finite.size:
        degenerate = "NaN or Inf everywhere"
    elif rms < NEAR_ZERO:
        degenerate = f"near zero (RMS {rms:.3g})"
    elif spread <= CONSTANT * max_ref:
        degenerate = (
            f"constant ({finite[0]:.6g} everywhere)"
            if spread == 0
            else (f"constant to {spread / max_ref:.1g} of its value")
        )
    with np.errstate(invalid="ignore", over="ignore"):
        # equal entries (infinities included) and NaN where the reference has NaN agree
        agree = (r == o) | (np.isnan(r) & np.isnan(o))
        diff = np.where(agree, 0.0, np.abs(o - r))
    message = ""
    bad = ~np.isfinite(diff)
    if bad.any():
        message = f"{int(bad.sum())} NaN/Inf value(s) where the reference differs"
        max_abs = mean_abs = math.inf
    else:
        max_abs = float(diff.max()) if diff.size else 0.0
        mean_abs = float(diff.mean()) if diff.size else 0.0
    both = np.isfinite(r) & np.isfinite(o)
    nr, no = float(np.linalg.norm(r[both])), float(np.linalg.norm(o[both]))
    cosine = float(np.dot(r[both], o[both]) / (nr * no)) if nr > 0 and no > 0 else float(nr == no)
    ok = not degenerate and max_abs <= atol + rtol * spread
    return OutputReport(
        name,
        shape,
        max_abs,
        _ratio(max_abs, spread),
        max_ref,
        ok,
        message,
        mean_abs,
        spread,
        cosine,
        degenerate,
    )


def _ratio(num: float, den: float) -> float:
    """``num / den``, with 0/0 = 0 and x/0 = inf."""
    if den > 0:
        return num / den
    return math.inf if num > 0 else 0.0


Samples = dict[str, np.ndarray] | list[dict[str, np.ndarray]]


def compare_models(
    reference: onnx.ModelProto,
    model: onnx.ModelProto,
    inputs: Samples | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    seed: int = 0,
    samples: int = 2,
    inputs_desc: str | None = None,
    input_dependent: bool = False,
) -> VerifyReport:
    """Runs both models in onnxruntime (CPU) on the same inputs and compares each output.

    Rules:
    - ``inputs`` (one feed dict by input name, or a list of them: one run each) or
      ``samples`` random ones (:func:`random_inputs` of the reference, seeds ``seed``,
      ``seed + 1``, ...) feed both models; a missing input raises ``BadInputError``;
    - each output is compared over all runs at once: an output passes iff the reference
      varies (not constant, not near zero: else the report *refuses*, ``ok`` False) and
      ``max|out - ref| <= atol + rtol * spread(ref)`` (NaN where the reference has NaN and
      equal infinities agree; any other NaN/Inf fails); cosine similarity is reported too;
    - where either model computes in float16 (its weights or casts), ``rtol`` is at least
      ``FLOAT16_RTOL`` (two float16 steps: sums rounded to 11 bits differ by that much);
    - outputs are matched by name: names only one model has, or a shape that differs,
      fail the check with a message saying so;
    - ``worst`` is the output furthest beyond (or closest to) its tolerance;
    - a model onnxruntime cannot load or run raises ``ModelRunError`` (a ``BadInputError``);
    - ``input_dependent`` (``drpopt verify``): a reference whose every float output is the
      same for every one of several samples (a collapsed model) is refused as degenerate.
    """
    check_tolerances(rtol, atol)
    rtol = _float16_rtol(reference, model, rtol)
    runs, desc = _feeds(reference, inputs, seed, samples)
    desc = inputs_desc or desc
    feeds = runs[0]
    problems: list[str] = []
    extra_inputs = [i.name for i in _graph_inputs(model) if i.name not in feeds]
    if extra_inputs:
        problems.append(f"the model has input(s) the reference lacks: {', '.join(extra_inputs)}")
        return VerifyReport({}, False, None, rtol, atol, problems, desc)

    ref_names, ref_values = _outputs(reference, runs, "reference model")
    out_names, out_values = _outputs(model, runs, "model")
    if set(ref_names) != set(out_names):
        problems.append(_names_differ(ref_names, out_names))

    reports = {
        name: _compare_runs(name, ref_values[name], out_values[name], rtol, atol)
        for name in ref_names
        if name in out_values
    }
    if input_dependent:
        _mark_input_independent(reports, ref_values)
    worst = max(reports, key=lambda n: reports[n].excess(rtol, atol), default=None)
    ok = not problems and all(r.ok for r in reports.values())
    report = VerifyReport(reports, ok, worst, rtol, atol, problems, desc)
    log.info("verify: %s", report.summary())
    return report


def _in_float16(model: onnx.ModelProto) -> bool:
    """Whether ``model`` computes in float16 (or bfloat16): its weights or casts say so."""
    narrow = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    if any(t.data_type in narrow for t in model.graph.initializer):
        return True
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i in narrow for a in node.attribute):
            return True
    return False


def _outputs(model: onnx.ModelProto, runs: list, what: str):
    """The output names of ``model`` and, by name, its values over every run."""
    names = [o.name for o in model.graph.output]
    results = _run(model, runs, what)
    return names, {n: [np.asarray(r[i]) for r in results] for i, n in enumerate(names)}


def _float16_rtol(reference: onnx.ModelProto, model: onnx.ModelProto, rtol: float) -> float:
    """``rtol``, raised to ``FLOAT16_RTOL`` where either model computes in float16: a sum
    rounded to 11 bits moves by a step whenever its terms change order (a pruned channel's
    zeros gone), so two float16 models agree to their own precision, no better."""
    if rtol < FLOAT16_RTOL and (_in_float16(reference) or _in_float16(model)):
        log.info("verify: the models compute in float16: rtol %g, not %g", FLOAT16_RTOL, rtol)
        return FLOAT16_RTOL
    return rtol


def _mark_input_independent(
    reports: dict[str, OutputReport], ref_values: dict[str, list[np.ndarray]]
) -> None:
    """A reference whose every float output is the same for every input sample computes
    nothing from its input (a collapsed model: a bias alone reaches the outputs), so the
    comparison proves nothing: each such output is marked degenerate. One output that does
    not depend on the input (a detector's anchors) beside others that do is fine."""
    floats = {
        n: refs
        for n, refs in ref_values.items()
        if n in reports and refs and all(np.asarray(r).dtype.kind == "f" for r in refs)
    }
    if not floats or len(next(iter(floats.values()))) < 2:
        return
    for name, refs in floats.items():
        if reports[name].degenerate:
            continue
        first = refs[0].astype(np.float64)
        if any(r.shape != first.shape for r in refs):
            return
        scale = float(np.nanmax(np.abs(first))) if first.size else 0.0
        for r in refs[1:]:
            with np.errstate(invalid="ignore"):
                diff = np.abs(r.astype(np.float64) - first)
            if np.nanmax(diff, initial=0.0) > CONSTANT * scale:
                return
    for name in floats:
        report = reports[name]
        if not report.degenerate:
            report.degenerate = SAME_FOR_EVERY_INPUT
            report.ok = False


def check_tolerances(rtol: float, atol: float) -> None:
    """Tolerances are finite and not negative: an infinite one passes every comparison (it
    could not fail), NaN fails every one."""
    if not (math.isfinite(rtol) and math.isfinite(atol)) or rtol < 0 or atol < 0:
        raise BadInputError(
            f"tolerances must not be negative and must be finite (rtol {rtol}, atol {atol}); "
            "give e.g. --rtol 1e-4"
        )


def _names_differ(ref_names: list[str], out_names: list[str]) -> str:
    """The problem line of two models whose output names differ."""
    only_ref = [n for n in ref_names if n not in out_names]
    only_out = [n for n in out_names if n not in ref_names]
    return (
        "output names differ: "
        f"only in the reference: {', '.join(only_ref) or 'none'}; "
        f"only in the model: {', '.join(only_out) or 'none'}"
    )


def _feeds(
    reference: onnx.ModelProto, inputs: Samples | None, seed: int, samples: int
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The feed dicts of every run (the given ``inputs``, else ``samples`` random ones) and
    a description of them."""
    if inputs is None:
        runs = [random_inputs(reference, seed + i) for i in range(max(samples, 1))]
        return runs, describe_random(reference, len(runs), seed)
    given = [inputs] if isinstance(inputs, dict) else list(inputs)
    if not given:
        raise BadInputError("inputs: no input samples given")
    runs = [_fit_inputs(reference, g) for g in given]
    return runs, f"{len(runs)} given input sample(s)"


def _compare_runs(
    name: str, refs: list[np.ndarray], outs: list[np.ndarray], rtol: float, atol: float
) -> OutputReport:
    """Compares one output over several runs (shapes may differ between runs)."""
    if len(refs) == 1:
        return _compare(name, refs[0], outs[0], rtol, atol)
    for r, o in zip(refs, outs, strict=True):
        if r.shape != o.shape:
            return _compare(name, r, o, rtol, atol)
    flat_r = np.concatenate([r.ravel() for r in refs])
    flat_o = np.concatenate([o.ravel() for o in outs])
    report = _compare(name, flat_r, flat_o, rtol, atol)
    report.shape = tuple(int(d) for d in refs[0].shape)
    return report


# ---- the pass ---------------------------------------------------------------------------
@dataclass
class VerifyPass(Pass):
    """Check that the model still computes what its reference computes (onnxruntime, CPU).

    Rules:
    - the reference is ``reference_model(graph)``: the pipeline's input, or the model right
      after the last pass that changes outputs on purpose (``apply-masks``);
    - both run on ``inputs`` (an .npz with one array per input name, or a folder of
      images: ``passes/inputs.py``), on the pipeline context's ``verify_inputs``
      (``(samples, description)``, set by the CLI), or on ``samples`` random inputs from
      ``seed``; see :func:`compare_models` for how outputs are compared (degenerate
      references refuse);
    - the :class:`VerifyReport` is the pipeline context's ``verify``; ``modified`` is False;
    - a failed comparison raises ``CheckFailedError`` naming the worst output with its
      largest absolute and relative error; a model onnxruntime cannot run fails likewise.
    """

    name: ClassVar[str] = "verify"

    rtol: float = 1e-4
    atol: float = 1e-6
    inputs: str | None = None
    seed: int = 0
    samples: int = 2

    def call(self, model: Graph) -> PassResult:
        from drpopt.ir.to_onnx import to_onnx
        from drpopt.passes.context import context_of
        from drpopt.passes.inputs import load_samples
        from drpopt.passes.manager import reference_model

        reference = reference_model(model)
        feeds, desc = None, None
        if self.inputs is not None:
            feeds, desc = load_samples(self.inputs, reference)
        elif context_of(model).verify_inputs is not None:  # set by the CLI's --inputs
            feeds, desc = context_of(model).verify_inputs
        try:
            report = compare_models(
                reference,
                to_onnx(model),
                feeds,
                rtol=self.rtol,
                atol=self.atol,
                seed=self.seed,
                samples=self.samples,
                inputs_desc=desc,
            )
        except ModelRunError as err:
            if err.which == "reference model":
                raise
            raise CheckFailedError(f"verify: {err}") from err
        context_of(model).verify = report
        if not report.ok:
            raise CheckFailedError(report.summary())
        return PassResult(model, False)


def latency_ms(
    model: onnx.ModelProto | str | Path,
    feeds: dict[str, np.ndarray] | None = None,
    runs: int = 30,
    threads: int = 2,
) -> float:
    """Median onnxruntime CPU latency in ms over ``runs`` runs after a short warm-up
    (random inputs unless ``feeds``)."""
    import statistics
    import time

    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = feeds if feeds is not None else random_inputs(proto)
    for _ in range(5):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
