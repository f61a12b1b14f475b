"""The unseen-architecture checks (``unseen_battery.py``) on round 3b's modern
backbones, hybrids and detectors (``tests/ir/backbones3_torch.py``, ``detect3_torch.py``).

Per model: the analysis names every lock (and only the expected reasons); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones (1e-4
of the spread) with the parameters and MACs the plan says; the dead-channel check holds on
every prunable group; and the coverage is what the architecture allows.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, TOLERANCE, compact_counts, compare_outputs, prune
from deadchannels import assert_groups_complete, random_feeds, run_model
from test_unseen_architectures import DFL
from unseen_battery import OUTPUT, battery, check_exact, check_like_torchscript

from drpopt import analyze


def _build(module: str, name: str) -> onnx.ModelProto:
    return getattr(importlib.import_module(module), name)()


B3, D3, H3, C3 = "backbones3_torch", "detect3_torch", "hybrids3_torch", "convnets3_torch"
# name -> (module, builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # MobileNetV4 hybrid (timm): UIB blocks (extra depthwise before / between / after, layer
    # scale), Mobile MQA (one key and value head from a strided depthwise conv); timm's
    # output reshape (B, heads, HW, dv) -> (B, H, W, heads * dv) merges the heads with the
    # pixels, so the value width stays (a locked group of no parameters); with the queries
    # pooled 2x2 (a 2x2 output of 4 heads) it maps as blocks of the projection's input
    "mobilenetv4": (B3, "mobilenetv4", 0.99, 0.32, {"merges the rest with other axes", OUTPUT}),
    # PVTv2-b0-li: overlapping patch embeds, linear SRA (pool, 1x1, LayerNorm, GELU), Mix-FFN
    "pvtv2": (B3, "pvtv2", 0.99, 0.3, {OUTPUT}),
    # EdgeNeXt: SDTA's split + cascaded depthwise convs, Fourier positions, XCA (softmax over
    # the channels of a head: whole heads prune, with the per-head temperature)
    "edgenext": (B3, "edgenext", 0.99, 0.3, {OUTPUT}),
    # GhostNetV2: DFC attention ((1, 5) and (5, 1) depthwise convs, interpolated sigmoid gate),
    # ghost modules sliced back to odd widths, hard-sigmoid SE
    "ghostnetv2": (C3, "ghostnetv2", 0.99, 0.3, {"a single channel", OUTPUT}),
    # YOLOv10: SCDown, C2fCIB with RepVGGDW, PSA; v10Detect's one-to-one export with topk
    # and gather post-processing in the graph (the class axis its ReduceMax reads stays,
    # tiled and flattened by the post-processing)
    "yolov10": (D3, "yolov10", 0.99, 0.3, {DFL, "Tile", "Flatten", OUTPUT}),
    # NanoDet-Plus: ShuffleNetV2 (chunk, channel shuffle), GhostPAN, depthwise GFL head
    "nanodet_plus": (D3, "nanodet_plus", 0.99, 0.35, {OUTPUT}),
    # ... with the Integral decoding in the graph (F.linear over the distribution's bins)
    "nanodet_plus_integral": (D3, "nanodet_plus_integral", 0.99, 0.35, {"1-D operand", OUTPUT}),
    # FastViT (training form): MobileOne branches, RepMixer, RepCPE, grouped convs doubling
    # the channels (groups=in_channels), SE with view(-1, c, 1, 1), an attention stage
    "fastvit": (H3, "fastvit", 0.99, 0.33, {OUTPUT}),
    # EfficientFormerV2: Attention4D's talking-head convs over the heads axis of the
    # attention map (heads prune through them), gathered attention biases, v_local
    "efficientformerv2": (H3, "efficientformerv2", 0.99, 0.3, {OUTPUT}),
    # TinyViT: MBConv stage, window attention on (B, L, C) tokens padded by F.pad to whole
    # windows and sliced back, per-head split q/k/v, attention biases, a depthwise local conv
    "tinyvit": (H3, "tinyvit", 0.99, 0.3, {OUTPUT}),
    # YOLOv6 3.0 (deploy form, opset 13): fused RepVGG convs, BiFusion's ConvTranspose up and
    # strided conv down, proj_conv over the box distribution (its 4 sides stay), anchors from
    # the feature maps' shapes
    "yolov6": ("yolov6_torch", "yolov6", 0.99, 0.3, {"proj_conv", OUTPUT}),
    # InceptionNeXt: split into (C - 3 gc, gc, gc, gc) for identity / square / band
    # depthwise convs, concatenated back; the MLP classifier head with its LayerNorm
    "inceptionnext": (C3, "inceptionnext", 0.99, 0.3, {OUTPUT}),
    # RepViT (training form): RepVggDw's identity + two depthwise branches then BN, SE, and
    # the distilled NormLinear heads (BatchNorm1d over the pooled channels) averaged
    "repvit": (C3, "repvit", 0.99, 0.3, {OUTPUT}),
}
# the default run keeps six (about 30 s on a quiet machine); -m slow adds the others
SLOW: set[str] = {"ghostnetv2", "nanodet_plus", "nanodet_plus_integral", "tinyvit", "pvtv2"}
SLOW |= {"fastvit", "inceptionnext"}


BATTERY = battery(MODELS, lambda name: _build(*MODELS[name][:2]), slow=SLOW)
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv4", "edgenext", "yolov10", "efficientformerv2"])
def test_dynamo_exports_prune_like_torchscript_ones(name):
    """torch's default (dynamo) exporter (opset 18+, its own decompositions) on the same
    calibrated models: the coverage of the TorchScript export, exact compaction at every
    config, no incomplete group (30-50 s each: the export)."""
    module, builder = MODELS[name][:2]
    model = getattr(importlib.import_module(module), builder)(dynamo=True)
    check_like_torchscript(model, analysis(name), MODELS[name][3])


def _simplified(model: onnx.ModelProto, tool: str) -> onnx.ModelProto:
    """The model after the simplifier the project's export runs (ultralytics: onnxslim;
    YOLOv6, NanoDet and most deployment scripts: onnxsim)."""
    if tool == "onnxslim":
        onnxslim = pytest.importorskip("onnxslim")
        return onnxslim.slim(model)
    onnxsim = pytest.importorskip("onnxsim")
    simplified, ok = onnxsim.simplify(model)
    assert ok
    return simplified


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["onnxsim", "onnxslim"])
@pytest.mark.parametrize("name", ["yolov10", "yolov6", "nanodet_plus", "repvit", "fastvit"])
def test_simplified_exports_prune_exactly(name, tool):
    """Equal constants merged, weights as Constant nodes, anchors folded: the coverage of
    the plain export, exact compaction with the counts the plan says, complete groups."""
    model = _simplified(case(name).model, tool)
    a, plain = analyze(model), analysis(name)
    assert a.prunable_params / a.params >= plain.prunable_params / plain.params - 0.01
    assert_groups_complete(a, model)
    feeds = random_feeds(model)
    for config in CONFIGS:
        check_exact(model, config, feeds)


def _strided_pool_model() -> onnx.ModelProto:
    """Conv -> global mean -> what the dynamo exporter writes for ``as_strided`` of the
    ``(1, C, 1, 1)`` result: ``Reshape(-1)`` and a ``Gather`` of ``arange(C)`` shaped
    ``(1, C, 1, 1)`` -> 1x1 Conv (``adaptive_avg_pool2d(x, 1)`` before a conv head)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 8
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((5, c, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.arange(c, dtype=np.int64).reshape(1, c, 1, 1), "strided"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "flat"], ["f"]),
        helper.make_node("Gather", ["f", "strided"], ["g"], axis=0),
        helper.make_node("Conv", ["g", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "strided_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 1, 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_gather_of_a_range_shaped_like_the_channels_maps_them():
    """The dynamo export of MobileNetV4's pooled head locked its 96 channels ("gathers along
    this axis"): a constant range laid along one axis of multi-dimensional indices now maps
    the channels like a Slice, and compaction renumbers the indices in their shape."""
    model = onnx.shape_inference.infer_shapes(_strided_pool_model())
    a = analyze(model)
    assert not [g for g in a.locked_groups if "Gather" in g.reason], a.locked_groups
    assert a.prunable_params == a.params  # the conv's 8 channels, through the Gather
    pruned = check_exact(model)
    assert pruned.expected_params < pruned.before.params


def _constant_node_model() -> onnx.ModelProto:
    """As onnxsim writes a model: a conv weight and a tensor two nodes read (YOLOv6's and
    YOLOv10's anchors, folded) are ``Constant`` nodes, not initializers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name: str, shape: tuple[int, ...]) -> onnx.NodeProto:
        arr = rng.standard_normal(shape).astype(np.float32)
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr))

    nodes = [
        const("w2", (4, 8, 1, 1)),
        const("anchors", (1, 1, 8, 8)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
        helper.make_node("Sub", ["y", "anchors"], ["lo"]),
        helper.make_node("Add", ["y", "anchors"], ["hi"]),
        helper.make_node("Concat", ["lo", "hi"], ["out"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_nodes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_constant_node_read_twice_stays_one_tensor_in_the_compact_model():
    """The analysis gives the Add its own copy of the anchors; writing the model back, that
    copy reads the Constant node's output again (before, it became an initializer of its
    own: onnxsim's YOLOv6 and YOLOv10 kept 168 parameters more than the plan said)."""
    model = _constant_node_model()
    pruned = prune(model, CONFIGS["rate0.5"])
    assert compact_counts(pruned.compact)[0] == pruned.expected_params < pruned.before.params
    for written in (pruned.masked, pruned.compact):
        assert len(written.graph.initializer) == 2, [t.name for t in written.graph.initializer]
    feeds = random_feeds(model)
    sparse, compact = run_model(pruned.masked, feeds), run_model(pruned.compact, feeds)
    assert compare_outputs(sparse, compact) < TOLERANCE


def test_dead_channel_check_scrambles_weights_written_as_constant_nodes():
    """``deadchannels`` zeroes and scrambles a consumer weight that is a Constant node's
    tensor too: before, it skipped it and reported complete groups (onnxsim's RepViT and
    FastViT, every MLP) as missing a member; a group without that consumer still fails."""
    model = _constant_node_model()
    a = analyze(model)
    assert_groups_complete(a, model)
    (group,) = [g for g in a.prunable_groups if g.size == 8]
    group.members[:] = [m for m in group.members if m.role != "consumer"]
    with pytest.raises(AssertionError):
        assert_groups_complete(a, model)
