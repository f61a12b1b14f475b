"""Sizes of computed shape entries on the current shapes, and Reshape outputs from them.

``entry_dim`` evaluates an entry of ``shape_entries`` (an int, a ``Dim``, an ``Expr``) as a
dim: an int or a symbolic dim (``ir/symdims``). ``resolve_reshape`` turns a Reshape's
entries into its output shape (``0`` copies, one unknown size or ``-1`` is inferred from the
element count when the quotient is exact).
"""

from __future__ import annotations

from drpopt.ir import symdims
from drpopt.ir.shape_expr import Dim, Entry, Expr, _arith


def entry_dim(e: Entry) -> int | str | None:
    """An entry's size on the current shapes: an int, a symbolic dim (``ir/symdims``), or
    None when it is not known (``DERIVED``, or a ``Dim`` of a tensor of unknown shape)."""
    if isinstance(e, int):
        return e
    if isinstance(e, Dim):
        shape = e.value.shape
        return shape[e.axis] if shape is not None and -len(shape) <= e.axis < len(shape) else None
    if isinstance(e, Expr):
        a, b = entry_dim(e.a), entry_dim(e.b)  # type: ignore[arg-type]
        if a is None or b is None:
            return None
        if isinstance(a, int) and isinstance(b, int):
            r = _arith(e.op, a, b)
            return r if isinstance(r, int) else None
        if e.op == "Mul":
            return symdims.mul(a, b)
        if e.op == "Div":
            return symdims.floordiv(a, b)
        return symdims.add(a, b) if e.op == "Add" else symdims.sub(a, b)
    return None


def resolve_reshape(in_shape: tuple, entries: list[Entry], allowzero: bool = False) -> tuple | None:
    """The output shape of a Reshape of ``in_shape`` to ``entries``, with symbolic dims kept
    as strings (``ir/symdims``: ``"h*w"`` for a flattened image); None when some entry is
    unknown. One entry that is not known (``DERIVED``: ``C // groups`` of a dynamic-batch
    channel shuffle; an ``Expr`` of unknown sizes) is inferred as a -1 is, from the element
    count a Reshape keeps, when there is no -1 besides it; the quotient must be exact."""
    out: list = []
    infer_at = None
    for k, e in enumerate(entries):
        if isinstance(e, int) and e != -1:
            d = in_shape[k] if e == 0 and not allowzero and k < len(in_shape) else e
            if e == 0 and not allowzero and k >= len(in_shape):
                return None
        else:
            d = None if isinstance(e, int) else entry_dim(e)
            if d is None:
                if infer_at is not None:
                    return None
                infer_at = k
                d = -1
        out.append(d)
    if infer_at is not None:
        num = symdims.product(in_shape)
        den = symdims.product(d for i, d in enumerate(out) if i != infer_at)
        rest = symdims.divide(num, den) if num is not None and den is not None else None
        if rest is None:
            return None
        out[infer_at] = rest
    return tuple(out)
