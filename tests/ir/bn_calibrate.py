"""Seeded BatchNorm statistics that keep a random network's signal alive.

A randomly initialised deep CNN in eval mode with unit running variances shrinks its input
layer by layer (default conv init loses variance), so after ten layers the outputs are set
by the biases alone: the same for every input, and a compact-vs-sparse comparison of them
would miss an error in anything but the bias path. ``calibrate`` runs the model in train
mode on a few random batches (cumulative averages) so each BatchNorm normalises what it
really sees, then randomises the affine parameters and returns the model in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn


def calibrate(model: nn.Module, shape: tuple[int, ...], batches: int = 2) -> nn.Module:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, *shape[1:]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def randomize_norms(model: nn.Module, kinds: tuple[type, ...] = (nn.LayerNorm,)) -> nn.Module:
    """Affine parameters of the given norm layers away from the identity (as ``calibrate``
    does for BatchNorm and GroupNorm), so channels that are pruned would show."""
    for m in model.modules():
        if isinstance(m, kinds):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model
