"""A conv weight computed at run time (StyleGAN2's ``ModulatedConv2d``: ``scale * weight *
style``, demodulated, reshaped to the conv's weight): the conv's roles pass back through the
Reshape and the Muls to the constant weight, whose in-channel columns read (its rows,
normalised by their own norm at run time, stay parameters: zeroed, the demodulation would
be 0 * inf where the exporter drops the epsilon, as dynamo does). Before, the columns were
bare parameters too: apply-masks left the pruned channels read (only the style zeroed
them) and the dead-channel check failed on every group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from deadchannels import assert_groups_complete
from round5c_torch import ModulatedConv2d, export_inputs
from torch import nn

from drpopt import analyze

sys.path.insert(0, str(Path(__file__).parents[1] / "corpus"))
from unseen_battery import check_exact


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mod = ModulatedConv2d(8, 12, 3, style_dim=6)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x, z):
        return self.head(torch.relu(self.mod(torch.relu(self.stem(x)), z)))


def _model(dynamo: bool):
    torch.manual_seed(0)
    args = (torch.randn(1, 3, 8, 8), torch.randn(1, 6))
    return export_inputs(_Net(), args, ["x", "z"], dynamo=dynamo)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_modulated_conv_weight_reads_its_channels(dynamo):
    """The sparse outputs are finite (``compare_outputs`` refuses NaN) and equal the compact
    ones; the dead-channel check holds."""
    model = _model(dynamo)
    a = analyze(model)
    (weight,) = [t.name for t in model.graph.initializer if len(t.dims) == 5]
    roles = {(m.axis, m.role) for g in a.prunable_groups for m in g.members if m.tensor == weight}
    # its rows stay parameters (demodulated by their own norm: zeroed, 0 * inf)
    assert roles == {(1, "param"), (2, "consumer")}, roles
    assert_groups_complete(a, model)
    pruned = check_exact(model)  # sparse == compact, the plan's parameter count
    assert pruned.expected_params < pruned.before.params
