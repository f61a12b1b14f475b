"""Pass infrastructure: the Pass base class, PassResult, and arguments as dataclass fields.

A pass is a dataclass whose fields are its arguments (so a pipeline string
``mask:rate=0.7`` builds ``MaskPass(rate=0.7)``) with one method, ``call(graph)``, that
returns ``PassResult(graph, modified)``. Cached analyses (groups, scores) live in the
analysis manager (``passes/analyses.py``), stamped with the graph's version; what passes
hand each other (the plan, the verification reference) lives in the pipeline context
(``passes/context.py``). After a pass that reports ``modified`` the graph is touched and
only the analyses it declares in ``preserves`` (or ``PassResult.preserves``) stay valid.
A pass whose output is not meant to compute the same outputs as its input (``apply-masks``
prunes on purpose) sets ``preserves_outputs = False``: the ``verify`` pass then compares
against the model as it was right after it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph
from drpopt.passes.pipeline_syntax import spec_value


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph and whether it changed anything.
    ``preserves`` (analysis types), when given, replaces the pass's declared ``preserves``
    for this run (a pass whose changes sometimes restructure the graph)."""

    model: Graph
    modified: bool
    preserves: tuple[type, ...] | None = None


def _tracked(call):
    """Wraps a pass's ``call``: after a change, the graph is touched and only the analyses
    the pass preserves stay valid (however the pass is called)."""

    @functools.wraps(call)
    def wrapper(self: Pass, model: Graph, *args: Any, **kwargs: Any) -> PassResult:
        if not isinstance(model, Graph):
            return call(self, model, *args, **kwargs)
        from drpopt.passes.analyses import ANALYSES

        since = model.version
        result = call(self, model, *args, **kwargs)
        if isinstance(result, PassResult) and result.modified:
            model.touch()
            keep = result.preserves if result.preserves is not None else self.preserves
            ANALYSES.preserve(model, keep, since)
        return result

    wrapper.__drpopt_tracked__ = True  # type: ignore[attr-defined]
    return wrapper


@dataclass
class Pass:
    """Base of every pass. Subclasses are dataclasses; their fields are the arguments."""

    name: ClassVar[str] = ""
    preserves_outputs: ClassVar[bool] = True
    preserves: ClassVar[tuple[type, ...]] = ()  # analyses still valid after it changes the graph

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("call")
        if call is not None and not getattr(call, "__drpopt_tracked__", False):
            cls.call = _tracked(call)  # type: ignore[method-assign]

    def call(self, model: Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: Graph) -> PassResult:
        return self.call(model)

    # ---- description ----------------------------------------------------------------
    @classmethod
    def summary(cls) -> str:
        """The first line of the docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def arguments(cls) -> list[tuple[str, str, Any]]:
        """(name, type, default) of each argument."""
        out = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = _default(f)
            out.append((f.name, _type_name(hints.get(f.name, str)), default))
        return out

    def spec(self) -> str:
        """This pass as a pipeline string (only the arguments that differ from defaults)."""
        parts = [self.name]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == _default(f):
                continue
            parts.append(f"{f.name}={spec_value(value)}")  # quoted where needed
        return ":".join(parts)

    @classmethod
    def from_args(cls, args: dict[str, str]) -> Pass:
        """Builds the pass from string arguments, converting each to its field's type."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in args.items():
            field_name = key.replace("-", "_")
            if field_name not in fields:
                valid = ", ".join(fields) or "none"
                raise BadInputError(
                    f"pass '{cls.name}' has no argument '{key}'; its arguments: {valid}"
                )
            kwargs[field_name] = convert(raw, hints[field_name], f"{cls.name}:{key}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise BadInputError(f"pass '{cls.name}': {err}") from err


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    text = str(tp).replace("typing.", "")
    return re.sub(r"\bNoneType\b", "None", text)


def convert(raw: str, tp: Any, where: str) -> Any:
    """Converts a pipeline string argument to the annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        if raw.lower() in ("none", "") and type(None) in typing.get_args(tp):
            return None
        errors = []
        for option in options:
            try:
                return convert(raw, option, where)
            except BadInputError as err:
                errors.append(str(err))
        raise BadInputError(errors[0] if errors else f"{where}: cannot read {raw!r}")
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (str,)
        items = [s for s in raw.split("|") if s]
        return [convert(s, inner, where) for s in items]
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise BadInputError(f"{where}: {raw!r} is not one of {', '.join(map(str, choices))}")
        return raw
    if tp is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise BadInputError(f"{where}: {raw!r} is not a boolean (use true or false)")
    if tp in (int, float):
        try:
            return tp(raw)
        except ValueError:
            raise BadInputError(f"{where}: {raw!r} is not a number") from None
    return raw
