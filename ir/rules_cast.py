"""The coupling rule of Cast and CastLike, and what it and ``compact`` need to know about a
tensor size cast to a number (an attention scale ``1/sqrt(head_dim)``): whether its value is
known for the model's static shapes (then ``compact`` freezes it), and which sizes it reads
(else those axes lock). Registered into ``ir.rules.RULES`` on import (``ir/rules.py``
imports this)."""

from __future__ import annotations

import numpy as np

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node, Value
from drpopt.ir.rules import rule
from drpopt.ir.rules_layers import _unary
from drpopt.ir.shape_expr import DERIVED, Dim, shape_entries, shape_values


@rule("Cast", "CastLike")
def _cast(node: Node, cg: ChannelGraph) -> None:
    """A cast couples like any unary op. A tensor size cast to floating point is data (an
    attention scale ``1/sqrt(head_dim)``): when its value is known for the model's static
    shapes, ``compact`` freezes it to that constant (so sparse and compact agree); otherwise
    the axes it reads may not change size and are locked."""
    _unary(node, cg)
    if frozen_size_cast(node, cg.numeric_memo) is not None:
        return
    x = node.input(0)
    if not is_size_cast(node) or x is None:
        return
    entries = shape_entries(x, cg.shape_memo)
    why = f"{node.op_type} '{node.name}' uses its size as a number"
    if entries is None or any(isinstance(e, type(DERIVED)) for e in entries):
        # only the axes the number is computed from where the walk can read them: SAM's
        # ``get_rel_pos`` casts ``arange(H)`` of a window's height, which locked every
        # axis of the windows, their channels included (the model's whole embedding width)
        for v, axis in _sizes_read(x, cg.shape_memo):
            if axis is None:
                cg.lock_value(v, "shape-as-data", why, node)
            else:
                cg.lock(cg.space(v, axis), "shape-as-data", why, node)
        return
    for e in entries:
        if isinstance(e, Dim):
            cg.lock(cg.space(e.value, e.axis), "shape-as-data", why, node)


def is_size_cast(node: Node) -> bool:
    """A Cast of a computed (non-constant) integer to floating point."""
    x, y = node.input(0), node.outputs[0]
    if node.op_type not in ("Cast", "CastLike") or x is None or x.is_const:
        return False
    if x.dtype is None or y.dtype is None:
        return False
    return np.dtype(x.dtype).kind in "iu" and np.dtype(y.dtype).kind == "f"


def frozen_size_cast(node: Node, memo=None) -> np.ndarray | None:
    """The value a size cast to float reads, for the model's static shapes, or None."""
    if not is_size_cast(node):
        return None
    x = node.input(0)
    numbers = shape_values(x, memo)
    if numbers is None or x.shape is None or any(not isinstance(d, int) for d in x.shape):
        return None
    try:
        return np.array(numbers, dtype=x.dtype).reshape(x.shape)
    except ValueError:
        return None


def _shapes_read(value: Value, limit: int = 256) -> list[Value]:
    """The tensors whose ``Shape`` an integer value is computed from (a bounded walk)."""
    return [v for v, _ in _sizes_read(value, None, limit, entries=False)]


def _sizes_read(
    value: Value, memo, limit: int = 256, entries: bool = True
) -> list[tuple[Value, int | None]]:
    """The sizes an integer value is computed from, walking back from it: the ``Dim``
    entries of the first shape tensors met that ``shape_entries`` reads whole (``Range(0,
    H)`` reads ``(x, 1)``), or ``(x, None)``, every axis, where a walk reaches ``Shape(x)``
    through entries it cannot read (or, ``entries=False``, every ``Shape(x)`` it reaches:
    ``_shapes_read``)."""
    found: list[tuple[Value, int | None]] = []
    seen: set[int] = set()
    todo = [value]
    while todo and len(seen) < limit:
        v = todo.pop()
        if id(v) in seen or v.producer is None:
            continue
        seen.add(id(v))
        read = shape_entries(v, memo) if entries and v is not value else None
        if read is not None and not any(isinstance(e, type(DERIVED)) for e in read):
            found.extend((e.value, e.axis) for e in read if isinstance(e, Dim))
            continue
        node = v.producer
        if node.op_type in ("Shape", "Size"):
            if node.input(0) is not None:
                found.append((node.input(0), None))
            continue
        if v.dtype is not None and np.dtype(v.dtype).kind not in "iu":
            continue
        todo.extend(i for i in node.inputs if i is not None)
    return found
