"""``score``: channel importance per coupled group (an analysis: the graph is unchanged).

Rules:
- ``l1`` / ``l2``: for each producer row slice and consumer column slice of a group, the L1
  or L2 norm of what one channel covers (its whole block), divided by that member's mean
  so each layer counts equally; the group's score is the sum over its members;
- ``bn-gamma``: the |gamma| of the BatchNormalization scales that follow the group (summed
  the same way); a group with no BN falls back to ``l2``;
- ``random``: uniform noise from ``seed``, a control for the other criteria;
- ``activation`` and ``reconstruction`` need calibration data (``calibrate`` before
  ``score``): see ``score_data.py``;
- the result is a ``Scores`` analysis (group key -> per-channel scores, the criterion and
  seed) cached for this graph version (``passes/analyses.py``): any change to the graph
  makes it stale; the request (criterion, seed) is kept in the pipeline context so ``mask``
  scores a changed graph the same way; locked groups get no score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from drpopt.ir.channels import Group, Member
from drpopt.ir.core import Graph, Value
from drpopt.passes.analyses import ANALYSES, Scores, node_by_name
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.common import get_analysis
from drpopt.passes.context import context_of
from drpopt.passes.plan import group_key

log = logging.getLogger(__name__)

Criterion = Literal["l1", "l2", "bn-gamma", "random", "activation", "reconstruction"]
CRITERIA = ("l1", "l2", "bn-gamma", "random", "activation", "reconstruction")
DATA_CRITERIA = ("activation", "reconstruction")


def member_norms(arr: np.ndarray, m: Member, size: int, p: int) -> np.ndarray:
    """The Lp norm (p = 1 or 2) of each group channel's block in ``m``'s slice."""
    moved = np.moveaxis(np.asarray(arr, dtype=np.float64), m.axis, 0)
    part = moved[m.start : m.start + size * m.block].reshape(size, -1)
    if p == 1:
        return np.abs(part).sum(axis=1)
    return np.sqrt((part * part).sum(axis=1))


def _normalised(v: np.ndarray) -> np.ndarray:
    mean = float(v.mean())
    return v / mean if mean > 0 else v


def group_scores(
    graph: Graph, group: Group, criterion: str, rng: np.random.Generator
) -> np.ndarray:
    """The importance of each channel (unit) of ``group``; higher means keep."""
    size = group.size
    if criterion == "random":
        return rng.random(size)
    total = np.zeros(size)
    if criterion == "bn-gamma":
        found = False
        for m in group.members:
            node = _node(graph, m.node)
            if m.role != "follower" or node is None or node.op_type != "BatchNormalization":
                continue
            if node.input(1) is None or node.input(1).name != m.tensor:
                continue
            total += _normalised(member_norms(graph.values[m.tensor].const, m, size, 1))
            found = True
        if found:
            return total
        log.info("group %s has no BatchNormalization scale; using l2", group_key(group))
        criterion = "l2"
    p = 1 if criterion == "l1" else 2
    for m in group.members:
        if m.role in ("producer", "consumer") and m.tensor is not None:
            total += _normalised(member_norms(layer_weight(graph.values[m.tensor]), m, size, p))
    return total


def layer_weight(value: Value) -> np.ndarray:
    """A weight's values as its layer sees them: the int8 weight of a QDQ model dequantized
    by the ``DequantizeLinear`` that reads it (``ir/rules_deploy.py``): its scale differs per
    channel, so the raw integers (each row spanning the int8 range) would rank every
    channel alike."""
    arr = value.const
    dq = next((n for n, k in value.uses if n.op_type == "DequantizeLinear" and k == 0), None)
    scale = dq.input(1) if dq is not None else None
    if scale is None or not scale.is_const:
        return arr
    zero = dq.input(2)
    s = np.asarray(scale.const, dtype=np.float64)
    z = np.asarray(zero.const, dtype=np.float64) if zero is not None and zero.is_const else 0.0
    if s.ndim == 1 and s.size > 1:  # per axis: along ``axis`` of the weight
        axis = int(dq.attr("axis", 1)) % arr.ndim
        shape = [1] * arr.ndim
        shape[axis] = s.size
        s = s.reshape(shape)
        z = np.reshape(z, shape) if np.ndim(z) else z
    return (np.asarray(arr, dtype=np.float64) - z) * s


def _node(graph: Graph, name: str | None):
    if name is None:
        return None
    return node_by_name(graph).get(name)


@dataclass
class ScorePass(Pass):
    """Score channel importance per coupled group (l1, l2, bn-gamma, random, activation, ...)."""

    name: ClassVar[str] = "score"
    criterion: Criterion = "l2"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion {self.criterion!r} is not one of {', '.join(CRITERIA)}")

    def call(self, model: Graph) -> PassResult:
        analysis = get_analysis(model)
        rng = np.random.default_rng(self.seed)
        groups = [g for g in analysis.groups if g.prunable]
        if self.criterion in DATA_CRITERIA:
            from drpopt.passes.calibrate import require_calibration
            from drpopt.passes.score_data import data_scores

            data = require_calibration(model, f"score:criterion={self.criterion}")
            by_id = data_scores(model, groups, self.criterion, data, self.seed)
            by_group = {group_key(g): by_id[g.id] for g in groups}
        else:
            by_group = {group_key(g): group_scores(model, g, self.criterion, rng) for g in groups}
        ANALYSES.put(model, Scores(self.criterion, self.seed, by_group))
        context_of(model).score_request = (self.criterion, self.seed)
        return PassResult(model, False)
