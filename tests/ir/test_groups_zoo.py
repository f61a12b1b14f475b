"""Coupled channel groups of the bundled zoo models against expectations worked out from each
architecture: residual streams, inverted residuals, CSP/SPP/PAFPN concats, SE gating, dense
concat chains, Flatten into Gemm, grouped/depthwise convs and channel shuffles."""

from __future__ import annotations

import functools
import itertools
import json
import math

import networkx as nx
import onnx
import pytest
from deadchannels import assert_members_tile
from onnx import numpy_helper

import drpopt
from drpopt.ir.analysis import Analysis
from drpopt.ir.channels import Group, Member
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.rules import apply_rules
from drpopt.zoo import MODELS, build

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"}


# ---- helpers ------------------------------------------------------------------------------
@functools.cache
def _model(name: str) -> onnx.ModelProto:
    return build(name)


@functools.cache
def _analysis(name: str) -> Analysis:
    return drpopt.analyze(_model(name))


def _of(
    g: Group, role: str | None = None, tensor: str | None = None, axis: int | None = None
) -> list[Member]:
    return [
        m
        for m in g.members
        if (role is None or m.role == role)
        and (tensor is None or m.tensor == tensor)
        and (axis is None or m.axis == axis)
    ]


def _consumers(g: Group) -> dict[str, list[tuple[int, int]]]:
    """Consumer node -> sorted (start, block) of its members on the weight's input axis."""
    out: dict[str, list[tuple[int, int]]] = {}
    for m in _of(g, "consumer"):
        assert m.node is not None
        out.setdefault(m.node, []).append((m.start, m.block))
    return {k: sorted(v) for k, v in out.items()}


def _exact(a: Analysis, producers: set[str]) -> Group:
    """The group produced by exactly the nodes ``producers``."""
    g = a.group(next(iter(sorted(producers))))
    assert set(g.producers) == producers, (sorted(producers), g.producers)
    return g


def _producer_groups(a: Analysis, node: str) -> list[tuple[Member, Group]]:
    """Every (producer member, group) of ``node``'s weight, ordered by start row."""
    found = [(m, g) for g in a.groups for m in _of(g, "producer") if m.node == node]
    return sorted(found, key=lambda mg: mg[0].start)


def _conv_macs(out_hw: int, cout: int, cin_per_group: int, k: int) -> int:
    return out_hw * cout * cin_per_group * k * k


def _bn(c: int) -> int:
    """BatchNorm parameters as the ONNX model stores them: scale, bias, mean, var."""
    return 4 * c


def _initializers(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    return {
        t.name: (numpy_helper.to_array(t).size, numpy_helper.to_array(t).dtype.kind)
        for t in model.graph.initializer
    }


def _weight_params(model: onnx.ModelProto) -> int:
    """Float initializer elements read by a Conv/Gemm/MatMul/BatchNorm (every size)."""
    inits = _initializers(model)
    names = {i for n in model.graph.node if n.op_type in WEIGHT_OPS for i in n.input}
    return sum(size for name, (size, kind) in inits.items() if name in names and kind == "f")


def _onnx_macs(model: onnx.ModelProto) -> int:
    """Conv/Gemm MACs from the ONNX shapes: out elements x (Cin / group) x kernel, or x K."""
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]
            total += math.prod(shapes[n.output[0]]) * math.prod(w[1:])
        elif n.op_type == "Gemm":
            total += math.prod(shapes[n.output[0]]) * shapes[n.input[0]][1]
    return total


# ---- every model --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_no_unsupported_ops_and_sequential_ids(name: str) -> None:
    a = _analysis(name)
    assert a.unsupported == []
    assert [g.id for g in a.groups] == list(range(len(a.groups)))


@pytest.mark.parametrize("name", list(MODELS))
def test_to_dict_is_json(name: str) -> None:
    a = _analysis(name)
    d = json.loads(json.dumps(a.to_dict()))
    assert len(d["groups"]) == len(a.groups) == d["totals"]["groups"]
    for gd, g in zip(d["groups"], a.groups, strict=True):
        for key in ("id", "size", "prunable", "reason", "members", "params", "macs"):
            assert key in gd
        assert (gd["id"], gd["size"], gd["prunable"]) == (g.id, g.size, g.prunable)
        assert (gd["params"], gd["macs"], gd["reason"]) == (g.params, g.macs, g.reason)
        assert len(gd["members"]) == len(g.members)
        for md in gd["members"]:
            assert set(md) >= {"role", "node", "tensor", "axis", "start", "block", "length"}
    t = d["totals"]
    assert (t["params"], t["macs"]) == (a.params, a.macs)
    assert (t["prunable_params"], t["prunable_macs"]) == (a.prunable_params, a.prunable_macs)
    assert t["prunable_groups"] + t["locked_groups"] == t["groups"]
    assert t["unsupported_ops"] == []


@pytest.mark.parametrize("name", list(MODELS))
def test_group_and_total_counts_are_sane(name: str) -> None:
    a = _analysis(name)
    for g in a.groups:
        assert _of(g, "producer"), g.id
        assert g.params > 0 and g.macs > 0, (g.id, g.producers, g.params, g.macs)
        assert g.prunable == (g.reason is None)
    assert 0 < a.prunable_params <= a.params
    assert 0 < a.prunable_macs <= a.macs


@pytest.mark.parametrize("name", list(MODELS))
def test_members_tile_their_axes(name: str) -> None:
    assert_members_tile(_analysis(name), _model(name))


@pytest.mark.parametrize("name", list(MODELS))
def test_total_macs_match_the_onnx_shapes(name: str) -> None:
    assert _analysis(name).macs == _onnx_macs(_model(name))


@pytest.mark.parametrize("name", list(MODELS))
def test_total_params_count_every_weight(name: str) -> None:
    """Totals count every float initializer a Conv/Gemm/BatchNorm reads, whatever its size
    (the rule in the analysis module docstring)."""
    assert _analysis(name).params == _weight_params(_model(name))


# ---- ResNet -------------------------------------------------------------------------------
def test_resnet18_groups() -> None:
    a = _analysis("resnet18")
    widths = [16, 32, 64, 128]
    assert len(a.groups) == 4 + 8 + 1  # residual streams, each block's conv1, fc
    for i, w in enumerate(widths, start=1):
        # the stem's output is layer1's identity shortcut; later stages start at a projection
        first = "stem.conv" if i == 1 else f"layer{i}.0.downsample.conv"
        g = _exact(a, {first, f"layer{i}.0.conv2", f"layer{i}.1.conv2"})
        assert g.prunable and g.size == w
        want = {f"layer{i}.1.conv1": [(0, 1)]}
        if i == 1:
            want["layer1.0.conv1"] = [(0, 1)]
        if i < 4:
            want |= {f"layer{i + 1}.0.conv1": [(0, 1)], f"layer{i + 1}.0.downsample.conv": [(0, 1)]}
        else:
            want["fc"] = [(0, 1)]  # GAP then Flatten: one Gemm column per channel
        assert _consumers(g) == want
        bns = {m.node for m in _of(g, "follower")}
        assert bns == ({"stem.bn"} if i == 1 else {f"layer{i}.0.downsample.bn"}) | {
            f"layer{i}.{j}.bn2" for j in (0, 1)
        }
        for j in (0, 1):
            inner = _exact(a, {f"layer{i}.{j}.conv1"})
            assert inner.prunable and inner.size == w and inner is not g
            assert _consumers(inner) == {f"layer{i}.{j}.conv2": [(0, 1)]}
    fc = _exact(a, {"fc"})
    assert not fc.prunable and fc.size == 10 and "graph output" in (fc.reason or "")
    assert a.locked_by() == {"graph output 'fc'": 1}

    # stage 1 stream by hand: stem 7x7 on 32x32, layer1 convs on 16x16, layer2 entry on 8x8
    g = a.group("stem.conv")
    assert g.params == 16 * 3 * 49 + 2 * 16 * 16 * 9 + 3 * _bn(16) + 2 * 16 * 16 * 9 + (
        32 * 16 * 9 + 32 * 16
    )
    assert g.macs == (
        _conv_macs(32 * 32, 16, 3, 7)
        + 4 * _conv_macs(16 * 16, 16, 16, 3)
        + _conv_macs(8 * 8, 32, 16, 3)
        + _conv_macs(8 * 8, 32, 16, 1)
    )
    convs = 16 * 3 * 49 + 4 * 16 * 16 * 9
    bn_channels = 16 + 4 * 16
    for w_in, w in itertools.pairwise(widths):
        convs += w * w_in * 9 + 3 * w * w * 9 + w * w_in
        bn_channels += 5 * w
    assert a.params == convs + _bn(bn_channels) + 128 * 10 + 10
    assert a.prunable_params == a.params - 10  # only fc.bias is in no prunable group
    assert a.prunable_macs == a.macs


def test_resnet50_groups() -> None:
    a = _analysis("resnet50")
    depths = [3, 4, 6, 3]
    assert len(a.groups) == 1 + 4 + 2 * sum(depths) + 1
    # layer1.0 has a projection (16 -> 64), so the stem is its own group here
    stem = _exact(a, {"stem.conv"})
    assert stem.prunable and stem.size == 16
    assert _consumers(stem) == {"layer1.0.conv1": [(0, 1)], "layer1.0.downsample.conv": [(0, 1)]}
    for i, depth in enumerate(depths, start=1):
        planes = 16 * 2 ** (i - 1)
        producers = {f"layer{i}.0.downsample.conv"} | {f"layer{i}.{j}.conv3" for j in range(depth)}
        g = _exact(a, producers)
        assert g.prunable and g.size == 4 * planes
        want = {f"layer{i}.{j}.conv1": [(0, 1)] for j in range(1, depth)}
        if i < 4:
            want |= {f"layer{i + 1}.0.conv1": [(0, 1)], f"layer{i + 1}.0.downsample.conv": [(0, 1)]}
        else:
            want["fc"] = [(0, 1)]
        assert _consumers(g) == want
        for j in range(depth):
            for conv, nxt in (("conv1", "conv2"), ("conv2", "conv3")):
                inner = _exact(a, {f"layer{i}.{j}.{conv}"})
                assert inner.prunable and inner.size == planes
                assert _consumers(inner) == {f"layer{i}.{j}.{nxt}": [(0, 1)]}
    fc = _exact(a, {"fc"})
    assert not fc.prunable and "graph output" in (fc.reason or "")
    assert len(a.prunable_groups) == len(a.groups) - 1


# ---- MobileNetV2 --------------------------------------------------------------------------
# width_mult 0.5: torchvision's (t, c, n, s) table with c rounded to multiples of 8
MBV2_STAGES = [(1, 8, 1, 1), (6, 16, 2, 2), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1)]
MBV2_STAGES += [(6, 80, 3, 2), (6, 160, 1, 1)]


def test_mobilenetv2_groups() -> None:
    a = _analysis("mobilenetv2")
    blocks: list[tuple[int, int, int, bool]] = []  # in, hidden, out, residual
    c = 16  # stem
    for t, out, n, s in MBV2_STAGES:
        for j in range(n):
            stride = s if j == 0 else 1
            blocks.append((c, c * t, out, stride == 1 and c == out))
            c = out
    assert len(blocks) == 17

    chains: list[list[int]] = []  # blocks whose projections are joined by residual Adds
    for i, (_, hidden, _out, residual) in enumerate(blocks):
        p = f"blocks.{i}"
        if i == 0:  # t == 1: no expand, the depthwise conv ties the stem to its output
            g = _exact(a, {"stem.conv", f"{p}.dw.conv"})
        else:
            g = _exact(a, {f"{p}.expand.conv", f"{p}.dw.conv"})
        assert g.prunable and g.size == hidden
        assert _consumers(g) == {f"{p}.project.conv": [(0, 1)]}
        (st,) = _of(g, "structure")
        assert (st.node, st.attr, st.start, st.block, st.length) == (
            f"{p}.dw.conv",
            "group",
            0,
            1,
            hidden,
        )
        if residual:
            chains[-1].append(i)
        else:
            chains.append([i])
    assert chains == [[0], [1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12], [13, 14, 15], [16]]
    for chain in chains:
        g = _exact(a, {f"blocks.{i}.project.conv" for i in chain})
        assert g.prunable and g.size == blocks[chain[0]][2]
        nxt = chain[-1] + 1
        want = {f"blocks.{i}.expand.conv": [(0, 1)] for i in chain[1:]}
        want[f"blocks.{nxt}.expand.conv" if nxt < len(blocks) else "last.conv"] = [(0, 1)]
        assert _consumers(g) == want
    last = _exact(a, {"last.conv"})
    assert last.prunable and last.size == 1280 and _consumers(last) == {"fc": [(0, 1)]}
    fc = _exact(a, {"fc"})
    assert not fc.prunable and "graph output" in (fc.reason or "")
    assert len(a.groups) == 1 + 16 + len(chains) + 1 + 1


# ---- YOLOX --------------------------------------------------------------------------------
# width 0.25, depth 0.33: base 16 channels, CSP depths 1/3/3/1, neck CSPs n = 1
CSP_LAYERS = [  # prefix, hidden channels, bottlenecks, shortcut
    ("backbone.dark2.1", 16, 1, True),
    ("backbone.dark3.1", 32, 3, True),
    ("backbone.dark4.1", 64, 3, True),
    ("backbone.dark5.2", 128, 1, False),
    ("neck.C3_p4", 64, 1, False),
    ("neck.C3_p3", 32, 1, False),
    ("neck.C3_n3", 64, 1, False),
    ("neck.C3_n4", 128, 1, False),
]


def test_yolox_focus_stem() -> None:
    a = _analysis("yolox_s_like")
    stem = _exact(a, {"backbone.stem.conv.conv"})
    assert stem.prunable and stem.size == 16
    assert _consumers(stem) == {"backbone.dark2.0.conv": [(0, 1)]}
    w = "backbone.stem.conv.conv.weight"
    assert not [m for g in a.groups for m in _of(g, tensor=w, axis=1)]


def test_yolox_focus_input_channels_locked_by_graph_input() -> None:
    """The 12 stem-conv input channels are four copies of the 3 image channels (one per
    space-to-depth slice): one component with the graph input, locked by it."""
    graph = from_onnx(_model("yolox_s_like"))
    cg = apply_rules(graph)
    _, segments = cg.groups()
    sp = cg.spaces[cg.space(graph.values["backbone.stem.conv.conv.weight"], 1)]
    assert sorted(sp.cuts) == [3, 6, 9]
    comp = nx.node_connected_component(segments, sp.seg0)
    assert set(range(sp.seg0, sp.seg0 + 4)) <= comp
    # a space's segments are seg0 .. seg0 + len(cuts) (spaces an identity ties share them)
    spaces = {
        i
        for i, x in enumerate(cg.spaces)
        if comp.intersection(range(x.seg0, x.seg0 + len(x.cuts) + 1))
    }
    assert cg.space(graph.values["input"], 1) in spaces
    assert any(lock.kind == "graph-input" for s in spaces for lock in cg.spaces[s].locks)


@pytest.mark.parametrize(("prefix", "hidden", "n", "shortcut"), CSP_LAYERS)
def test_yolox_csp_concat_segments(prefix: str, hidden: int, n: int, shortcut: bool) -> None:
    a = _analysis("yolox_s_like")
    conv = functools.partial("{}.{}.conv".format, prefix)
    last = conv(f"m.{n - 1}.conv2")
    if shortcut:  # the bottleneck Adds tie conv1 to every bottleneck's conv2
        branch1 = _exact(a, {conv("conv1")} | {conv(f"m.{j}.conv2") for j in range(n)})
        assert _consumers(branch1) == {
            conv("conv3"): [(0, 1)],
            **{conv(f"m.{j}.conv1"): [(0, 1)] for j in range(n)},
        }
    else:
        branch1 = _exact(a, {last})
        assert _consumers(branch1) == {conv("conv3"): [(0, 1)]}
        first = _exact(a, {conv("conv1")})
        assert first.size == hidden and _consumers(first) == {conv("m.0.conv1"): [(0, 1)]}
    branch2 = _exact(a, {conv("conv2")})
    assert branch1 is not branch2
    assert branch1.size == branch2.size == hidden and branch1.prunable and branch2.prunable
    # the concat output is [branch1 | branch2]: conv3 reads them at offsets 0 and hidden
    assert _consumers(branch2) == {conv("conv3"): [(hidden, 1)]}
    w = conv("conv3") + ".weight"
    assert [(m.start, m.length) for m in _of(branch1, tensor=w, axis=1)] == [(0, hidden)]
    assert [(m.start, m.length) for m in _of(branch2, tensor=w, axis=1)] == [(hidden, hidden)]
    for j in range(n):
        inner = _exact(a, {conv(f"m.{j}.conv1")})
        assert inner.prunable and inner.size == hidden
        assert _consumers(inner) == {conv(f"m.{j}.conv2"): [(0, 1)]}
    out = _exact(a, {conv("conv3")})
    assert out.prunable and out.size == 2 * hidden


def test_yolox_spp_concat_of_one_tensor() -> None:
    a = _analysis("yolox_s_like")
    g = _exact(a, {"backbone.dark5.1.conv1.conv"})
    assert g.prunable and g.size == 128
    # Concat(x, maxpool5(x), maxpool9(x), maxpool13(x)): conv2 reads x's channels four times
    assert _consumers(g) == {"backbone.dark5.1.conv2.conv": [(0, 1), (128, 1), (256, 1), (384, 1)]}
    out = _exact(a, {"backbone.dark5.1.conv2.conv"})
    assert out.size == 256 and _consumers(out) == {
        "backbone.dark5.2.conv1.conv": [(0, 1)],
        "backbone.dark5.2.conv2.conv": [(0, 1)],
    }


def test_yolox_pafpn_upsample_and_concats() -> None:
    a = _analysis("yolox_s_like")

    def c3(name: str, offset: int) -> dict[str, list[tuple[int, int]]]:
        return {f"neck.{name}.conv1.conv": [(offset, 1)], f"neck.{name}.conv2.conv": [(offset, 1)]}

    expected = {  # producer: (size, consumers); concats are [upsampled/downsampled, lateral]
        "neck.lateral_conv0.conv": (128, c3("C3_p4", 0) | c3("C3_n4", 128)),
        "backbone.dark4.1.conv3.conv": (
            128,
            {"backbone.dark5.0.conv": [(0, 1)]} | c3("C3_p4", 128),
        ),
        "neck.reduce_conv1.conv": (64, c3("C3_p3", 0) | c3("C3_n3", 64)),
        "backbone.dark3.1.conv3.conv": (64, {"backbone.dark4.0.conv": [(0, 1)]} | c3("C3_p3", 64)),
        "neck.bu_conv2.conv": (64, c3("C3_n3", 0)),
        "neck.bu_conv1.conv": (128, c3("C3_n4", 0)),
        "neck.C3_p3.conv3.conv": (
            64,
            {"head.stems.0.conv": [(0, 1)], "neck.bu_conv2.conv": [(0, 1)]},
        ),
        "neck.C3_n3.conv3.conv": (
            128,
            {"head.stems.1.conv": [(0, 1)], "neck.bu_conv1.conv": [(0, 1)]},
        ),
        "neck.C3_n4.conv3.conv": (256, {"head.stems.2.conv": [(0, 1)]}),
        "backbone.dark5.2.conv3.conv": (256, {"neck.lateral_conv0.conv": [(0, 1)]}),
    }
    for producer, (size, consumers) in expected.items():
        g = _exact(a, {producer})
        assert g.prunable and g.size == size, producer
        assert _consumers(g) == consumers, producer


def test_yolox_head() -> None:
    a = _analysis("yolox_s_like")
    for k in range(3):
        for p in ("stems", "cls_convs", "reg_convs"):
            names = [f"head.{p}.{k}"] if p == "stems" else [f"head.{p}.{k}.{i}" for i in (0, 1)]
            for name in names:
                g = _exact(a, {f"{name}.conv"})
                assert g.prunable and g.size == 64, name
        assert _consumers(a.group(f"head.cls_convs.{k}.1.conv")) == {
            f"head.cls_preds.{k}": [(0, 1)]
        }
        assert _consumers(a.group(f"head.reg_convs.{k}.1.conv")) == {
            f"head.reg_preds.{k}": [(0, 1)],
            f"head.obj_preds.{k}": [(0, 1)],
        }
        # obj_preds has a single output channel: nothing of it can be pruned
        assert not any(f"head.obj_preds.{k}" in g.producers for g in a.prunable_groups)
    # the three levels meet on the class/box axis in head.concat, which is the graph output
    for pred, size in (("cls_preds", 20), ("reg_preds", 4)):
        g = _exact(a, {f"head.{pred}.{k}" for k in range(3)})
        assert not g.prunable and g.size == size
        assert "graph output 'head.transpose'" in (g.reason or "")
        assert all(m.start == 0 and m.block == 1 for m in _of(g, "producer"))
    assert a.locked_by() == {"graph output 'head.transpose'": 2}


def test_yolox_counts_and_totals() -> None:
    a = _analysis("yolox_s_like")
    backbone = 1 + 1 + 4 + 1 + 6 + 1 + 6 + 1 + 2 + 5  # stem, dark2..dark5 (SPP = 2)
    neck = 4 * 1 + 4 * 5  # lateral, reduce, 2 bu_convs + 4 CSPs of 5 groups
    head = 3 * 5 + 2  # per level stem + 2 cls + 2 reg, then shared cls/reg preds
    assert len(a.groups) == backbone + neck + head
    assert len(a.prunable_groups) == len(a.groups) - 2
    # only the prediction biases sit in no prunable group: 3 levels x (20 + 4 + 1)
    assert a.prunable_params == _weight_params(_model("yolox_s_like")) - 3 * (20 + 4 + 1)
    assert a.prunable_macs == a.macs


# ---- SE -----------------------------------------------------------------------------------
def test_se_groups() -> None:
    a = _analysis("se")
    assert len(a.groups) == 4
    g = _exact(a, {"conv1", "se.fc2"})  # Mul(scale, features) couples the gate to conv1
    assert g.prunable and g.size == 32
    assert _consumers(g) == {"conv2": [(0, 1)], "se.fc1": [(0, 1)]}
    assert {m.tensor for m in _of(g, "follower")} >= {"se.fc2.bias", "bn1.weight"}
    squeeze = _exact(a, {"se.fc1"})
    assert squeeze.prunable and squeeze.size == 8 and squeeze is not g
    assert _consumers(squeeze) == {"se.fc2": [(0, 1)]}
    assert [m.tensor for m in _of(squeeze, "follower")] == ["se.fc1.bias"]
    assert squeeze.params == 8 * 32 + 8 + 32 * 8
    assert _consumers(_exact(a, {"conv2"})) == {"fc": [(0, 1)]}
    assert not _exact(a, {"fc"}).prunable
    fc1, fc2 = 8 * 32 + 8, 32 * 8 + 32
    assert a.params == 32 * 27 + _bn(32) + fc1 + fc2 + 32 * 32 * 9 + _bn(32) + 10 * 32 + 10
    hw = 32 * 32
    assert a.macs == (
        _conv_macs(hw, 32, 3, 3) + 8 * 32 + 32 * 8 + _conv_macs(hw, 32, 32, 3) + 10 * 32
    )


# ---- DenseNet -----------------------------------------------------------------------------
def test_densenet_concat_chain() -> None:
    a = _analysis("densenet")
    growth, layers = 8, 4
    assert len(a.groups) == 1 + 2 * layers + 1 + 2 * layers + 1
    starts = {1: 16, 2: 24}  # block inputs: the stem (2 * growth), transition1 (48 // 2)
    tails = {1: "transition1.conv", 2: "fc"}
    for b, c0 in starts.items():
        entry = _exact(a, {"stem.conv" if b == 1 else "transition1.conv"})
        assert entry.prunable and entry.size == c0
        want = {f"block{b}.layer{li}.conv1": [(0, 1)] for li in range(1, layers + 1)}
        assert _consumers(entry) == want | {tails[b]: [(0, 1)]}
        for li in range(1, layers + 1):
            bottleneck = _exact(a, {f"block{b}.layer{li}.conv1"})
            assert bottleneck.prunable and bottleneck.size == 4 * growth
            assert _consumers(bottleneck) == {f"block{b}.layer{li}.conv2": [(0, 1)]}
            g = _exact(a, {f"block{b}.layer{li}.conv2"})
            assert g.prunable and g.size == growth
            at = c0 + growth * (li - 1)  # where this layer's output sits in the concat chain
            want = {f"block{b}.layer{j}.conv1": [(at, 1)] for j in range(li + 1, layers + 1)}
            assert _consumers(g) == want | {tails[b]: [(at, 1)]}
            norms = {(m.node, m.start) for m in _of(g, "follower") if m.tensor.endswith(".weight")}
            after = {f"block{b}.layer{j}.norm1" for j in range(li + 1, layers + 1)}
            after.add("transition1.norm" if b == 1 else "norm5")
            assert norms == {(n, at) for n in after}
    # block1.layer1.conv2 by hand: 3x3 on 8x8, read by 3 later conv1s and the transition
    g = _exact(a, {"block1.layer1.conv2"})
    assert g.params == growth * 32 * 9 + 3 * 32 * growth + 24 * growth + 4 * _bn(growth)
    assert g.macs == (
        _conv_macs(64, growth, 32, 3) + 3 * _conv_macs(64, 32, growth, 1) + 64 * 24 * growth
    )
    assert not _exact(a, {"fc"}).prunable


# ---- small structural cases ---------------------------------------------------------------
def test_flatten_gemm_block() -> None:
    a = _analysis("flatten_gemm")
    assert len(a.groups) == 3
    g = _exact(a, {"conv"})
    assert g.prunable and g.size == 8
    (m,) = _of(g, "consumer")
    assert (m.node, m.tensor, m.axis, m.start, m.block, m.length) == (
        "fc1",
        "fc1.weight",
        1,
        0,
        4 * 4,
        8,
    )
    assert g.params == 8 * 27 + 8 + 32 * 128
    assert g.macs == _conv_macs(16, 8, 3, 3) + 32 * 128
    hidden = _exact(a, {"fc1"})
    assert hidden.prunable and hidden.size == 32 and _consumers(hidden) == {"fc2": [(0, 1)]}
    out = _exact(a, {"fc2"})
    assert not out.prunable and "graph output" in (out.reason or "")
    assert a.params == 8 * 27 + 8 + 32 * 128 + 32 + 10 * 32 + 10
    assert a.macs == _conv_macs(16, 8, 3, 3) + 32 * 128 + 10 * 32


def test_grouped_conv_units() -> None:
    """gconv (16 -> 32 channels, 4 groups) prunes the same positions inside every conv
    group: its input positions (4) and output positions (8) are groups of their own, each
    unit one channel of every conv group; the depthwise convs after it follow channels."""
    a = _analysis("grouped_conv")
    assert len(a.groups) == 4
    inputs = _exact(a, {"conv1"})
    assert inputs.prunable and inputs.size == 4
    rows = sorted((m.start, m.block) for m in _of(inputs, "producer", axis=0))
    assert rows == [(0, 1), (4, 1), (8, 1), (12, 1)]  # position j of each of the 4 groups
    assert _consumers(inputs) == {"gconv": [(0, 1)]}  # column j of the grouped weight
    outputs = _exact(a, {"gconv", "dwconv", "dwconv_mult"})
    assert outputs.prunable and outputs.size == 8
    gconv_rows = sorted(m.start for m in _of(outputs, "producer", axis=0) if m.node == "gconv")
    assert gconv_rows == [0, 8, 16, 24]
    assert not any(m.node == "gconv" for m in _of(outputs, "structure"))  # group stays 4
    pw = _exact(a, {"pwconv"})
    assert pw.prunable and pw.size == 32 and _consumers(pw) == {"fc": [(0, 1)]}
    assert not _exact(a, {"fc"}).prunable
    assert a.prunable_params == a.params - 10


def test_channel_shuffle_prunes_each_position_in_every_group() -> None:
    """A shuffle of g groups of n maps input channel i * n + j to output j * g + i: pruning
    position j in every group keeps it a shuffle, so conv1's two halves (the shuffle's
    groups) prune together and conv2 reads them as blocks of 2; the ShuffleNetV2 unit's
    passthrough half and branch2's output are the groups of its shuffle, read by fc in
    blocks of 2."""
    a = _analysis("channel_shuffle")
    assert len(a.groups) == 5
    ((m0, g1), (m1, g1b)) = _producer_groups(a, "conv1")
    assert g1 is g1b and g1.prunable and g1.size == 8
    assert [(m.start, m.block, m.length) for m in (m0, m1)] == [(0, 1, 8), (8, 1, 8)]
    assert _consumers(g1) == {"conv2": [(0, 2)]}
    # conv2's first half goes through the concat into the unit's shuffle with branch2's
    # output; its second half only into branch2.0
    (m_a, g_a), (m_b, g_b) = _producer_groups(a, "conv2")
    assert (m_a.start, m_a.block * m_a.length) == (0, 8)
    assert (m_b.start, m_b.block * m_b.length) == (8, 8)
    assert g_a.prunable and set(g_a.producers) == {"conv2", "unit.branch2.2.conv"}
    assert _consumers(g_a) == {"fc": [(0, 2)]}
    assert g_b.prunable and _consumers(g_b) == {"unit.branch2.0.conv": [(0, 1)]}
    br = _exact(a, {"unit.branch2.0.conv", "unit.branch2.1.conv"})
    assert br.prunable and br.size == 8
    assert [(m.node, m.attr) for m in _of(br, "structure")] == [("unit.branch2.1.conv", "group")]
    fc = _exact(a, {"fc"})
    assert not fc.prunable and "graph output" in (fc.reason or "")
    assert {g.id for g in a.locked_groups} == {fc.id}
    assert a.prunable_params == a.params - 10  # all but fc's bias
    # with 4 groups of 4, conv1 prunes 4 positions of each group together
    a4 = drpopt.analyze(MODELS["channel_shuffle"](groups=4))
    ((_, g4), *rest) = _producer_groups(a4, "conv1")
    assert g4.prunable and g4.size == 4 and all(g is g4 for _, g in rest) and len(rest) == 3
    assert _consumers(g4) == {"conv2": [(0, 4)]}
