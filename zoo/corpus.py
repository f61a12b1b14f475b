"""A folder of real models for conformance tests and the corpus benchmark.

The shared corpus (``../shared/corpus`` beside the repository) holds ONNX *skeletons*:
real exports whose large float tensors were stripped to their statistics, with a
``materialize.py`` that draws seeded random weights back in. Any other folder of ``.onnx``
files works too: without a ``materialize.py`` its models are loaded as they are.

Rules:
- the folder is, in order: the argument, ``$DRPOPT_CORPUS``, ``../shared/corpus`` beside the
  repository (or ``shared/corpus`` inside it); ``None`` when none of them exists;
- a folder's ``materialize.py`` is imported from that folder once (under a name of its own,
  so two folders never share a module) and called as ``materialize(path, seed)``;
- models are the folder's ``*.onnx`` files in name order, named by their stem.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import onnx

from drpopt.errors import BadInputError

ENV_VAR = "DRPOPT_CORPUS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CANDIDATES = (REPO_ROOT.parent / "shared" / "corpus", REPO_ROOT / "shared" / "corpus")

_materializers: dict[Path, Callable[..., onnx.ModelProto] | None] = {}


def corpus_dir(folder: str | os.PathLike | None = None) -> Path | None:
    """The corpus folder: ``folder``, else ``$DRPOPT_CORPUS``, else the shared corpus beside
    the repository; None when the chosen one (or every default) does not exist."""
    chosen = folder if folder not in (None, "") else os.environ.get(ENV_VAR) or None
    if chosen is not None:
        path = Path(chosen).expanduser()
        return path.resolve() if path.is_dir() else None
    return next((p.resolve() for p in DEFAULT_CANDIDATES if p.is_dir()), None)


def corpus_models(folder: str | os.PathLike) -> list[Path]:
    """The ``.onnx`` files of ``folder``, in name order."""
    return sorted(p for p in Path(folder).glob("*.onnx") if p.is_file())


def _materializer(folder: Path) -> Callable[..., onnx.ModelProto] | None:
    folder = folder.resolve()
    if folder not in _materializers:
        script = folder / "materialize.py"
        fn = None
        if script.is_file():
            digest = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(f"_drpopt_corpus_{digest}", script)
            if spec is None or spec.loader is None:
                raise BadInputError(f"{script}: cannot be imported as a Python module")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            fn = getattr(module, "materialize", None)
            if not callable(fn):
                raise BadInputError(f"{script}: defines no materialize(path, seed) function")
        _materializers[folder] = fn
    return _materializers[folder]


def load_corpus_model(path: str | os.PathLike, seed: int = 0) -> onnx.ModelProto:
    """A runnable model: materialized with ``seed`` when its folder has a ``materialize.py``,
    else loaded as it is."""
    path = Path(path)
    fn = _materializer(path.parent)
    if fn is None:
        return onnx.load(str(path))
    return fn(str(path), seed=seed)
