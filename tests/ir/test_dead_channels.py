"""Groups are complete: dead channels of every prunable group cannot reach any output."""

from __future__ import annotations

import numpy as np
import onnx
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


def _single_head_attention():
    import io

    import onnx
    import torch
    from torch import nn

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 8)
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.proj = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            x = self.embed(x)
            q, k, v = self.q(x), self.k(x), self.v(x)
            attn = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(-1)
            return self.head(x + self.proj(attn @ v))

    torch.manual_seed(0)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(Attn().eval(), (torch.randn(1, 5, 6),), buf, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def test_inner_product_of_two_activations_is_dead_when_one_side_is_zero():
    """A single-head attention prunes its q/k width channel by channel; ``q @ k^T`` sums over
    those channels, so a killed one is dead when the sparse model zeroes it on one side, not
    when both sides are scrambled (SegFormer's first stage). A missing member elsewhere
    (the projection's consumer rows of the v group) still fails the check."""
    model = _single_head_attention()
    analysis = analyze(model)
    tensors = [{m.tensor for m in g.members} for g in analysis.prunable_groups]
    assert any({"q.bias", "k.bias"} <= t and "v.bias" not in t for t in tensors)
    assert_groups_complete(analysis, model)
    values = next(g for g in analysis.prunable_groups if "v.bias" in {m.tensor for m in g.members})
    values.members = [m for m in values.members if m.role != "consumer"]
    with pytest.raises(AssertionError):
        assert_groups_complete(analysis, model)


def _dynamic_kernel() -> onnx.ModelProto:
    """SOLOv2's dynamic conv in small: ``conv2d(features, kernels)`` whose 1x1 kernels come
    from another conv's pooled outputs, then a conv of the masks; a 1x1 conv of the features
    beside it."""
    import io

    import torch
    import torch.nn.functional as F
    from torch import nn

    class DynamicKernel(nn.Module):
        def __init__(self):
            super().__init__()
            self.feat, self.kernel = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
            self.head, self.tail = nn.Conv2d(2, 2, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            kernels = self.kernel(x).mean((2, 3)).view(1, 6, 1, 1)  # one kernel of 6 inputs
            feat = torch.relu(self.feat(x))
            return self.head(F.conv2d(feat, torch.cat([kernels, -kernels]))) + self.tail(feat)

    torch.manual_seed(0)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(DynamicKernel().eval(), (torch.randn(1, 3, 8, 8),), buf, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def test_a_conv_with_a_computed_weight_is_an_inner_product_of_two_activations():
    """A Conv whose weight is computed from the input (SOLOv2's, CondInst's dynamic kernels)
    sums its input's channels against the kernels' axis 1: the feature and kernel convs are
    one group, and a killed channel is dead when the sparse model zeroes one side. The check
    used to scramble both sides (SOLOv2 failed it on a right group); a missing member still
    fails it (the side conv's consumer columns)."""
    model = _dynamic_kernel()
    analysis = analyze(model)
    tensors = [{m.tensor for m in g.members} for g in analysis.prunable_groups]
    assert {"feat.bias", "kernel.bias"} <= next(t for t in tensors if "feat.bias" in t)
    assert_groups_complete(analysis, model)
    group = next(
        g for g in analysis.prunable_groups if "feat.bias" in {m.tensor for m in g.members}
    )
    group.members = [m for m in group.members if m.tensor != "tail.weight"]
    with pytest.raises(AssertionError):
        assert_groups_complete(analysis, model)
