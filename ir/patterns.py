"""LayerNorm written out in plain ops, as exporters write it before ``LayerNormalization``
existed (opset < 17: torch's exporter, PaddlePaddle's paddle2onnx in PP-OCR):

    mean = ReduceMean(x, axes=[-1]);  d = x - mean
    var  = ReduceMean(d ** 2, axes=[-1]) (or d * d)
    y    = d / Sqrt(var + eps)        (then * scale + bias, as separate ops)

A float16 model's (torch's ``.half()`` export) casts ``d`` to float32 for the statistics and
the result back: ``d = Cast(x - mean, to=float)``; that Cast is part of the pattern.

Its two ReduceMeans normalise over the channel axis; matched as a whole, the channel axis
can be pruned like a ``LayerNormalization``'s (``apply-masks`` turns the matched nodes into
``drpopt.MaskedLayerNormalization``). Anything less than the whole pattern stays locked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.shape_expr import const_ints


@dataclass(frozen=True)
class DecomposedLayerNorm:
    """The nodes of one written-out LayerNorm over the last axis of ``x``."""

    x: Value
    mean: Node
    sub: Node
    square: Node
    var: Node
    add: Node
    sqrt: Node
    div: Node
    epsilon: float
    cast: Node | None = None  # float16 models: ``d`` cast to float32 for the statistics

    @property
    def nodes(self) -> list[Node]:
        """In graph order, the division (whose output the rest of the graph reads) last."""
        cast = [self.cast] if self.cast is not None else []
        return [self.mean, self.sub, *cast, self.square, self.var, self.add, self.sqrt, self.div]


def _last_axis_mean(node: Node | None) -> Value | None:
    """The input of a ReduceMean over the last axis that keeps dims, else None."""
    if node is None or node.op_type != "ReduceMean" or not node.attr("keepdims", 1):
        return None
    x = node.input(0)
    if x is None or x.rank is None:
        return None
    axes = node.attr("axes")
    if axes is None and node.input(1) is not None:
        axes = const_ints(node.input(1))
    if axes is None or len(axes) != 1 or axes[0] % x.rank != x.rank - 1:
        return None
    return x


_FLOATS = {1, 11}  # Cast's ``to``: float32, float64


def _only_user(value: Value, graph: Graph) -> Node | None:
    users = {id(n): n for n, i in value.uses if i >= 0}
    if len(users) != 1 or value in graph.outputs:
        return None
    return next(iter(users.values()))


def _scalar(value: Value | None) -> float | None:
    if value is None or not value.is_const:
        return None
    arr = np.asarray(value.const)
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def match_layernorm(mean: Node, graph: Graph) -> DecomposedLayerNorm | None:
    """The written-out LayerNorm whose first ReduceMean is ``mean``, or None."""
    x = _last_axis_mean(mean)
    if x is None:
        return None
    sub = _only_user(mean.outputs[0], graph)
    if sub is None or sub.op_type != "Sub" or sub.inputs[:2] != [x, mean.outputs[0]]:
        return None
    d = sub.outputs[0]
    cast = _only_user(d, graph)
    if cast is not None and cast.op_type == "Cast" and cast.attr("to") in _FLOATS:
        d = cast.outputs[0]
    else:
        cast = None
    users = {id(n): n for n, i in d.uses if i >= 0}
    if len(users) != 2 or d in graph.outputs:
        return None
    square = next((n for n in users.values() if n.op_type in ("Pow", "Mul")), None)
    div = next((n for n in users.values() if n.op_type == "Div"), None)
    if square is None or div is None or div.input(0) is not d:
        return None
    if square.op_type == "Pow" and not (square.input(0) is d and _scalar(square.input(1)) == 2):
        return None
    if square.op_type == "Mul" and square.inputs[:2] != [d, d]:
        return None
    var = _only_user(square.outputs[0], graph)
    if var is None or _last_axis_mean(var) is not square.outputs[0]:
        return None
    add = _only_user(var.outputs[0], graph)
    if add is None or add.op_type != "Add":
        return None
    eps_value = add.input(1) if add.input(0) is var.outputs[0] else add.input(0)
    eps = _scalar(eps_value)
    sqrt = _only_user(add.outputs[0], graph)
    if eps is None or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    if _only_user(sqrt.outputs[0], graph) is not div or div.input(1) is not sqrt.outputs[0]:
        return None
    return DecomposedLayerNorm(x, mean, sub, square, var, add, sqrt, div, eps, cast)


def layernorm_statistic(node: Node, graph: Graph) -> DecomposedLayerNorm | None:
    """The written-out LayerNorm ``node`` (either of its ReduceMeans) belongs to."""
    found = match_layernorm(node, graph)
    if found is not None:
        return found
    x = _last_axis_mean(node)  # the variance: x is the square of (input - mean)
    square = x.producer if x is not None else None
    d = square.input(0) if square is not None and square.op_type in ("Pow", "Mul") else None
    sub = d.producer if d is not None else None
    if sub is not None and sub.op_type == "Cast" and sub.input(0) is not None:
        sub = sub.input(0).producer  # a float16 model's cast of x - mean
    if sub is None or sub.op_type != "Sub" or sub.input(1) is None:
        return None
    mean = sub.input(1).producer
    found = match_layernorm(mean, graph) if mean is not None else None
    return found if found is not None and found.var is node else None


def decomposed_layernorms(graph: Graph) -> list[DecomposedLayerNorm]:
    """Every written-out LayerNorm of ``graph``."""
    found = (match_layernorm(n, graph) for n in graph.nodes if n.op_type == "ReduceMean")
    return [f for f in found if f is not None]
