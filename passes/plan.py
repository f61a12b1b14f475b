"""The sparsity plan: plain, serialisable data naming the channels each group keeps.

A plan is computed once (``mask``), saved as JSON, loaded and applied again, to an ONNX
graph or (later) to a torch model. Groups are matched by a key that survives re-analysis
of the same model (the first producer weight slice, ``tensor[axis]@start``), never by
position. Applying a plan to a model it was not made for fails with the group that does
not match.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.analysis import Analysis
from drpopt.ir.channels import Group

PLAN_FORMAT = "drpopt-plan"
PLAN_VERSION = 1


def group_key(group: Group) -> str:
    """A stable name for a group: its first producer weight slice, else its first weight
    slice of any role, else its first segment. A slice of a named tensor belongs to one
    group only (members tile their tensors), so two groups with weights never share a key;
    labels of virtual spaces are built from node names and are not used while a weight is
    there to name the group. Worked out once per group (its members do not change)."""
    cached = group.__dict__.get("_plan_key")
    if cached is None:
        cached = group.__dict__["_plan_key"] = _group_key(group)
    return cached


def _group_key(group: Group) -> str:
    producers = [m for m in group.members if m.role == "producer" and m.tensor]
    weights = producers or [m for m in group.members if m.tensor]
    if weights:
        m = min(weights, key=lambda m: (m.tensor, m.axis, m.start))
        return f"{m.tensor}[{m.axis}]@{m.start}"
    seg = min(group.segments, key=lambda s: (s.label, s.start))
    return f"{seg.label}@{seg.start}"


@dataclass
class GroupPlan:
    """The channels one group keeps (sorted unit indices)."""

    key: str
    size: int
    keep: list[int]
    producers: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[int]:
        kept = set(self.keep)
        return [j for j in range(self.size) if j not in kept]


@dataclass
class Plan:
    """Which channels of which groups are kept; groups not listed stay whole."""

    groups: list[GroupPlan]
    rate: float = 0.0
    criterion: str = ""
    allocation: str = ""
    target: str = "generic"
    settings: dict[str, Any] = field(default_factory=dict)

    # ---- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "rate": self.rate,
            "criterion": self.criterion,
            "allocation": self.allocation,
            "target": self.target,
            "settings": self.settings,
            "groups": [asdict(g) for g in self.groups],
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "plan") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise BadInputError(f'{where}: not a drpopt plan (no "format": "{PLAN_FORMAT}")')
        if data.get("version") != PLAN_VERSION:
            raise BadInputError(
                f"{where}: plan version {data.get('version')} is not {PLAN_VERSION}; "
                "make the plan again with this drpopt"
            )
        try:
            groups = [
                GroupPlan(
                    str(g["key"]),
                    int(g["size"]),
                    sorted(int(j) for j in g["keep"]),
                    list(g.get("producers", [])),
                )
                for g in data["groups"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise BadInputError(f"{where}: a group entry is malformed ({err})") from err
        for g in groups:
            if len(set(g.keep)) != len(g.keep):
                raise BadInputError(
                    f"{where}: group {g.key} lists a kept channel twice; give each once"
                )
            # a group of one unit may be dropped whole (its layers keep other channels)
            if (
                (not g.keep and g.size != 1)
                or (g.keep and (g.keep[0] < 0 or g.keep[-1] >= g.size))
                or len(set(g.keep)) != len(g.keep)
            ):
                raise BadInputError(
                    f"{where}: group {g.key} keeps {len(g.keep)} channels outside 0..{g.size - 1} "
                    "or none at all; a group keeps at least one channel (one of one unit may "
                    "keep none)"
                )
        return cls(
            groups,
            float(data.get("rate", 0.0)),
            str(data.get("criterion", "")),
            str(data.get("allocation", "")),
            str(data.get("target", "generic")),
            dict(data.get("settings", {})),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise BadInputError(
                f"{path}: no such plan file; give a plan.json written by --plan-out"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInputError(
                f"{path}: not valid JSON ({err}); give a plan written by drpopt"
            ) from err
        return cls.from_dict(data, where=str(path))

    # ---- use ------------------------------------------------------------------------
    def resolve(self, analysis: Analysis) -> list[tuple[Group, GroupPlan]]:
        """Pairs every planned group with the model's group of the same key and size."""
        by_key = {group_key(g): g for g in analysis.groups}
        out = []
        for gp in self.groups:
            g = by_key.get(gp.key)
            if g is None:
                raise BadInputError(
                    f"the plan does not match this model: it has no group {gp.key} "
                    "(was the plan made for another model?)"
                )
            if g.size != gp.size:
                raise BadInputError(
                    f"the plan does not match this model: group {gp.key} has {g.size} channels "
                    f"here, {gp.size} in the plan"
                )
            # a one-channel group with no lock is whole only by policy (_finish_group in
            # ir/analysis.py): the model the plan was made on may have let it drop as one unit
            # (a channel that is a block of a GroupNorm reshape, which the masked form no longer
            # has), and keep_masks still refuses a plan that leaves an axis empty
            dropped_unit = g.size == 1 and not g.locks and gp.size == 1
            if not g.prunable and not dropped_unit:
                raise BadInputError(
                    f"the plan prunes group {gp.key}, which is locked in this model ({g.reason})"
                )
            out.append((g, gp))
        return out

    @property
    def pruned_channels(self) -> int:
        return sum(len(g.pruned) for g in self.groups)


def keep_masks(
    resolved: list[tuple[Group, GroupPlan]],
) -> dict[tuple[str | None, int | str], np.ndarray]:
    """Boolean keep-masks per channel space, ``(value, axis)`` or ``(None, label)`` for a
    virtual space, covering every segment of every pruned group."""
    masks: dict[tuple[str | None, int | str], np.ndarray] = {}
    for group, gp in resolved:
        pruned = gp.pruned
        if not pruned:
            continue
        for seg in group.segments:
            key = (seg.value, seg.axis) if seg.value is not None else (None, seg.label)
            mask = masks.get(key)
            if mask is None:
                mask = masks[key] = np.ones(seg.space_length, dtype=bool)
            for j in pruned:
                lo = seg.start + j * seg.block
                mask[lo : lo + seg.block] = False
    for (value, axis), mask in masks.items():
        if value is not None and not mask.any():  # one-unit groups dropped together
            raise BadInputError(
                f"the plan removes every channel of axis {axis} of '{value}'; keep at least one"
            )
    return masks
