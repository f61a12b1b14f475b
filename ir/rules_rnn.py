"""The coupling and compaction rules of the recurrent layers ``LSTM``, ``GRU`` and ``RNN``
(ONNX opset 14 semantics; torch's exports of ``nn.LSTM``/``nn.GRU``/``nn.RNN``, one node per
layer, batch-first inputs as Transposes around it).

Shapes (``layout=0``, D directions, G gates: LSTM 4 ``i o f c``, GRU 3 ``z r h``, RNN 1):
X ``[T, B, I]``, W ``[D, G*H, I]``, R ``[D, G*H, H]``, B ``[D, 2*G*H]`` (Wb then Rb),
P ``[D, 3*H]`` (LSTM peepholes), initial_h/initial_c ``[D, B, H]``, Y ``[T, D, B, H]``,
Y_h/Y_c ``[D, B, H]``.

- the input features of X are W's input axis (its consumer columns);
- the hidden units are one channel space: unit ``j`` is row ``j`` of every gate block of W
  and R (producers), column ``j`` of R (consumer: the recurrence reads it), entry ``j`` of
  every block of B and P, and entry ``j`` of the hidden axis of the states and outputs.
  Both directions share it: ``hidden_size`` is one attribute, so a direction cannot keep
  more units than the other, and a bidirectional output flattened to ``2*H`` features then
  drops the same unit of each direction. The directions axis itself is not pruned (a locked
  virtual space, so a Reshape that merges it with the hidden axis maps the hidden units);
- the batch axis couples 1:1 (X, states, outputs, sequence_lens); the time axis is locked
  (the recurrence mixes time steps).

A unit whose W, R and B rows are zeroed (``apply-masks``) outputs exactly zero when its
initial state is zero: LSTM ``i = f = o = sigmoid(0)``, ``g = tanh(0) = 0`` so ``c`` stays
0 and ``h = o * tanh(0) = 0``; GRU ``n = tanh(0) = 0`` (with or without
``linear_before_reset``: the zeroed row of R multiplies nothing into it) and
``h = (1 - z) * 0 + z * h_prev`` stays 0; RNN ``tanh(0) = 0`` (``Relu(0) = 0`` too).
Constant initial states are followers (their pruned entries zeroed and cut); initial
states that are zeros computed at run time (torch's ``Expand`` of a zero constant to
``[D, batch, H]``) are left out of the coupling and dropped by ``compact`` (the ONNX
default is zeros). ``clip`` keeps zero at zero and is supported. What this argument does
not cover locks every axis of the node with the reason: activations other than the
defaults (RNN may also use ``Relu``), activation parameters, LSTM's ``input_forget``,
``layout=1``, weights that are not constants or whose shapes disagree with
``hidden_size``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.rules import RULES, OpRule

if TYPE_CHECKING:
    from drpopt.ir.rules_compact import KeptChannels

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# the activations of one direction that keep a unit with zero weights at zero output
ACTIVATIONS = {
    "LSTM": [("Sigmoid", "Tanh", "Tanh")],
    "GRU": [("Sigmoid", "Tanh")],
    "RNN": [("Tanh",), ("Relu",)],
}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
# ops through which a zero constant stays all zeros (input 0 is the data)
_ZERO_KEEPING = frozenset(
    ["Expand", "Tile", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Slice"]
)


def unsupported(node: Node) -> str | None:
    """Why the rule cannot vouch for ``node`` (what is locked), or None."""
    op = node.op_type
    if int(node.attr("layout", 0)) != 0:
        return "has layout=1 (batch-major tensors), which drpopt does not map"
    if node.attr("activation_alpha") is not None or node.attr("activation_beta") is not None:
        return "has activation parameters (activation_alpha/beta)"
    direction = node.attr("direction", "forward")
    if direction not in DIRECTIONS:
        return f"has direction {direction!r}"
    acts = node.attr("activations")
    if acts is not None:
        n = len(ACTIVATIONS[op][0])
        per_dir = [tuple(acts[k : k + n]) for k in range(0, len(acts), n)]
        if len(acts) != n * DIRECTIONS[direction] or any(a not in ACTIVATIONS[op] for a in per_dir):
            return (
                f"has activations {acts}: a unit with zero weights would not output zero "
                "(only the default activations are supported)"
            )
    if op == "LSTM" and int(node.attr("input_forget", 0)):
        return "couples its input and forget gates (input_forget=1)"
    return None


def zero_state(value: Value | None) -> bool:
    """Whether a computed initial state is all zeros (torch's ``Expand(0, [D, batch, H])``):
    a bounded walk through ops that keep zeros to a zero constant or ``ConstantOfShape``."""
    for _ in range(8):
        if value is None:
            return False
        if value.is_const:
            return bool(np.all(np.asarray(value.const) == 0))
        node = value.producer
        if node is None:
            return False
        if node.op_type == "ConstantOfShape":
            fill = node.attr("value")
            return fill is None or bool(np.all(np.asarray(fill) == 0))
        if node.op_type not in _ZERO_KEEPING:
            return False
        value = node.input(0)
    return False


def _weights_ok(node: Node, hidden: int, dirs: int, gates: int) -> bool:
    """W, R (and B, P when given) are constants of the shapes ``hidden_size`` says."""
    w, r, b = node.input(1), node.input(2), node.input(3)
    p = node.input(7) if node.op_type == "LSTM" else None
    if w is None or r is None or not w.is_const or not r.is_const:
        return False
    want = [
        (w, (dirs, gates * hidden, w.shape[2] if w.shape and len(w.shape) == 3 else -1)),
        (r, (dirs, gates * hidden, hidden)),
        (b, (dirs, 2 * gates * hidden)),
        (p, (dirs, 3 * hidden)),
    ]
    return all(v is None or (v.is_const and tuple(v.shape or ()) == s) for v, s in want)


def _couple(node: Node, cg: ChannelGraph) -> None:
    op, name = node.op_type, node.name
    x, w = node.input(0), node.input(1)
    hidden = int(node.attr("hidden_size", 0) or 0)
    dirs = DIRECTIONS.get(node.attr("direction", "forward"), 0)
    why = unsupported(node)
    outs_ok = all(v.rank in (3, 4) for v in _outputs(node))
    if why is None and (x is None or x.rank != 3 or not outs_ok):
        why = "has inputs or outputs of unknown rank"
    if why is None and (hidden < 1 or not _weights_ok(node, hidden, dirs, GATES[op])):
        why = "has weights that are not constants of the shapes hidden_size says"
    if why is not None:
        for v in (*node.inputs, *_outputs(node)):
            cg.lock_value(v, "rule", f"{op} '{name}' {why}", node)
        if w is not None and w.rank == 3:  # the layer's units: a locked group, named
            cg.role(cg.space(w, 1), "producer", node)
        return
    assert x is not None and w is not None
    cg.lock(cg.space(x, 0), "rule", f"{op} '{name}' mixes time steps (the recurrence)", node)
    # input features: W's columns read them
    cg.identity(cg.space(x, 2), cg.space(w, 2), node)
    cg.role(cg.space(w, 2), "consumer", node)
    direction = _directions(node, cg, dirs)
    hid = _hidden_units(node, cg, hidden)
    _states_and_outputs(node, cg, direction, cg.space(x, 1), hid, dirs)


def _directions(node: Node, cg: ChannelGraph, dirs: int) -> int | None:
    """The directions are not pruned (one ``hidden_size``): a locked virtual producer, so a
    Reshape merging them with the hidden axis (torch's ``[T, B, 2*H]``) maps the units."""
    if dirs < 2:
        return None
    direction = cg.virtual(f"{node.name}.directions", dirs)
    cg.role(direction, "producer", node)
    msg = f"{node.op_type} '{node.name}' does not prune its directions (one hidden_size)"
    cg.lock(direction, "rule", msg, node)
    for index in (1, 2, 3, 7):
        v = node.input(index)
        if v is not None:
            cg.lock(cg.space(v, 0), "rule", msg, node)
    return direction


def _hidden_units(node: Node, cg: ChannelGraph, hidden: int) -> int | None:
    """Unit ``j``: row ``j`` of every gate block of W and R, column ``j`` of R, entry ``j``
    of every block of B (Wb, Rb) and P. Returns the units' virtual space (None for one)."""
    name, gates = node.name, GATES[node.op_type]
    w, r, b = node.input(1), node.input(2), node.input(3)
    peep = node.input(7) if node.op_type == "LSTM" else None
    assert w is not None and r is not None
    rows = cg.space(w, 1)
    cg.identity(rows, cg.space(r, 1), node)
    cg.role(rows, "producer", node)
    cg.role(cg.space(r, 1), "producer", node)
    if b is not None:
        halves = [cg.virtual(f"{name}.{h}", gates * hidden) for h in ("wb", "rb")]
        cg.concat(cg.space(b, 1), halves, node)  # type: ignore[arg-type]
        for half in halves:
            cg.identity(half, rows, node)
        cg.role(cg.space(b, 1), "follower", node)
    if hidden < 2:  # the rows are the gates of one unit: nothing to prune
        why = f"{node.op_type} '{name}' has one hidden unit (its rows are gates)"
        cg.lock(rows, "rule", why, node)
        return None
    hid = cg.virtual(f"{name}.hidden", hidden)
    _blocks(node, cg, rows, gates, hid, "gate")
    cg.identity(cg.space(r, 2), hid, node)
    cg.role(cg.space(r, 2), "consumer", node)
    if peep is not None:
        _blocks(node, cg, cg.space(peep, 1), 3, hid, "peephole")
        cg.role(cg.space(peep, 1), "follower", node)
    return hid


def _blocks(node: Node, cg: ChannelGraph, whole: int | None, n: int, hid: int, what: str):
    """``whole`` is ``n`` blocks of the hidden units, one after another."""
    if n == 1:
        cg.identity(whole, hid, node)
        return
    length = cg.spaces[hid].length or 0
    parts = [cg.virtual(f"{node.name}.{what}{k}", length) for k in range(n)]
    for part in parts:
        cg.identity(part, hid, node)
    cg.concat(whole, parts, node)  # type: ignore[arg-type]


def _states_and_outputs(node: Node, cg: ChannelGraph, direction, batch, hid, dirs: int) -> None:
    """Initial states and outputs share the node's directions, batch and hidden units; the
    time axis of Y is locked; computed zero initial states are left out (compact drops
    them)."""
    seq_lens = node.input(4)
    if seq_lens is not None and seq_lens.rank == 1:
        cg.identity(cg.space(seq_lens, 0), batch, node)
    for index in (5, 6) if node.op_type == "LSTM" else (5,):
        s = node.input(index)
        if s is None:
            continue
        if not s.is_const and zero_state(s):
            cg.independent(s)  # zeros: compact drops it (the default initial state)
            continue
        _state_axes(cg, node, s, direction, batch, hid, dirs)
        if s.is_const:
            cg.role(cg.space(s, 2), "follower", node)
    for y in _outputs(node):
        if y.rank == 4:  # Y [T, D, B, H]
            why = f"{node.op_type} '{node.name}' mixes time steps (the recurrence)"
            cg.lock(cg.space(y, 0), "rule", why, node)
            cg.identity(cg.space(y, 1), direction, node)
            cg.identity(cg.space(y, 2), batch, node)
            cg.identity(cg.space(y, 3), hid, node)
        else:  # Y_h, Y_c [D, B, H] (exporters leave unused outputs out: ranks tell them)
            _state_axes(cg, node, y, direction, batch, hid, dirs)


def _outputs(node: Node) -> list[Value]:
    """The outputs the model writes (an omitted Y before Y_h is a placeholder of no shape)."""
    return [v for v in node.outputs if not v.meta.get("omitted")]


def _state_axes(cg, node, s: Value, direction, batch, hid, dirs: int) -> None:
    """A state ``[D, B, H]``: directions, batch and hidden units as the node's."""
    if s.rank != 3:
        why = f"{node.op_type} '{node.name}' has a state of rank {s.rank}"
        cg.lock_value(s, "rule", why, node)
        return
    if dirs > 1:
        cg.identity(cg.space(s, 0), direction, node)
    cg.identity(cg.space(s, 1), batch, node)
    cg.identity(cg.space(s, 2), hid, node)


def _compact(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """``hidden_size`` becomes the number of units kept; initial states that are computed
    zeros go (the default initial state is zeros), since their shape says the old size."""
    count = kept.count(node.input(2), 2)
    if count is None:
        return
    node.attrs["hidden_size"] = count
    for index in (5, 6) if node.op_type == "LSTM" else (5,):
        s = node.input(index)
        if s is not None and not s.is_const and zero_state(s):
            graph.set_input(node, index, None)


for _op in GATES:
    RULES[_op] = OpRule(_couple, compact=_compact)
