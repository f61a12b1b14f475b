"""``compact``: physically remove the pruned channels of the plan, so the smaller model runs
in any runtime and computes what the masked (sparse) model computes.

Rules:
- every channel space of every pruned group gets a keep-mask; every constant with such a
  space is sliced along it (weights, biases, BN parameters, per-channel constants);
- each node's op rule rewrites what the node itself states about channels, through the
  ``compact`` hook of its ``OpRule`` (before the cut) and its ``finish`` hook (after it):
  ``Split`` sizes, ``Slice`` bounds, a grouped conv's ``group``, ... (``ir/rules_compact.py``;
  a plugin's rule brings its own);
- an op whose rule has no compaction hook (a custom op registered with a bare coupling
  function) and whose channels were pruned is refused, before anything changes;
- Concat, Flatten, pooling and elementwise ops need nothing: they follow their inputs;
- a model-local function that the hooks left uncalled (a masked op's body once the op is
  put back, ``ir/rules_norm.py``) goes, with its domain's opset when nothing else uses it;
- value shapes are updated; run ``cleanup`` after it to re-infer them and check the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drpopt.errors import UnsupportedModelError
from drpopt.ir.core import Graph
from drpopt.ir.rules import op_key, rule_for
from drpopt.ir.rules_compact import KeptChannels
from drpopt.ir.shape_expr import NumericMemo
from drpopt.passes.apply_masks import record_metadata, require_plan
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.common import get_analysis, reshare_equal_copies
from drpopt.passes.context import context_of
from drpopt.passes.plan import keep_masks


@dataclass
class CompactPass(Pass):
    """Remove the pruned channels from every member of each group (compact ONNX)."""

    name: ClassVar[str] = "compact"

    def call(self, model: Graph) -> PassResult:
        plan = require_plan(model, self.name)
        masks = keep_masks(plan.resolve(get_analysis(model)))
        if not masks:
            return PassResult(model, False)
        kept = KeptChannels(masks)
        _require_hooks(model, kept)
        called = _called_functions(model)
        _run_hooks(model, kept, "compact")
        keys: dict[str, tuple] = {}  # copies of one tensor cut alike stay one
        for (name, axis), mask in masks.items():
            if name is not None and model.values[name].is_const:
                value = model.values[name]  # its storage before apply-masks copied it
                key = keys.setdefault(name, (value.meta.get("shared_storage", value.storage),))
                keys[name] = (*key, (int(axis), mask.tobytes()))
        for (name, axis), mask in masks.items():
            if name is None:
                continue
            value = model.values[name]
            if value.is_const:
                if value.producer is not None and value.producer.op_type != "Constant":
                    model.materialize(value)
                value.const = np.compress(mask, value.const, axis=int(axis))
                value.shape = tuple(value.const.shape)
            elif value.shape is not None:
                shape = list(value.shape)
                shape[int(axis)] = int(mask.sum())
                value.shape = tuple(shape)
        reshare_equal_copies(model, {k: (v[0], *sorted(v[1:])) for k, v in keys.items()})
        kept.memo = NumericMemo()  # the shapes changed: sizes are computed again
        _run_hooks(model, kept, "finish")
        _drop_uncalled_functions(model, called)
        context = context_of(model)
        context.dense_weights = None  # shapes changed: the dense model is gone
        context.compacted = True
        record_metadata(model, plan)
        return PassResult(model, True)


def _require_hooks(graph: Graph, kept: KeptChannels) -> None:
    """Refuses, before anything changes, a node whose channels are cut when its op rule has
    no compaction hook: nobody said how the op is rewritten, and a guess could be wrong."""
    for node in graph.nodes:
        rule = rule_for(node)
        if rule is None or rule.compact is not None or node.meta.get("folded"):
            continue
        if kept.touches(node):
            raise UnsupportedModelError(
                f"{op_key(node)} '{node.name}' has pruned channels but its rule has no "
                "compaction hook: register an OpRule with compact= (follow_members when "
                "cutting its constants is all it needs), or keep its channels"
            )


def _run_hooks(graph: Graph, kept: KeptChannels, phase: str) -> None:
    """Calls the ``compact`` or ``finish`` hook of every node's op rule."""
    for node in list(graph.nodes):
        rule = rule_for(node)
        hook = getattr(rule, phase) if rule is not None else None
        if hook is not None:
            hook(graph, node, kept)


def _called_functions(graph: Graph) -> set[tuple[str, str]]:
    """The ``(domain, name)`` of every model-local function a node of ``graph`` (or of its
    subgraphs) calls; functions called from other functions are kept alive by those."""
    local = {(f.domain, f.name) for f in graph.functions}
    return {(n.domain, n.op_type) for n in _all_nodes(graph)} & local


def _all_nodes(graph: Graph):
    for node in graph.nodes:
        yield node
        for sub in node.subgraphs.values():
            for g in sub if isinstance(sub, list) else [sub]:
                yield from _all_nodes(g)


def _drop_uncalled_functions(graph: Graph, called: set[tuple[str, str]]) -> None:
    """Drops the functions the graph called before the hooks ran and calls no more (nor
    does another function), and then the opset of a domain nothing uses any longer."""
    gone = called - _called_functions(graph)
    inner = {(n.domain, n.op_type) for f in graph.functions for n in f.node}
    gone -= inner
    if not gone:
        return
    graph.functions = [f for f in graph.functions if (f.domain, f.name) not in gone]
    used = {n.domain for n in _all_nodes(graph)} | {f.domain for f in graph.functions}
    for domain in {d for d, _ in gone} - used:
        graph.opsets.pop(domain, None)
