"""A weight axis whose channels nothing produces (behind a lock no group reaches) used to
belong to no group and have no reason anywhere: SAM's windowed ``proj`` input behind the
head split a lock kept at the windows, YOLOv6/YOLOv10's DFL conv behind a softmax over
the bins, EdgeNeXt's Fourier position encoding made from constants. Such a component is
now listed in ``Analysis.unproduced``, locked with its reason; what prunes is unchanged,
and a graph input's own channels (the stem's image channels) stay out."""

from __future__ import annotations

import numpy as np
import onnx

from drpopt import analyze
from drpopt.zoo.builder import OnnxBuilder


def rows_as_channels() -> onnx.ModelProto:
    """Conv -> Transpose swapping channels and rows -> Conv reading the 8 rows as its
    channels (the rows of the first conv's output: spatial, nothing produces them)."""
    b = OnnxBuilder(seed=1)
    x = b.input("input", (1, 3, 8, 8))
    y = b.relu(b.conv(x, 6, k=1, name="conv_a"))
    t = b.op("Transpose", [y], (1, 8, 6, 8), name="swap", perm=[0, 2, 1, 3])
    b.output(b.conv(t, 4, k=1, name="conv_b"))
    return b.build()


def constant_input() -> onnx.ModelProto:
    """A Conv over a constant (a position encoding computed ahead) added to a conv."""
    b = OnnxBuilder(seed=2)
    x = b.input("input", (1, 3, 8, 8))
    pos = b.const("pos", np.random.default_rng(0).standard_normal((1, 5, 8, 8)).astype("f4"))
    p = b.conv(pos, 6, k=1, name="pos_proj")
    b.output(b.conv(b.add(b.conv(x, 6, k=1, name="stem"), p, name="add"), 4, name="head"))
    return b.build()


def _unproduced(a, node: str):
    return [g for g in a.unproduced if any(m.node == node for m in g.members)]


def _in_groups(a, node: str, axis: int) -> bool:
    return any(m.node == node and m.axis == axis for g in a.groups for m in g.members)


def test_a_weight_axis_behind_a_lock_is_reported_locked_with_the_reason():
    a = analyze(rows_as_channels())
    (g,) = _unproduced(a, "conv_b")
    assert not g.prunable and g.size == 8 and "conv_a" in g.reason, g.reason
    (member,) = [m for m in g.members if m.node == "conv_b"]
    assert member.role == "consumer" and member.axis == 1
    assert not _in_groups(a, "conv_b", 1)  # not a group: plans and policies never see it
    # the stem's image channels (a graph input's own) are no such entry
    assert not _unproduced(a, "conv_a")
    assert a.to_dict()["unproduced"][0]["reason"] == g.reason


def test_a_weight_axis_fed_by_constants_is_reported_as_unproduced():
    a = analyze(constant_input())
    (g,) = _unproduced(a, "pos_proj")
    assert g.locks[-1].kind == "unproduced" and "pos_proj" in g.reason, g.reason


def test_what_prunes_is_unchanged():
    """The reported entries are not groups: the ids, shares and groups stay as before."""
    a = analyze(rows_as_channels())
    assert [g.id for g in a.groups] == list(range(len(a.groups)))
    assert all(g.id >= len(a.groups) for g in a.unproduced)
    assert a.prunable_params == sum(g.params for g in a.prunable_groups)
