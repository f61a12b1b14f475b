"""The LSTM/GRU/RNN rules (ir/rules_rnn.py) on torch's exports of ``nn.LSTM``, ``nn.GRU`` and
``nn.RNN``: the hidden units of each layer are one prunable group that covers every gate
block, the sparse model (apply-masks) and the compact one agree in onnxruntime, the
dead-channel check holds, and what the rule cannot vouch for locks with the node named."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from deadchannels import assert_groups_complete, assert_members_tile, random_feeds, run_model
from onnx import helper, numpy_helper
from torch import nn

from drpopt import analyze
from drpopt.ir.counting import node_macs
from drpopt.ir.to_onnx import to_onnx

sys.path.insert(0, str(Path(__file__).parents[1] / "corpus"))
from corpus_checks import CONFIGS, TOLERANCE, compact_counts, compare_outputs, prune

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


class Recurrent(nn.Module):
    """Linear -> ReLU -> a recurrent layer -> Linear over every time step."""

    def __init__(self, cell, bidirectional=False, layers=1, batch_first=False, **kw) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.rnn = cell(8, 10, layers, bidirectional=bidirectional, batch_first=batch_first, **kw)
        self.out = nn.Linear(20 if bidirectional else 10, 5)
        self.batch_first = batch_first

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.out(y)


MODELS = {
    "lstm": dict(cell=nn.LSTM),
    "lstm_bidirectional_batch_first": dict(cell=nn.LSTM, bidirectional=True, batch_first=True),
    "lstm_2_layers_bidirectional": dict(cell=nn.LSTM, bidirectional=True, layers=2),
    "lstm_2_layers_batch_first": dict(cell=nn.LSTM, layers=2, batch_first=True),
    "gru_bidirectional": dict(cell=nn.GRU, bidirectional=True),
    "gru_batch_first": dict(cell=nn.GRU, batch_first=True),
    "rnn_2_layers": dict(cell=nn.RNN, layers=2),
    "rnn_relu_bidirectional": dict(cell=nn.RNN, bidirectional=True, nonlinearity="relu"),
}


def export(name: str, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = Recurrent(**MODELS[name]).eval()
    x = torch.randn(2, 7, 6) if net.batch_first else torch.randn(7, 2, 6)
    if dynamo:  # torch's default exporter (opset 20): constant zero initial states
        return torch.onnx.export(net, (x,), dynamo=True, verbose=False).model_proto
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (x,), buf, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _rnn_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in GATES]


def _hidden_size(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "hidden_size")


def _check_prunes(model: onnx.ModelProto) -> None:
    """Every recurrent node's hidden units form one prunable group covering each gate block
    of W and R, R's columns and B; rate 0.5 compacts to the planned size and hidden_size,
    and the compact outputs equal the sparse ones."""
    a = analyze(model)
    nodes = _rnn_nodes(model)
    assert nodes
    for node in nodes:
        hidden, gates = _hidden_size(node), GATES[node.op_type]
        group = a.group(node.name)
        assert group.prunable and group.size == hidden, (node.name, group.reason)
        for tensor, axis, length in (
            (node.input[1], 1, gates * hidden),  # W rows
            (node.input[2], 1, gates * hidden),  # R rows
            (node.input[2], 2, hidden),  # R columns
            (node.input[3], 1, 2 * gates * hidden),  # B (Wb, Rb)
        ):
            covered = sorted(
                i
                for m in group.members
                if m.tensor == tensor and m.axis == axis
                for i in m.indices(range(group.size))
            )
            assert covered == list(range(length)), (node.name, tensor, axis)
    assert_members_tile(a, to_onnx(a.graph, reshare=False))  # shared constants un-shared
    assert_groups_complete(a, model)
    pruned = prune(model, CONFIGS["rate0.5"])
    feeds = random_feeds(model)
    sparse, compact = run_model(pruned.masked, feeds), run_model(pruned.compact, feeds)
    err = compare_outputs(sparse, compact, "compact vs sparse")
    assert err < TOLERANCE, err
    params, _ = compact_counts(pruned.compact)
    assert params == pruned.expected_params < 0.5 * pruned.before.params
    dense = {n.name: _hidden_size(n) for n in nodes}
    for node in _rnn_nodes(pruned.compact):
        assert _hidden_size(node) == dense[node.name] // 2, node.name


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_recurrent_layers_prune_their_hidden_units(name):
    _check_prunes(export(name))


@pytest.mark.parametrize(
    "name",
    ["lstm_2_layers_bidirectional", pytest.param("gru_bidirectional", marks=pytest.mark.slow)],
)
def test_dynamo_exports_prune_their_hidden_units(name):
    _check_prunes(export(name, dynamo=True))


# ---- ONNX forms torch does not write: set on an exported model -----------------------------


def _set_attr(node: onnx.NodeProto, **attrs) -> None:
    for key, value in attrs.items():
        for a in list(node.attribute):
            if a.name == key:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(key, value))


def _with_state_and_peepholes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The LSTM reads constant, non-zero initial states and peepholes (P)."""
    rng = np.random.default_rng(1)
    node = _rnn_nodes(model)[0]
    dirs = 2 if any(a.s == b"bidirectional" for a in node.attribute) else 1
    hidden = _hidden_size(node)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    for index, shape, tensor in (
        (5, (dirs, 2, hidden), "h0"),
        (6, (dirs, 2, hidden), "c0"),
        (7, (dirs, 3 * hidden), "peepholes"),
    ):
        array = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, tensor))
        inputs[index] = tensor
    del node.input[:]
    node.input.extend(inputs)
    return model


def test_lstm_peepholes_and_constant_initial_states_are_cut_with_the_units():
    """Peepholes (3 blocks of hidden) and constant initial states follow the units: the
    sparse model zeroes them (a pruned unit then outputs exactly 0), compact cuts them."""
    model = _with_state_and_peepholes(export("lstm_bidirectional_batch_first"))
    a = analyze(model)
    node = _rnn_nodes(model)[0]
    members = {(m.tensor, m.axis, m.role) for m in a.group(node.name).members}
    assert {("h0", 2, "follower"), ("c0", 2, "follower"), ("peepholes", 1, "follower")} <= members
    _check_prunes(model)


def test_gru_without_linear_before_reset_and_clipped_cells_prune_exactly():
    """GRU's ``linear_before_reset=0`` (reset applied before R's hidden gate) and a cell
    ``clip`` keep a unit with zero weights at zero output: both prune."""
    model = export("gru_bidirectional")
    _set_attr(_rnn_nodes(model)[0], linear_before_reset=0, clip=0.7)
    _check_prunes(model)
    model = export("lstm_2_layers_batch_first")
    for node in _rnn_nodes(model):
        _set_attr(node, clip=0.5)
    _check_prunes(model)


def test_activations_that_do_not_keep_a_dead_unit_at_zero_lock_it():
    """With ``g = sigmoid`` an LSTM unit whose weights are zeroed still has
    ``c = sum of 0.5**k * 0.5`` and a non-zero output, so the sparse model would differ from
    the compact one: the rule locks the layer's units, naming the node."""
    model = export("lstm")
    node = _rnn_nodes(model)[0]
    _set_attr(node, activations=["Sigmoid", "Sigmoid", "Tanh"])
    a = analyze(model)
    group = a.group(node.name)
    assert not group.prunable
    assert f"LSTM '{node.name}' has activations" in group.reason
    pruned = prune(model, CONFIGS["rate0.5"])
    feeds = random_feeds(model)
    err = compare_outputs(run_model(pruned.masked, feeds), run_model(pruned.compact, feeds))
    assert err < TOLERANCE


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ({"layout": 1}, "has layout=1"),
        ({"input_forget": 1}, "couples its input and forget gates"),
        ({"activation_alpha": [0.5, 0.5, 0.5]}, "has activation parameters"),
    ],
)
def test_unsupported_attributes_lock_the_layer_with_the_node_named(attrs, reason):
    model = export("lstm")
    node = _rnn_nodes(model)[0]
    _set_attr(node, **attrs)
    a = analyze(model)
    group = a.group(node.name)
    assert not group.prunable and f"LSTM '{node.name}' {reason}" in group.reason
    upstream = [g for g in a.groups if any(m.tensor == node.input[1] for m in g.members)]
    assert all(not g.prunable for g in upstream)  # the input features lock too


def test_reverse_layer_with_sequence_lengths_prunes():
    """An ONNX GRU written by hand: ``direction=reverse``, constant ``sequence_lens`` (the
    batch axis), Y squeezed and read by a MatMul, Y_h read by another."""
    rng = np.random.default_rng(0)
    t, b, i, h = 6, 3, 4, 8

    def init(name, shape, dtype=np.float32):
        return numpy_helper.from_array((rng.standard_normal(shape)).astype(dtype), name)

    inits = [
        init("W", (1, 3 * h, i)),
        init("R", (1, 3 * h, h)),
        init("B", (1, 6 * h)),
        numpy_helper.from_array(np.array([6, 4, 2], dtype=np.int32), "lens"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        init("M1", (h, 5)),
        init("M2", (h, 2)),
    ]
    nodes = [
        helper.make_node(
            "GRU",
            ["x", "W", "R", "B", "lens"],
            ["y", "yh"],
            "gru",
            hidden_size=h,
            direction="reverse",
            linear_before_reset=1,
        ),
        helper.make_node("Squeeze", ["y", "axis1"], ["ys"]),
        helper.make_node("MatMul", ["ys", "M1"], ["out"]),
        helper.make_node("Squeeze", ["yh", "axis0"], ["hs"]),
        helper.make_node("MatMul", ["hs", "M2"], ["last"]),
    ]
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f32, [t, b, i])],
        [
            helper.make_tensor_value_info("out", f32, [t, b, 5]),
            helper.make_tensor_value_info("last", f32, [b, 2]),
        ],
        inits,
    )
    _check_prunes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))


def test_one_hidden_unit_is_not_a_group_of_gate_rows():
    """With ``hidden_size=1`` W's rows are the gates of one unit: never pruned apart."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(nn.LSTM(3, 1).eval(), (torch.randn(5, 1, 3),), buf, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    node = _rnn_nodes(model)[0]
    group = analyze(model).group(node.name)
    assert not group.prunable and "has one hidden unit" in group.reason


def test_bidirectional_outputs_drop_the_same_unit_of_each_direction():
    """The ``2 * hidden`` features after torch's Transpose + Reshape of a bidirectional
    output are the hidden units of both directions: unit ``j`` is feature ``j`` and
    ``hidden + j`` of the next Linear, which the directions' merge maps (not the directions
    axis, which is locked)."""
    model = export("lstm_bidirectional_batch_first")
    a = analyze(model)
    node = _rnn_nodes(model)[0]
    group = a.group(node.name)
    out_w = next(n for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/out"))
    reads = sorted(
        (m.start, m.block)
        for m in group.members
        if m.tensor == out_w.input[1] and m.role == "consumer"
    )
    assert reads == [(0, 1), (10, 1)]
    locked = [g for g in a.locked_groups if "does not prune its directions" in (g.reason or "")]
    assert locked and all(g.params == 0 for g in locked)


@pytest.mark.parametrize("name", ["lstm_bidirectional_batch_first", "gru_batch_first"])
def test_recurrent_layers_count_their_multiply_accumulates(name):
    """Each element of W and R takes part once per time step and batch element: the
    layer's MACs, and the hidden group's share of them, count it."""
    model = export(name)
    a = analyze(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    (node,) = _rnn_nodes(model)
    x = a.graph.values[node.input[0]].shape
    steps = x[0] * x[1]  # time steps and batch, whichever axis is which (layout 0)
    weights = inits[node.input[1]].size + inits[node.input[2]].size
    linear = sum(n.op_type in ("Gemm", "MatMul") for n in model.graph.node)
    assert linear and a.macs > steps * weights  # the layer plus the Linear layers
    rnn = next(n for n in a.graph.nodes if n.op_type == node.op_type)
    assert node_macs(rnn) == steps * weights
    hidden = a.group(node.name)
    assert hidden.macs >= steps * inits[node.input[2]].size  # R's rows and columns at least


def test_zero_recurrent_weights_skip_their_multiply_accumulates():
    """``macs_nonzero`` (what a sparse engine can skip) counts a recurrent layer's zero
    weights as skipped, like a conv's: half of W and R zero, half of the layer's MACs."""
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.passes.figures import model_figures

    model = export("lstm")
    (node,) = _rnn_nodes(model)
    dense = model_figures(from_onnx(model))
    for init in model.graph.initializer:
        if init.name in (node.input[1], node.input[2]):
            w = numpy_helper.to_array(init).copy()
            w.reshape(-1)[::2] = 0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    sparse = model_figures(from_onnx(model))
    rnn = node_macs(next(n for n in from_onnx(model).nodes if n.op_type == "LSTM"))
    assert dense["macs"] == sparse["macs"]
    assert dense["macs_nonzero"] - sparse["macs_nonzero"] == rnn // 2


def _lstm_without_y() -> onnx.ModelProto:
    """An LSTM whose Y is left out (``["", "Y_h"]``, as tf2onnx and Keras exports write
    it), Y_h read by a MatMul."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("W", (1, 16, 3)), ("R", (1, 16, 4)), ("P", (4, 5)))
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["", "yh"], name="lstm", hidden_size=4),
        helper.make_node("MatMul", ["yh", "P"], ["out"], name="proj"),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 1, 3])
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 1, 5])
    graph = helper.make_graph(nodes, "g", [x], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_omitted_output_keeps_the_others_in_place():
    """``["", "Y_h"]`` stays ``["", "Y_h"]`` through the IR (a dropped gap would make Y_h
    the node's Y), in both writers; the hidden units still prune exactly."""
    import onnx_ir

    from drpopt.ir.from_onnx import from_onnx
    from drpopt.ir.to_onnx_ir import to_onnx_ir

    model = _lstm_without_y()
    written = to_onnx(from_onnx(model))
    assert list(written.graph.node[0].output) == ["", "yh"]
    via_ir = onnx_ir.to_proto(to_onnx_ir(from_onnx(model)))
    assert list(via_ir.graph.node[0].output) == ["", "yh"]
    feeds = random_feeds(model)
    want = run_model(model, feeds)
    for copy in (written, via_ir):
        assert all(np.array_equal(a, b) for a, b in zip(want, run_model(copy, feeds), strict=True))
    a = analyze(model)
    assert a.group("lstm").prunable, a.group("lstm").reason
    pruned = prune(model, CONFIGS["rate0.5"])
    sparse, compact = run_model(pruned.masked, feeds), run_model(pruned.compact, feeds)
    assert compare_outputs(sparse, compact, "compact vs sparse") < TOLERANCE
    assert list(pruned.compact.graph.node[0].output) == ["", "yh"]
