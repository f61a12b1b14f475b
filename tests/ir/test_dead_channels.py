"""Groups are complete: dead channels of every prunable group cannot reach any output."""

from __future__ import annotations

import numpy as np
import pytest
from deadchannels import assert_groups_complete, dead_channel_outputs

from drpopt import analyze
from drpopt.zoo import MODELS


@pytest.mark.parametrize("name", list(MODELS))
def test_dead_channels_do_not_reach_outputs(name, zoo_models):
    model = zoo_models[name]
    analysis = analyze(model)
    assert analysis.prunable_groups, name
    assert_groups_complete(analysis, model)


@pytest.mark.parametrize("name", ["resnet18", "yolox_s_like", "densenet"])
def test_check_can_fail_without_zeroing(name, zoo_models):
    """Negative control: without zeroing the consumers, the scrambling shows in the output."""
    model = zoo_models[name]
    analysis = analyze(model)
    before, after = dead_channel_outputs(model, analysis.prunable_groups, zero_consumers=False)
    assert any(
        not np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(after, before, strict=True)
    )


def test_check_catches_a_missing_consumer(zoo_models):
    """Dropping one consumer member from a group makes the check fail."""
    model = zoo_models["resnet18"]
    analysis = analyze(model)
    group = analysis.group("stem.conv")
    group.members = [
        m for m in group.members if not (m.role == "consumer" and m.node == "layer2.0.conv1")
    ]
    with pytest.raises(AssertionError):
        assert_groups_complete(analysis, model)
