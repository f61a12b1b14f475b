"""The dims inside each attention head, split after the head reshape (EfficientViT's
``LiteMLA``): a 1x1 conv gives q/k/v for every head, head-major; ``reshape(B, heads, 3 * d,
H * W)`` splits the heads and q, k and v are sliced out of each head's ``3 * d`` rows.

Conv channel ``c`` is head ``c // (3 * d)``, row ``c % (3 * d)`` of it. Where whole heads
cannot prune (a grouped conv over each head's q, k and v blocks, EfficientViT's multi-scale
aggregation, ties position ``p`` of every block), the reshape maps at the dims inside the
heads: row ``r`` of every head is one channel, sliced into q, k and v, and the merge back
``(B, heads, d, H, W) -> (B, heads * d, H, W)`` maps at the same level. Checked by the
dead-channel check and by sparse == compact in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from deadchannels import assert_groups_complete
from export_torch import export_as
from torch import nn
from unseen_battery import check_exact

from drpopt import analyze
from drpopt.ir.analysis import Analysis
from drpopt.zoo.builder import OnnxBuilder


class LinearAttention(nn.Module):
    """conv -> qkv conv (-> grouped aggregation conv) -> reshape(B, heads, 3d, HW) -> q, k, v
    sliced -> ReLU linear attention ``(v @ k^T) @ q`` (``pad``: EfficientViT's row of ones
    appended to v, whose result divides the rest) -> reshape back -> proj conv + residual."""

    def __init__(self, width=8, heads=2, dim=4, groups=0, pad=False):
        super().__init__()
        self.dim, self.pad = dim, pad
        qkv = 3 * heads * dim
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.qkv = nn.Conv2d(width, qkv, 1, bias=False)
        self.aggreg = nn.Conv2d(qkv, qkv, 1, groups=groups, bias=False) if groups else None
        self.proj = nn.Conv2d(heads * dim, width, 1)
        self.head = nn.Conv2d(width, 5, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        qkv = self.qkv(x)
        if self.aggreg is not None:
            qkv = self.aggreg(qkv)
        b, _, h, w = qkv.shape
        qkv = torch.reshape(qkv, (b, -1, 3 * self.dim, h * w))
        q, k, v = (
            qkv[:, :, : self.dim],
            qkv[:, :, self.dim : 2 * self.dim],
            qkv[:, :, 2 * self.dim :],
        )
        q, k = F.relu(q), F.relu(k)
        if self.pad:
            v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1)
        out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
        if self.pad:
            out = out[:, :, :-1] / (out[:, :, -1:] + 1e-6)
        out = torch.reshape(out, (b, -1, h, w))
        return self.head(F.relu(self.proj(out) + x))


def _model(**kw) -> onnx.ModelProto:
    torch.manual_seed(0)
    return export_as(LinearAttention(**kw), (1, 3, 4, 4), dynamic_batch=True)


def _check_runs(model: onnx.ModelProto, a: Analysis) -> None:
    assert_groups_complete(a, model)
    for config in ("rate0.5", "rate0.7"):
        pruned = check_exact(model, config)
        assert pruned.expected_params < pruned.before.params, config


@pytest.mark.parametrize("pad", [False, True], ids=["plain", "row-of-ones"])
def test_dims_inside_the_heads_prune_where_whole_heads_cannot(pad):
    """The aggregation conv's groups are each head's q, k and v blocks: its output channels
    prune by the same positions in every conv group, so no head can go alone (before: one
    locked unit of all 24 channels). At the dims inside the heads, dim ``p`` of q, k and v
    of every head is one channel, and so is proj's input ``h * d + p`` for every head."""
    heads, dim = 2, 4
    model = _model(heads=heads, dim=dim, groups=3 * heads, pad=pad)
    a = analyze(model)
    g = a.group("/aggreg/Conv")
    assert g.prunable and g.size == dim, (g.size, g.reason)
    proj_in = sorted(
        m.start for m in g.members if m.tensor == "proj.weight" and m.axis == 1 and m.block == 1
    )
    assert proj_in == [h * dim for h in range(heads)]  # the same dims of every head
    rows = sorted(m.start for m in g.members if m.tensor == "aggreg.weight" and m.axis == 0)
    assert rows == [h * 3 * dim + part * dim for h in range(heads) for part in range(3)]
    assert a.prunable_params / a.params > 0.99
    _check_runs(model, a)


def test_whole_heads_still_prune_without_the_grouped_conv():
    """Nothing ties positions across the blocks: the heads map at the coarse level as
    before, q, k and v of a head and its proj columns pruned together."""
    heads, dim = 3, 4
    model = _model(heads=heads, dim=dim)
    a = analyze(model)
    g = a.group("/qkv/Conv")
    assert g.prunable and g.size == heads, (g.size, g.reason)
    assert {m.block for m in g.members if m.tensor == "qkv.weight"} == {3 * dim}
    _check_runs(model, a)


def test_a_grouped_conv_across_the_qkv_blocks_stays_locked():
    """Conv groups of 2 channels over blocks of 5 (q, k, v of 5 dims): no head is whole in
    the conv groups and every row of a head is tied to every other (2 and 15 share no
    factor), so neither the heads nor the dims inside them can prune the conv's output;
    its input (positions in the conv groups of 2) and the rest can."""
    model = _model(heads=2, dim=5, groups=15)
    a = analyze(model)
    g = a.group("/aggreg/Conv")
    assert not g.prunable and "all 30 channels" in g.reason
    assert a.group("/qkv/Conv").prunable and a.group("/stem/Conv").prunable
    _check_runs(model, a)


def test_zeros_padded_on_the_last_axis_prune():
    """A constant Pad of one axis other than 1 (channels last: tokens x features) is a
    concat like BlazeFace's pad of axis 1 (before: that axis locked): the features before it
    prune with their producer, the zeros padded prune with the channels they are added to,
    and ``compact`` shrinks the pads."""
    b = OnnxBuilder(seed=3)
    x = b.input("input", (1, 6, 4))
    y = b.unary("Relu", b.matmul(x, 8, name="fc1"))
    pads = b.const("pads", np.array([0, 0, 0, 0, 0, 3], np.int64))
    y = b.op("Pad", [y, pads], (1, 6, 11), name="pad", mode="constant")
    y = b.unary("Relu", b.add(y, b.matmul(x, 11, name="fc0")))
    b.output(b.matmul(y, 5, name="fc2"))
    model = b.build()
    a = analyze(model)
    assert a.group("fc1").prunable and a.group("fc1").size == 8
    (padded,) = [g for g in a.groups if any(s.label == "pad.after" for s in g.segments)]
    assert padded.prunable and padded.size == 3 and "fc0" in padded.producers
    assert_groups_complete(a, model)
    for config in ("rate0.5", "rate0.7"):
        pruned = check_exact(model, config)
        (node,) = [n for n in pruned.compact.graph.node if n.op_type == "Pad"]
        (after,) = [t for t in pruned.compact.graph.initializer if t.name == node.input[1]]
        assert 0 < onnx.numpy_helper.to_array(after)[-1] < 3, config  # some zeros kept
