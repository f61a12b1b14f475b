"""Normalisations written out in plain ops, matched as a whole so their channel axis can be
pruned (``apply-masks`` gives them a masked form, ``ir/rules_norm.py``); anything less than
the whole pattern stays locked.

- LayerNorm, as exporters write it before ``LayerNormalization`` existed (opset < 17:
  torch's exporter, PaddlePaddle's paddle2onnx in PP-OCR), over the last axis, or over
  axis 1 as ConvNeXt's channels-first LayerNorm writes it in any opset (``x.mean(1)``):

      mean = ReduceMean(x, axes=[a]);  d = x - mean
      var  = ReduceMean(d ** 2, axes=[a]) (or d * d)
      y    = d / Sqrt(var + eps)        (then * scale + bias, as separate ops)

  Its two ReduceMeans normalise over the channel axis ``a``; written over axes 1 to the
  last (``a`` = 1 and the spatial axes), it is GroupNorm(1, C) written out. A float16
  model (torch's ``.half()`` export) casts ``d`` to float32 for the statistics,
  ``d = Cast(x - mean, to=float)``: that Cast is part of the pattern;
- GroupNorm(1, C) as torch exports it: ``Reshape(x, [0, 1, -1])``, InstanceNormalization
  (scale and bias of one element), ``Reshape(.., Shape(x))`` (then * weight + bias);
- GRN (ConvNeXt V2's global response normalisation): ``g = ReduceL2(x, spatial axes)``,
  ``g / (ReduceMean(g, channel axis) + eps)``: the mean over the channels is its statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.shape_expr import const_ints


@dataclass(frozen=True)
class DecomposedLayerNorm:
    """The nodes of one written-out LayerNorm over the axis ``axis`` (>= 0) of ``x``, the
    channel axis, and with it the later ``spatial`` axes (GroupNorm(1, C) written out)."""

    x: Value
    axis: int
    mean: Node
    sub: Node
    square: Node
    var: Node
    add: Node
    sqrt: Node
    div: Node
    epsilon: float
    spatial: tuple[int, ...] = ()
    cast: Node | None = None  # float16 models: ``d`` cast to float32 for the statistics
    # ``x.var(-1, unbiased=False)`` (Restormer's LayerNorm): the variance squares its own
    # ``x - mean`` (a second ReduceMean of x and a second Sub), not the one ``div`` reads
    var_mean: Node | None = None
    var_sub: Node | None = None
    # the dynamo exporter's ``var``: the variance without kept dims, a Reshape puts them back
    var_back: Node | None = None

    @property
    def axes(self) -> list[int]:
        """Every axis the statistics run over."""
        return [self.axis, *self.spatial]

    @property
    def nodes(self) -> list[Node]:
        """In graph order, the division (whose output the rest of the graph reads) last."""
        cast = [self.cast] if self.cast is not None else []
        own = [n for n in (self.var_mean, self.var_sub) if n is not None]
        return [
            self.mean,
            self.sub,
            *own,
            *cast,
            self.square,
            self.var,
            *([self.var_back] if self.var_back is not None else []),
            self.add,
            self.sqrt,
            self.div,
        ]


def reduced_axes(node: Node) -> list[int] | None:
    """The axes (>= 0, sorted) a Reduce* node reduces, when they are constants, else None."""
    x = node.input(0)
    if x is None or x.rank is None:
        return None
    axes = node.attr("axes")
    if axes is None and node.input(1) is not None:
        axes = const_ints(node.input(1))
    if axes is None or not all(-x.rank <= a < x.rank for a in axes):
        return None
    return sorted({a % x.rank for a in axes})


def _single_axis_mean(node: Node | None) -> tuple[Value, list[int]] | None:
    """The input and axes of a ReduceMean that keeps dims over one axis (the last, or axis
    1 of a tensor of rank 3 or more: channels first) or over axes 1 to the last of a tensor
    of rank 3 or more (GroupNorm(1, C)), else None."""
    if node is None or node.op_type != "ReduceMean" or not node.attr("keepdims", 1):
        return None
    axes = reduced_axes(node)
    x = node.input(0)
    if not axes or x is None or x.rank is None:
        return None
    if axes == [x.rank - 1] or (
        axes[0] == 1 and x.rank >= 3 and axes in ([1], list(range(1, x.rank)))
    ):
        return x, axes
    return None


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
    found = _single_axis_mean(mean)
    if found is None:
        return None
    x, axes = found
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
    if len(users) == 1 and cast is None and d not in graph.outputs:
        return _own_variance_mean(x, axes, mean, sub, next(iter(users.values())), graph)
    if len(users) != 2 or d in graph.outputs:
        return None
    square = next((n for n in users.values() if n.op_type in ("Pow", "Mul")), None)
    div = next((n for n in users.values() if n.op_type == "Div"), None)
    if square is None or div is None or div.input(0) is not d or not _squares(square, d):
        return None
    tail = _variance_to_div(square, axes, graph)
    if tail is None or tail[3] is not div:
        return None
    var, add, sqrt, _, back = tail
    eps = _eps(add, back or var)
    return DecomposedLayerNorm(
        x,
        axes[0],
        mean,
        sub,
        square,
        var,
        add,
        sqrt,
        div,
        eps,
        tuple(axes[1:]),
        cast,
        var_back=back,
    )


def _squares(square: Node, d: Value) -> bool:
    """Whether ``square`` is ``d ** 2`` or ``d * d``."""
    if square.op_type == "Pow":
        return square.input(0) is d and _scalar(square.input(1)) == 2
    return square.op_type == "Mul" and square.inputs[:2] == [d, d]


def _eps(add: Node, var: Node) -> float | None:
    return _scalar(add.input(1) if add.input(0) is var.outputs[0] else add.input(0))


def _variance_to_div(square: Node, axes: list[int], graph: Graph):
    """(var, add, sqrt, div, back) of ``div(_, sqrt(mean(square) + eps))``, else None;
    ``back`` is the Reshape/Unsqueeze that restores the dims a ``var`` without kept dims
    reduced (the dynamo exporter's), else None."""
    var = _only_user(square.outputs[0], graph)
    if var is None or var.op_type != "ReduceMean" or reduced_axes(var) != axes:
        return None
    back = None
    if not var.attr("keepdims", 1):
        back = _only_user(var.outputs[0], graph)
        d = square.outputs[0]
        kept = tuple(1 if a in axes else n for a, n in enumerate(d.shape or ()))
        if back is None or back.op_type not in ("Reshape", "Unsqueeze") or not kept:
            return None
        if back.outputs[0].shape is None or tuple(back.outputs[0].shape) != kept:
            return None
    last = back or var
    add = _only_user(last.outputs[0], graph)
    if add is None or add.op_type != "Add" or _eps(add, last) is None:
        return None
    sqrt = _only_user(add.outputs[0], graph)
    if sqrt is None or sqrt.op_type != "Sqrt":
        return None
    div = _only_user(sqrt.outputs[0], graph)
    if div is None or div.op_type != "Div" or div.input(1) is not sqrt.outputs[0]:
        return None
    return var, add, sqrt, div, back


def _own_variance_mean(x: Value, axes: list[int], mean: Node, sub: Node, user: Node, graph: Graph):
    """The LayerNorm whose variance takes a mean of its own (``x.var(unbiased=False)``):
    ``(x - m1) / sqrt(mean((x - m2) ** 2) + eps)`` with ``m1`` and ``m2`` both the mean of
    ``x`` over the same axes. ``mean``/``sub`` are either pair; ``user`` reads ``sub``."""
    d = sub.outputs[0]
    if user.op_type == "Div" and user.input(0) is d:  # m1: follow the denominator back
        square = _square_under(user)
        d2 = square.input(0) if square is not None else None
        sub2 = d2.producer if d2 is not None else None
        if sub2 is None or sub2.op_type != "Sub" or sub2.input(0) is not x or sub2 is sub:
            return None
        mean2 = sub2.input(1).producer if sub2.input(1) is not None else None
        if _single_axis_mean(mean2) != (x, axes) or _only_user(mean2.outputs[0], graph) is not sub2:
            return None
        if _only_user(d2, graph) is not square or not _squares(square, d2):
            return None
        tail = _variance_to_div(square, axes, graph)
        if tail is None or tail[3] is not user:
            return None
        var, add, sqrt, _, back = tail
        return DecomposedLayerNorm(
            x,
            axes[0],
            mean,
            sub,
            square,
            var,
            add,
            sqrt,
            user,
            _eps(add, back or var),
            tuple(axes[1:]),
            var_mean=mean2,
            var_sub=sub2,
            var_back=back,
        )
    if _squares(user, d):  # m2: the LayerNorm is found from the Div's mean
        tail = _variance_to_div(user, axes, graph)
        div = tail[3] if tail is not None else None
        sub1 = div.input(0).producer if div is not None and div.input(0) is not None else None
        m1 = sub1.input(1).producer if sub1 is not None and sub1.op_type == "Sub" else None
        found = match_layernorm(m1, graph) if m1 is not None and m1 is not mean else None
        return found if found is not None and found.var_mean is mean else None
    return None


def _square_under(div: Node) -> Node | None:
    """The ``square`` of ``div(_, sqrt(mean(square) [reshaped] + eps))``, else None."""
    sqrt = div.input(1).producer if div.input(1) is not None else None
    add = sqrt.input(0).producer if sqrt is not None and sqrt.op_type == "Sqrt" else None
    if add is None or add.op_type != "Add":
        return None
    for v in add.inputs[:2]:
        var = v.producer if v is not None else None
        if var is not None and var.op_type in ("Reshape", "Unsqueeze") and var.input(0):
            var = var.input(0).producer
        if var is not None and var.op_type == "ReduceMean" and var.input(0) is not None:
            return var.input(0).producer
    return None


def layernorm_statistic(node: Node, graph: Graph) -> DecomposedLayerNorm | None:
    """The written-out LayerNorm ``node`` (either of its ReduceMeans) belongs to."""
    found = match_layernorm(node, graph)
    if found is not None:
        return found
    # the variance (kept dims or not): its input is the square of (input - mean)
    stat = node.input(0) if node.op_type == "ReduceMean" else None
    square = stat.producer if stat is not None else None
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
    found = ((n, match_layernorm(n, graph)) for n in graph.nodes if n.op_type == "ReduceMean")
    return [f for n, f in found if f is not None and f.mean is n]  # once, from its first mean


@dataclass(frozen=True)
class GroupNormOne:
    """GroupNorm(1, C) as torch exports it: ``x`` (N, C, ...) reshaped to (N, 1, -1),
    normalised by ``norm`` (an InstanceNormalization with one-element scale and bias) and
    reshaped back to ``x``'s shape by ``back``."""

    x: Value
    flat: Node
    norm: Node
    back: Node

    @property
    def nodes(self) -> list[Node]:
        return [self.flat, self.norm, self.back]


def _same_shape_as(shape: Value | None, x: Value) -> bool:
    """Whether ``shape`` is ``Shape(x)`` (whole) or a constant equal to ``x``'s shape."""
    if shape is None:
        return False
    node = shape.producer
    if node is not None and node.op_type == "Shape" and node.input(0) is x:
        return node.attr("start", 0) == 0 and node.attr("end") is None
    ints = const_ints(shape)
    return ints is not None and x.shape is not None and tuple(ints) == tuple(x.shape)


def match_groupnorm_one(norm: Node, graph: Graph) -> GroupNormOne | None:
    """The GroupNorm(1, C) whose InstanceNormalization is ``norm``, or None."""
    if norm.op_type != "InstanceNormalization" or len(norm.outputs) != 1:
        return None
    r = norm.input(0)
    flat = r.producer if r is not None else None
    if flat is None or flat.op_type != "Reshape" or _only_user(r, graph) is not norm:
        return None
    x = flat.input(0)
    target = const_ints(flat.input(1))
    if x is None or x.rank is None or x.rank < 3 or target is None or len(target) != 3:
        return None
    if target[1:] != [1, -1] or target[0] not in (0, x.shape[0]) or flat.attr("allowzero", 0):
        return None
    for p in norm.inputs[1:3]:
        if p is None or not p.is_const or np.asarray(p.const).size != 1:
            return None
    back = _only_user(norm.outputs[0], graph)
    if back is None or back.op_type != "Reshape" or back.input(0) is not norm.outputs[0]:
        return None
    if not _same_shape_as(back.input(1), x):
        return None
    return GroupNormOne(x, flat, norm, back)


def grn_statistic(mean: Node, graph: Graph) -> int | None:
    """The channel axis of GRN's mean over the channels, when ``mean`` is one, else None:
    ``ReduceMean(g, [c], keepdims)`` with ``g = ReduceL2(x, axes)`` over axes other than
    ``c`` (kept dims), read only by ``Add(., eps)`` whose only reader is ``Div(g, .)``."""
    if mean.op_type != "ReduceMean" or not mean.attr("keepdims", 1):
        return None
    axes, g = reduced_axes(mean), mean.input(0)
    norm = g.producer if g is not None else None
    if axes is None or len(axes) != 1 or norm is None or norm.op_type != "ReduceL2":
        return None
    spatial = reduced_axes(norm)
    if not spatial or axes[0] in spatial or not norm.attr("keepdims", 1):
        return None
    add = _only_user(mean.outputs[0], graph)
    if add is None or add.op_type != "Add":
        return None
    other = add.input(1) if add.input(0) is mean.outputs[0] else add.input(0)
    div = _only_user(add.outputs[0], graph)
    if _scalar(other) is None or div is None or div.op_type != "Div":
        return None
    if div.input(0) is not g or div.input(1) is not add.outputs[0]:
        return None
    return axes[0]
