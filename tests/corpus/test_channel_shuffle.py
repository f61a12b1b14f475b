"""Channel shuffles prune exactly: ShuffleNet-V2 as torchvision writes it (its
``channel_shuffle`` and ``InvertedResidual``, small widths), exported by torch.onnx with a
static batch (constant reshape targets, as the corpus export).

A shuffle of g groups of n sends channel ``i * n + j`` to ``j * g + i``: pruning position
``j`` in every group keeps it a shuffle. So a block's passthrough half and its branch's
output prune together, position by position, and the next block's split reads them as
blocks of 2; where a later split cuts inside such a block (n/2 odd, deep in a stage), that
block is one unit of its own, its pieces on both sides of the split pruned with it. A
unit of one block is a group of one: the policy drops such groups whole where that brings
their layers closer to the rate.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from corpus_checks import (
    CONFIGS,
    TOLERANCE,
    PruneConfig,
    compact_counts,
    compare_outputs,
    prune,
)
from deadchannels import assert_groups_complete, random_feeds, run_model

from drpopt import analyze
from drpopt.passes.plan import group_key
from drpopt.zoo.corpus import corpus_dir, load_corpus_model

torch = pytest.importorskip("torch")
nn = torch.nn


def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _conv_bn(cin, cin, 3, stride, groups=cin, relu=False), _conv_bn(cin, half, 1)
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            _conv_bn(cin if stride > 1 else half, half, 1),
            _conv_bn(half, half, 3, stride, groups=half, relu=False),
            _conv_bn(half, half, 1),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Two stages: 4 blocks of 24 channels (n = 12: the third split cuts inside a block of
    the first shuffle), 2 of 48; conv5, global pooling, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn(3, 16, 3, 2)
        stages = []
        cin = 16
        for blocks, cout in ((4, 24), (2, 48)):
            stages.append(
                nn.Sequential(
                    InvertedResidual(cin, cout, 2),
                    *(InvertedResidual(cout, cout, 1) for _ in range(blocks - 1)),
                )
            )
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = _conv_bn(cin, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.conv5(self.stages(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


def _randomize(module: nn.Module) -> nn.Module:
    """BN statistics away from the identity, so pruned channels would show."""
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return module.eval()


def _export(dynamic_batch: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _randomize(ShuffleNetV2()),
            (torch.randn(1, 3, 32, 32),),
            buf,
            dynamo=False,
            opset_version=13,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}} if dynamic_batch else None,
        )
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return _export()


def _prunable_rows(a, node: str) -> tuple[int, int]:
    """(prunable, all) output channels of a conv."""
    rows = [
        (m.block * m.length, g.prunable)
        for g in a.groups
        for m in g.members
        if m.role == "producer" and m.node == node
    ]
    return sum(n for n, ok in rows if ok), sum(n for n, _ in rows)


def test_shuffled_channels_are_prunable_groups(model):
    a = analyze(model)
    assert sum(n.op_type == "Transpose" for n in a.graph.nodes) == 6
    # nothing locked by a shuffle's reshapes, nor by a split inside one of its blocks
    assert [g.reason for g in a.locked_groups] == ["graph output 'y'"]
    convs = [n.name for n in a.graph.nodes if n.op_type == "Conv"]
    for conv in convs:  # every output channel of every conv prunes
        prunable, rows = _prunable_rows(a, conv)
        assert prunable == rows, conv
    # the first stage (24 channels, n = 12): block k's shuffle output is read by block
    # k + 1 in blocks of 2 (blocks of 2^k of the first block's), so halving it at 6
    # reaches back as a cut inside a block after two blocks: that block is one unit, a
    # group of one (none covers all of a layer's channels: those stay locked)
    ones = [g for g in a.groups if g.size == 1]
    assert len(ones) == 3 and all(g.prunable for g in ones)
    assert_groups_complete(a, model)


def test_one_unit_groups_are_dropped_toward_the_rate(model):
    """At rate 0.5 the one-unit groups, which no per-group rate can cut, are dropped where
    that brings their layers closer to half (some, not all: each drop is checked against
    what the other groups already remove); the compact model computes what the sparse does
    and has the parameters the plan says."""
    ones = {group_key(g) for g in analyze(model).groups if g.size == 1}
    pruned = prune(model, CONFIGS["rate0.5"])
    kept = {g.key: g.keep for g in pruned.plan.groups if g.key in ones}
    assert set(kept) == ones
    assert 0 < sum(not k for k in kept.values()) < len(ones), kept
    feeds = random_feeds(model)
    err = compare_outputs(run_model(pruned.masked, feeds), run_model(pruned.compact, feeds), "")
    assert err < TOLERANCE, err
    params, _ = compact_counts(pruned.compact)
    assert params == pruned.expected_params


@pytest.mark.parametrize("config", ["rate0.5", "rate0.7", "drpai"])
def test_sparse_equals_compact(model, config):
    pruned = prune(model, CONFIGS[config])
    feeds = random_feeds(model)
    sparse = run_model(pruned.masked, feeds)
    compact = run_model(pruned.compact, feeds)
    err = compare_outputs(sparse, compact, f"{config}: compact vs sparse")
    assert err < TOLERANCE, f"{config}: compact differs from sparse by {err:.3g}"
    params, macs = compact_counts(pruned.compact)
    assert params == pruned.expected_params and macs == pruned.expected_macs
    if config == "rate0.5":
        # the shuffled stream prunes (0.302; 0.378 with the units a split cuts locked,
        # 0.543 with the shuffles locked)
        assert params / pruned.before.params < 0.33, params / pruned.before.params


def test_rate_zero_is_bit_identical(model):
    pruned = prune(model, PruneConfig("rate0", 0.0))
    feeds = random_feeds(model)
    reference = run_model(model, feeds)
    for form in (pruned.masked, pruned.compact):
        for ref, out in zip(reference, run_model(form, feeds), strict=True):
            np.testing.assert_array_equal(ref, out)


def test_a_dynamic_batch_export_prunes_like_a_static_one():
    """With a symbolic batch the shuffle's target is computed (``view(b, g, c // g, h, w)``
    from ``x.size()``), which ONNX's inference does not divide through, and so are the
    chunks' bounds: every shape after the first shuffle was unknown and the analysis
    locked all but 0.126 of the parameters. Shapes now go on with the batch as a symbol,
    the chunks' bounds are the numbers the static sizes give, and the export prunes as
    the static one does; the compact model still takes any batch."""
    model = _export(dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    a = analyze(model)
    assert a.prunable_params / a.params > 0.95, a.prunable_params / a.params
    assert_groups_complete(a, model)
    pruned = prune(model, CONFIGS["rate0.5"])
    params, _ = compact_counts(pruned.compact)
    assert params == pruned.expected_params < 0.45 * pruned.before.params
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), np.float32)
        sparse, compact = run_model(pruned.masked, {"x": x}), run_model(pruned.compact, {"x": x})
        err = compare_outputs(sparse, compact, f"batch {batch}: compact vs sparse")
        assert err < TOLERANCE, err


@pytest.mark.corpus
def test_corpus_shufflenet_v2_prunes_its_shuffled_stream():
    """torchvision's ShuffleNet-V2 x1.0 at rate 0.5 (keep_first/keep_last off, as the
    coverage table): positions of a shuffle that are one unit of their own (the blocks a
    stage's later splits cut, and one between two such) prune, seven of eight, and are
    dropped toward the rate; the compact model keeps 0.380 of the parameters (0.388 with
    them locked). Halving every layer
    exactly but the classifier's outputs would keep 0.366: what is left is stage 3's last
    stream, which eight shuffles in a row make one unit (a shuffle stays a shuffle only if
    position j goes from every group), all of its last two blocks' outputs, so it stays."""
    folder = corpus_dir()
    path = folder / "shufflenet_v2_x1_0.onnx" if folder is not None else None
    if path is None or not path.exists():
        pytest.skip("no corpus model shufflenet_v2_x1_0.onnx")
    model = load_corpus_model(path)
    a = analyze(model)
    ones = [g for g in a.groups if g.size == 1]
    assert sum(g.prunable for g in ones) == 7
    # the one unit that is all of its last layers' channels stays
    (locked,) = [g for g in ones if not g.prunable]
    assert locked.locks[0].kind == "whole-layer"
    assert locked.locks[0].node == "/stage3/stage3.7/branch2/branch2.5/Conv"
    assert {lk.kind for lk in locked.locks[1:]} == {"cut-block"}
    pruned = prune(model, CONFIGS["rate0.5"])
    feeds = random_feeds(model)
    err = compare_outputs(run_model(pruned.masked, feeds), run_model(pruned.compact, feeds), "")
    assert err < TOLERANCE, err
    params, _ = compact_counts(pruned.compact)
    assert params == pruned.expected_params
    assert params / pruned.before.params < 0.382, params / pruned.before.params


@pytest.mark.corpus
def test_corpus_shufflenet_v2_meets_the_drpai_target_it_was_pruned_for():
    """``prune --target drpai`` then ``check --target drpai``: every partly pruned layer keeps
    a multiple of 8 channels, also the layers whose outputs several shuffle units share
    (before: 7 of them kept 31 or 46 and the pruned model failed its own target)."""
    from drpopt import api
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.passes.check import check_model
    from drpopt.passes.targets import get_target

    folder = corpus_dir()
    path = folder / "shufflenet_v2_x1_0.onnx" if folder is not None else None
    if path is None or not path.exists():
        pytest.skip("no corpus model shufflenet_v2_x1_0.onnx")
    result = api.prune(load_corpus_model(path), api.PruneOptions(target="drpai", form="sparse"))
    report = check_model(from_onnx(result.proto), get_target("drpai"))
    assert not [x.node for x in report.layers if x.misaligned]
    assert report.ok, report.summary()


def test_the_pruner_drops_the_same_one_unit_groups():
    """The torch Pruner (on its fx trace) drops the one-unit groups the mask pass drops
    from the same scores: both call ``choose_channels`` with the weight shapes."""
    from drpopt.passes import MaskPass, PassManager, ScorePass
    from drpopt.retrain import Pruner

    torch.manual_seed(0)
    open_ = {"keep_first": False, "keep_last": False}
    pruner = Pruner(_randomize(ShuffleNetV2()), torch.randn(1, 3, 32, 32), 0.5, **open_)
    pruner.update()
    ones = {key for key, g in zip(pruner.keys, pruner.groups, strict=True) if g.size == 1}
    from_pruner = {g.key: g.keep for g in pruner.plan.groups}
    assert ones and any(from_pruner.get(k, [0]) == [] for k in ones), from_pruner
    result = PassManager([ScorePass(criterion="l2"), MaskPass(rate=0.5, **open_)])(pruner.graph)
    from_mask = {g.key: g.keep for g in result.plan.groups}
    assert all(from_mask[k] == keep for k, keep in from_pruner.items())
