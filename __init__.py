"""drpopt: structured-pruning compiler passes for CNNs.

Public API: ``analyze`` (coupled channel groups of an ONNX model), the IR in ``drpopt.ir``,
and the error classes. Importing drpopt does not import torch.
"""

from __future__ import annotations

from drpopt.errors import BadInputError, CheckFailedError, DrpoptError, UnsupportedModelError
from drpopt.ir.analysis import Analysis, analyze

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "BadInputError",
    "CheckFailedError",
    "DrpoptError",
    "UnsupportedModelError",
    "__version__",
    "analyze",
]
