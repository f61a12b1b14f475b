"""Models saved by onnxruntime's own graph optimizer (``SessionOptions.optimized_model_filepath``
at ``ORT_ENABLE_BASIC``, ``ORT_ENABLE_EXTENDED`` and ``ORT_ENABLE_ALL``): a ResNet with
BatchNormalization, a MobileNetV2 with ReLU6, YOLOv8 with SiLU, a timm ViT, a ConvNeXt and a
CNN with a ReLU MLP head (``tests/ir/ort_optimized_torch.py``).

Per model and level, the unseen-architecture battery: the analysis names every lock (and only
the expected reasons), rate 0 is bit-identical, sparse equals compact with the plan's counts
(every plan of ``CONFIGS`` at the extended level, where the com.microsoft fusions are; rate 0.5
at the others), and the dead-channel check holds on every prunable group.

What the levels write (onnxruntime 1.2x, x86): basic, standard ops (BatchNormalization folded);
extended, com.microsoft ``FusedConv`` (activation attribute), ``FusedGemm``, ``FusedMatMul``
(attention's scaled ``q @ k``), ``QuickGelu`` (SiLU), ``Gelu``, ``SkipLayerNormalization``;
all, onnxruntime's NCHWc blocked layout besides (``com.microsoft.nchwc`` convs, pools and
reorders), which locks naming the layout (``ir/rules_ort.py``).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, prune
from deadchannels import assert_groups_complete, random_feeds, run_model
from unseen_battery import (
    OUTPUT,
    Case,
    check_exact,
    check_locks_and_coverage,
    check_rate_zero,
    check_sparse_equals_compact,
)

from drpopt import analyze
from drpopt.ir.analysis import Analysis
from drpopt.ir.rules_ort import NCHWC_REASON

pytestmark = pytest.mark.corpus

NCHWC = "NCHWc blocked layout"
SKIP_LN = "SkipLayerNormalization"
DFL = "/dfl/"  # YOLOv8's DFL softmax over the 16 bins (the same in the exported model)
# name -> {level: (min prunable share, max params ratio at 0.5, allowed lock reasons)}
# basic and extended prune as the exported model does (FusedConv and FusedGemm were in no
# group: share 0.0; the ViT's FusedMatMul had no shape, locking every Add after it: 0.35);
# the ViT's SkipLayerNormalization has a masked form (was locked, naming it: 0.70, 0.65
# kept at 0.5);
# at all, the NCHWc nodes lock naming the layout; given their logical shapes, the graph
# between them prunes (the ViT's MLPs and heads 0.70, ConvNeXt's MLPs 0.61; was 0.0, every
# shape after a ReorderOutput unknown)
MODELS = {
    "resnet": {"basic": (0.99, 0.3, {OUTPUT}), "extended": (0.99, 0.3, {OUTPUT})},
    "mobilenetv2": {"basic": (0.99, 0.4, {OUTPUT}), "extended": (0.99, 0.4, {OUTPUT})},
    "yolov8": {"basic": (0.99, 0.3, {OUTPUT, DFL}), "extended": (0.99, 0.3, {OUTPUT, DFL})},
    "vit": {"basic": (0.99, 0.35, {OUTPUT}), "extended": (0.99, 0.35, {OUTPUT})},
    "convnext": {"basic": (0.99, 0.37, {OUTPUT}), "extended": (0.99, 0.37, {OUTPUT})},
    "mlp_head": {"basic": (0.99, 0.35, {OUTPUT}), "extended": (0.99, 0.35, {OUTPUT})},
}
ALL_LEVEL = {  # (min share, allowed lock reasons)
    "resnet": (0.0, {NCHWC, OUTPUT}),
    "mobilenetv2": (0.0, {NCHWC, OUTPUT}),
    "yolov8": (0.0, {NCHWC, OUTPUT, DFL}),
    "vit": (0.69, {NCHWC, OUTPUT}),
    "convnext": (0.6, {NCHWC, OUTPUT}),  # the MLPs between ReorderOutput and ReorderInput
    "mlp_head": (0.0, {NCHWC, OUTPUT}),
}
CASES = [(n, lv) for n in MODELS for lv in ("basic", "extended", "all")]


@functools.cache
def case(name: str, level: str) -> Case:
    import ort_optimized_torch

    model = ort_optimized_torch.optimized(name, level)
    if level == "all":
        share, locked = ALL_LEVEL[name]
        return Case(model, random_feeds(model), share, 1.0, locked)
    share, ratio, locked = MODELS[name][level]
    return Case(model, random_feeds(model), share, ratio, locked)


@functools.cache
def analysis(name: str, level: str) -> Analysis:
    return analyze(case(name, level).model)


def _nchwc(model: onnx.ModelProto) -> bool:
    return any(n.domain == "com.microsoft.nchwc" for n in model.graph.node)


@pytest.mark.parametrize(("name", "level"), CASES)
def test_analysis_names_every_lock_and_covers_the_model(name, level):
    c = case(name, level)
    check_locks_and_coverage(f"{name} {level}", analysis(name, level), c.locked, c.min_prunable)


@pytest.mark.parametrize(("name", "level"), CASES)
def test_rate_zero_is_bit_identical(name, level):
    c = case(name, level)
    check_rate_zero(f"{name} {level}", c.model, c.feeds)


@pytest.mark.parametrize(("name", "level"), CASES)
def test_sparse_equals_compact(name, level):
    c = case(name, level)
    configs = CONFIGS.values() if level == "extended" else [CONFIGS["rate0.5"]]
    for config in configs:
        check_sparse_equals_compact(f"{name} {level}", c.model, c.feeds, config, c.max_ratio)


@pytest.mark.parametrize(("name", "level"), CASES)
def test_dead_channels_hold_on_every_prunable_group(name, level):
    assert_groups_complete(analysis(name, level), case(name, level).model)


def test_extended_level_writes_the_fused_layers_and_they_compact_in_place():
    """The extended models hold FusedConv, FusedGemm and FusedMatMul, none of them without a
    rule; the compact models keep them (same op types and attributes, narrower weights), and
    a depthwise FusedConv's ``group`` is its weight's row count after compaction."""
    fused = {}
    for name in MODELS:
        a = analysis(name, "extended")
        assert not a.unsupported, (name, a.unsupported)
        for n in case(name, "extended").model.graph.node:
            fused.setdefault(n.op_type, set()).add(name)
    assert {"resnet", "mobilenetv2", "mlp_head"} <= fused["FusedConv"]
    assert fused["FusedGemm"] == {"mlp_head"} and fused["FusedMatMul"] == {"vit"}
    for name in ("mobilenetv2", "mlp_head"):
        model = case(name, "extended").model
        compact = prune(model, CONFIGS["rate0.5"]).compact
        before = {t.name: list(t.dims) for t in model.graph.initializer}
        after = {t.name: list(t.dims) for t in compact.graph.initializer}
        ops = [(n.domain, n.op_type) for n in model.graph.node]
        assert ops == [(n.domain, n.op_type) for n in compact.graph.node]
        narrower = 0
        for n in compact.graph.node:
            if n.op_type not in ("FusedConv", "FusedGemm"):
                continue
            w = after[n.input[1]]
            narrower += w != before[n.input[1]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if group > 1:
                assert group == w[0] and w[1] == 1, (n.name, group, w)
        assert narrower >= 2, name


def test_fused_matmul_reads_its_weights_transposed():
    """FusedMatMul's ``transB`` makes W1's rows the hidden channels and ``transA`` reads the
    activation transposed: the 24 hidden channels prune as W1's rows and W2's rows, sparse
    equals compact; a ``transBatchB`` locks naming the node."""
    import ort_optimized_torch

    model = ort_optimized_torch.fused_matmul()
    a = analyze(model)
    assert [g.size for g in a.prunable_groups] == [24]
    pruned = check_exact(model)
    dims = {t.name: list(t.dims) for t in pruned.compact.graph.initializer}
    kept = dims["w1"][0]
    assert 0 < kept < 24 and dims["w1"] == [kept, 12] and dims["w2"] == [kept, 5]
    locked = analyze(ort_optimized_torch.fused_matmul(trans_batch=True))
    assert not locked.prunable_groups
    assert any("FusedMatMul 'fm1'" in g.reason for g in locked.locked_groups), [
        g.reason for g in locked.locked_groups
    ]


@pytest.mark.parametrize("name", ["resnet", "yolov8"])
def test_nchwc_layout_locks_naming_the_layout(name):
    """At ORT_ENABLE_ALL on x86 the convs are NCHWc (weights already in the CPU's blocked
    layout): every conv's group is locked with the reason naming the layout and the remedy,
    and every plan leaves the model as it was (onnxruntime runs it, bit for bit)."""
    c = case(name, "all")
    if not _nchwc(c.model):
        pytest.skip("onnxruntime wrote no NCHWc layout on this CPU")
    a = analysis(name, "all")
    assert not a.prunable_groups and a.locked_groups
    assert all(NCHWC_REASON in g.reason for g in a.locked_groups if OUTPUT not in g.reason)
    reference = run_model(c.model, c.feeds)
    for written in (prune(c.model, CONFIGS["rate0.5"]).compact,):
        out = run_model(written, c.feeds)
        assert all(np.array_equal(x, y) for x, y in zip(reference, out, strict=True))


def test_cli_warns_about_the_nchwc_layout(tmp_path):
    """``drpopt analyze`` and ``drpopt prune`` on an NCHWc model say why nothing prunes."""
    from typer.testing import CliRunner

    from drpopt.cli.main import app

    c = case("resnet", "all")
    if not _nchwc(c.model):
        pytest.skip("onnxruntime wrote no NCHWc layout on this CPU")
    path = tmp_path / "resnet_all.onnx"
    onnx.save(c.model, path)
    runner = CliRunner()
    for args in (["analyze", str(path)], ["prune", str(path), "-o", str(tmp_path / "o.onnx")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "NCHWc blocked layout" in result.output and "ORT_ENABLE_EXTENDED" in result.output


def test_skip_layer_norm_masked_form_counts_the_kept_channels_only():
    """SkipLayerNormalization over pruned channels: the sparse model adds input, skip and
    bias and normalises with the masked LayerNormalization (statistics over the kept
    channels), the compact one has a plain LayerNormalization of the kept ones: outputs equal
    at every plan, the sum output (3) read too. A broadcast skip locks naming the node."""
    import ort_optimized_torch

    model = ort_optimized_torch.skip_layer_norm()
    a = analyze(model)
    assert 16 in [g.size for g in a.prunable_groups]
    for config in CONFIGS:
        check_exact(model, config)
    pruned = prune(model, CONFIGS["rate0.5"])
    ops = {n.op_type for n in pruned.masked.graph.node}
    assert "MaskedLayerNormalization" in ops and SKIP_LN not in ops
    compact = {n.op_type for n in pruned.compact.graph.node}
    assert "LayerNormalization" in compact and "MaskedLayerNormalization" not in compact
    locked = analyze(ort_optimized_torch.skip_layer_norm(broadcast_skip=True))
    assert 16 not in [g.size for g in locked.prunable_groups]
    assert any(f"{SKIP_LN} 'skip_ln'" in g.reason for g in locked.locked_groups)


def test_fused_conv_sum_input_couples_with_the_output():
    """FusedConv's summed input ``Z`` passes every axis to the output: the conv writing it
    prunes with the FusedConv (one group of 8), and sparse equals compact."""
    import ort_optimized_torch

    model = ort_optimized_torch.fused_conv_sum()
    a = analyze(model)
    assert [g.size for g in a.prunable_groups] == [8] and not a.unsupported
    dims = {t.name: list(t.dims) for t in check_exact(model).compact.graph.initializer}
    kept = dims["w1"][0]
    assert 0 < kept < 8 and dims["w0"][0] == kept and dims["w2"][1] == kept


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_drpai_target_sparsifies_and_checks_fused_layers_like_the_plain_ones(name):
    """The ``drpai`` target's pattern inside kept channels and its per-layer check see a
    FusedConv as the Conv it is (they skipped it: a model saved at ORT_ENABLE_EXTENDED kept
    its fused layers' weights without the pattern, and ``check`` measured only the plain
    ones): the same layers and the same zeros as the model saved at ORT_ENABLE_BASIC."""
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.passes.common import layer_sparsity

    def sparsity(level):
        masked = prune(case(name, level).model, CONFIGS["drpai"]).masked
        return sorted((s.shape, s.zeros) for s in layer_sparsity(from_onnx(masked)))

    basic, extended = sparsity("basic"), sparsity("extended")
    assert extended == basic and sum(z for _, z in basic) > 0
