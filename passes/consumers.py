"""What ``bias-correct`` and ``reconstruct`` share: the dense model next to the masked one,
and the consumer layers of the pruned groups in topological order.

Rules:
- both passes run after ``mask``: before ``apply-masks`` they apply the masks themselves,
  after it they find the dense weights ``apply-masks`` set aside (the pipeline context's
  ``dense_weights``);
- a compacted or ``sparsify``-ed graph is refused (its dense model or its pattern would be
  lost); a model masked in an earlier run (a sparse file read back) is its own reference;
- a *consumer layer* is a Conv/Gemm/MatMul reading a pruned group's channels (its input
  keep-mask has a False); the pruned channels' consumer columns are zero in the masked model,
  and ``reapply_masks`` zeroes pruned slices again after a pass rewrote weights (a new bias
  included, after re-analysis), so the compact form computes what the sparse form does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.apply_masks import ApplyMasksPass, require_plan
from drpopt.passes.common import get_analysis, invalidate
from drpopt.passes.context import context_of
from drpopt.passes.linear_layers import Linear, as_linear
from drpopt.passes.plan import keep_masks


@dataclass
class Consumer:
    """A consumer layer and the keep-mask of its input channels."""

    layer: Linear
    kept: np.ndarray  # bool per input channel


def prepare(graph: Graph, pass_name: str) -> onnx.ModelProto:
    """Masks ``graph`` (when not yet masked) and returns the dense model as ONNX."""
    require_plan(graph, pass_name)
    context = context_of(graph)
    if context.compacted:
        raise BadInputError(f"'{pass_name}' must run before 'compact' (it needs dense shapes)")
    if context.sparsified:
        raise BadInputError(
            f"'{pass_name}' must run before 'sparsify' (it would refill the pattern's zeros)"
        )
    if context.dense_weights is None:  # not masked yet: the model as it is now is the reference
        dense = to_onnx(graph)
        ApplyMasksPass().call(graph)
        if context.dense_weights is None:
            context.dense_weights = {}
        return dense
    return dense_model(graph)


def dense_model(graph: Graph) -> onnx.ModelProto:
    """The graph as ONNX with the weights ``apply-masks`` zeroed restored."""
    proto = to_onnx(graph)
    dense = context_of(graph).dense_weights or {}
    for t in proto.graph.initializer:
        if t.name in dense:
            t.CopyFrom(numpy_helper.from_array(np.asarray(dense[t.name]), t.name))
    for node in proto.graph.node:  # Constant nodes holding a zeroed weight
        if node.op_type == "Constant" and node.output[0] in dense:
            for a in node.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(np.asarray(dense[node.output[0]])))
    return proto


def dense_const(graph: Graph, name: str) -> np.ndarray:
    """A constant's dense value (its current value when ``apply-masks`` left it alone)."""
    dense = context_of(graph).dense_weights or {}
    return np.asarray(dense[name] if name in dense else graph.values[name].const)


def begin(graph: Graph, pass_name: str):
    """What a data-aware pass after ``mask`` starts from: ``(calibration data, the dense
    model, the consumers of pruned channels)``, or None when there is nothing to do (a plan
    that prunes nothing, no consumer)."""
    from drpopt.passes.calibrate import require_calibration

    data = require_calibration(graph, pass_name)
    plan = context_of(graph).plan
    if plan is not None and not plan.pruned_channels:
        return None
    dense = prepare(graph, pass_name)
    consumers = consumer_layers(graph)
    return (data, dense, consumers) if consumers else None


def consumer_layers(graph: Graph) -> list[Consumer]:
    """The Conv/Gemm/MatMul layers reading pruned channels, in graph (topological) order."""
    plan = require_plan(graph, "consumer layers")
    masks = keep_masks(plan.resolve(get_analysis(graph)))
    out = []
    for node in graph.nodes:
        layer = as_linear(node)
        if layer is None:
            continue
        x = node.inputs[0]
        rank = x.rank if x is not None and x.rank is not None else 2
        axis = layer.channel_axis % rank
        kept = masks.get((layer.x, axis))
        if kept is None or kept.all():
            continue
        out.append(Consumer(layer, kept.copy()))
    return out


def levels(graph: Graph, consumers: list[Consumer]) -> list[int]:
    """Per consumer, 1 + the largest level of the consumers upstream of it (0: none)."""
    index = {c.layer.node.name: i for i, c in enumerate(consumers)}
    level: list[int] = []
    for c in consumers:
        best = -1
        seen: set[str] = set()
        todo = [c.layer.node.inputs[0]]
        while todo:
            v = todo.pop()
            if v is None or v.name in seen or v.producer is None:
                continue
            seen.add(v.name)
            name = v.producer.name
            if name in index and index[name] < len(level):
                best = max(best, level[index[name]])
                continue
            todo.extend(i for i in v.producer.inputs if i is not None and i.const is None)
        level.append(best + 1)
    return level


def reapply_masks(graph: Graph) -> None:
    """Zero the plan's pruned slices again (new biases included) after weights changed."""
    invalidate(graph)
    ApplyMasksPass().call(graph)
