"""The error hierarchy: every failure a user can cause or meet has a class and a message
that names the thing (file, node, op, parameter) and the fix."""

from __future__ import annotations


class DrpoptError(Exception):
    """Base of every error drpopt raises on purpose."""

    exit_code = 2


class BadInputError(DrpoptError):
    """The user gave something drpopt cannot read: a missing, truncated or non-ONNX file,
    a bad argument value."""

    exit_code = 2


class UnsupportedModelError(DrpoptError):
    """The model is readable but uses something drpopt cannot handle (an op without a
    coupling rule under --strict, an opset outside the supported range)."""

    exit_code = 2


class CheckFailedError(DrpoptError):
    """A model was read and analysed but failed a check the user asked for."""

    exit_code = 1
