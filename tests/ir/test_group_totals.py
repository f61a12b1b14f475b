"""Each group's ``params`` and ``macs`` take one pass over its members where that is
exact (``_one_axis_totals``); they must equal the general count (``_removed``) on every
group, shared weights, concatenations and locked groups included."""

from __future__ import annotations

import numpy as np
import pytest

from drpopt import analyze
from drpopt.ir.channel_types import Group, Member
from drpopt.ir.core import Graph, Value
from drpopt.ir.counting import (
    _group_totals,
    _is_param,
    _one_axis_totals,
    _removed,
    weight_uses,
)
from drpopt.zoo import MODELS, build


@pytest.mark.parametrize("name", sorted(MODELS))
def test_group_totals_equal_the_general_count(name: str) -> None:
    a = analyze(build(name))
    graph = a.graph
    params = {v.name: v for v in graph.values.values() if _is_param(v)}
    uses = weight_uses(graph)
    fast = 0
    for g in a.groups:
        assert (g.params, g.macs) == _removed(graph, [g], params, uses), g.id
        storage = {n: v.storage for n, v in params.items()}
        fast += _one_axis_totals(g, params, storage, uses) is not None
    assert fast, "the one-pass count applies to some group of every model"


def _weights() -> dict:
    w = Value("w", shape=(4, 3, 1, 1), const=np.ones((4, 3, 1, 1), np.float32))
    alias = Value("alias", shape=(4, 3, 1, 1))
    alias.share_const(w)  # an exporter's shared constant, un-shared on load
    other = Value("other", shape=(4, 2), const=np.ones((4, 2), np.float32))
    return {v.name: v for v in (w, alias, other)}


def _group(*slices: tuple[str, int, int, int]) -> Group:
    members = [Member("producer", "n", t, axis, start, 1, n) for t, axis, start, n in slices]
    return Group(0, max(n for *_, n in slices), members, [])


@pytest.mark.parametrize(
    ("slices", "one_pass"),
    [
        ([("w", 0, 0, 2), ("other", 0, 0, 2)], True),
        # a deduplicated weight is one pass while the group holds it under one name
        ([("alias", 0, 0, 2), ("other", 0, 0, 2)], True),
        # under two names: counted once, in one pass when they are sliced alike
        ([("w", 0, 0, 2), ("alias", 0, 0, 2)], True),
        ([("w", 0, 0, 2), ("alias", 0, 1, 2)], False),
        ([("w", 0, 0, 2), ("alias", 0, 0, 1)], False),
        ([("w", 0, 0, 2), ("w", 0, 2, 2)], True),  # adjacent pieces: one piece counted
        ([("w", 0, 0, 3), ("w", 0, 1, 3)], False),  # overlapping pieces (a locked group)
        ([("w", 0, 0, 2), ("w", 1, 2, 1)], False),  # two axes of one weight
    ],
)
def test_one_pass_count_applies_only_where_exact(slices, one_pass) -> None:
    params = _weights()
    uses = {"w": 5.0, "alias": 7.0, "other": 1.0}
    g = _group(*slices)
    _group_totals(Graph(), [g], params, uses)
    assert (g.params, g.macs) == _removed(Graph(), [g], params, uses)
    storage = {n: v.storage for n, v in params.items()}  # alias shares w's
    assert (_one_axis_totals(g, params, storage, uses) is not None) == one_pass


def _brute_force(groups: list[Group], params: dict, uses: dict) -> tuple[int, int]:
    """Parameters and MACs the groups cover, element by element (a mask per storage)."""
    masks: dict[int, np.ndarray] = {}
    macs = 0.0
    for name, v in params.items():
        mask = np.zeros(v.shape, bool)
        for g in groups:
            for m in g.members:
                if m.tensor == name:
                    index = [slice(None)] * len(v.shape)
                    index[m.axis] = slice(m.start, m.start + m.length * m.block)
                    mask[tuple(index)] = True
        macs += int(mask.sum()) * uses[name]
        masks[v.storage] = masks.get(v.storage, np.zeros(v.shape, bool)) | mask
    return sum(int(mask.sum()) for mask in masks.values()), round(macs)


@pytest.mark.parametrize("seed", range(20))
def test_counts_of_several_groups_equal_an_element_count(seed: int) -> None:
    """Groups of random pieces (adjacent ones, which the count joins; overlapping ones;
    two axes of one weight; a weight shared under two names): ``_removed`` over all of
    them, and each group's totals, count what a mask of every element counts."""
    rng = np.random.default_rng(seed)
    params = _weights()
    uses = {"w": 5.0, "alias": 7.0, "other": 1.0}
    groups = []
    for _ in range(3):
        slices = []
        for _ in range(int(rng.integers(1, 5))):
            name = str(rng.choice(["w", "alias", "other"]))
            axis = int(rng.integers(0, 2))
            dim = params[name].shape[axis]
            start = int(rng.integers(0, dim))
            slices.append((name, axis, start, int(rng.integers(1, dim - start + 1))))
        slices.sort()
        groups.append(_group(*slices))
    assert _removed(Graph(), groups, params, uses) == _brute_force(groups, params, uses)
    _group_totals(Graph(), groups, params, uses)
    for g in groups:
        assert (g.params, g.macs) == _brute_force([g], params, uses)
