"""Target profiles: what a device wants from a sparsity plan, as data (TOML).

Shipped profiles live in ``passes/profiles/*.toml`` (``generic``, ``cpu``, ``drpai``,
``nm-2-4``); plugins add more (``drpopt.plugins``, loaded by ``all_targets`` and
``get_target``); a user profile is any ``.toml`` path with the same tables. A profile names:

- ``[channels]``: ``align`` (kept channel counts a multiple of it; a group smaller than
  ``align`` stays whole) and ``min_channels``;
- ``[sparsity]``: the pattern inside kept channels: ``granularity`` = ``channel`` (none),
  ``nm`` (``n`` of every ``m`` consecutive weights along the input-channel axis kept),
  ``block`` (blocks of ``block`` input channels kept or zeroed together per output channel)
  or ``unstructured`` (per weight), with its ``rate`` and ``scope`` (``layer`` or ``global``);
- ``[rate]``: the recommended ``default`` and the per-group ``max``;
- ``[layers]``: ``keep_first``, ``keep_last`` (leave the first layer's own output channels
  and the final prediction layers dense; a group the first layer shares with later layers,
  a residual stream it starts, is pruned) and ``dense_ops`` (op types never pruned);
- ``[export]``: ``form`` (``sparse``: dense shapes with zeros; ``compact``: channels removed)
  and ``opset``.

The DRP-AI3 block parameters are not public: the ``drpai`` numbers are documented defaults.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from drpopt.errors import BadInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Granularity = Literal["channel", "nm", "block", "unstructured"]
GRANULARITIES = ("channel", "nm", "block", "unstructured")


@dataclass(frozen=True)
class TargetProfile:
    """What a target wants (see the module docstring for every field's meaning)."""

    name: str
    description: str
    align: int = 1
    min_channels: int = 1
    max_rate: float = 0.95
    default_rate: float = 0.5
    keep_first: bool = True
    keep_last: bool = True
    output: Literal["sparse", "compact"] = "compact"
    granularity: Granularity = "channel"
    n: int = 2
    m: int = 4
    block: int = 4
    sparsity_rate: float = 0.0
    sparsity_scope: Literal["layer", "global"] = "layer"
    dense_ops: tuple[str, ...] = field(default_factory=tuple)
    opset: int = 17
    source: str = ""

    @property
    def pattern_rate(self) -> float:
        """The share of a kept channel's weights the fine-grained pattern zeroes."""
        if self.granularity == "nm":
            return 1.0 - self.n / self.m
        if self.granularity in ("block", "unstructured"):
            return self.sparsity_rate
        return 0.0


def _check(p: TargetProfile, where: str) -> TargetProfile:
    def bad(why: str) -> BadInputError:
        return BadInputError(f"{where}: {why}")

    if p.granularity not in GRANULARITIES:
        raise bad(f"granularity {p.granularity!r} is not one of {', '.join(GRANULARITIES)}")
    if p.align < 1 or p.min_channels < 1:
        raise bad("align and min_channels must be at least 1")
    if not (0 <= p.default_rate < 1 and 0 <= p.max_rate < 1 and 0 <= p.sparsity_rate < 1):
        raise bad("rates must lie in [0, 1)")
    if p.granularity == "nm" and not (0 < p.n <= p.m):
        raise bad(f"an n:m pattern needs 0 < n <= m (got {p.n}:{p.m})")
    if p.granularity == "block" and p.block < 1:
        raise bad("block must be at least 1")
    if p.output not in ("sparse", "compact"):
        raise bad(f"export form {p.output!r} is not sparse or compact")
    if p.sparsity_scope not in ("layer", "global"):
        raise bad(f"sparsity scope {p.sparsity_scope!r} is not layer or global")
    return p


def profile_from_toml(data: dict[str, Any], where: str) -> TargetProfile:
    """A profile from parsed TOML (the tables in the module docstring)."""
    try:
        ch, sp = data.get("channels", {}), data.get("sparsity", {})
        rate, layers, export = data.get("rate", {}), data.get("layers", {}), data.get("export", {})
        profile = TargetProfile(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            align=int(ch.get("align", 1)),
            min_channels=int(ch.get("min_channels", 1)),
            max_rate=float(rate.get("max", 0.95)),
            default_rate=float(rate.get("default", 0.5)),
            keep_first=bool(layers.get("keep_first", True)),
            keep_last=bool(layers.get("keep_last", True)),
            output=str(export.get("form", "compact")),  # type: ignore[arg-type]
            granularity=str(sp.get("granularity", "channel")),  # type: ignore[arg-type]
            n=int(sp.get("n", 2)),
            m=int(sp.get("m", 4)),
            block=int(sp.get("block", 4)),
            sparsity_rate=float(sp.get("rate", 0.0)),
            sparsity_scope=str(sp.get("scope", "layer")),  # type: ignore[arg-type]
            dense_ops=tuple(str(o) for o in layers.get("dense_ops", ())),
            opset=int(export.get("opset", 17)),
            source=where,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BadInputError(f"{where}: not a valid target profile ({err})") from err
    return _check(profile, where)


def load_profile(path: str | Path) -> TargetProfile:
    """A user profile from a ``.toml`` file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such target profile; give a .toml file or a name")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: not valid TOML ({err}); fix the profile") from err
    return profile_from_toml(data, str(path))


def _shipped() -> dict[str, TargetProfile]:
    out = {}
    folder = resources.files("drpopt.passes") / "profiles"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            out[data["name"]] = profile_from_toml(data, f"drpopt profile {entry.name}")
    return out


TARGETS: dict[str, TargetProfile] = _shipped()


def all_targets() -> dict[str, TargetProfile]:
    """``TARGETS`` with the profiles of plugins (entry point group ``drpopt.targets``)."""
    from drpopt.plugins import TARGET_GROUP, load_plugins

    load_plugins(TARGET_GROUP)
    return TARGETS


def get_target(name: str) -> TargetProfile:
    """A shipped or plugin profile by name, or a user profile by ``.toml`` path."""
    all_targets()
    if name in TARGETS:
        return TARGETS[name]
    if name.endswith(".toml") or Path(name).is_file():
        return load_profile(name)
    raise BadInputError(
        f"unknown target '{name}'; valid targets: {', '.join(TARGETS)} (or a profile .toml path)"
    )
