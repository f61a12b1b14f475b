"""``verify``: run the model and its reference in onnxruntime and compare every output.

``compare_models`` is the reusable core (the ``drpopt verify`` command uses it too);
``VerifyPass`` compares the graph with ``reference_model(graph)`` inside a pipeline.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from drpopt.errors import BadInputError, CheckFailedError
from drpopt.ir.core import Graph
from drpopt.passes.base import Pass, PassResult

log = logging.getLogger(__name__)


class ModelRunError(BadInputError):
    """onnxruntime could not load or run one of the two models; ``which`` says which."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


# ---- report -----------------------------------------------------------------------------
@dataclass
class OutputReport:
    """The comparison of one output.

    ``max_abs`` is the largest absolute difference, ``max_rel`` that divided by the largest
    absolute reference value (``max_ref``); ``ok`` iff ``max_abs <= atol + rtol * max_ref``.
    A shape mismatch or a NaN/Inf where the reference has none gives ``max_abs = inf``.
    """

    name: str
    shape: tuple[int, ...] | None
    max_abs: float
    max_rel: float
    max_ref: float
    ok: bool
    message: str = ""

    def excess(self, rtol: float, atol: float) -> float:
        """``max_abs`` over the tolerance it had (above 1 fails); orders outputs by badness."""
        return _ratio(self.max_abs, atol + rtol * self.max_ref)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; infinities and NaN become the strings "inf" and "nan"."""
        return {
            "name": self.name,
            "shape": list(self.shape) if self.shape is not None else None,
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "max_ref": _json_float(self.max_ref),
            "ok": self.ok,
            "message": self.message,
        }


@dataclass
class VerifyReport:
    """Every output's comparison, the overall verdict and the worst output.

    ``problems`` lists what fails beyond single outputs (output names that differ, inputs
    the model needs that the reference does not have); any problem makes ``ok`` False.
    """

    outputs: dict[str, OutputReport]
    ok: bool
    worst: str | None
    rtol: float
    atol: float
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the verdict with the worst output and its errors."""
        head = "outputs match" if self.ok else "outputs differ from the reference"
        parts = [f"{head} (rtol {self.rtol:g}, atol {self.atol:g})"]
        if self.worst is not None:
            w = self.outputs[self.worst]
            detail = f"worst output '{w.name}': max abs error {w.max_abs:.3g}, "
            detail += f"max rel error {w.max_rel:.3g}"
            if w.message:
                detail += f" ({w.message})"
            parts.append(detail)
        parts.extend(self.problems)
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the verdict, the worst output, tolerances, problems, every output."""
        return {
            "ok": self.ok,
            "worst": self.worst,
            "rtol": self.rtol,
            "atol": self.atol,
            "problems": list(self.problems),
            "outputs": [o.to_dict() for o in self.outputs.values()],
        }


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


# ---- inputs -----------------------------------------------------------------------------
def load_inputs(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (``np.savez(path, input=x)``), by input name.

    Raises ``BadInputError`` when the file is missing or not an .npz archive, and, when
    ``names`` is given, when one of those input names has no array in it.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(
            f"{path}: no such inputs file; give an .npz written with np.savez(path, input=x)"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError, pickle and zipfile errors
        raise BadInputError(
            f"{path}: not a readable .npz file ({_short(err)[:160]}); "
            "save the inputs with np.savez(path, <input name>=array)"
        ) from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise BadInputError(
            f"{path}: holds a single array, not named inputs; save it with "
            "np.savez(path, <input name>=array)"
        )
    try:
        with data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except Exception as err:  # a truncated member, an object array (pickle refused)
        raise BadInputError(
            f"{path}: an array in it cannot be read ({_short(err)[:160]}); save it again"
        ) from err
    if names is not None:
        missing = [n for n in names if n not in arrays]
        if missing:
            have = ", ".join(arrays) or "none"
            raise BadInputError(
                f"{path}: has no array for input(s) {', '.join(missing)} (it holds: {have}); "
                "save one array per model input under the input's name"
            )
    return arrays


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _np_dtype(info: onnx.ValueInfoProto) -> np.dtype:
    elem = info.type.tensor_type.elem_type
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        return np.dtype(np.float32)


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per graph input: standard normal for floats, zeros for integers, False for
    booleans, empty strings for strings; symbolic or unknown dims are 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in _graph_inputs(model):
        tt = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = _np_dtype(info)
        if dtype.kind in "fc":
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind in "OUS":
            feeds[info.name] = np.full(dims, "", dtype=object)
        else:
            feeds[info.name] = np.zeros(dims, dtype=dtype)
    return feeds


def _fit_inputs(model: onnx.ModelProto, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The given arrays for the model's inputs, cast within their kind to the input dtype."""
    feeds = {}
    for info in _graph_inputs(model):
        if info.name not in given:
            have = ", ".join(given) or "none"
            raise BadInputError(
                f"inputs: no array for model input '{info.name}' (given: {have}); "
                "save one array per model input under the input's name"
            )
        arr = np.asarray(given[info.name])
        want = _np_dtype(info)
        if arr.dtype != want:
            if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
                raise BadInputError(
                    f"inputs: array '{info.name}' is {arr.dtype}, the model input wants {want}"
                )
            arr = arr.astype(want)
        feeds[info.name] = arr
    extra = sorted(set(given) - set(feeds))
    if extra:
        log.warning("inputs: ignoring arrays the model has no input for: %s", ", ".join(extra))
    return feeds


# ---- running ----------------------------------------------------------------------------
def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], which: str) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise ModelRunError(
            which, f"onnxruntime cannot load the {which}: {_short(err)}; check it is valid ONNX"
        ) from err
    names = {i.name for i in session.get_inputs()}
    try:
        return session.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as err:
        raise ModelRunError(
            which,
            f"onnxruntime cannot run the {which}: {_short(err)}; check the input shapes",
        ) from err


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _compare(name: str, ref: np.ndarray, out: np.ndarray, rtol: float, atol: float) -> OutputReport:
    shape = tuple(int(d) for d in ref.shape)
    if ref.shape != out.shape:
        message = f"shape {tuple(out.shape)} differs from the reference's {shape}"
        return OutputReport(name, shape, math.inf, math.inf, 0.0, False, message)
    if ref.dtype.kind in "OUS" or out.dtype.kind in "OUS":
        same = bool(np.array_equal(ref, out))
        max_abs = 0.0 if same else math.inf
        return OutputReport(name, shape, max_abs, max_abs, 0.0, same, "" if same else "differ")
    r = ref.astype(np.float64)
    o = out.astype(np.float64)
    finite_ref = np.abs(r[np.isfinite(r)])
    max_ref = float(finite_ref.max()) if finite_ref.size else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        # equal entries (infinities included) and NaN where the reference has NaN agree
        agree = (r == o) | (np.isnan(r) & np.isnan(o))
        diff = np.where(agree, 0.0, np.abs(o - r))
    message = ""
    bad = ~np.isfinite(diff)
    if bad.any():
        message = f"{int(bad.sum())} NaN/Inf value(s) where the reference differs"
        max_abs = math.inf
    else:
        max_abs = float(diff.max()) if diff.size else 0.0
    ok = max_abs <= atol + rtol * max_ref
    return OutputReport(name, shape, max_abs, _ratio(max_abs, max_ref), max_ref, ok, message)


def _ratio(num: float, den: float) -> float:
    """``num / den``, with 0/0 = 0 and x/0 = inf."""
    if den > 0:
        return num / den
    return math.inf if num > 0 else 0.0


def compare_models(
    reference: onnx.ModelProto,
    model: onnx.ModelProto,
    inputs: dict[str, np.ndarray] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    seed: int = 0,
) -> VerifyReport:
    """Runs both models in onnxruntime (CPU) on the same inputs and compares each output.

    Rules:
    - ``inputs`` (by input name) or random ones (:func:`random_inputs` of the reference,
      fixed by ``seed``) feed both models; a missing input raises ``BadInputError``;
    - an output passes iff ``max|out - ref| <= atol + rtol * max|ref|`` (NaN where the
      reference has NaN and equal infinities agree; any other NaN/Inf fails);
    - outputs are matched by name: names only one model has, or a shape that differs,
      fail the check with a message saying so;
    - ``worst`` is the output furthest beyond (or closest to) its tolerance;
    - a model onnxruntime cannot load or run raises ``ModelRunError`` (a ``BadInputError``).
    """
    if rtol < 0 or atol < 0:
        raise BadInputError(f"tolerances must not be negative (rtol {rtol}, atol {atol})")
    feeds = random_inputs(reference, seed) if inputs is None else _fit_inputs(reference, inputs)
    problems: list[str] = []
    extra_inputs = [i.name for i in _graph_inputs(model) if i.name not in feeds]
    if extra_inputs:
        problems.append(f"the model has input(s) the reference lacks: {', '.join(extra_inputs)}")
        return VerifyReport({}, False, None, rtol, atol, problems)

    ref_names = [o.name for o in reference.graph.output]
    out_names = [o.name for o in model.graph.output]
    ref_values = dict(zip(ref_names, _run(reference, feeds, "reference model"), strict=True))
    out_values = dict(zip(out_names, _run(model, feeds, "model"), strict=True))
    if set(ref_names) != set(out_names):
        only_ref = [n for n in ref_names if n not in out_values]
        only_out = [n for n in out_names if n not in ref_values]
        problems.append(
            "output names differ: "
            f"only in the reference: {', '.join(only_ref) or 'none'}; "
            f"only in the model: {', '.join(only_out) or 'none'}"
        )

    reports = {
        name: _compare(name, ref_values[name], np.asarray(out_values[name]), rtol, atol)
        for name in ref_names
        if name in out_values
    }
    worst = max(reports, key=lambda n: reports[n].excess(rtol, atol), default=None)
    ok = not problems and all(r.ok for r in reports.values())
    report = VerifyReport(reports, ok, worst, rtol, atol, problems)
    log.info("verify: %s", report.summary())
    return report


# ---- the pass ---------------------------------------------------------------------------
@dataclass
class VerifyPass(Pass):
    """Check that the model still computes what its reference computes (onnxruntime, CPU).

    Rules:
    - the reference is ``reference_model(graph)``: the pipeline's input, or the model right
      after the last pass that changes outputs on purpose (``apply-masks``);
    - both run on ``inputs`` (an .npz with one array per input name) or on random inputs
      fixed by ``seed``; see :func:`compare_models` for how outputs are compared;
    - the :class:`VerifyReport` is stored in ``graph.meta["verify"]``; ``modified`` is False;
    - a failed comparison raises ``CheckFailedError`` naming the worst output with its
      largest absolute and relative error; a model onnxruntime cannot run fails likewise.
    """

    name: ClassVar[str] = "verify"

    rtol: float = 1e-4
    atol: float = 1e-6
    inputs: str | None = None
    seed: int = 0

    def call(self, model: Graph) -> PassResult:
        from drpopt.ir.to_onnx import to_onnx
        from drpopt.passes.manager import reference_model

        reference = reference_model(model)
        feeds = None
        if self.inputs is not None:
            names = [i.name for i in _graph_inputs(reference)]
            feeds = load_inputs(self.inputs, names)
        try:
            report = compare_models(
                reference, to_onnx(model), feeds, rtol=self.rtol, atol=self.atol, seed=self.seed
            )
        except ModelRunError as err:
            if err.which == "reference model":
                raise
            raise CheckFailedError(f"verify: {err}") from err
        model.meta["verify"] = report
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
