"""Torch post-training pruning: Taylor scores, BatchNorm recalibration, reconstruction of the
layers reading pruned channels; checked by running the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from drpopt.retrain import Pruner  # noqa: E402
from drpopt.retrain.posttrain import (  # noqa: E402
    prune_with_scores,
    recalibrate_bn,
    reconstruct_consumers,
    taylor_scores,
)
from drpopt.zoo.torch_models import digits_cnn  # noqa: E402


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    return model, x, y


def test_taylor_scores_rank_a_dead_channel_last_and_prune_with_scores(setup):
    model, x, y = setup
    with torch.no_grad():
        model.conv4.weight[5] = 0.0  # channel 5 of conv4 is zero: it contributes nothing
        model.bn4.weight[5] = 0.0
        model.bn4.bias[5] = 0.0
    pruner = Pruner(model, x[:1], final_rate=0.5)
    scores = taylor_scores(pruner, [(x[:32], y[:32]), (x[32:], y[32:])], F.cross_entropy)
    key = next(k for k in pruner.keys if k.startswith("conv4."))
    assert scores[key].shape == (128,) and int(np.argmin(scores[key])) == 5
    prune_with_scores(pruner, scores, 0.5)
    keep = pruner.keep_sets()[key]
    assert len(keep) == 64 and 5 not in keep
    assert float(model.fc1.weight.detach()[:, 5].abs().sum()) == 0.0


def test_recalibrate_bn_estimates_the_batch_statistics(setup):
    model, x, _ = setup
    model.train()
    model.fc1.eval()  # a mixed state is restored as it was
    used = recalibrate_bn(model, [x[:32], x[32:]])
    assert used == 2 and model.training and not model.fc1.training
    with torch.no_grad():
        h = model.conv1(x)
    np.testing.assert_allclose(
        model.bn1.running_mean.numpy(), h.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5
    )
    assert model.bn1.momentum == 0.1


def test_reconstruct_consumers_brings_outputs_back_towards_dense(setup):
    model, x, _ = setup
    dense = copy.deepcopy(model)
    pruner = Pruner(model, x[:1], final_rate=0.5)
    pruner.update()
    with torch.no_grad():
        ref = dense(x)
        before = float((model(x) - ref).norm() / ref.norm())
    assert before > 0.05  # pruning did change the outputs
    done = reconstruct_consumers(pruner, dense, [x[:32], x[32:]])
    assert done  # the layers after pruned groups
    with torch.no_grad():
        after = float((model(x) - ref).norm() / ref.norm())
    assert after < 0.5 * before
    for e in pruner._masked.values():  # pruned weights are still exactly zero
        assert float((e.param.detach() * (~e.mask.bool())).abs().sum()) == 0.0
