"""``mask``: choose the channels each group keeps, as a sparsity plan (an analysis: the graph
is unchanged; ``apply-masks`` and ``compact`` act on the plan).

Rules:
- the target profile and the arguments resolve once into a ``SelectionPolicy``
  (``passes/policy.py``); ``choose_channels`` picks the kept channels (the rules of rate,
  ``allocation``, ``align``, ``min_channels``, ``max_rate``, ``keep_first``, ``keep_last``,
  ``exclude`` and the profile's ``dense_ops`` are in that module's docstring); the torch
  ``Pruner`` uses the same two;
- an ``exclude`` pattern that matches no layer is an error (a typo would prune everything);
- ``plan=PATH`` loads a saved plan instead of computing one (it must match the model);
- scores are the pipeline's valid ``Scores`` analysis for this graph; when there is none
  (no ``score`` pass ran, or the graph changed since) they are computed again with the
  criterion of the last ``score`` pass (``l2`` when none ran);
- the result is the pipeline context's ``plan``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from drpopt.errors import BadInputError
from drpopt.ir.channels import Group
from drpopt.ir.core import Graph
from drpopt.passes.analyses import ANALYSES, Scores, edge_layer_names, node_by_name
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.common import WEIGHTED_OPS, get_analysis
from drpopt.passes.context import context_of
from drpopt.passes.plan import GroupPlan, Plan, group_key
from drpopt.passes.policy import (
    SelectionPolicy,
    check_rate,
    choose_channels,
    is_eligible,
    weight_shapes,
)
from drpopt.passes.score import ScorePass
from drpopt.passes.targets import TargetProfile

__all__ = ["MaskPass", "check_rate", "current_scores", "eligible_groups", "kept_count"]

log = logging.getLogger(__name__)


def kept_count(size: int, rate: float, profile: TargetProfile, rows: int = 1) -> int:
    """How many of ``size`` channels a group keeps at ``rate`` under ``profile`` (``rows``:
    see ``SelectionPolicy.kept_count``)."""
    return SelectionPolicy.resolve(profile, rate=0.0).kept_count(size, rate, rows)


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
        self.policy = SelectionPolicy.resolve(
            self.target,
            rate=self.rate,
            allocation=self.allocation,
            exclude=self.exclude,
            align=self.align,
            min_channels=self.min_channels,
            max_rate=self.max_rate,
            keep_first=self.keep_first,
            keep_last=self.keep_last,
        )

    def call(self, model: Graph) -> PassResult:
        context = context_of(model)
        analysis = get_analysis(model)
        check_exclude(model, self.policy.exclude)
        if self.plan is not None:
            plan = Plan.load(self.plan)
            plan.resolve(analysis)  # fails now when the plan does not fit
            context.plan = plan
            return PassResult(model, False)
        scores = current_scores(model)
        eligible = eligible_groups(model, analysis.groups, self.policy)
        shapes = weight_shapes(model, eligible)
        kept = choose_channels(eligible, scores.by_group, self.policy, shapes=shapes)
        groups = [
            GroupPlan(group_key(g), g.size, kept[group_key(g)], g.producers) for g in eligible
        ]
        context.plan = Plan(
            groups,
            rate=self.rate,
            criterion=scores.criterion,
            allocation=self.allocation,
            target=self.policy.target,
            settings={
                **self.policy.settings(),
                "eligible_channels": sum(g.size for g in eligible),
            },
        )
        return PassResult(model, False)


def check_exclude(graph: Graph, patterns: Iterable[str]) -> None:
    """Every ``exclude`` pattern must match a layer (a typo would otherwise prune all)."""
    names = [n.name for n in graph.nodes]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            layers = [n.name for n in graph.nodes if n.op_type in WEIGHTED_OPS] or names
            raise BadInputError(
                f"exclude pattern {pat!r} matches no layer (names look like "
                f"{', '.join(layers[:3])}); fix the pattern (fnmatch: * and ? wildcards)"
            )


def eligible_groups(graph: Graph, groups: Iterable[Group], policy: SelectionPolicy) -> list[Group]:
    """The groups of ``graph`` that ``policy`` lets be pruned, in order."""
    edges = edge_layer_names(graph)
    op_types = {name: n.op_type for name, n in node_by_name(graph).items()}
    return [g for g in groups if is_eligible(g, policy, edges.first, edges.last, op_types)]


def current_scores(graph: Graph) -> Scores:
    """The valid scores of ``graph``, computed with the last requested criterion if none."""
    scores = ANALYSES.cached(graph, Scores)
    if scores is None:
        criterion, seed = context_of(graph).score_request or ("l2", 0)
        log.info("scoring channels (%s): no valid scores for this graph", criterion)
        ScorePass(criterion=criterion, seed=seed).call(graph)  # type: ignore[arg-type]
        scores = ANALYSES.cached(graph, Scores)
        assert scores is not None  # the score pass stores them (an invariant, not input)
    return scores
