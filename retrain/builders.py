"""Builders: the callable that makes a model, named as ``"module:function"`` or
``"path/to/file.py:function"`` (``drpopt export`` and ``export_onnx``'s callers)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drpopt.errors import BadInputError


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def load_builder(spec: str) -> Callable[..., Any]:
    """The callable named by ``"module:function"`` or ``"path/to/file.py:function"``.

    A file is imported as a fresh module with its directory on ``sys.path`` while it
    loads (so it may import its neighbours); ``function`` may be dotted
    (``"models:Factory.build"``). Raises ``BadInputError`` naming what is missing.
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise BadInputError(
            f"builder {spec!r}: give MODULE:FUNCTION or path/to/file.py:FUNCTION "
            "(e.g. torchvision.models:resnet18 or models.py:build)"
        )
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _import_file(Path(where), spec)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise BadInputError(
                f"builder {spec!r}: cannot import module {where!r} ({_short(err)}); install it "
                "or give a file path, path/to/file.py:FUNCTION"
            ) from err
        except Exception as err:  # the module's own code failed
            raise BadInputError(
                f"builder {spec!r}: importing {where!r} raised {type(err).__name__}: {_short(err)}"
            ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise BadInputError(
                f"builder {spec!r}: {where} has no {attr!r}; callables there: "
                f"{', '.join(public[:10]) or 'none'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadInputError(
            f"builder {spec!r}: {attr!r} is a {type(obj).__name__}, not a function; name a "
            "function or class that returns the model"
        )
    return obj


def _import_file(file: Path, spec: str) -> Any:
    if not file.is_file():
        raise BadInputError(f"builder {spec!r}: {file}: no such file; give an existing .py file")
    resolved = file.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"drpopt_builder_{resolved.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise BadInputError(f"builder {spec!r}: {file} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the file's own code failed
        sys.modules.pop(name, None)
        raise BadInputError(
            f"builder {spec!r}: importing {file} raised {type(err).__name__}: {_short(err)}"
        ) from err
    finally:
        if str(resolved.parent) in sys.path:
            sys.path.remove(str(resolved.parent))
    return module
