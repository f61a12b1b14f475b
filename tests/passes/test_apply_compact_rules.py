"""apply-masks and compact: their rules one by one, their no-op cases, trivial graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import random_feeds, run_model
from onnx import helper

from drpopt.errors import BadInputError
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import (
    ApplyMasksPass,
    CleanupPass,
    CompactPass,
    MaskPass,
    PassFailedError,
    PassManager,
    ScorePass,
    VerifyPass,
)
from drpopt.zoo import build
from drpopt.zoo.builder import OnnxBuilder

FREE = {"keep_first": False, "keep_last": False}


def masked_and_compact(model, **mask):
    masked = PassManager([ScorePass(), MaskPass(**{**FREE, **mask}), ApplyMasksPass()])(model)
    graph = masked.model
    masked_proto = to_onnx(graph)
    compact = PassManager([CompactPass(), CleanupPass(), VerifyPass()])(graph)
    return masked, masked_proto, compact


def test_rate_zero_is_a_no_op():
    masked, _, compact = masked_and_compact(build("resnet18"), rate=0.0)
    assert [r.modified for r in masked.records] == [False, False, False]
    assert [r.modified for r in compact.records] == [False, False, False]


def test_trivial_graph_has_nothing_to_prune():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    b.output(b.conv(x, 4, name="only"))  # its input and output are both locked
    masked, _, compact = masked_and_compact(b.build(), rate=0.5)
    assert masked.plan.groups == []
    assert not compact.modified


def test_passes_need_a_plan():
    with pytest.raises(PassFailedError, match="run 'mask' before it") as info:
        PassManager([ApplyMasksPass()])(build("se"))
    assert info.value.exit_code == 2
    assert isinstance(info.value.__cause__, BadInputError)


def test_apply_masks_zeroes_members_and_leaves_bn_statistics():
    model = build("resnet18")
    masked, masked_proto, _ = masked_and_compact(model, rate=0.5)
    plan = masked.plan
    gp = next(g for g in plan.groups if "layer1.0.conv1" in g.producers)
    pruned = gp.pruned
    values = {t.name: onnx.numpy_helper.to_array(t) for t in masked_proto.graph.initializer}
    w = values["layer1.0.conv1.weight"]
    assert not w[pruned].any() and w[gp.keep].any()
    assert not values["layer1.0.conv2.weight"][:, pruned].any()
    assert not values["layer1.0.bn1.weight"][pruned].any()
    assert not values["layer1.0.bn1.bias"][pruned].any()
    original = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for stat in ("running_mean", "running_var"):
        name = f"layer1.0.bn1.{stat}"
        np.testing.assert_array_equal(values[name], original[name])
    assert {p.key for p in masked_proto.metadata_props} == {"drpopt.plan", "drpopt.sparsity"}


def test_a_per_channel_divisor_is_not_zeroed():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 8, name="c1"))
    y = b.binary("Div", y, b.const("std", np.full((8, 1, 1), 2.0, np.float32)), name="norm")
    b.output(b.conv(y, 4, name="out"))
    _, masked_proto, compact = masked_and_compact(b.build(), rate=0.5)
    std = next(t for t in masked_proto.graph.initializer if t.name == "std")
    assert (onnx.numpy_helper.to_array(std) == 2.0).all()
    (out,) = run_model(masked_proto, random_feeds(masked_proto))
    assert np.isfinite(out).all()
    assert compact.model.values["std"].const.shape == (4, 1, 1)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_sizes_follow_the_kept_channels(opset):
    b = OnnxBuilder(opset=opset)
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 12, name="c1"))
    a, c = b.split(y, [4, 8], name="split")
    z = b.concat([b.conv(a, 6, name="ca"), b.conv(c, 6, name="cb")], name="cat")
    b.output(b.conv(z, 3, name="out"))
    model = b.build()
    _, _, compact = masked_and_compact(model, rate=0.5)
    graph = compact.model
    split = next(n for n in graph.nodes if n.op_type == "Split")
    sizes = split.attrs.get("split") or list(split.input(1).const)
    assert sizes == [2, 4]
    assert compact.verify.ok


def test_channel_slice_bounds_and_reshape_constants():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 4, 4])
    y = b.relu(b.conv(x, 16, name="c1"))
    s = b.slice(y, [4], [12], [1], name="mid")  # 8 of the 16 channels
    r = b.reshape(b.conv(s, 6, name="c2"), [1, 6, 16], name="flat")
    b.output(b.reshape(b.relu(r), [1, 96], name="out"))
    model = b.build()
    _, _, compact = masked_and_compact(model, rate=0.5)
    graph = compact.model
    sl = next(n for n in graph.nodes if n.op_type == "Slice")
    starts, ends = int(sl.input(1).const[0]), int(sl.input(2).const[0])
    assert ends - starts == graph.values[sl.outputs[0].name].shape[1] == 4
    assert compact.verify.ok


def test_shared_slice_constants_are_copied_not_changed_for_both():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 4, 4])
    y = b.relu(b.conv(x, 16, name="c1"))
    z = b.relu(b.conv(x, 16, name="c2"))
    s1 = b.slice(y, [0], [8], [1], name="s1")
    s2 = b.op("Slice", [z, "s1.starts", "s1.ends", "s1.axes", "s1.steps"], (1, 8, 4, 4), name="s2")
    b.output(b.conv(b.concat([s1, s2], name="cat"), 4, name="out"))
    model = b.build()
    _, _, compact = masked_and_compact(model, rate=0.5)
    assert compact.verify.ok


def test_grouped_conv_group_count():
    _, _, compact = masked_and_compact(build("grouped_conv"), rate=0.5)
    graph = compact.model
    gconv = next(n for n in graph.nodes if n.name == "gconv")
    # equal counts inside every conv group: the group count stays, each group is halved
    assert gconv.attrs["group"] == 4
    assert graph.values["gconv.weight"].const.shape[:2] == (16, 2)
    dw = next(n for n in graph.nodes if n.name == "dwconv")
    assert dw.attrs["group"] == graph.values["dwconv.weight"].const.shape[0]
    assert compact.verify.ok


def test_exporter_shared_initializer_is_unshared_before_masking():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 8, name="c1"))
    z = b.relu(b.conv(y, 8, name="c2"))
    b.output(b.conv(z, 4, name="out"))
    model = b.build()
    # as torch's exporter writes it: c2 reads c1's bias through an Identity
    ident = helper.make_node("Identity", ["c1.bias"], ["c2.bias.shared"], name="share")
    model.graph.node.insert(0, ident)
    for n in model.graph.node:
        if n.name == "c2":
            n.input[2] = "c2.bias.shared"
    _, _, compact = masked_and_compact(model, rate=0.5)
    assert compact.verify.ok
    assert not any(n.op_type == "Identity" for n in compact.model.nodes)
