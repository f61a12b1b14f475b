"""Pipelines as data: a string such as ``fold-batchnorm,score:criterion=l2,mask:rate=0.7``
or a TOML file with the same content, parsed and validated before anything runs.

String form: passes separated by ``,``; a pass is ``name`` or ``name:key=value:key=value``;
list values use ``|`` (``mask:exclude=stem.conv|head.*``). A value (or one list item) that
holds ``,`` ``:`` ``|`` or ``=`` is quoted with ``"`` or ``'``:
``mask:plan="runs/1:plan,v1.json"``, ``mask:exclude='layer1.*'|'layer2.*'``
(see ``pipeline_syntax``).

TOML form: either ``pipeline = "<string form>"`` or a list of tables, whose values keep
their TOML types (a list is a list; no quoting needed)::

    [[pass]]
    name = "mask"
    rate = 0.7
    exclude = ["layer1.*", "layer2.*"]
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from drpopt.errors import BadInputError
from drpopt.passes.base import Pass, convert
from drpopt.passes.pipeline_syntax import parse_value, split_top, unquote

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def registry() -> dict[str, type[Pass]]:
    """Pass name -> class: the ``PASSES`` list of ``drpopt.passes``, then plugin passes
    (entry point group ``drpopt.passes``; a plugin never replaces a built-in)."""
    from drpopt.passes import PASSES
    from drpopt.plugins import plugin_passes

    reg = {p.name: p for p in PASSES}
    for name, cls in plugin_passes().items():
        reg.setdefault(name, cls)
    return reg


def _lookup(name: str) -> type[Pass]:
    reg = registry()
    if name not in reg:
        raise BadInputError(
            f"unknown pass '{name}'; valid passes: {', '.join(reg)} (see drpopt passes)"
        )
    return reg[name]


def parse_pipeline(spec: str | Path) -> list[Pass]:
    """The passes of a pipeline string or TOML file (every pass and argument checked)."""
    text = str(spec).strip()
    if text.endswith(".toml") or (isinstance(spec, Path) and spec.suffix == ".toml"):
        return _parse_toml(Path(text))
    if not text:
        raise BadInputError("empty pipeline; give passes such as 'fold-batchnorm,cleanup'")
    passes = []
    for item in split_top(text, ","):
        if not item.strip():
            raise BadInputError(f"empty pass in pipeline {text!r} (two commas in a row?)")
        name, *raw_args = split_top(item.strip(), ":")
        passes.append(build_pass(_lookup(unquote(name)), parse_args(raw_args, unquote(name))))
    return passes


def parse_args(raw_args: list[str], name: str) -> dict[str, list[str]]:
    """``["rate=0.7", "exclude=a|'b|c'"]`` -> ``{"rate": ["0.7"], "exclude": ["a", "b|c"]}``."""
    args: dict[str, list[str]] = {}
    for raw in raw_args:
        key, *value = split_top(raw, "=", maxsplit=1)
        if not value:
            raise BadInputError(
                f"argument {raw!r} of pass '{name}' is not key=value (write e.g. "
                f"'{name}:rate=0.7'; quote a value holding , : or |, e.g. "
                f'{name}:path="a,b.json")'
            )
        args[unquote(key)] = parse_value(value[0])
    return args


def _list_item_type(tp: Any) -> Any:
    """The item type when ``tp`` is a list (or an optional list), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            inner = _list_item_type(option)
            if inner is not None:
                return inner
        return None
    if typing.get_origin(tp) in (list, tuple):
        return (typing.get_args(tp) or (str,))[0]
    return None


def build_pass(cls: type[Pass], args: dict[str, Any]) -> Pass:
    """``cls`` built from parsed arguments: a list value (items from ``|`` or a TOML list)
    fills a list argument item by item; any other value is converted to its field's type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in args.items():
        field_name = key.replace("-", "_")
        if field_name not in fields:
            valid = ", ".join(fields) or "none"
            raise BadInputError(
                f"pass '{cls.name}' has no argument '{key}'; its arguments: {valid}"
            )
        where, tp = f"{cls.name}:{key}", hints[field_name]
        items = value if isinstance(value, list) else [value]
        inner = _list_item_type(tp)
        if inner is not None:
            kwargs[field_name] = [convert(_text(v), inner, where) for v in items if v != ""]
        else:
            kwargs[field_name] = convert("|".join(_text(v) for v in items), tp, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"pass '{cls.name}': {err}") from err


def _parse_toml(path: Path) -> list[Pass]:
    if not path.is_file():
        raise BadInputError(
            f"{path}: no such pipeline file; give a .toml file or a pipeline string"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: not valid TOML ({err}); fix the file") from err
    if "pipeline" in data:
        return parse_pipeline(str(data["pipeline"]))
    tables = data.get("pass")
    if not isinstance(tables, list) or not tables:
        raise BadInputError(
            f"{path}: needs 'pipeline = \"...\"' or [[pass]] tables with a 'name' each"
        )
    passes = []
    for i, table in enumerate(tables):
        if "name" not in table:
            raise BadInputError(f"{path}: [[pass]] number {i + 1} has no 'name'")
        args = {k: v for k, v in table.items() if k != "name"}
        passes.append(build_pass(_lookup(str(table["name"])), args))
    return passes


def _text(value: Any) -> str:
    """A TOML or string argument value as the text ``convert`` reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def make_pass(cls: type[Pass], arguments: dict[str, Any]) -> Pass:
    """``cls(**arguments)`` from Python values (no text round trip), each checked against its
    field's type once: a ``Literal`` choice, a number, a list; errors are ``BadInputError``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in arguments.items():
        if key not in fields:
            raise BadInputError(f"pass '{cls.name}' has no argument '{key}'")
        _check_type(value, hints[key], f"{cls.name}:{key}")
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"pass '{cls.name}': {err}") from err


def _check_type(value: Any, tp: Any, where: str) -> None:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, where)
            except BadInputError as err:
                errors.append(err)
        raise errors[0]
    if tp is type(None):
        if value is not None:
            raise BadInputError(f"{where}: {value!r} is not None")
        return
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise BadInputError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise BadInputError(f"{where}: {value!r} is not a list")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        for item in value:
            _check_type(item, inner, where)
        return
    if tp is bool and not isinstance(value, bool):
        raise BadInputError(f"{where}: {value!r} is not true or false")
    if tp in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise BadInputError(f"{where}: {value!r} is not a number")
    if tp is str and not isinstance(value, str):
        raise BadInputError(f"{where}: {value!r} is not text")
