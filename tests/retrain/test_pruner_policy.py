"""The Pruner chooses channels with the mask pass's policy: global allocation really
allocates globally, and both choose the same channels from the same scores."""

from __future__ import annotations

import pytest

from drpopt.passes import MaskPass, PassManager, ScorePass
from drpopt.zoo.torch_models import example_input, resnet18_like

OPEN = {"keep_first": False, "keep_last": False}


def _pruner(allocation: str, rate: float = 0.5):
    import torch

    from drpopt.retrain import Pruner

    torch.manual_seed(0)
    model = resnet18_like()
    return Pruner(model, example_input("resnet18"), rate, allocation=allocation, **OPEN)


def test_pruner_global_allocation_really_allocates_globally():
    """The Pruner wrote "global" into its plan but kept exactly the uniform counts."""
    uniform, glob = _pruner("uniform"), _pruner("global")
    for p in (uniform, glob):
        p.update()
    rates = {len(g.keep) / g.size for g in glob.plan.groups}
    assert glob.plan.allocation == "global" and len(rates) > 1
    assert [len(g.keep) for g in glob.plan.groups] != [len(g.keep) for g in uniform.plan.groups]
    eligible = sum(g.size for g in glob.groups)
    pruned = sum(g.size - len(g.keep) for g in glob.plan.groups)
    assert abs(pruned / eligible - 0.5) < 0.05
    assert glob.plan.settings["align"] == 1 and "dense_ops" in glob.plan.settings


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_mask_pass_and_pruner_choose_the_same_channels(allocation):
    pruner = _pruner(allocation)
    pruner.update()
    graph = pruner.graph  # the Pruner's trace, its constants the model's parameters
    result = PassManager(
        [ScorePass(criterion="l2"), MaskPass(rate=0.5, allocation=allocation, **OPEN)]
    )(graph)
    assert sorted(g.key for g in result.plan.groups) == sorted(pruner.keys)
    from_mask = {g.key: g.keep for g in result.plan.groups}
    from_pruner = {g.key: g.keep for g in pruner.plan.groups}
    assert from_pruner and all(from_pruner[k] == from_mask[k] for k in from_pruner)
    assert all(
        len(from_mask[k]) == g.size
        for k, g in zip(pruner.keys, pruner.groups, strict=True)
        if k not in from_pruner
    )


def test_pruner_honours_the_profile_dense_ops(tmp_path):
    """The Pruner reads every channel setting of the profile through the same policy."""
    import torch

    from drpopt.retrain import Pruner

    profile = tmp_path / "noconv.toml"
    profile.write_text(
        'name = "noconv"\n[layers]\ndense_ops = ["Conv"]\nkeep_first = false\nkeep_last = false\n'
    )
    torch.manual_seed(0)
    model = resnet18_like()
    pruner = Pruner(model, example_input("resnet18"), 0.5, target=str(profile))
    assert pruner.groups == [] and pruner.policy.dense_ops == ("Conv",)
    assert _pruner("uniform").groups  # the same model prunes without the profile
