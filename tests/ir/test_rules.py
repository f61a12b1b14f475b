"""Coupling rules one op at a time, on small graphs built in code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import assert_groups_complete, random_feeds
from onnx import helper
from test_default_locks import assert_same, prune

from drpopt import analyze
from drpopt.ir import register_rule
from drpopt.ir.rules import RULES, broadcast
from drpopt.zoo.builder import OnnxBuilder


def stem(b: OnnxBuilder, c: int = 8, h: int = 8) -> str:
    x = b.input("input", [1, 3, h, h])
    return b.relu(b.conv(x, c, name="c1"), name="r1")


def head(b: OnnxBuilder, x: str) -> None:
    b.output(b.conv(x, 4, k=1, name="out"))


def test_scalar_mul_couples_nothing_per_channel_mul_couples_its_constant():
    b = OnnxBuilder()
    x = stem(b)
    y = b.mul(x, b.const("s", np.float32(2.0)), name="scale")
    z = b.mul(y, b.const("pc", np.ones((8, 1, 1), np.float32)), name="perchannel")
    head(b, z)
    model = b.build()
    a = analyze(model)
    g = a.group("c1")
    assert g.prunable and g.size == 8
    assert ("pc", 0) in {(m.tensor, m.axis) for m in g.members}
    assert "s" not in {m.tensor for m in g.members}
    assert_groups_complete(a, model)


def test_prelu_slope_follows_its_channels():
    b = OnnxBuilder()
    x = stem(b)
    y = b.op("PRelu", [x, b.const("slope", np.full((8, 1, 1), 0.1, np.float32))], b.shapes[x])
    head(b, y)
    g = analyze(b.build()).group("c1")
    assert ("follower", "slope", 0) in {(m.role, m.tensor, m.axis) for m in g.members}


@pytest.mark.parametrize(
    ("op", "attrs", "locked"),
    [
        ("Softmax", {"axis": 1}, True),
        ("Softmax", {"axis": 3}, False),
        # a mean over the channels is one over the kept ones (ir/rules_reduce.py); a product
        # has no masked form
        ("ReduceMean", {"axes": [1], "keepdims": 1}, False),
        ("ReduceProd", {"axes": [1], "keepdims": 1}, True),
        ("ReduceMean", {"axes": [2, 3], "keepdims": 1}, False),
        ("LRN", {"size": 3}, True),
    ],
)
def test_ops_that_mix_channels_lock(op, attrs, locked):
    b = OnnxBuilder()
    x = stem(b)
    shape = list(b.shapes[x])
    if op.startswith("Reduce"):
        for ax in attrs["axes"]:
            shape[ax] = 1
    y = b.op(op, [x], tuple(shape), name="mix", **attrs)
    if shape[1] == 1:
        y = b.add(y, x, name="back")
    head(b, y)
    g = analyze(b.build()).group("c1")
    assert g.prunable is not locked
    if locked:
        assert "'mix'" in g.reason


def test_pad_on_channels_locks_pad_on_space_does_not():
    # zeros padded onto the channels map as a concat (BlazeFace); an edge pad copies
    # channels (locked)
    channels = [0, 1, 0, 0, 0, 1, 0, 0]
    for pads, mode, locked in (
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", False),
        (channels, "constant", False),
        (channels, "edge", True),
    ):
        b = OnnxBuilder()
        x = stem(b)
        shape = tuple(d + pads[i] + pads[i + 4] for i, d in enumerate(b.shapes[x]))
        pad = b.const("pads", np.array(pads, np.int64))
        y = b.op("Pad", [x, pad], shape, name="pad", mode=mode)
        head(b, y)
        g = analyze(b.build()).group("c1")
        assert g.prunable is not locked, pads


def test_channel_slice_keeps_both_parts_prunable_and_complete():
    b = OnnxBuilder()
    x = stem(b, c=12)
    y = b.slice(x, [2], [9], [1], name="take")  # channels 2..8 of 12
    head(b, b.relu(y))
    model = b.build()
    a = analyze(model)
    groups = [g for g in a.groups if "c1" in g.producers]
    sizes = sorted(g.size for g in groups)
    assert sizes == [2, 3, 7]  # the head, the taken middle, the tail
    middle = next(g for g in groups if g.size == 7)
    rows = next(m for m in middle.members if m.tensor == "c1.weight")
    assert (rows.start, rows.length) == (2, 7)
    out_cols = next(m for m in middle.members if m.tensor == "out.weight")
    assert (out_cols.start, out_cols.axis) == (0, 1)
    assert_groups_complete(a, model)


def test_strided_channel_slice_locks():
    b = OnnxBuilder()
    x = stem(b)
    y = b.slice(x, [0], [8], [1], steps=[2], name="every_other")
    head(b, y)
    g = analyze(b.build()).group("c1")
    assert not g.prunable and "every_other" in g.reason


def test_transpose_to_channels_last_then_matmul():
    b = OnnxBuilder()
    x = stem(b)
    t = b.transpose(x, [0, 2, 3, 1], name="nhwc")
    y = b.matmul(t, 6, name="proj")
    b.output(b.transpose(y, [0, 3, 1, 2], name="nchw"))
    model = b.build()
    a = analyze(model)
    g = a.group("c1")
    assert g.prunable
    assert ("consumer", "proj.weight", 0) in {(m.role, m.tensor, m.axis) for m in g.members}
    assert not a.group("proj").prunable  # reaches the graph output
    assert_groups_complete(a, model)


def view_flatten_model(fixed_channels: int | None = None, unreadable: bool = False):
    """``fc(x.view(x.size(0), -1))`` as exporters write it: Shape, Gather, Unsqueeze,
    Concat, Reshape; optionally with a fixed channel count or an unreadable shape."""
    b = OnnxBuilder()
    x = b.input("input", ["N", 3, 6, 6])
    y = b.relu(b.conv(x, 8, name="c1"), name="r1")
    shp = b.op("Shape", [y], (4,), name="shape_of")
    n = b.op("Gather", [shp, b.const("zero", np.array(0, np.int64))], (), name="batch")
    n1 = b.op("Unsqueeze", [n, b.const("ax0", np.array([0], np.int64))], (1,), name="batch1")
    rest = [fixed_channels, -1] if fixed_channels else [-1]
    target = b.concat([n1, b.const("rest", np.array(rest, np.int64))], axis=0, name="target")
    if unreadable:
        target = b.op("Abs", [target], (len(rest) + 1,), name="scramble")
    flat = b.op("Reshape", [y, target], ("N", 8 * 36) if not fixed_channels else None, name="view")
    b.shapes[flat] = (1, 8, 36) if fixed_channels else (1, 288)
    if fixed_channels:
        flat = b.op("Flatten", [flat], (1, 288), name="flat2", axis=1)
    b.output(b.gemm(flat, 10, name="fc"))
    return b.build()


def test_exported_view_flatten_is_prunable_and_complete():
    model = view_flatten_model()
    a = analyze(model)
    g = a.group("c1")
    assert g.prunable
    fc = next(m for m in g.members if m.tensor == "fc.weight")
    assert (fc.axis, fc.block) == (1, 36)
    assert_groups_complete(a, model)


def test_computed_shape_with_a_fixed_channel_count_is_rewritten():
    """``x.view(x.size(0), 8, -1)``: the literal 8 sits in a constant of the Concat, which
    compaction rewrites, so the channels stay prunable and compact == sparse."""
    model = view_flatten_model(fixed_channels=8)
    a = analyze(model)
    assert a.group("c1").prunable
    assert_groups_complete(a, model)
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))


def test_computed_shape_with_a_literal_that_cannot_be_rewritten_locks():
    model = view_flatten_model(fixed_channels=8)
    for node in model.graph.node:  # the literal now passes through arithmetic
        if node.name == "view":
            node.input[1] = "target_plus"
    at = next(i for i, n in enumerate(model.graph.node) if n.name == "view")
    model.graph.node.insert(
        at, helper.make_node("Add", ["target", "zeros3"], ["target_plus"], name="arith")
    )
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([0, 0, 0], np.int64), "zeros3")
    )
    g = analyze(model).group("c1")
    assert not g.prunable and "Reshape 'view'" in g.reason


def test_unreadable_computed_shape_locks_naming_the_node():
    g = analyze(view_flatten_model(unreadable=True)).group("c1")
    assert not g.prunable
    assert "Reshape 'view' has a target shape computed in a way drpopt cannot read" in g.reason


def test_conv_transpose_couples_input_rows_and_output_columns():
    b = OnnxBuilder()
    x = stem(b)
    y = b.relu(b.conv_transpose(x, 6, name="up"))
    head(b, y)
    model = b.build()
    a = analyze(model)
    up = a.group("up")
    assert up.size == 6 and up.prunable
    assert ("producer", "up.weight", 1) in {(m.role, m.tensor, m.axis) for m in up.members}
    c1 = a.group("c1")
    assert ("consumer", "up.weight", 0) in {(m.role, m.tensor, m.axis) for m in c1.members}
    assert_groups_complete(a, model)


def test_unknown_op_locks_and_is_reported_and_custom_rule_unlocks():
    b = OnnxBuilder()
    x = stem(b)
    b.nodes.append(helper.make_node("Frobnicate", [x], ["fro"], name="fro", domain="acme"))
    b.shapes["fro"] = b.shapes[x]
    head(b, "fro")
    model = b.build(check=False, infer_shapes=False)
    model.opset_import.append(helper.make_opsetid("acme", 1))
    # a custom op's output shape comes from the exporter's value_info
    model.graph.value_info.append(helper.make_tensor_value_info("fro", 1, [1, 8, 8, 8]))
    a = analyze(model)
    assert a.unsupported == [("Frobnicate", "fro")]
    g = a.group("c1")
    assert not g.prunable and "Frobnicate 'fro' has no coupling rule" in g.reason

    def frobnicate(node, cg):
        broadcast(cg, node, [node.input(0)], node.outputs[0])

    register_rule("acme::Frobnicate", frobnicate)
    try:
        a = analyze(model)
        assert a.unsupported == [] and a.group("c1").prunable
    finally:
        RULES.pop("acme::Frobnicate")


def test_values_used_inside_a_subgraph_are_locked():
    b = OnnxBuilder()
    x = stem(b)
    cond = b.const("cond", np.array(True))
    then_g = helper.make_graph(
        [helper.make_node("Relu", [x], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", 1, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Sigmoid", [x], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", 1, None)],
    )
    b.nodes.append(
        helper.make_node(
            "If", [cond], ["branch"], name="branchy", then_branch=then_g, else_branch=else_g
        )
    )
    b.output("branch")
    head(b, x)
    a = analyze(b.build(check=False))
    g = a.group("c1")
    assert not g.prunable
    assert "used inside a subgraph of If 'branchy'" in g.reason


def test_graph_input_channels_are_locked_but_not_reported_as_groups():
    b = OnnxBuilder()
    x = stem(b)
    head(b, x)
    a = analyze(b.build())
    # the RGB input channels have no producing layer: they are no group at all
    assert all("input" not in (m.tensor or "") for g in a.groups for m in g.members)
    assert [g.producers for g in a.groups] == [["c1"], ["out"]]
