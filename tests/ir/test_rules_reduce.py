"""Sum-like reductions over channels (``ir/rules_reduce.py``) and GatherElements
(``ir/rules_select.py``) on small torch models exported as their projects do: the channels
they read prune, sparse equals compact in onnxruntime, the dead-channel check holds; what
is not provably right (a product or an argmax over channels, gathering along the channels)
stays locked with the node named. Means, maxima and minima over channels:
``test_channel_reductions.py``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from deadchannels import assert_groups_complete, random_feeds, run_model
from export_torch import export_as
from test_default_locks import assert_same, prune
from torch import nn

from drpopt import analyze
from drpopt.ir.analysis import Analysis
from drpopt.ir.from_torch import trace_module


def _weight_group(a: Analysis, weight: str):
    """The group whose producer rows are ``weight``'s (exactly one)."""
    (group,) = [
        g for g in a.groups if any(m.tensor == weight and m.role == "producer" for m in g.members)
    ]
    return group


def _first_weight(model: onnx.ModelProto) -> str:
    """The weight of the model's first Conv or MatMul (the layer whose channels we follow)."""
    inits = {t.name for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm"))
    return next(i for i in node.input[1:] if i in inits)


def _prunes_exactly(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The first layer's channels are one prunable group; sparse equals compact at 0.5;
    the dead-channel check holds. (sparse, compact) for more checks."""
    a = analyze(model)
    group = _weight_group(a, _first_weight(model))
    assert group.prunable, group.reason
    assert_groups_complete(a, model)
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))
    return sparse, compact


# ---- sum-like reductions over channels -------------------------------------------------------
class ScaleNorm(nn.Module):
    """RTMPose's ScaleNorm (mmpose ``rtmcc_block.py``) over the token width, between two
    Linears; the Sigmoid before it leaves the pruned channels at 0.5 in the sparse model,
    so only the mask makes the norm right. ``squares``: written as ``sqrt(sum(x**2))``."""

    def __init__(self, squares: bool = False):
        super().__init__()
        self.squares = squares
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.sigmoid(self.inp(x))
        if self.squares:
            norm = h.pow(2).sum(-1, keepdim=True).sqrt()
        else:
            norm = torch.norm(h, dim=-1, keepdim=True)
        return self.out(h / norm.clamp(min=1e-5) * 16**-0.5)


class ConvReduce(nn.Module):
    """Conv -> (+0.1: the pruned channels are not zero there) -> a reduction over the
    channels used as ``how`` says -> Conv."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = F.relu(self.a(x)) + 0.1
        if self.how == "normalize":  # F.normalize: ReduceL2, Clip/Max, Expand, Div
            h = F.normalize(h, dim=1)
        elif self.how == "sum":  # a channel sum as a spatial gate
            h = h * torch.sigmoid(h.sum(1, keepdim=True))
        elif self.how == "l1":
            h = h / h.abs().sum(1, keepdim=True)
        elif self.how == "mean":  # CBAM's channel mean: counts the channels
            h = h * torch.sigmoid(h.mean(1, keepdim=True))
        elif self.how == "max":  # a max over channels sees the sparse model's zeros
            h = h * torch.sigmoid(h.amax(1, keepdim=True))
        return self.b(h)


@pytest.mark.parametrize("squares", [False, True])
@pytest.mark.parametrize("opset", [11, 18])
def test_scalenorm_over_channels_prunes(squares, opset):
    model = export_as(ScaleNorm(squares), (1, 5, 8), opset=opset)
    assert {"ReduceL2", "ReduceSum"} & {n.op_type for n in model.graph.node}
    sparse, compact = _prunes_exactly(model)
    # the sparse model masks what the norm reads; the compact one has the plain reduction
    assert any(n.op_type == "ChannelMask" for n in sparse.graph.node)
    assert not any(n.domain == "drpopt" for n in compact.graph.node)
    assert not compact.functions


@pytest.mark.parametrize("how", ["normalize", "sum", "l1"])
@pytest.mark.parametrize("opset", [13, 18])
def test_channel_sums_prune(how, opset):
    _prunes_exactly(export_as(ConvReduce(how), (1, 3, 8, 8), opset=opset))


def test_the_mask_is_what_makes_the_sparse_model_right():
    """Without its ChannelMask the sparse model's norm counts the pruned channels (0.5
    after the Sigmoid) and differs from the compact model: the models above can fail."""
    model = export_as(ScaleNorm(), (1, 5, 8), opset=13)
    sparse, compact = prune(model)
    (mask,) = [n for n in sparse.graph.node if n.op_type == "ChannelMask"]
    for node in sparse.graph.node:
        node.input[:] = [mask.input[0] if i == mask.output[0] else i for i in node.input]
    sparse.graph.node.remove(mask)
    feeds = random_feeds(model)
    a, b = run_model(sparse, feeds)[0], run_model(compact, feeds)[0]
    assert np.abs(a - b).max() > 1e-3 * np.abs(b).max()


@pytest.mark.parametrize(("how", "op"), [("mean", "ReduceMean"), ("max", "ReduceMax")])
@pytest.mark.parametrize("opset", [13, 18])
def test_mean_and_max_over_channels_prune(how, op, opset):
    """A mean or a max over channels (locked before: the count, the zeros) prunes: the
    sparse model has the masked form over the kept channels, the compact one the plain op."""
    model = export_as(ConvReduce(how), (1, 3, 8, 8), opset=opset)
    sparse, compact = _prunes_exactly(model)
    assert any(n.op_type == f"Masked{op}" and n.domain == "drpopt" for n in sparse.graph.node)
    assert any(n.op_type == op for n in compact.graph.node)
    assert not any(n.domain == "drpopt" for n in compact.graph.node) and not compact.functions


class ConvArg(nn.Module):
    """Conv -> a product, a log-sum-exp or an argmax over the channels as a gate -> Conv."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = torch.sigmoid(self.a(x))
        if self.how == "prod":
            gate = h.prod(1, keepdim=True)
        elif self.how == "logsumexp":
            gate = h.logsumexp(1, keepdim=True)
        else:  # the position of the strongest channel, as a float gate
            gate = h.argmax(1, keepdim=True).float() / 16
        return self.b(h * gate)


@pytest.mark.parametrize(
    ("how", "op", "why"),
    [
        ("prod", "ReduceProd", "no masked form"),
        ("logsumexp", "ReduceLogSumExp", "no masked form"),
        ("argmax", "ArgMax", "returns an index along this axis"),
    ],
)
def test_a_product_log_sum_exp_or_argmax_over_channels_stays_locked(how, op, why):
    model = export_as(ConvArg(how), (1, 3, 8, 8), opset=13)
    group = _weight_group(analyze(model), _first_weight(model))
    assert not group.prunable
    assert op in group.reason and why in group.reason


@pytest.mark.parametrize(
    ("how", "op"), [("sum", "ReduceSum"), ("mean", "ReduceMean"), ("max", "amax")]
)
def test_a_torch_models_channel_sum_stays_locked(how, op):
    """Analysed from the module (fx), the reduction reads what the retrained layers leave
    there, which nothing proves ignored (no masked form in torch): locked as before."""
    a = analyze(trace_module(ConvReduce(how).eval(), torch.randn(1, 3, 8, 8)).graph)
    locked = [g for g in a.locked_groups if op in g.reason]
    assert locked and any(m.tensor == "a.weight" for g in locked for m in g.members)


class ExpandGate(nn.Module):
    """A one-channel gate expanded over the channels of another conv's output: to
    ``h.shape`` (``Shape(h)``: the channels follow ``h``) or to a shape with the channel
    count written as a literal among computed sizes (nothing rewrites it: locked)."""

    def __init__(self, literal: bool):
        super().__init__()
        self.literal = literal
        self.a, self.g, self.b = (
            nn.Conv2d(3, 16, 3, padding=1),
            nn.Conv2d(3, 1, 1),
            nn.Conv2d(16, 8, 1),
        )

    def forward(self, x):
        h, gate = F.relu(self.a(x)), torch.sigmoid(self.g(x))
        n, _, height, width = h.shape
        gate = gate.expand(n, 16, height, width) if self.literal else gate.expand_as(h)
        return self.b(h * gate)


def test_an_expanded_axis_follows_the_tensor_its_size_is_read_from():
    _prunes_exactly(export_as(ExpandGate(literal=False), (1, 3, 8, 8), opset=13))


def test_a_literal_channel_count_inside_a_computed_expand_shape_locks():
    model = export_as(ExpandGate(literal=True), (1, 3, 8, 8), opset=13, dynamic_batch=True)
    target = next(n for n in model.graph.node if n.op_type == "Expand").input[1]
    assert target not in {t.name for t in model.graph.initializer}  # computed
    group = _weight_group(analyze(model), _first_weight(model))
    assert not group.prunable and "Expand" in group.reason
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))


# ---- GatherElements ------------------------------------------------------------------------
class GatherAtPeak(nn.Module):
    """MoveNet's decoding inside the network: the features gathered at the argmax of a
    score map (``gather`` along the pixels, indices computed and expanded over the
    channels), then a Linear; ``const``: at fixed pixels instead (constant indices)."""

    def __init__(self, const: bool = False):
        super().__init__()
        self.const = const
        self.a, self.score = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 1, 1)
        self.fc = nn.Linear(16 * 2, 4)
        self.register_buffer("pixels", torch.randint(0, 64, (1, 16, 2)))

    def forward(self, x):
        h = F.relu(self.a(x)).flatten(2)
        if self.const:
            idx = self.pixels
        else:
            peak = self.score(x).flatten(1).argmax(1)
            idx = torch.stack([peak, 63 - peak], -1).view(-1, 1, 2).expand(-1, 16, 2)
        return self.fc(h.gather(2, idx).flatten(1))


@pytest.mark.parametrize("const", [False, True])
def test_gather_elements_passes_channels_through(const):
    model = export_as(GatherAtPeak(const), (1, 3, 8, 8), opset=13)
    assert any(n.op_type == "GatherElements" for n in model.graph.node)
    _prunes_exactly(model)


class GatherChannels(nn.Module):
    """Gathers along the channels at indices computed at run time (a rotation chosen by
    the input)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.register_buffer("order", torch.arange(16).view(1, 16, 1, 1))

    def forward(self, x):
        h = F.relu(self.a(x))
        idx = ((self.order + (x.mean() > 0).long()) % 16).expand(1, 16, 8, 8)
        return self.b(h.gather(1, idx))


def test_gather_elements_along_the_channels_locks():
    model = export_as(GatherChannels(), (1, 3, 8, 8), opset=13)
    group = _weight_group(analyze(model), _first_weight(model))
    assert not group.prunable
    assert "GatherElements" in group.reason and "gathers along this axis" in group.reason
