"""Central default locking, exact Gather mapping, shared constants and linear shape code:
rules found wrong on other projects' exports (issue 8), each checked by running the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import assert_groups_complete, random_feeds, run_model
from onnx import helper, numpy_helper

from drpopt import analyze
from drpopt.ir.channels import ChannelGraph
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.rules import RULES, apply_rules, register_rule
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import ApplyMasksPass, CompactPass, MaskPass, PassManager, ScorePass
from drpopt.zoo.builder import OnnxBuilder

FREE = {"keep_first": False, "keep_last": False}


def prune(model: onnx.ModelProto, rate: float = 0.5):
    """(sparse model, compact model) at ``rate``; the compact one is shape-checked."""
    masked = PassManager([ScorePass(), MaskPass(rate=rate, **FREE), ApplyMasksPass()])(model)
    sparse = to_onnx(masked.model)
    compact = to_onnx(PassManager([CompactPass()])(masked.model).model)
    compact = onnx.shape_inference.infer_shapes(compact, strict_mode=True)
    onnx.checker.check_model(compact, full_check=True)
    return sparse, compact


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds) -> None:
    for x, y in zip(run_model(a, feeds), run_model(b, feeds), strict=True):
        spread = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        assert spread > 1e-6, "degenerate reference output"
        assert float(np.abs(x - y).max()) / spread < 1e-4


def gather_model(indices: np.ndarray) -> onnx.ModelProto:
    """Conv -> Relu -> Gather(axis=1, constant indices) -> Add with another Conv."""
    b = OnnxBuilder(seed=3)
    x = b.input("input", (1, 3, 8, 8))
    y = b.relu(b.conv(x, 8, name="conv_a"))
    idx = b.const("idx", indices.astype(np.int64))
    n = 1 if indices.ndim == 0 else len(indices)
    g = b.op("Gather", [y, idx], (1, n, 8, 8), name="gather", axis=1)
    if indices.ndim == 0:
        g = b.op("Unsqueeze", [g, b.const("ax", np.array([1]))], (1, 1, 8, 8), name="unsq")
    z = b.conv(x, n, name="conv_b")
    b.output(b.conv(b.add(g, z, name="add"), 4, name="head"))
    return b.build()


@pytest.mark.parametrize(
    ("indices", "sizes"),
    [
        (np.array([4, 5, 6, 7, 0, 1, 2, 3]), [4, 4]),  # a rotation: two runs of 4
        (np.array([6, 7, 2, 3]), [2, 2]),  # a selection out of order
        (np.array([3, 1, 2, 0, 7, 6, 5, 4]), [2]),  # issue 8's repro: one run of 2 (1, 2)
    ],
)
def test_gather_with_a_permutation_or_selection_maps_channels_exactly(indices, sizes):
    """Issue 8's repro: before the central default lock, the gathered side stayed free and
    compact broke the Add; then the axis was locked. Now each run of consecutive indices
    is one part of conv_a's and of the Add's channels, so conv_b prunes with conv_a's
    gathered runs (a run of one channel is a group of one: kept); compact renumbers the
    indices and equals the sparse model."""
    model = gather_model(indices)
    a = analyze(model)
    assert_groups_complete(a, model)
    runs = [g for g in a.groups if g.prunable and any(m.node == "conv_b" for m in g.members)]
    assert sorted(g.size for g in runs) == sorted(sizes)
    assert all(any(m.node == "conv_a" for m in g.members) for g in runs)
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))
    assert analyze(compact).params < a.params


def test_gather_with_repeated_indices_is_locked_not_wrong():
    model = gather_model(np.array([0, 0, 1, 2, 3, 4, 5, 6]))
    a = analyze(model)
    conv_b = a.group("conv_b")
    assert not conv_b.prunable and "gather" in conv_b.reason
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))


@pytest.mark.parametrize("indices", [np.array([2, 3, 4, 5]), np.array(5), np.arange(8)])
def test_gather_of_a_range_or_one_entry_maps_channels_exactly(indices):
    model = gather_model(indices)
    a = analyze(model)
    assert_groups_complete(a, model)
    if indices.ndim == 1:
        assert a.group("conv_b").prunable  # coupled to conv_a's gathered channels
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))
    assert len(compact.graph.initializer) and analyze(compact).params < a.params


def test_an_axis_a_rule_forgets_is_locked_naming_the_node():
    """A custom rule that relates nothing: every axis it touches is locked centrally."""
    b = OnnxBuilder(seed=1)
    x = b.input("input", (1, 3, 8, 8))
    y = b.conv(x, 8, name="conv")
    z = b.op("Relu", [y], (1, 8, 8, 8), name="custom")
    b.output(b.conv(z, 4, name="head"))
    model = b.build()
    model.graph.node[1].op_type = "Forgetful"
    model.graph.node[1].domain = "my.ops"
    model.opset_import.append(helper.make_opsetid("my.ops", 1))
    register_rule("my.ops::Forgetful", lambda node, cg: None)
    try:
        a = analyze(model)
    finally:
        RULES.pop("my.ops::Forgetful")
    group = a.group("conv")
    assert not group.prunable
    assert "Forgetful 'custom': its rule does not say how axis 1" in group.reason


def test_untouched_axes_need_no_space_of_their_own():
    """The default lock is lazy: constant shape arguments get no channel spaces."""
    b = OnnxBuilder(seed=2)
    x = b.input("input", (1, 3, 8, 8))
    y = b.reshape(b.conv(x, 8, name="conv"), (1, 8, 64))
    b.output(y)
    cg = apply_rules(from_onnx(b.build()))
    assert isinstance(cg, ChannelGraph)
    ints = [sp.label for sp in cg.spaces if sp.value is not None and sp.value.dtype == np.int64]
    assert not ints and cg.pending_locks, ints


def dedupe_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """What onnxsim / onnxslim do: equal initializers become one, read by every layer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for t in out.graph.initializer:
        arr = numpy_helper.to_array(t)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
            keep.append(t)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    return out


def shared_bias_model() -> onnx.ModelProto:
    """Three unrelated convs whose zero biases are one deduplicated initializer, one of
    them read through an Identity (torch's exporter) and two directly (onnxsim)."""
    b = OnnxBuilder(seed=7)
    x = b.input("input", (1, 3, 8, 8))
    zero = b.const("zero_bias", np.zeros(8, np.float32))
    ident = b.op("Identity", [zero], (8,), name="share")
    w = [b._weight(f"w{i}", (8, c, 3, 3), 9 * c) for i, c in enumerate((3, 8, 8))]
    y = b.op("Conv", [x, w[0], zero], (1, 8, 8, 8), name="c0", pads=[1, 1, 1, 1])
    y = b.relu(y)
    y = b.op("Conv", [y, w[1], ident], (1, 8, 8, 8), name="c1", pads=[1, 1, 1, 1])
    y = b.relu(y)
    y = b.op("Conv", [y, w[2], zero], (1, 8, 8, 8), name="c2", pads=[1, 1, 1, 1])
    b.output(b.conv(b.relu(y), 4, name="head"))
    return b.build()


def test_a_shared_constant_never_couples_layers_and_is_cut_per_use():
    model = shared_bias_model()
    a = analyze(model)
    producers = [g.producers for g in a.prunable_groups]
    assert ["c0"] in producers and ["c1"] in producers and ["c2"] in producers
    assert_groups_complete(a, model)
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))


def test_an_unchanged_shared_constant_is_written_once():
    model = shared_bias_model()
    written = to_onnx(from_onnx(model))
    names = [t.name for t in written.graph.initializer]
    assert names.count("zero_bias") == 1 and not any("zero_bias__" in n for n in names)
    feeds = random_feeds(model)
    assert all(
        np.array_equal(p, q)
        for p, q in zip(run_model(model, feeds), run_model(written, feeds), strict=True)
    )


def test_deduplicated_initializers_of_a_resnet_prune_like_the_original():
    from drpopt.zoo import build

    model = build("resnet18")
    defaults = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
    bn_params = {
        i for n in model.graph.node if n.op_type == "BatchNormalization" for i in n.input[1:]
    }
    for t in model.graph.initializer:  # a freshly initialised torch model: all BNs equal
        if t.name in bn_params:
            arr = np.full(tuple(t.dims), defaults[t.name.rsplit(".", 1)[1]], np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    deduped = dedupe_initializers(model)
    assert len(deduped.graph.initializer) < len(model.graph.initializer)
    plain, shared = analyze(model), analyze(deduped)
    assert len(shared.prunable_groups) == len(plain.prunable_groups)
    # a shared tensor counts once, also in what the prunable groups cover (per use it read
    # up to 180% of the parameters on timm's cspdarknet53)
    assert shared.params < plain.params
    assert shared.prunable_params <= shared.params
    assert shared.prunable_macs == plain.prunable_macs  # MACs are per layer either way
    sparse, compact = prune(deduped)
    assert_same(sparse, compact, random_feeds(deduped))
