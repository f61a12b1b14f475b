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
