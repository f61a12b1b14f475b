"""Pipelines as data: a string such as ``fold-batchnorm,score:criterion=l2,mask:rate=0.7``
or a TOML file with the same content, parsed and validated before anything runs.

String form: passes separated by ``,``; a pass is ``name`` or ``name:key=value:key=value``;
list values use ``|`` (``mask:exclude=stem.conv|head.*``).

TOML form: either ``pipeline = "<string form>"`` or a list of tables::

    [[pass]]
    name = "mask"
    rate = 0.7
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from drpopt.errors import BadInputError
from drpopt.passes.base import Pass

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
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise BadInputError(f"empty pass in pipeline {text!r} (two commas in a row?)")
        name, *raw_args = item.split(":")
        args: dict[str, str] = {}
        for raw in raw_args:
            if "=" not in raw:
                raise BadInputError(
                    f"argument {raw!r} of pass '{name}' is not key=value "
                    f"(write e.g. '{name}:rate=0.7')"
                )
            key, value = raw.split("=", 1)
            args[key.strip()] = value.strip()
        passes.append(_lookup(name.strip()).from_args(args))
    return passes


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
        args = {k: _to_str(v) for k, v in table.items() if k != "name"}
        passes.append(_lookup(str(table["name"])).from_args(args))
    return passes


def _to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return str(value)
