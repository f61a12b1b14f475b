"""The unseen-architecture checks (``unseen_battery.py``) on round 5a's classifiers whose
channel operations are unusual (``tests/ir/round5a_torch.py``, ``round5a_more_torch.py``,
``round5a_attn_torch.py``), each exported at opset 17 by the TorchScript exporter;
``-m slow`` adds three models (``SLOW``) and dynamo exports.

Per model: the analysis names every lock (and only the expected reasons); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones (1e-4
of the spread) with the parameters and MACs the plan says; the dead-channel check holds on
every prunable group; and the coverage is what the architecture allows (what stays, and
why, beside each model).
"""

from __future__ import annotations

import importlib

import onnx
import pytest
from corpus_checks import CONFIGS
from deadchannels import random_feeds
from unseen_battery import OUTPUT, battery, check_another_export, check_exact

R, MORE, ATTN = "round5a_torch", "round5a_more_torch", "round5a_attn_torch"
# a conv over an axis that carries the channels (they mix with their neighbours)
OVER_CHANNELS = "its rule does not say how axis"
# name -> (module, builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # ECA: the pooled channels are the length of a Conv1d (each gate mixes k neighbours):
    # the residual streams the gates multiply lock, naming each eca conv; the convs inside
    # the blocks prune (0.52 kept at 0.5)
    "eca": (R, "eca", 0.95, 0.55, {"/eca/conv/Conv': " + OVER_CHANNELS, OUTPUT}),
    # partial conv by split / cat: its quarter and the untouched channels prune with the
    # stream (0.26 kept at 0.5)
    "fasternet": (R, "fasternet", 0.99, 0.3, {OUTPUT}),
    # the inference form: ``x.clone(); x[:, :k] = conv(x[:, :k])`` is a ScatterND whose
    # indices the exporter computes (Shape, Expand, Where, ...): no rule; the streams it
    # writes lock naming it, the MLP hidden widths prune (0.63 kept at 0.5)
    "fasternet_slicing": (
        R,
        ("fasternet", {"forward": "slicing"}),
        0.7,
        0.66,
        {"/spatial_mixing/ScatterND' has no coupling rule", OUTPUT},
    ),
    # uneven splits (14/13/13), a depthwise kernel per split, grouped 1x1s as split + convs
    # + concat: all prune (0.30 kept at 0.5)
    "mixnet": (R, "mixnet", 0.99, 0.32, {OUTPUT}),
    # split input, stack of the paths, select conv viewed (B, paths, C, 1, 1), softmax
    # over the paths: channel c of both paths and rows c and C + c of the select conv
    # are one group (0.26 kept at 0.5)
    "sknet": (R, "sknet", 0.99, 0.3, {OUTPUT}),
    # ScaledStdConv2d: every conv's weight is a training-mode BatchNormalization of its
    # rows over (in, kh, kw): the inputs of those convs lock naming it (they pruned, and
    # compact standardised over fewer columns than sparse); the SE hidden widths and the
    # final conv's outputs prune (0.81 kept at 0.5)
    "nf_resnet": (R, "nf_resnet", 0.35, 0.83, {"(training mode)", OUTPUT}),
    # ... exported at opset 13: no training_mode attribute, the BatchNormalization's five
    # outputs are the training mode (they pruned: outputs 0.43 of the spread apart)
    "nf_resnet_op13": (
        R,
        ("nf_resnet", {"opset": 13}),
        0.35,
        0.83,
        {"(training mode)", OUTPUT},
    ),
    # dual paths: slices at num_1x1_c, residual add on the first part, concat on the rest,
    # BN + ReLU over the concatenated paths: all prune (0.27 kept at 0.5)
    "dpn": (R, "dpn", 0.99, 0.3, {OUTPUT}),
    # one-shot aggregation and eSE: all prune (0.25 kept at 0.5)
    "vovnet": (MORE, "vovnet", 0.99, 0.3, {OUTPUT}),
    # gnConv's pieces of growing widths, each a group with its depthwise slice and the pws
    # conv that reads it; LayerNorm written out over the channels (0.27 kept at 0.5)
    "hornet": (MORE, "hornet", 0.99, 0.3, {OUTPUT}),
    # large kernel attention ``u * attn`` (0.29 kept at 0.5)
    "van": (MORE, "van", 0.99, 0.32, {OUTPUT}),
    # ``act(f1(x)) * f2(x)``: f1 and f2 rows pair (0.29 kept at 0.5)
    "starnet": (MORE, "starnet", 0.99, 0.32, {OUTPUT}),
    # space-to-depth stem (the input's 3 channels in 16 blocks), blur pool's constant
    # depthwise filter follows the channels (0.26 kept at 0.5)
    "tresnet": (MORE, "tresnet", 0.99, 0.3, {OUTPUT}),
    # the shuffle between two 3-group 1x1 convs: a channel of the first conv's group k
    # lands in every group of the second, so equal counts per group on both sides make
    # the whole width one unit, locked naming the first conv; the streams (grouped
    # inputs and outputs, pooled concats) prune (0.55 kept at 0.5)
    "shufflenetv1": (
        MORE,
        "shufflenetv1",
        0.9,
        0.56,
        {"branch_main_1.0/Conv': removing it would leave that layer none", OUTPUT},
    ),
    # the cheap depthwise op plus a BN of its input (0.29 kept at 0.5)
    "repghost": (MORE, "repghost", 0.99, 0.32, {OUTPUT}),
    # triplet attention: the cw and hc gates' 7x7 convs run over (C, W) and (H, C) of the
    # permuted maps: the gated streams lock naming them (0.52 kept at 0.5)
    "triplet": (ATTN, "triplet", 0.95, 0.55, {"/conv/conv.0/Conv': " + OVER_CHANNELS, OUTPUT}),
    # coordinate attention: pooled (H, 1) and (1, W) concatenated on the spatial axis, split
    # back: all prune (0.29 kept at 0.5)
    "coordatt": (ATTN, "coordatt", 0.99, 0.32, {OUTPUT}),
    # GCNet context block: attention pooling prunes with the stream; the transform's
    # LayerNorm([planes, 1, 1]) normalises over (planes, 1, 1): its planes lock naming it
    # (0.26 kept at 0.5)
    "gcnet": (ATTN, "gcnet", 0.99, 0.3, {"LayerNormalization", OUTPUT}),
    # CondConv: a 1x1's weight is ``routing @ experts`` viewed as (out, in, 1, 1): out and
    # in merged in the experts' columns, the Reshape locks naming itself; the depthwise
    # CondConv (out and 3 x 3 contiguous) and SE widths prune (0.45 kept at 0.5)
    "condconv": (
        ATTN,
        "condconv",
        0.95,
        0.47,
        {"/Reshape' splits axis 1 of", OUTPUT},
    ),
    # involution: kernels per group of 8 channels from a 1x1 conv, nn.Unfold exported as
    # pads, gathers and reshapes: groups and the channels within them prune (0.28 at 0.5)
    "rednet": (ATTN, "rednet", 0.99, 0.3, {OUTPUT}),
    # Sequencer2D: bidirectional LSTMs over the columns (batch B * W) and the rows (B * H)
    # of an NHWC map, concatenated, a Linear: C and the LSTMs' hidden units prune (0.27
    # kept at 0.5); the direction axis, merged with the hidden one by the Reshape after
    # each LSTM, locks naming both
    "sequencer": (
        ATTN,
        "sequencer",
        0.99,
        0.3,
        {"does not prune its directions", "/Reshape' merges axis 2 of", OUTPUT},
    ),
    # ReXNet's partial residual ``x[:, 0:in_chs] += shortcut``: ScatterNDs with computed
    # indices, no rule; the streams they write lock naming them, the expansions, depthwise
    # and SE widths prune (0.45 kept at 0.5)
    "rexnet": (ATTN, "rexnet", 0.95, 0.47, {"ScatterND '/features/", OUTPUT}),
}
SLOW = {"nf_resnet_op13", "sequencer", "coordatt"}  # -m slow adds them
DYNAMO = ["fasternet", "sknet", "condconv", "rednet"]


def _build(name: str, dynamo: bool = False) -> onnx.ModelProto:
    module, builder = MODELS[name][:2]
    builder, kw = builder if isinstance(builder, tuple) else (builder, {})
    return getattr(importlib.import_module(module), builder)(dynamo=dynamo, **kw)


corpus = pytest.mark.corpus
pytestmark = corpus
BATTERY = battery(MODELS, _build, slow=SLOW, marks=[corpus])
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests


def _groups_of(name: str, tensor_part: str) -> list:
    a = analysis(name)
    return [g for g in a.groups if any(tensor_part in (m.tensor or "") for m in g.members)]


def test_selective_kernel_select_rows_pair_with_both_paths():
    """SKNet's ``fc_select`` rows c and C + c weigh channel c of path 0 and path 1: one
    prunable group holds both halves' rows and both paths' convs."""
    a = analysis("sknet")
    (weight,) = [
        n.input(1).name
        for n in a.graph.nodes
        if n.name.endswith("layers.0/conv1/attn/fc_select/Conv")
    ]
    groups = [g for g in a.groups if any(m.tensor == weight and m.axis == 0 for m in g.members)]
    assert len(groups) == 1 and groups[0].prunable, groups
    rows = [m for m in groups[0].members if m.tensor == weight and m.axis == 0]
    assert sorted(m.start for m in rows) == [0, 16], rows


def test_partial_conv_prunes_its_quarter_and_the_untouched_channels():
    """FasterNet's split / cat: the partial conv's outputs prune (a group of their own) and
    so do the stream channels it leaves untouched; the slicing form locks its streams
    naming the ScatterND and still prunes the MLP's hidden widths."""
    a = analysis("fasternet")
    pconv = [
        n for n in a.graph.nodes if n.name.endswith("stages.0/spatial_mixing/partial_conv3/Conv")
    ]
    rows = {g.id for g in a.groups for m in g.members if m.tensor == pconv[0].input(1).name}
    assert rows and all(g.prunable for g in a.groups if g.id in rows)
    assert not a.locked_groups[1:], a.locked_groups  # only the classes
    sliced = analysis("fasternet_slicing")
    assert any("ScatterND" in g.reason for g in sliced.locked_groups)
    assert sum(g.size for g in sliced.prunable_groups) >= 3 * 16  # the MLP hidden widths


@pytest.mark.slow
@pytest.mark.parametrize("name", DYNAMO)
def test_dynamo_exports_prune_like_torchscript_ones(name):
    """torch's default (dynamo) exporter on the same models: the coverage of the TorchScript
    export, exact compaction at every config, no incomplete group."""
    # the same prunable share: the exporters fold different BatchNorms into their convs
    check_another_export(_build(name, dynamo=True), analysis(name), max_ratio=MODELS[name][3])


@pytest.mark.slow
def test_dynamo_nf_resnet_standardises_over_the_kept_columns():
    """The dynamo export folds most weights; three stay computed, as ReduceMean / Sub /
    inference BatchNormalization over the weight's rows: the masked reductions give the
    sparse model the statistics of the kept columns, so every config is exact. (The
    dead-channel check does not apply: a zeroed column is standardised to a non-zero one.)"""
    model = _build("nf_resnet", dynamo=True)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 3
    feeds = random_feeds(model)
    for config in CONFIGS:
        check_exact(model, config, feeds)
