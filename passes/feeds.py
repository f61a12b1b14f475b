"""Feeding a model and running it in onnxruntime: named inputs from an ``.npz``, random
inputs of the stated shapes, arrays fitted to the input dtypes, one session per model with
failures as one-line errors (``ModelRunError`` names which model failed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from drpopt.errors import BadInputError

log = logging.getLogger(__name__)


class ModelRunError(BadInputError):
    """onnxruntime could not load or run one of the two models; ``which`` says which."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


# ---- report -----------------------------------------------------------------------------


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
    booleans, empty strings for strings. An unknown batch dim (axis 0) is 1; any other
    unknown dim raises ``BadInputError`` naming it and ``--input-shape`` (random data at a
    guessed size proves little)."""
    from drpopt.ir.input_shapes import concrete, example, input_dims, show, symbolic_input_dims

    unknown = symbolic_input_dims(model, skip_batch=True)
    if unknown:
        dims = input_dims(model)
        name, axes = next(iter(unknown.items()))
        raise BadInputError(
            f"input '{name}' {show(dims[name])} has unknown dims (axes "
            f"{', '.join(map(str, axes))}): random inputs need real sizes; give "
            f"--input-shape {name}:{example(dims[name])} (or --inputs with real data)"
        )
    rng = np.random.default_rng(seed)
    feeds = {}
    shapes = input_dims(model)
    for info in _graph_inputs(model):
        dims = list(concrete(shapes[info.name]))
        dtype = _np_dtype(info)
        if dtype.kind in "fc":
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind in "OUS":
            feeds[info.name] = np.full(dims, "", dtype=object)
        else:
            feeds[info.name] = np.zeros(dims, dtype=dtype)
    return feeds


def describe_random(model: onnx.ModelProto, samples: int, seed: int) -> str:
    """What ``random_inputs`` feeds, for reports: shapes, distribution, seed."""
    from drpopt.ir.input_shapes import concrete, input_dims

    dims = input_dims(model)
    shapes = ", ".join(f"{name}: {'x'.join(map(str, concrete(d)))}" for name, d in dims.items())
    symbols = dict.fromkeys("?" if x is None else str(x) for d in dims.values() for x in d or ())
    guessed = [x for x in symbols if not x.isdigit()]
    if guessed:  # the shapes the model declares leave these open: random inputs use 1
        shapes += f"; {', '.join(guessed)} {GUESSED_DIMS}"
    return f"{samples} random input sample(s) ({shapes}; standard normal, seed {seed})"


GUESSED_DIMS = "taken as 1"  # in describe_random's text: symbolic dims the inputs guessed


def _fit_inputs(model: onnx.ModelProto, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The given arrays for the model's inputs, cast within their kind to the input dtype."""
    from drpopt.ir.input_shapes import input_dims

    feeds, dims = {}, input_dims(model)
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
        _check_shape(info.name, dims.get(info.name), arr)
        feeds[info.name] = arr
    extra = sorted(set(given) - set(feeds))
    if extra:
        log.warning("inputs: ignoring arrays the model has no input for: %s", ", ".join(extra))
    return feeds


def _check_shape(name: str, dims: list | None, arr: np.ndarray) -> None:
    """An array whose rank or fixed dims differ from the input's ``dims`` is bad input
    (onnxruntime would fail with a long native message)."""
    from drpopt.ir.input_shapes import show

    if dims is None:
        return
    fixed_ok = all(not isinstance(d, int) or d == n for d, n in zip(dims, arr.shape, strict=False))
    if len(dims) != arr.ndim or not fixed_ok:
        got = "x".join(map(str, arr.shape)) or "a scalar"
        raise BadInputError(
            f"inputs: array '{name}' is {got}, the model input takes {show(dims)}; give "
            "arrays of that shape (an extra first axis holds samples)"
        )


# ---- running ----------------------------------------------------------------------------
def _run(
    model: onnx.ModelProto, runs: list[dict[str, np.ndarray]], which: str
) -> list[list[np.ndarray]]:
    """The outputs of ``model`` for each feed dict of ``runs`` (one session for all)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures become our one-line errors, not native log lines
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise ModelRunError(
            which, f"onnxruntime cannot load the {which}: {_short(err)}; check it is valid ONNX"
        ) from err
    names = {i.name for i in session.get_inputs()}
    run_opts = ort.RunOptions()
    run_opts.log_severity_level = 4
    try:
        return [
            session.run(None, {k: v for k, v in feeds.items() if k in names}, run_opts)
            for feeds in runs
        ]
    except Exception as err:
        raise ModelRunError(
            which,
            f"onnxruntime cannot run the {which}: {_short(err)}; check the input shapes",
        ) from err


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__
