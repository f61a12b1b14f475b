"""``mask``: choose the channels each group keeps, as a sparsity plan (an analysis: the graph
is unchanged; ``apply-masks`` and ``compact`` act on the plan).

Rules:
- ``rate`` is the fraction of prunable channels to remove, in [0, 1);
- ``allocation=uniform``: each eligible group prunes ``rate`` of its own channels;
  ``allocation=global``: scores are normalised per group (divided by the group's mean) and one
  threshold across all eligible groups removes ``rate`` of their channels overall;
- a group keeps its highest-scoring channels; the kept count is rounded to a multiple of the
  target's ``align`` (a group smaller than ``align`` stays whole), never below ``align``,
  ``min_channels`` or ``(1 - max_rate)`` of the group, never zero;
- the output channels of the first layer (``keep_first``) and of the final prediction
  layers (``keep_last``) stay whole (the channels a prediction layer reads are pruned); a
  group the first layer shares with later layers (ViT's patch embedding starts the whole
  residual stream) is not the input layer's own and is pruned like any other; as
  do groups touching a layer matching an ``exclude`` pattern (fnmatch, ``|``-separated)
  or a layer of an op type in the profile's ``dense_ops``
  and locked groups;
- ``plan=PATH`` loads a saved plan instead of computing one (it must match the model);
- the result is ``graph.meta["plan"]``; scores are computed with ``l2`` when no ``score``
  pass ran before.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.channels import Group
from drpopt.ir.core import Graph
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.common import edge_layers, get_analysis
from drpopt.passes.plan import GroupPlan, Plan, group_key
from drpopt.passes.score import ScorePass
from drpopt.passes.targets import TargetProfile, get_target

log = logging.getLogger(__name__)


def check_rate(rate: float) -> None:
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise BadInputError(
            f"rate {rate} is outside [0, 1): it is the fraction of channels removed "
            "(give e.g. 0.7 to remove 70%)"
        )


def kept_count(size: int, rate: float, profile: TargetProfile) -> int:
    """How many of ``size`` channels a group keeps at ``rate`` under ``profile``."""
    align = max(1, profile.align)
    if size < align or rate <= 0:
        return size
    want = size * (1.0 - min(rate, profile.max_rate))
    floor = max(align, profile.min_channels, math.ceil(size * (1.0 - profile.max_rate)))
    floor = math.ceil(floor / align) * align
    kept = max(int(round(want / align)) * align, floor)
    return min(kept, size)


@dataclass
class MaskPass(Pass):
    """Choose the channels to keep per group for a target rate (a sparsity plan)."""

    name: ClassVar[str] = "mask"
    rate: float = 0.5
    allocation: Literal["uniform", "global"] = "uniform"
    target: str = "generic"
    align: int | None = None
    min_channels: int | None = None
    max_rate: float | None = None
    keep_first: bool | None = None
    keep_last: bool | None = None
    exclude: list[str] = field(default_factory=list)
    plan: str | None = None

    def __post_init__(self) -> None:
        check_rate(self.rate)
        base = get_target(self.target)
        overrides = {
            k: v
            for k, v in {
                "align": self.align,
                "min_channels": self.min_channels,
                "max_rate": self.max_rate,
                "keep_first": self.keep_first,
                "keep_last": self.keep_last,
            }.items()
            if v is not None
        }
        if self.align is not None and self.align < 1:
            raise BadInputError(f"align {self.align} must be at least 1")
        if self.max_rate is not None:
            check_rate(self.max_rate)
        self.profile = TargetProfile(**{**base.__dict__, **overrides})

    def call(self, model: Graph) -> PassResult:
        analysis = get_analysis(model)
        names = [n.name for n in model.nodes]
        for pat in self.exclude:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise BadInputError(
                    f"exclude pattern {pat!r} matches no layer (names look like "
                    f"{', '.join(names[:3])}); fix the pattern (fnmatch: * and ? wildcards)"
                )
        if self.plan is not None:
            plan = Plan.load(self.plan)
            plan.resolve(analysis)  # fails now when the plan does not fit
            model.meta["plan"] = plan
            return PassResult(model, False)
        if "scores" not in model.meta:
            ScorePass().call(model)
        scores: dict[str, np.ndarray] = model.meta["scores"]
        eligible = [g for g in analysis.groups if self._eligible(model, g)]
        if self.allocation == "uniform":
            counts = {group_key(g): kept_count(g.size, self.rate, self.profile) for g in eligible}
        else:
            counts = self._global_counts(eligible, scores)
        groups = []
        for g in eligible:
            key = group_key(g)
            k = min(counts[key], g.size)  # every eligible group is listed, kept whole or not
            order = np.argsort(-scores[key], kind="stable")
            keep = sorted(int(j) for j in order[:k])
            groups.append(GroupPlan(key, g.size, keep, g.producers))
        model.meta["plan"] = Plan(
            groups,
            rate=self.rate,
            criterion=str(model.meta.get("score_criterion", "l2")),
            allocation=self.allocation,
            target=self.profile.name,
            settings={
                "align": self.profile.align,
                "min_channels": self.profile.min_channels,
                "max_rate": self.profile.max_rate,
                "keep_first": self.profile.keep_first,
                "keep_last": self.profile.keep_last,
                "exclude": list(self.exclude),
                "eligible_channels": sum(g.size for g in eligible),
            },
        )
        return PassResult(model, False)

    def _eligible(self, graph: Graph, g: Group) -> bool:
        if not g.prunable:
            return False
        first, last = edge_layers(graph) if "_edges" not in graph.meta else graph.meta["_edges"]
        graph.meta["_edges"] = (first, last)
        nodes = {m.node for m in g.members if m.role in ("producer", "consumer") and m.node}
        # the edge layers' own output channels stay; what a prediction layer reads does not
        producers = set(g.producers)
        if self.profile.keep_first and producers & first and producers <= first:
            return False
        if self.profile.keep_last and producers & last:
            return False
        if self.profile.dense_ops:
            kinds = {n.name: n.op_type for n in graph.nodes}
            if any(kinds.get(n) in self.profile.dense_ops for n in nodes):
                return False
        return not any(fnmatch.fnmatchcase(n, pat) for n in nodes for pat in self.exclude)

    def _global_counts(self, groups: list[Group], scores: dict[str, np.ndarray]) -> dict[str, int]:
        if not groups or self.rate <= 0:
            return {group_key(g): g.size for g in groups}
        normed = {
            group_key(g): scores[group_key(g)] / max(scores[group_key(g)].mean(), 1e-12)
            for g in groups
        }
        allv = np.sort(np.concatenate(list(normed.values())))
        n_prune = int(round(self.rate * allv.size))
        threshold = allv[n_prune - 1] if n_prune > 0 else -np.inf
        counts = {}
        for g in groups:
            key = group_key(g)
            below = int((normed[key] <= threshold).sum())
            group_rate = below / g.size
            counts[key] = kept_count(g.size, group_rate, self.profile)
        return counts
