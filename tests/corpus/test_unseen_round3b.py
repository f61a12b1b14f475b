"""The unseen-architecture checks (``test_unseen_architectures.py``) on round 3b's modern
backbones, hybrids and detectors (``tests/ir/backbones3_torch.py``, ``detect3_torch.py``).

Per model: the analysis names every lock (and only the expected reasons); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones (1e-4
of the spread) with the parameters and MACs the plan says; the dead-channel check holds on
every prunable group; and the coverage is what the architecture allows.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, TOLERANCE, PruneConfig, compact_counts, compare_outputs, prune
from deadchannels import assert_groups_complete, random_feeds, run_model
from test_unseen_architectures import DFL, OUTPUT, Case

from drpopt import analyze
from drpopt.ir.analysis import Analysis


def _build(module: str, name: str) -> onnx.ModelProto:
    return getattr(importlib.import_module(module), name)()


B3, D3 = "backbones3_torch", "detect3_torch"
# name -> (module, builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # MobileNetV4 hybrid (timm): UIB blocks (extra depthwise before / between / after, layer
    # scale), Mobile MQA (one key and value head from a strided depthwise conv); timm's
    # output reshape (B, heads, HW, dv) -> (B, H, W, heads * dv) merges the heads with the
    # pixels, so the value width stays (a locked group of no parameters)
    "mobilenetv4": (B3, "mobilenetv4", 0.99, 0.32, {"merges the rest with other axes", OUTPUT}),
    # PVTv2-b0-li: overlapping patch embeds, linear SRA (pool, 1x1, LayerNorm, GELU), Mix-FFN
    "pvtv2": (B3, "pvtv2", 0.99, 0.3, {OUTPUT}),
    # EdgeNeXt: SDTA's split + cascaded depthwise convs, Fourier positions, XCA (softmax over
    # the channels of a head: whole heads prune, with the per-head temperature)
    "edgenext": (B3, "edgenext", 0.99, 0.3, {OUTPUT}),
    # GhostNetV2: DFC attention ((1, 5) and (5, 1) depthwise convs, interpolated sigmoid gate),
    # ghost modules sliced back to odd widths, hard-sigmoid SE
    "ghostnetv2": (B3, "ghostnetv2", 0.99, 0.3, {"a single channel", OUTPUT}),
    # YOLOv10: SCDown, C2fCIB with RepVGGDW, PSA; v10Detect's one-to-one export with topk
    # and gather post-processing in the graph (the class axis it reduces stays)
    "yolov10": (D3, "yolov10", 0.99, 0.3, {DFL, "ReduceMax", OUTPUT}),
    # NanoDet-Plus: ShuffleNetV2 (chunk, channel shuffle), GhostPAN, depthwise GFL head
    "nanodet_plus": (D3, "nanodet_plus", 0.99, 0.35, {OUTPUT}),
    # ... with the Integral decoding in the graph (F.linear over the distribution's bins)
    "nanodet_plus_integral": (D3, "nanodet_plus_integral", 0.99, 0.35, {"1-D operand", OUTPUT}),
}
SLOW: set[str] = set()


@functools.cache
def case(name: str) -> Case:
    module, builder, share, ratio, locked = MODELS[name]
    model = _build(module, builder)
    return Case(model, random_feeds(model), share, ratio, locked)


@functools.cache
def analysis(name: str) -> Analysis:
    return analyze(case(name).model)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(MODELS))
def test_analysis_names_every_lock_and_covers_the_model(name):
    a, c = analysis(name), case(name)
    unnamed = [g.id for g in a.locked_groups if not g.reason or not all(x.message for x in g.locks)]
    assert not unnamed, f"{name}: locked groups without a reason: {unnamed}"
    unexpected = [g.reason for g in a.locked_groups if not any(k in g.reason for k in c.locked)]
    assert not unexpected, f"{name}: locked for an unexpected reason: {unexpected[:3]}"
    assert a.prunable_params / a.params >= c.min_prunable, (name, a.prunable_params, a.params)


@pytest.mark.parametrize("name", _params(MODELS))
def test_rate_zero_is_bit_identical(name):
    c = case(name)
    pruned = prune(c.model, PruneConfig("rate0", 0.0))
    reference = run_model(c.model, c.feeds)
    compare_outputs(reference, reference, f"{name} reference")  # refuses degenerate outputs
    for form, model in (("sparse", pruned.masked), ("compact", pruned.compact)):
        out = run_model(model, c.feeds)
        assert all(np.array_equal(a, b) for a, b in zip(reference, out, strict=True)), form


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("name", _params(MODELS))
def test_sparse_equals_compact(name, config):
    c = case(name)
    pruned = prune(c.model, config)
    sparse = run_model(pruned.masked, c.feeds)
    compact = run_model(pruned.compact, c.feeds)
    err = compare_outputs(sparse, compact, f"{name} {config.name}: compact vs sparse")
    assert err < TOLERANCE, f"{name} {config.name}: compact differs from sparse by {err:.3g}"
    params, macs = compact_counts(pruned.compact)
    assert params == pruned.expected_params, (params, pruned.expected_params)
    assert macs == pruned.expected_macs or (not pruned.macs_exact and macs < pruned.expected_macs)
    if pruned.plan.pruned_channels:
        assert params < pruned.before.params and macs < pruned.before.macs
    if config.name == "rate0.5":
        ratio = params / pruned.before.params
        assert ratio <= c.max_ratio, f"{name}: compact keeps {ratio:.3f} of the parameters"


@pytest.mark.parametrize("name", _params(MODELS))
def test_dead_channels_hold_on_every_prunable_group(name):
    assert_groups_complete(analysis(name), case(name).model)
