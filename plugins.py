"""Plugins: passes, coupling rules and target profiles from other packages, via entry points.

A package adds to drpopt by declaring entry points in its ``pyproject.toml``:

- ``drpopt.passes``: a ``Pass`` subclass, or a list of them; they join the pass registry;
- ``drpopt.rules``: a dict ``{op_key: rule}`` (``"acme::Frobnicate"`` or ``"OpType"``) or a
  callable ``register(register_rule)``; a rule is an ``ir.rules.OpRule`` (coupling and
  compaction) or a bare coupling function (``compact`` then refuses to cut through the op);
- ``drpopt.targets``: a ``TargetProfile``, a dict in the profile TOML schema, or a path to a
  ``.toml`` file; they join ``TARGETS``.

Each group loads lazily, once, the first time something looks it up (so ``drpopt analyze``
imports only rule plugins). A plugin that fails to import or loads the wrong type is skipped
with a one-line warning and recorded as broken; a name that clashes with a built-in (or an
earlier plugin) is skipped with a warning: built-ins always win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PASS_GROUP = "drpopt.passes"
RULE_GROUP = "drpopt.rules"
TARGET_GROUP = "drpopt.targets"
GROUPS = (PASS_GROUP, RULE_GROUP, TARGET_GROUP)


@dataclass
class PluginRecord:
    """One entry point as loaded: what it provided, or why it was skipped."""

    group: str
    name: str
    value: str
    dist: str
    provided: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def broken(self) -> bool:
        """Whether the entry point failed to load or gave the wrong type."""
        return bool(self.error)


class _PluginError(Exception):
    """A plugin gave something drpopt cannot use (message: what and why)."""


_RECORDS: dict[str, list[PluginRecord]] = {}
_PASSES: dict[str, type] = {}
_PASS_SOURCES: dict[str, str] = {}


def load_plugins(group: str | None = None) -> None:
    """Loads the entry points of ``group`` (all groups if ``None``), each group only once."""
    for g in GROUPS if group is None else (group,):
        if g in _RECORDS:
            continue
        _RECORDS[g] = []  # set first: a plugin that looks things up must not recurse
        loader = _LOADERS[g]
        for ep in _entry_points(g):
            record = PluginRecord(g, ep.name, ep.value, _dist_name(ep))
            _RECORDS[g].append(record)
            try:
                loader(ep.load(), record)
            except Exception as err:  # a plugin must never crash drpopt
                record.error = _one_line(err)
                log.warning(
                    "drpopt plugin '%s' (%s, %s) skipped: %s",
                    ep.name,
                    g,
                    record.dist,
                    record.error,
                )


def load_rule_plugins() -> None:
    """Loads the coupling-rule plugins (called by ``ir.rules`` before its first lookup)."""
    load_plugins(RULE_GROUP)


def records(group: str | None = None) -> list[PluginRecord]:
    """The loaded entry points of ``group`` (or all), broken ones included."""
    load_plugins(group)
    return [r for g in (GROUPS if group is None else (group,)) for r in _RECORDS.get(g, [])]


def plugin_passes() -> dict[str, type]:
    """Pass name -> class of every pass a plugin added."""
    load_plugins(PASS_GROUP)
    return dict(_PASSES)


def pass_source(name: str) -> str:
    """The distribution that provided plugin pass ``name`` ("" for a built-in)."""
    load_plugins(PASS_GROUP)
    return _PASS_SOURCES.get(name, "")


def reset() -> None:
    """Forgets loaded plugins (for tests; registered rules and targets stay registered)."""
    _RECORDS.clear()
    _PASSES.clear()
    _PASS_SOURCES.clear()


# ---- loaders ----------------------------------------------------------------------------
def _load_passes(obj: Any, record: PluginRecord) -> None:
    from drpopt.passes import PASSES
    from drpopt.passes.base import Pass

    items = list(obj) if isinstance(obj, list | tuple) else [obj]
    bad = [i for i in items if not (isinstance(i, type) and issubclass(i, Pass))]
    if bad or not items:
        raise _PluginError(f"expected a Pass subclass or a list of them, got {_describe(obj)}")
    builtin = {p.name for p in PASSES}
    for cls in items:
        name = getattr(cls, "name", "")
        if not name:
            raise _PluginError(f"pass class {cls.__name__} has no 'name'")
        if name in builtin or name in _PASSES:
            owner = "a built-in pass" if name in builtin else f"a pass of {_PASS_SOURCES[name]}"
            _clash(record, f"pass '{name}'", owner)
            continue
        _PASSES[name] = cls
        _PASS_SOURCES[name] = record.dist
        record.provided.append(name)


def _load_rules(obj: Any, record: PluginRecord) -> None:
    from drpopt.ir import rules

    def register(op_key: str, rule: rules.OpRule | Callable) -> None:
        if not isinstance(op_key, str) or not (isinstance(rule, rules.OpRule) or callable(rule)):
            raise _PluginError(
                f"rule for {op_key!r} is not an OpRule or a callable keyed by an op string"
            )
        if op_key in rules.RULES:
            _clash(record, f"rule '{op_key}'", "an existing rule")
            return
        rules.register_rule(op_key, rule)
        record.provided.append(op_key)

    if isinstance(obj, dict):
        for key, fn in obj.items():
            register(key, fn)
    elif callable(obj) and not isinstance(obj, type):
        obj(register)
    else:
        raise _PluginError(
            f"expected a dict {{op: rule}} or a register(register_rule) callable, "
            f"got {_describe(obj)}"
        )


def _load_targets(obj: Any, record: PluginRecord) -> None:
    import dataclasses

    from drpopt.passes import targets

    where = f"plugin {record.dist} ({record.name})"
    if isinstance(obj, targets.TargetProfile):
        profile = obj if obj.source else dataclasses.replace(obj, source=where)
    elif isinstance(obj, dict):
        profile = targets.profile_from_toml(obj, where)
    elif isinstance(obj, str | Path) and str(obj).endswith(".toml"):
        profile = dataclasses.replace(targets.load_profile(obj), source=f"{where}: {obj}")
    else:
        raise _PluginError(
            f"expected a TargetProfile, a profile dict or a .toml path, got {_describe(obj)}"
        )
    if profile.name in targets.TARGETS:
        _clash(
            record,
            f"target '{profile.name}'",
            f"target from {targets.TARGETS[profile.name].source}",
        )
        return
    targets.TARGETS[profile.name] = profile
    record.provided.append(profile.name)


_LOADERS: dict[str, Callable[[Any, PluginRecord], None]] = {
    PASS_GROUP: _load_passes,
    RULE_GROUP: _load_rules,
    TARGET_GROUP: _load_targets,
}


# ---- helpers ----------------------------------------------------------------------------
def _entry_points(group: str) -> list[EntryPoint]:
    try:
        found = entry_points(group=group)
    except Exception as err:  # broken metadata of some unrelated distribution
        log.warning("drpopt plugins of %s not loaded: %s", group, _one_line(err))
        return []
    seen: set[tuple[str, str]] = set()
    out = []
    for ep in sorted(found, key=lambda e: e.name):
        # the same distribution on sys.path twice (editable + installed) lists twice
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "unknown distribution"


def _clash(record: PluginRecord, what: str, owner: str) -> None:
    log.warning(
        "drpopt plugin '%s' (%s): %s clashes with %s; kept the existing one",
        record.name,
        record.dist,
        what,
        owner,
    )


def _describe(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, type) else type(obj).__name__


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}" if not isinstance(err, _PluginError) else text
