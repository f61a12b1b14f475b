"""``apply-masks``: zero the pruned channels of the plan in every member; shapes unchanged.

This is the *sparse ONNX* DRP-AI's compiler consumes (dense shapes with zeros).

Rules:
- zeroed: producer rows, consumer columns, followers (biases, BN scale and shift, PRelu
  slopes) of every pruned channel, but for the inputs an op's rule lists in its
  ``unmasked_inputs`` (BN mean and variance: the zero scale already makes the channel
  zero, and a zero variance would only risk 0/0);
- ``param`` constants (a per-channel ``Mul`` scale, a ``Div`` divisor) are left as they are:
  the zeroed consumer columns already cut the channel off, and zeroing a divisor would
  make NaN;
- a constant shared through an exporter's Identity becomes an initializer of its own first;
- then every node with masked channels whose op rule has a ``sparse`` hook is rewritten by
  it, so the sparse model computes what the compact one does (a LayerNormalization over a
  pruned channel axis counts only the kept channels: ``ir/rules_norm.py``); a LayerNorm
  written out in plain ops over such an axis is folded into one node first;
- the plan (JSON) and the per-layer sparsity go into the model's ``metadata_props``
  (``drpopt.plan``, ``drpopt.sparsity``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.analysis import Analysis
from drpopt.ir.core import Graph
from drpopt.ir.patterns import decomposed_layernorms
from drpopt.ir.rules import rule_for
from drpopt.ir.rules_compact import KeptChannels
from drpopt.ir.rules_norm import fold_layernorm
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.common import along, get_analysis, layer_sparsity, reshare_equal_copies
from drpopt.passes.context import context_of
from drpopt.passes.plan import Plan, keep_masks


def _left_unmasked(node, tensor: str) -> bool:
    """Whether ``tensor`` is an input of ``node`` its op rule says masking leaves alone."""
    rule = rule_for(node) if node is not None else None
    if rule is None or not rule.unmasked_inputs:
        return False
    return any(
        node.input(i) is not None and node.input(i).name == tensor for i in rule.unmasked_inputs
    )


def require_plan(graph: Graph, pass_name: str) -> Plan:
    plan = context_of(graph).plan
    if plan is None:
        raise BadInputError(
            f"'{pass_name}' needs a sparsity plan: run 'mask' before it "
            f"(e.g. 'mask:rate=0.7,{pass_name}') or give mask:plan=plan.json"
        )
    return plan


def record_metadata(graph: Graph, plan: Plan) -> None:
    graph.metadata["drpopt.plan"] = plan.to_json(indent=None)
    graph.metadata["drpopt.sparsity"] = json.dumps(
        {s.node: round(s.sparsity, 6) for s in layer_sparsity(graph)}
    )


@dataclass
class ApplyMasksPass(Pass):
    """Zero the pruned channels in every member slice (sparse ONNX: shapes unchanged)."""

    name: ClassVar[str] = "apply-masks"
    preserves_outputs: ClassVar[bool] = False

    def call(self, model: Graph) -> PassResult:
        plan = require_plan(model, self.name)
        resolved = plan.resolve(get_analysis(model))
        nodes = {n.name: n for n in model.nodes}
        changed = restructured = False
        copied: set[str] = set()
        keys: dict[str, tuple] = {}  # copies of one tensor masked alike stay one
        for group, gp in resolved:
            pruned = gp.pruned
            if not pruned:
                continue
            for m in group.members:
                if m.tensor is None or m.role not in ("producer", "consumer", "follower"):
                    continue
                if _left_unmasked(nodes.get(m.node or ""), m.tensor):
                    continue
                value = model.values[m.tensor]
                if value.producer is not None and value.producer.op_type != "Constant":
                    model.materialize(value)
                    restructured = True
                if m.tensor not in copied:
                    # the tensor it shared before this pass (compact re-shares by it too)
                    keys[m.tensor] = (value.meta.setdefault("shared_storage", value.storage),)
                    # the dense weights stay reachable for bias-correct and reconstruct
                    context = context_of(model)
                    if context.dense_weights is None:
                        context.dense_weights = {}
                    context.dense_weights.setdefault(m.tensor, value.const)
                    value.const = np.array(value.const, copy=True)
                    copied.add(m.tensor)
                index = m.indices(pruned)
                value.const[along(value.const, m.axis, index)] = 0
                keys[m.tensor] += ((m.axis, tuple(index)),)
                changed = True
        if changed:
            # copies of one layer weight cut alike hold one array again
            reshare_equal_copies(model, {k: (v[0], *sorted(v[1:])) for k, v in keys.items()})
            if sparse_forms(model, KeptChannels(keep_masks(resolved))):
                restructured = True
        record_metadata(model, plan)
        # zeros alone leave the groups as they were (compact resolves the plan on them);
        # scores change with the weights and go
        return PassResult(model, changed, preserves=() if restructured else (Analysis,))


def sparse_forms(model: Graph, kept: KeptChannels) -> bool:
    """Runs the ``sparse`` hook of every node with masked channels whose rule has one;
    LayerNorms written out in plain ops over a masked channel axis are folded into their
    masked form first (``ir/rules_norm.py``). Whether anything changed."""
    changed = False
    for pattern in decomposed_layernorms(model):
        keep = kept.mask(pattern.x, pattern.axis)
        if keep is not None and not keep.all():
            fold_layernorm(model, pattern, keep)
            changed = True
    for node in list(model.nodes):
        rule = rule_for(node)
        if rule is not None and rule.sparse is not None and kept.touches(node):
            changed = bool(rule.sparse(model, node, kept)) or changed
    return changed
