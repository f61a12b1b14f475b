"""Op rules: one table, keyed by ONNX op type, of one ``OpRule`` per op: how the op ties
channel spaces (``couple``), how it is rewritten when channels go (``compact``) and how
when they are only masked (``sparse``, ``unmasked_inputs``).

A coupling function gets the node and the ``ChannelGraph`` and states relations between
``(value, axis)`` spaces (``identity``, ``concat``, ``expand``), the roles weights play
(``producer`` rows make the channels, ``consumer`` columns read them, ``follower`` slices ride
along), and locks. An op with no entry here locks every space of its inputs and outputs
(``apply_rules``). Size-1 axes have no space: a broadcast of size 1 couples nothing.

This module holds the table, the helpers rules share and the driver (``apply_rules``); the
coupling functions are in ``ir/rules_layers.py`` (ops that compute; casts in
``ir/rules_cast.py``), ``ir/rules_shapes.py``
(ops that move channels) and ``ir/rules_select.py`` (Pad, Gather, GatherElements), the
compaction hooks of the ops that need more than their members cut in
``ir/rules_compact.py``, the sparse forms of normalisations in ``ir/rules_norm.py`` and of
sums over channels in ``ir/rules_reduce.py``, all imported at the end so they register.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.shape_expr import const_ints

Rule = Callable[[Node, ChannelGraph], None]
CompactHook = Callable[[Graph, Node, "KeptChannels"], None]
SparseHook = Callable[[Graph, Node, "KeptChannels"], bool]


def follow_members(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """The compaction of an op with nothing of its own to rewrite: ``compact`` cuts every
    constant in a pruned group and the op's outputs take the new shapes (elementwise ops,
    pooling, Concat, a per-channel scale whose scale is a ``follower``)."""


@dataclass(frozen=True)
class OpRule:
    """One op type's entry: how it couples channels, how it is rewritten when they go, and
    how when they are only masked (the sparse model: dense shapes with zeros).

    - ``couple(node, cg)`` states the op's relations, roles and locks (see above);
    - ``compact(graph, node, kept)`` runs in ``compact`` before any tensor is cut (the old
      shapes are still there): it rewrites what states channel counts or positions in the
      node itself, attributes and constant inputs (``Split`` sizes, ``Slice`` bounds, a
      grouped conv's ``group``); ``kept`` says which channels stay. ``follow_members`` when
      there is nothing to rewrite; ``None`` when nobody said: ``compact`` then refuses a
      model whose channels through the op were pruned, rather than guess;
    - ``finish(graph, node, kept)`` (optional) runs after the cut, on the new shapes;
    - ``sparse(graph, node, kept)`` (optional) runs in ``apply-masks`` after the pruned
      channels are zeroed, for a node whose inputs or outputs carry masked channels: it
      rewrites an op whose result would still count the zeroed channels (a normalisation's
      statistics over the channel axis) so the sparse model computes what the compact one
      does, and returns whether it changed the graph's structure; ``None`` where the
      zeros alone make the sparse model right (most ops);
    - ``unmasked_inputs``: constant inputs that ``apply-masks`` leaves as they are where
      channels are masked (BatchNormalization's running mean and variance: the zeroed scale
      already silences the channel, a zeroed variance would risk 0/0); ``compact`` still
      cuts them.
    """

    couple: Rule
    compact: CompactHook | None = None
    finish: CompactHook | None = None
    sparse: SparseHook | None = None
    unmasked_inputs: tuple[int, ...] = ()


RULES: dict[str, OpRule] = {}

UNARY_OPS = [
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Mish",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Neg",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Not",
    "IsNaN",
    "IsInf",
    "Identity",
    "Cast",
    "CastLike",
    "Dropout",
    "Clip",
    "Shrink",
    "BitwiseNot",
]
ELEMENTWISE_OPS = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Pow",
    "Where",
    "PRelu",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
]
POOL_OPS = [
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
]
REDUCE_OPS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
]
# Reductions whose value over the kept channels is their value over all channels with the
# pruned ones zeroed (a mean divides by the count, a max or a log-sum-exp sees the zeros)
SUM_LIKE = frozenset(["ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"])
RESHAPE_OPS = ["Reshape", "Flatten", "Squeeze", "Unsqueeze"]
NO_DATA_OPS = ["Shape", "Size", "Constant"]


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Registers a built-in coupling function for the given op types (later registrations
    win); their compaction is ``follow_members`` until ``rules_compact`` gives them a hook."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = OpRule(fn, compact=follow_members)
        return fn

    return deco


def register_rule(op_type: str, rule: OpRule | Rule) -> None:
    """Adds or replaces the rule of ``op_type`` (``"domain::OpType"`` for custom ops): an
    ``OpRule``, or a bare coupling function (an ``OpRule`` without compaction: ``compact``
    refuses to cut channels through the op)."""
    RULES[op_type] = rule if isinstance(rule, OpRule) else OpRule(rule)


# ---- helpers ----------------------------------------------------------------------------
def same_axes(
    cg: ChannelGraph, node: Node, x: Value | None, y: Value, axes=None, y_spaces=None
) -> None:
    """Identity on every axis where the sizes agree; axes that change size are locked.

    An axis of size 1 on both sides has no space on either (nothing couples, and the
    central lock skips size-1 axes): it is passed over without asking for its spaces.
    ``y_spaces`` ({axis: space}) keeps ``y``'s spaces across calls with one ``y`` (every
    part of a Concat): each is asked for once, when first needed, so spaces are made in
    the same order as without it."""
    if x is None:
        return
    xs, ys = x.shape, y.shape
    if xs is None or ys is None or len(xs) != len(ys):
        cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"{node.op_type} '{node.name}': rank unknown", node)
        return
    space, identity = cg.space, cg.identity
    known = y_spaces if y_spaces is not None else {}
    for ax in range(len(xs)) if axes is None else axes:
        dim = xs[ax]
        if dim == ys[ax]:
            if dim != 1:
                sx = space(x, ax)
                sy = known.get(ax, _NO_SPACE)
                if sy is _NO_SPACE:
                    sy = known[ax] = space(y, ax)
                identity(sx, sy, node)
        else:
            why = f"{node.op_type} '{node.name}' changes the size of axis {ax}"
            cg.lock(space(x, ax), "resized", why, node)
            cg.lock(space(y, ax), "resized", why, node)


_NO_SPACE = -1  # not asked for yet (space ids are >= 0, or None for size 1)


def broadcast(cg: ChannelGraph, node: Node, inputs: list[Value | None], out: Value) -> None:
    """Numpy broadcasting: an input axis of the output's size couples with it; size 1 does not.
    Each space of ``out`` is asked for once, when first needed (the same order of spaces)."""
    if out.shape is None:
        for x in inputs:
            cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': output rank unknown", node)
        cg.lock_value(out, "rule", f"{node.op_type} '{node.name}': output rank unknown", node)
        return
    space, identity = cg.space, cg.identity
    rank = len(out.shape)
    out_spaces = [_NO_SPACE] * rank
    for x in inputs:
        if x is None:
            continue
        xs = x.shape
        if xs is None:
            cg.lock_value(x, "rule", f"{node.op_type} '{node.name}': input rank unknown", node)
            continue
        off = rank - len(xs)
        for ax, dim in enumerate(xs):
            if dim != 1:
                sx = space(x, ax)
                so = out_spaces[off + ax]
                if so == _NO_SPACE:
                    so = out_spaces[off + ax] = space(out, off + ax)
                identity(sx, so, node)


def reduce_axes(node: Node) -> list[int] | None:
    """The axes (>= 0, sorted) a Reduce* node reduces: its ``axes`` attribute or constant
    input, every axis when none are given (none with ``noop_with_empty_axes``); None when
    the axes are computed or the rank is unknown."""
    x = node.input(0)
    if x is None or x.rank is None:
        return None
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.input(1) is not None:
        axes = const_ints(node.input(1))
        if axes is None:
            return None
    if not axes:
        axes = [] if node.attr("noop_with_empty_axes", 0) else list(range(x.rank))
    return sorted(a % x.rank for a in axes)


def lock_axis(cg: ChannelGraph, node: Node, values, axes, why: str) -> None:
    for v in values:
        if v is None or v.rank is None:
            continue
        for ax in axes:
            if -v.rank <= ax < v.rank:
                cg.lock(cg.space(v, ax), "rule", f"{node.op_type} '{node.name}' {why}", node)


# ---- rules ------------------------------------------------------------------------------


# ---- driver -----------------------------------------------------------------------------
def node_opset(node: Node, graph: Graph) -> int:
    return graph.opsets.get(node.domain or "", graph.opsets.get("", 17))


def batch_statistics(node: Node, graph: Graph) -> bool:
    """Whether the BatchNormalization ``node`` normalises by the statistics of its input
    (training mode) rather than its running mean and variance: ``training_mode=1`` from
    opset 14; in opsets 7 to 13 its extra outputs (mean, var, saved mean and variance) say
    so (onnxruntime computes the batch's statistics when they are there)."""
    if node_opset(node, graph) >= 14:
        return bool(node.attr("training_mode", 0))
    return node_opset(node, graph) >= 7 and len(node.outputs) > 1


_plugins_loaded = False
_plugin_loader: Callable[[], None] | None = None


def set_plugin_loader(loader: Callable[[], None]) -> None:
    """Sets what loads rule plugins before the first rule is looked up. The package root
    wires ``drpopt.plugins`` here, so ``ir`` imports nothing above it."""
    global _plugin_loader, _plugins_loaded
    _plugin_loader, _plugins_loaded = loader, False


def load_rule_plugins() -> None:
    """Registers the rules of plugins (entry point group ``drpopt.rules``), once."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        if _plugin_loader is not None:
            _plugin_loader()


def op_key(node: Node) -> str:
    """The table key of ``node``: ``domain::OpType`` for custom domains, else the op type."""
    if node.domain not in ("", "ai.onnx"):
        # the fx frontend names unknown ops "fx::<name>" already
        return node.op_type if "::" in node.op_type else f"{node.domain}::{node.op_type}"
    return node.op_type


def rule_for(node: Node) -> OpRule | None:
    """The rule of ``node`` by ``op_key`` (plugin rules included), or None."""
    if not _plugins_loaded:
        load_rule_plugins()
    return RULES.get(op_key(node))


_UNKNOWN: Rule = lambda node, cg: None  # noqa: E731 (a rule not looked up yet)


def apply_rules(
    graph: Graph, reshape_levels: dict[tuple, int] | None = None, memos=None
) -> ChannelGraph:
    """Runs every node's rule over ``graph``; nodes without one lock what they touch, and
    every axis of a node's inputs and outputs that its rule did not mention is locked.
    ``reshape_levels`` says which axis carries the channels in a reshape's split or merge
    (keyed as ``ChannelGraph.reshape_levels``);
    ``memos`` are an earlier run's ``(shape_memo, numeric_memo)`` over the same shapes."""
    cg = ChannelGraph(graph)
    if memos is not None:
        cg.shape_memo, cg.numeric_memo = memos
    cg.reshape_levels = dict(reshape_levels or {})
    for v in graph.inputs:
        cg.lock_value(v, "graph-input", f"graph input '{v.name}'")
    cg.touched.clear()
    couples: dict[tuple[str, str], Rule | None] = {}  # by (domain, op type): one lookup each
    for node in graph.nodes:
        key = (node.domain, node.op_type)
        fn = couples.get(key, _UNKNOWN)
        if fn is _UNKNOWN:
            op_rule = rule_for(node)
            fn = couples[key] = op_rule.couple if op_rule is not None else None
        if node.meta.get("folded"):
            cg.touched.clear()
            continue  # a constant computed from constants: independent of its source
        if fn is _metadata_only and not node.subgraphs:
            # Constant, Shape, Size: every axis independent, so nothing to relate or lock
            # (the rule and ``lock_untouched`` would only mark them and clear the marks)
            cg.touched.clear()
        else:
            if fn is None or node.subgraphs:
                if fn is None:
                    cg.unsupported.append(node)
                why = "has no coupling rule" if fn is None else "has subgraphs"
                kind = "no-rule" if fn is None else "subgraph"
                for v in (*node.inputs, *node.outputs):
                    cg.lock_value(v, kind, f"{node.op_type} '{node.name}' {why}", node)
            else:
                fn(node, cg)
            cg.lock_untouched(node)
        for v in node.meta.get("captured", ()):
            cg.lock_value(
                v, "subgraph", f"used inside a subgraph of {node.op_type} '{node.name}'", node
            )
    _tie_shared_weights(graph, cg)
    for v in graph.outputs:
        cg.lock_value(v, "graph-output", f"graph output '{v.name}'")
    return cg


_LAYER_OPS = frozenset(["Conv", "ConvTranspose", "Gemm", "MatMul"])


def _tie_shared_weights(graph: Graph, cg: ChannelGraph) -> None:
    """A layer applied several times reads one weight tensor from several nodes
    (torchvision's FCOS/RetinaNet run one conv tower over every pyramid level); the frontend
    gives each use a value of its own. Their axes are tied, so every use prunes the same
    channels and the compact model keeps one tensor (cut apart, each copy would be a tensor
    of its own: a head shared by five levels compacts to more than the dense model). Only
    layer weights (input 1 of the same op, same shape): biases and norm constants that an
    exporter or onnxsim shares because they are equal (a zero bias read by 36 convs) stay
    apart."""
    copies: dict[tuple, list[tuple[Value, Node]]] = {}
    for node in graph.nodes:  # the layers' weights, not every value
        if node.op_type not in _LAYER_OPS or len(node.inputs) < 2:
            continue
        v = node.inputs[1]
        if v is None or len(v.uses) != 1 or v.shape is None or not v.is_const:
            continue
        copies.setdefault((v.storage, node.op_type, v.shape), []).append((v, node))
    shared = [uses for uses in copies.values() if len(uses) > 1]
    if not shared:
        return
    # tied in the order of ``graph.values`` (the order spaces are made in)
    position = {id(v): i for i, v in enumerate(graph.values.values())}
    for uses in shared:
        uses.sort(key=lambda use: position[id(use[0])])
    shared.sort(key=lambda uses: position[id(uses[0][0])])
    for uses in shared:
        first = uses[0][0]
        for v, node in uses[1:]:
            for axis in range(len(v.shape)):  # type: ignore[arg-type]
                cg.identity(cg.space(first, axis), cg.space(v, axis), node)


# the rules register themselves on import (after everything above is defined): the
# compaction module imports the coupling modules, then gives their rules its hooks; the
# normalisations' and the sum-like reductions' sparse forms come last
from drpopt.ir import rules_cast, rules_norm, rules_reduce  # noqa: E402, F401
from drpopt.ir.rules_compact import KeptChannels  # noqa: E402
from drpopt.ir.rules_layers import _no_data as _metadata_only  # noqa: E402
