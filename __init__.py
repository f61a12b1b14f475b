"""drpopt: structured-pruning compiler passes for CNNs.

Public API: ``analyze`` (coupled channel groups of an ONNX model), ``prune``, ``run``,
``check`` and ``export`` with their option classes (``drpopt.api``, imported on first use),
the IR in ``drpopt.ir``, and the error classes. Importing drpopt does not import torch.
"""

from __future__ import annotations

from drpopt.errors import BadInputError, CheckFailedError, DrpoptError, UnsupportedModelError
from drpopt.ir.analysis import Analysis, analyze
from drpopt.ir.rules import set_plugin_loader
from drpopt.plugins import load_rule_plugins as _load_rule_plugins

set_plugin_loader(_load_rule_plugins)

__version__ = "0.1.0"

_API = (
    "CheckOptions",
    "ExportOptions",
    "PruneOptions",
    "RunOptions",
    "check",
    "export",
    "prune",
    "run",
)


def __getattr__(name: str):  # drpopt.api on first use: the CLI's one door into the library
    if name in _API:
        from drpopt import api

        return getattr(api, name)
    raise AttributeError(f"module 'drpopt' has no attribute {name!r}")


__all__ = [
    "Analysis",
    "BadInputError",
    "CheckFailedError",
    "DrpoptError",
    "UnsupportedModelError",
    "__version__",
    "analyze",
    *_API,
]
