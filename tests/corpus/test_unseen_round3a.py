"""The unseen-architecture checks (``unseen_battery.py``) on restoration /
super-resolution, face detection and pose networks, written the way their projects write
them (``tests/ir/restore_torch.py``, ``face_torch.py``, ``pose_torch.py``) and exported by
torch.

Per model: the analysis names every lock (only the reasons listed); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones
(1e-4 of the spread) with the parameters and MACs the plan says; the dead-channel check
holds on every prunable group; the model's coverage is what the architecture allows.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, prune
from deadchannels import assert_groups_complete
from unseen_battery import OUTPUT, battery, check_another_export, check_exact

from drpopt import analyze
from drpopt.ir.analysis import Analysis

INPUT = "graph input"


def _build(module: str, name: str, **kw) -> onnx.ModelProto:
    return getattr(importlib.import_module(module), name)(**kw)


# name -> (builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # Real-ESRGAN x2: pixel_unshuffle by view/permute/reshape, dense concats, nearest x2
    "rrdbnet": (lambda: _build("restore_torch", "rrdbnet"), 0.99, 0.3, {OUTPUT}),
    # EDSR x4 (opset 11): two conv + PixelShuffle (DepthToSpace) upsamplings
    "edsr": (lambda: _build("restore_torch", "edsr"), 0.99, 0.3, {OUTPUT}),
    # NAFNet: SimpleGate pairs channel c of both halves; LayerNorm2d written out; the
    # input added to the output (its channels stay)
    "nafnet": (lambda: _build("restore_torch", "nafnet"), 0.99, 0.3, {INPUT, OUTPUT}),
    # Restormer: attention across each head's channels, softmax over k's (and so v's)
    # channels: those stay; q's, the FFN's and the width prune
    "restormer": (
        lambda: _build("restore_torch", "restormer"),
        0.95,
        0.36,
        {"Softmax", INPUT, OUTPUT},
    ),
    # Real-ESRGAN's SRVGGNetCompact (opset 13): PReLU per channel, PixelShuffle, the
    # nearest-upsampled input added
    "srvgg": (lambda: _build("restore_torch", "srvgg"), 0.99, 0.31, {INPUT, OUTPUT}),
    # MIRNet-v2: selective kernel fusion (streams stacked by view(B, 2, C, H, W), softmax
    # and sum over the streams: the stream axis stays, the channels prune in every
    # stream), GCNet context blocks (softmax over the pixels, matmul)
    "mirnet": (lambda: _build("restore_torch", "mirnet"), 0.99, 0.27, {INPUT, OUTPUT}),
    # RetinaFace (MobileNet-0.25, opset 11): FPN, SSH concat of three branches; each head's
    # permute + view(N, -1, k) merges its anchors with the pixels (its outputs stay anyway)
    "retinaface": (
        lambda: _build("face_torch", "retinaface"),
        0.99,
        0.3,
        {"merges axis 1", OUTPUT},
    ),
    # BlazeFace (opset 13): the residual widened by a Pad of the channel axis (computed
    # pads): the input's channels and the zeros padded prune (compaction shrinks the pads)
    "blazeface": (
        lambda: _build("face_torch", "blazeface"),
        0.99,
        0.35,
        {"merges axis 1", OUTPUT},
    ),
    # SCRFD-style head: GroupNorm towers shared by the strides, permute(2, 3, 0, 1) heads
    "scrfd": (lambda: _build("face_torch", "scrfd"), 0.99, 0.3, {"merges axis 0", OUTPUT}),
    # RTMPose (opset 11): CSPNeXt, RTMCC head with a gated attention unit; ScaleNorm's L2
    # norm over the token width prunes (ir/rules_reduce.py), the keypoint axis (relative
    # position bias) stays
    "rtmpose": (
        lambda: _build("pose_torch", "rtmpose"),
        0.99,
        0.45,
        {"Tile", "gau/Reshape", OUTPUT},
    ),
    # Lite-HRNet: stem chunk/shuffle, cross-resolution weighting (pool, concat, split,
    # interpolate, multiply), shuffled conditional channel weighting, HRNet fusion
    "litehrnet": (lambda: _build("pose_torch", "litehrnet"), 0.99, 0.36, {OUTPUT}),
    # MoveNet-style heads decoded in the graph (argmax of the center, the regressions
    # gathered there: GatherElements, whose channels are the keypoints output anyway)
    "movenet": (
        lambda: _build("pose_torch", "movenet"),
        0.98,
        0.36,
        {"GatherElements", OUTPUT},
    ),
}
# the default run keeps the models whose fixes have no small test of their own here
SLOW: set[str] = {"rrdbnet", "restormer", "retinaface", "scrfd", "litehrnet", "srvgg", "movenet"}


BATTERY = battery(MODELS, lambda name: MODELS[name][0](), slow=SLOW)
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests


# ---- other exports of the same networks ----------------------------------------------------


def _dynamo(name: str) -> onnx.ModelProto:
    """The network through torch's default (dynamo, opset 18+) exporter."""
    import torch
    from bn_calibrate import calibrate

    build, shape = {
        "nafnet": (lambda: _build("restore_torch", "nafnet_module"), (1, 3, 16, 16)),
        "retinaface": (lambda: _build("face_torch", "RetinaFace"), (1, 3, 64, 64)),
        "rtmpose": (lambda: _build("pose_torch", "rtmpose_module"), (1, 3, 64, 64)),
    }[name]
    torch.manual_seed(0)
    net = calibrate(build(), shape)
    with torch.no_grad():
        return torch.onnx.export(net, (torch.randn(*shape),), dynamo=True).model_proto


OTHER_EXPORTS = {
    "nafnet_dynamo": ("nafnet", lambda: _dynamo("nafnet")),
    "retinaface_dynamo": ("retinaface", lambda: _dynamo("retinaface")),
    "rtmpose_dynamo": ("rtmpose", lambda: _dynamo("rtmpose")),
    "rrdbnet_opset13": ("rrdbnet", lambda: _build("restore_torch", "rrdbnet", opset=13)),
    "restormer_opset13": ("restormer", lambda: _build("restore_torch", "restormer", opset=13)),
    "edsr_opset17": ("edsr", lambda: _build("restore_torch", "edsr", opset=17)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OTHER_EXPORTS))
def test_other_exports_prune_exactly(name):
    """The dynamo exporter (opset 18+, other decompositions) and other opsets: the
    coverage of the first export and exact compaction at every config (dynamo: 10-50 s)."""
    base, build = OTHER_EXPORTS[name]
    check_another_export(build(), analysis(base))


# ---- the fixes these models needed, each on a small model of its own ----------------------


def _exact(model: onnx.ModelProto, config: str = "rate0.5") -> None:
    """Sparse equals compact with the plan's parameter count, and something was pruned."""
    assert check_exact(model, config).plan.pruned_channels


def _depth_space_model(op: str, mode: str | None) -> onnx.ModelProto:
    """Conv (3 -> 16) -> Relu -> DepthToSpace / SpaceToDepth (block 2) -> Conv."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    wide = op == "DepthToSpace"
    c_mid, c_out = (16, 4) if wide else (4, 16)
    attrs = {"blocksize": 2, **({"mode": mode} if mode else {})}
    inits = [
        numpy_helper.from_array(rng.standard_normal((c_mid, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(c_mid).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((5, c_out, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node(op, ["r"], ["d"], **attrs),
        helper.make_node("Conv", ["d", "w2"], ["y"]),
    ]
    hw = 8 if wide else 2
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, hw, hw])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "op,mode", [("DepthToSpace", "CRD"), ("DepthToSpace", "DCR"), ("SpaceToDepth", None)]
)
def test_depth_to_space_maps_channels_to_their_blocks(op, mode):
    """PixelShuffle (EDSR's, NAFNet's upsampling) prunes: channel c of the narrow side is
    the block ``4c..4c+3`` (CRD) or the repeats ``c, C + c, ...`` (DCR, SpaceToDepth) of the
    wide side. Before, the channel axis was locked ("moves pixels into channels") and
    NAFNet's and EDSR's upsampling convs stayed whole."""
    model = _depth_space_model(op, mode)
    a = analyze(model)
    (group,) = [g for g in a.groups if any(m.tensor == "w1" for m in g.members)]
    assert group.prunable and group.size == 4, group.reason
    assert_groups_complete(a, model)
    _exact(model)


class _VarLayerNorm:
    """Restormer's ``WithBias_LayerNorm``: ``x.var(-1, unbiased=False)`` takes a mean of
    its own (two ReduceMeans of x, two Subs)."""

    @staticmethod
    def model(opset: int) -> onnx.ModelProto:
        import io

        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a = nn.Linear(6, 16)
                self.weight = nn.Parameter(torch.rand(16) + 0.5)
                self.bias = nn.Parameter(torch.rand(16) - 0.5)
                self.b = nn.Linear(16, 5)

            def forward(self, x):
                x = torch.relu(self.a(x))
                mu = x.mean(-1, keepdim=True)
                sigma = x.var(-1, keepdim=True, unbiased=False)
                return self.b((x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias)

        torch.manual_seed(0)
        x = torch.randn(1, 7, 6)
        if opset is None:  # the dynamo exporter: the variance without kept dims, reshaped
            return torch.onnx.export(Net().eval(), (x,), dynamo=True).model_proto
        buf = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(Net().eval(), (x,), buf, opset_version=opset, dynamo=False)
        return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize(
    "opset", [13, 17, pytest.param(None, marks=pytest.mark.slow)], ids=["13", "17", "dynamo"]
)
def test_layernorm_with_its_own_variance_mean_prunes(opset):
    """A LayerNorm written out with ``x.var()`` (its variance squares ``x - mean`` of a
    second ReduceMean) is a written-out LayerNorm (``ir/patterns.py``): its channels prune
    with the masked form. Before, the ReduceMeans locked Restormer's width (0.57 of its
    parameters prunable, now 0.96); and at opset 17 every written-out LayerNorm came back
    from compaction as a LayerNormalization with the fold's unit scale and zero bias, 2C
    parameters more than the plan said. The dynamo exporter reduces the variance without
    kept dims and reshapes it back (Restormer through dynamo: 0.57 prunable, now 0.96)."""
    model = _VarLayerNorm.model(opset)
    assert sum(n.op_type == "ReduceMean" for n in model.graph.node) == 3
    a = analyze(model)
    (group,) = [g for g in a.groups if any(m.tensor == "weight" for m in g.members)]
    assert group.prunable, group.reason
    assert_groups_complete(a, model)
    _exact(model)


def _offset_attention() -> onnx.ModelProto:
    """RTMPose's GAU in small: ``base = x @ w`` offset and scaled per channel twice
    (``base * gamma + beta``), ``q @ k^T`` of the two, then a Linear of the attention."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((8, 16)),
        "gamma": rng.uniform(0.5, 1.5, (2, 1, 1, 16)),
        "beta": rng.uniform(0.5, 1.5, (2, 1, 1, 16)),
        "wo": rng.standard_normal((6, 3)),
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
    }
    inits = [
        numpy_helper.from_array(a if a.dtype == np.int64 else a.astype(np.float32), n)
        for n, a in arrays.items()
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["base"]),
        helper.make_node("Mul", ["base", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["qk"]),
        helper.make_node("Gather", ["qk", "zero"], ["q4"], axis=0),
        helper.make_node("Gather", ["qk", "one"], ["k4"], axis=0),
        helper.make_node("Squeeze", ["q4", "zero"], ["q"]),
        helper.make_node("Squeeze", ["k4", "zero"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["att"]),
        helper.make_node("MatMul", ["att", "wo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_per_channel_offset_before_an_inner_product_is_zeroed():
    """A constant added to a pruned channel (GAU's ``+ beta``) is zeroed with it in the
    sparse model: ``q @ k^T`` sums ``q_j * k_j`` over the channels, and no weight cuts
    channel j off there. Before, the sparse model kept ``beta_0j * beta_1j`` and differed
    from the compact one (RTMPose: 0.27 of the spread)."""
    model = _offset_attention()
    a = analyze(model)
    (group,) = [g for g in a.groups if any(m.tensor == "w" for m in g.members)]
    assert group.prunable and {m.tensor: m.role for m in group.members}["beta"] == "follower"
    _exact(model)


def _channel_pad(mode: str, value: float | None = None) -> onnx.ModelProto:
    """BlazeBlock: ``relu(conv(x) + F.pad(x, (0, 0, 0, 0, 0, 4)))`` after a conv."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {
        "w0": rng.standard_normal((8, 3, 3, 3)),
        "w1": rng.standard_normal((12, 8, 3, 3)),
        "w2": rng.standard_normal((5, 12, 1, 1)),
        "pads": np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64),
        "value": np.array(value or 0.0),
    }
    inits = [
        numpy_helper.from_array(a if a.dtype == np.int64 else a.astype(np.float32), n)
        for n, a in arrays.items()
    ]
    pad_inputs = ["r", "pads", "value"] if value is not None else ["r", "pads"]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Pad", pad_inputs, ["p"], mode=mode),
        helper.make_node("Add", ["c", "p"], ["s"]),
        helper.make_node("Relu", ["s"], ["t"]),
        helper.make_node("Conv", ["t", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _group_of(a: Analysis, tensor: str, start: int = 0):
    (group,) = [
        g
        for g in a.groups
        if any(m.tensor == tensor and m.axis == 0 and m.start == start for m in g.members)
    ]
    return group


def test_a_constant_pad_of_the_channels_maps_them():
    """BlazeFace's channel padding: the input's channels of a constant Pad on axis 1 map
    1:1 (pruned with the residual stream), and the zeros padded prune with the conv
    channels added to them (``compact`` shrinks the pads). Before, "pads this axis" locked
    every stage of BlazeFace (nothing prunable, now 0.998). Another value, or an edge Pad,
    still locks."""
    model = _channel_pad("constant")
    a = analyze(model)
    stream, padded = _group_of(a, "w0"), _group_of(a, "w1", 8)
    assert stream.prunable and stream.size == 8 and padded.prunable and padded.size == 4
    assert_groups_complete(a, model)
    _exact(model, "rate0.7")
    pruned = prune(model, CONFIGS["rate0.7"])
    (pad,) = [n for n in pruned.compact.graph.node if n.op_type == "Pad"]
    kept_pads = {t.name: t for t in pruned.compact.graph.initializer}[pad.input[1]]
    assert onnx.numpy_helper.to_array(kept_pads)[5] < 4
    ones = analyze(_channel_pad("constant", 1.0))
    assert _group_of(ones, "w0").prunable and not _group_of(ones, "w1", 8).prunable
    assert not _group_of(analyze(_channel_pad("edge")), "w0").prunable


def test_selective_kernel_fusion_prunes_the_channels_of_every_stream():
    """SKNet's / MIRNet's fusion views the stacked streams and the attention weights alike
    as ``(B, M, C, ...)``, softmax and sum over ``M``. In MIRNet's lower stream both
    reshapes lock one group only through each other: they now map the channels (level 2)
    together. Before, each waited for the other and the stream stayed whole (MIRNet kept
    0.452 of its parameters at rate 0.5, now 0.258)."""
    a = analysis("mirnet")
    (stream,) = [
        g
        for g in a.groups
        if any(m.tensor == "body.0.dau_mid.body.2.weight" and m.axis == 0 for m in g.members)
    ]
    assert stream.prunable and stream.size == 32, stream.reason
