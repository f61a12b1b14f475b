"""One channel policy: SelectionPolicy resolution and choose_channels (the Pruner side:
tests/retrain/test_pruner_policy.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from drpopt.errors import BadInputError
from drpopt.passes.policy import SelectionPolicy, choose_channels
from drpopt.passes.targets import TARGETS


def fake_group(key: str, size: int):
    """Just enough of a Group for choose_channels (its key is its producer slice)."""
    member = SimpleNamespace(role="producer", tensor=key, axis=0, start=0)
    return SimpleNamespace(size=size, members=[member], segments=[])


def test_policy_resolves_the_profile_with_overrides():
    policy = SelectionPolicy.resolve("drpai", rate=None, exclude=["fc"], keep_last=False)
    drpai = TARGETS["drpai"]
    assert policy.rate == drpai.default_rate and policy.align == drpai.align == 8
    assert policy.keep_last is False and policy.keep_first is drpai.keep_first
    assert policy.exclude == ("fc",) and policy.target == "drpai"
    with pytest.raises(BadInputError, match="unknown policy setting"):
        SelectionPolicy.resolve("generic", granularity="nm")
    with pytest.raises(BadInputError, match="allocation"):
        SelectionPolicy.resolve("generic", allocation="local")
    with pytest.raises(BadInputError, match=r"outside \[0, 1\)"):
        SelectionPolicy(rate=1.0)


def test_choose_channels_uniform_and_global():
    groups = [fake_group("a", 8), fake_group("b", 8)]
    scores = {
        "a[0]@0": np.array([8, 7, 6, 5, 4, 3, 2, 1], float),
        "b[0]@0": np.array([1, 1, 1, 1, 1, 1, 1, 9], float),  # one strong channel
    }
    uniform = choose_channels(groups, scores, SelectionPolicy(rate=0.5))
    assert uniform == {"a[0]@0": [0, 1, 2, 3], "b[0]@0": [0, 1, 2, 7]}
    glob = choose_channels(groups, scores, SelectionPolicy(rate=0.5, allocation="global"))
    assert len(glob["a[0]@0"]) != len(glob["b[0]@0"])
    assert sum(map(len, glob.values())) == 8  # half of all channels overall
    assert 7 in glob["b[0]@0"]
    # candidates: a pruned channel is never revived, whatever its score
    kept = choose_channels(groups, scores, SelectionPolicy(rate=0.5), {"a[0]@0": [4, 5, 6, 7]})
    assert kept["a[0]@0"] == [4, 5, 6, 7]


def slice_group(key: str, size: int, pieces: list[tuple[str, int, int]]):
    """A group whose channel ``j`` is rows ``[start + j * block, ...)`` of each named
    weight (axis 0); ``key`` names it as its first producer slice."""
    members = [
        SimpleNamespace(role="producer", tensor=t, axis=0, start=s, block=b, length=size)
        for t, s, b in pieces
    ]
    members.insert(0, SimpleNamespace(role="producer", tensor=key, axis=0, start=0, block=1))
    return SimpleNamespace(size=size, members=members, segments=[])


def test_one_unit_groups_are_dropped_while_their_layers_approach_the_rate():
    """Weight ``w`` has 8 rows: a group of 6 (rows 0-5) loses 3 at rate 0.5, two groups of
    one unit hold rows 6 and 7. Dropping one brings ``w`` to half; dropping both would go
    past it: the lower-scoring one goes. Without shapes, or with a profile's alignment
    (layer widths stay multiples of it), both stay."""
    groups = [
        slice_group("a", 6, [("w", 0, 1)]),
        slice_group("b", 1, [("w", 6, 1)]),
        slice_group("c", 1, [("w", 7, 1)]),
    ]
    shapes = {"w": (8, 4), "a": (12,), "b": (2,), "c": (2,)}  # one-unit groups: wider layers
    scores = {"a[0]@0": np.arange(6.0), "b[0]@0": np.array([0.1]), "c[0]@0": np.array([0.9])}
    policy = SelectionPolicy(rate=0.5)
    kept = choose_channels(groups, scores, policy, shapes=shapes)
    assert kept == {"a[0]@0": [3, 4, 5], "b[0]@0": [], "c[0]@0": [0]}
    scores["b[0]@0"], scores["c[0]@0"] = scores["c[0]@0"], scores["b[0]@0"]
    assert choose_channels(groups, scores, policy, shapes=shapes)["c[0]@0"] == []
    assert choose_channels(groups, scores, policy)["b[0]@0"] == [0]  # no shapes given
    aligned = choose_channels(groups, scores, SelectionPolicy(rate=0.5, align=2), shapes=shapes)
    assert aligned["b[0]@0"] == aligned["c[0]@0"] == [0]
    # a drop that would empty a weight axis never happens
    lone = [slice_group("d", 1, [("v", 0, 2)])]
    got = choose_channels(lone, {"d[0]@0": np.zeros(1)}, policy, shapes={"v": (2, 3), "d": (4,)})
    assert got == {"d[0]@0": [0]}


def test_a_plan_may_drop_a_one_unit_group_but_never_a_whole_axis():
    """``keep: []`` is read for a group of one unit only; masks that would leave a value
    axis with no channel (one-unit groups covering all of it) are refused."""
    from drpopt.ir.channel_types import Segment
    from drpopt.passes.plan import GroupPlan, Plan, keep_masks

    def data(size: int) -> dict:
        group = {"key": "w[0]@0", "size": size, "keep": []}
        return {"format": "drpopt-plan", "version": 1, "groups": [group]}

    assert Plan.from_dict(data(1)).groups[0].keep == []
    with pytest.raises(BadInputError, match="keeps 0 channels"):
        Plan.from_dict(data(2))
    seg = Segment("x", 1, 0, 2, "x[1]", 4)
    halves = [SimpleNamespace(segments=[seg._replace(start=s)]) for s in (0, 2)]
    plans = [GroupPlan(f"g{i}", 1, []) for i in range(2)]
    assert not keep_masks([(halves[0], plans[0])])[("x", 1)][:2].any()
    with pytest.raises(BadInputError, match="removes every channel of axis 1 of 'x'"):
        keep_masks(list(zip(halves, plans, strict=True)))


def test_a_layer_several_groups_produce_keeps_a_multiple_of_the_alignment():
    """Weight ``w`` has 24 output rows from two groups (a shuffle's units): one of 5 rows,
    smaller than the alignment 8 (whole), and one of 19, rounded alone to 8 kept. The layer
    would keep 13, not a multiple of 8 (`check --target drpai` failed ShuffleNet-V2 so):
    both groups keep every channel. A layer one group produces is rounded as before, and
    without shapes nothing changes."""
    groups = [
        slice_group("a", 5, [("w", 0, 1)]),
        slice_group("b", 19, [("w", 5, 1)]),
        slice_group("c", 16, [("v", 0, 1)]),
    ]
    shapes = {"w": (24, 4), "v": (16, 4), "a": (5,), "b": (19,), "c": (16,)}
    scores = {k: np.arange(float(n)) for k, n in (("a[0]@0", 5), ("b[0]@0", 19), ("c[0]@0", 16))}
    policy = SelectionPolicy(rate=0.5, align=8)
    unaligned = choose_channels(groups, scores, policy)  # no shapes: each group alone
    assert len(unaligned["a[0]@0"]) + len(unaligned["b[0]@0"]) == 13
    kept = choose_channels(groups, scores, policy, shapes=shapes)
    assert kept["a[0]@0"] == list(range(5)) and kept["b[0]@0"] == list(range(19))
    assert kept["c[0]@0"] == list(range(8, 16))  # alone on its layer: 8 kept, aligned


def grouped_conv_group(key: str, per_group: int, groups: int):
    """A grouped convolution's group: channel ``j`` is row ``j`` of each of its ``groups``
    segments of ``per_group`` rows (the same slot in every conv group)."""
    members = [
        SimpleNamespace(role="producer", tensor=key, axis=0, start=i * per_group, block=1)
        for i in range(groups)
    ]
    return SimpleNamespace(size=per_group, members=members, segments=[])


@pytest.mark.parametrize(
    ("per_group", "groups", "kept", "kept_alone"),
    [
        (4, 32, 1, 4),  # ResNeXt-50 32x4d: 32 x 1 = 32 rows (it used to stay whole)
        (8, 6, 4, 8),  # RegNet 48 = 6 x 8: 6 x 4 = 24 rows (it used to stay whole)
        (8, 13, 8, 8),  # 104 = 13 x 8: no count below 8 gives a multiple of 8: whole
        (16, 2, 4, 8),  # RegNetX 32 = 2 x 16: 2 x 4 = 8 rows (it used to keep 2 x 8)
    ],
)
def test_a_grouped_convolution_aligns_its_layer_width_not_its_group_count(
    per_group, groups, kept, kept_alone
):
    """``align`` (DRP-AI: 8) holds for the layer's output channels, which are ``groups``
    times the channels a grouped convolution's group keeps; ``min_channels`` too."""
    g = grouped_conv_group("w", per_group, groups)
    shapes = {"w": (per_group * groups, 4, 3, 3)}
    policy = SelectionPolicy(rate=0.7, align=8, min_channels=8)
    out = choose_channels([g], {"w[0]@0": np.arange(float(per_group))}, policy, shapes=shapes)
    assert len(out["w[0]@0"]) == kept
    assert (kept * groups) % 8 == 0 and kept * groups >= 8
    # without shapes the group's own count is aligned, as for a plain layer
    alone = choose_channels([g], {"w[0]@0": np.arange(float(per_group))}, policy)
    assert len(alone["w[0]@0"]) == kept_alone
