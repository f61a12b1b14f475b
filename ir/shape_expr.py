"""Static reading of computed shape tensors (the ``Shape -> Gather -> Concat -> Reshape``
pattern exporters write for ``x.view(x.size(0), -1)``).

``shape_entries(value)`` evaluates a 1-D int64 shape tensor over constants and ``Shape``
outputs. Each entry is an ``int`` when it is a literal fixed in the graph, or ``DERIVED``
when it is computed at run time from some tensor's shape (so it follows that tensor when
channels are removed): a ``Dim`` when it is one axis of one tensor, else ``DERIVED``. It
returns None when the tensor is computed by anything else.

``resolve_reshape`` turns such entries into the output shape (``0`` copies, ``-1`` is
solved, symbolic dims cancel), for models whose exported shapes shape inference leaves
unknown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

import numpy as np

from drpopt.ir.core import Node, Value


class _Derived:
    def __repr__(self) -> str:
        return "DERIVED"


DERIVED: Final = _Derived()


@dataclass(frozen=True)
class Dim:
    """An entry that is exactly the size of ``axis`` of ``value`` at run time."""

    value: Value
    axis: int


Entry = int | Dim | _Derived

Memo = dict  # Value -> list[Entry] | None, shared by the calls of one analysis

_UNARY_SHAPE_OPS = frozenset(["Cast", "Identity", "Gather", "Slice", "Unsqueeze", "Squeeze"])
_BINARY_SHAPE_OPS = frozenset(["Mul", "Add", "Sub", "Div"])


def shape_entries(value: Value | None, memo: Memo | None = None) -> list[Entry] | None:
    """The entries of a computed 1-D shape tensor, or None when they cannot be read.

    Evaluated iteratively (no recursion, whatever the depth of the shape arithmetic) and
    lazily: an op's inputs are only visited when the op is one that shape arithmetic uses,
    and a value that cannot be a shape tensor (floating point, or of rank 2 or more) stops
    the walk at once. ``memo`` shares results between calls, so a whole analysis visits
    each value at most once.
    """
    if value is None:
        return None
    memo = {} if memo is None else memo
    if value in memo:
        return memo[value]
    stack: list[tuple[Value, bool]] = [(value, False)]
    on_stack: set[int] = set()
    while stack:
        v, expanded = stack.pop()
        if v in memo:
            continue
        deps = _deps(v)
        if not expanded and deps:
            on_stack.add(id(v))
            stack.append((v, True))
            for d in deps:
                if d not in memo:
                    if id(d) in on_stack:  # a cycle (malformed model): nothing to read
                        memo[d] = None
                    else:
                        stack.append((d, False))
            continue
        on_stack.discard(id(v))
        memo[v] = _evaluate(v, memo)
    return memo[value]


def _may_be_shape(value: Value) -> bool:
    if value.dtype is not None and np.dtype(value.dtype).kind not in "iu":
        return False
    return value.rank is None or value.rank <= 1


def _deps(value: Value) -> list[Value]:
    """The inputs ``_evaluate`` reads for ``value`` (none for leaves and unreadable ops)."""
    node = value.producer
    if value.const is not None or node is None or not _may_be_shape(value):
        return []
    op = node.op_type
    if op in _UNARY_SHAPE_OPS:
        x = node.input(0)
        return [x] if x is not None else []
    if op in _BINARY_SHAPE_OPS or op == "Concat":
        return [v for v in node.inputs if v is not None]
    return []


def _evaluate(value: Value, memo: Memo) -> list[Entry] | None:
    """One value's entries from its inputs' (already in ``memo``)."""
    if value.const is not None:
        arr = np.asarray(value.const)
        if arr.dtype.kind not in "iu" or arr.ndim > 1:
            return None
        return [int(x) for x in arr.reshape(-1)]
    node = value.producer
    if node is None or not _may_be_shape(value):
        return None
    op = node.op_type
    if op == "Shape":
        x = node.input(0)
        if x is None or x.rank is None:
            return None
        start = node.attr("start", 0)
        end = node.attr("end", x.rank)
        return [Dim(x, a) for a in range(*slice(start, end).indices(x.rank))]
    if op == "Concat":
        parts = [memo.get(v) for v in node.inputs if v is not None]
        if any(p is None for p in parts):
            return None
        return [e for p in parts for e in p]  # type: ignore[union-attr]
    if op in _UNARY_SHAPE_OPS:
        src = memo.get(node.input(0)) if node.input(0) is not None else None
        if src is None:
            return None
        return src if op in ("Cast", "Identity") else _index_op(op, node, src)
    if op in _BINARY_SHAPE_OPS:
        a, b = memo.get(node.input(0)), memo.get(node.input(1))
        if a is None or b is None:
            return None
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        n = max(len(a), len(b))
        a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
        return [_arith(op, x, y) for x, y in zip(a, b, strict=True)]
    return None


def _arith(op: str, x: Entry, y: Entry) -> Entry:
    if not isinstance(x, int) or not isinstance(y, int):
        return DERIVED
    if op == "Mul":
        return x * y
    if op == "Add":
        return x + y
    if op == "Sub":
        return x - y
    return x // y if y else DERIVED


def const_ints(value: Value | None) -> list[int] | None:
    """The flattened values of an integer constant, or None when it is not constant."""
    if value is None or value.const is None:
        return None
    return [int(x) for x in np.asarray(value.const).reshape(-1)]


def _index_op(op: str, node: Node, src: list[Entry]) -> list[Entry] | None:
    if op in ("Unsqueeze", "Squeeze"):
        return src  # on 0-D/1-D shape pieces these only change the rank
    if op == "Gather":
        idx = const_ints(node.input(1))
        if idx is None or node.attr("axis", 0) != 0:
            return None
        try:
            return [src[i] for i in idx]
        except IndexError:
            return None
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    steps = const_ints(node.input(4)) if node.input(4) is not None else [1]
    if starts is None or ends is None or steps is None:
        return None
    return src[slice(starts[0], ends[0], steps[0])]


def resolve_reshape(in_shape: tuple, entries: list[Entry], allowzero: bool = False) -> tuple | None:
    """The output shape of a Reshape of ``in_shape`` to ``entries``, with symbolic dims kept
    as strings; None when some entry is unknown."""
    out: list = []
    infer_at = None
    for k, e in enumerate(entries):
        if isinstance(e, Dim):
            d = e.value.shape[e.axis] if e.value.shape is not None else None
        elif isinstance(e, _Derived):
            d = None
        elif e == 0 and not allowzero:
            d = in_shape[k] if k < len(in_shape) else None
        elif e == -1:
            if infer_at is not None:
                return None
            infer_at = k
            d = -1
        else:
            d = e
        if d is None:
            return None
        out.append(d)
    if infer_at is not None:
        num, num_syms = _factor(in_shape)
        den, den_syms = _factor(tuple(d for i, d in enumerate(out) if i != infer_at))
        if num is None or den is None or den == 0 or num % den or den_syms - num_syms:
            return None
        rest = num_syms - den_syms
        if sum(rest.values()) > 1:
            return None
        if rest:
            if num // den != 1:
                return None
            out[infer_at] = next(iter(rest))
        else:
            out[infer_at] = num // den
    return tuple(out)


def _factor(dims: tuple) -> tuple[int | None, Counter]:
    prod, syms = 1, Counter()
    for d in dims:
        if isinstance(d, int):
            prod *= d
        elif isinstance(d, str):
            syms[d] += 1
        else:
            return None, syms
    return prod, syms
