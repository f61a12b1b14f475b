"""Static reading of computed shape tensors (the ``Shape -> Gather -> Concat -> Reshape``
pattern exporters write for ``x.view(x.size(0), -1)``).

``shape_entries(value)`` evaluates a 1-D int64 shape tensor over constants and ``Shape``
outputs. Each entry is an ``int`` when it is a literal fixed in the graph, or ``DERIVED``
when it is computed at run time from some tensor's shape (so it follows that tensor when
channels are removed): a ``Dim`` when it is one axis of one tensor, else ``DERIVED``. It
returns None when the tensor is computed by anything else.

``resolve_reshape`` (``ir/shape_resolve``) turns such entries into the output shape
(``0`` copies, ``-1`` is solved, symbolic dims cancel), for models whose exported shapes
shape inference leaves unknown.

Why this is not ``ir/fold.py`` (drpopt's numeric constant folding): the entries here may be
symbolic (``Dim``, a size known only at run time, or ``DERIVED``), and ``Shape`` outputs are
read as such entries; numeric folding only computes on arrays of numbers. Both share one
size limit (``fold.MAX_ELEMENTS``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Final

import numpy as np

from drpopt.ir.core import Node, Value
from drpopt.ir.fold import MAX_ELEMENTS


class _Derived:
    def __repr__(self) -> str:
        return "DERIVED"


DERIVED: Final = _Derived()


class Expr(_Derived):
    """A computed entry that arithmetic on sizes gives (``H // 7``, ``B * heads``): it is
    ``DERIVED`` to every rule (it follows the tensors it is computed from), and
    ``shape_resolve.entry_dim`` evaluates it on the current shapes as a symbolic dim
    (``ir/symdims``)."""

    __slots__ = ("a", "b", "op", "size")

    def __init__(self, op: str, a: object, b: object) -> None:
        self.op, self.a, self.b = op, a, b
        # terms counted with repeats: what evaluating it costs (bounded by MAX_TERMS)
        self.size = 1 + getattr(a, "size", 1) + getattr(b, "size", 1)

    def __repr__(self) -> str:
        return f"Expr({self.op}, {self.a!r}, {self.b!r})"


@dataclass(frozen=True)
class Dim:
    """An entry that is exactly the size of ``axis`` of ``value`` at run time."""

    value: Value
    axis: int


Entry = int | Dim | _Derived

Memo = dict  # Value -> list[Entry] | None, shared by the calls of one analysis


class NumericMemo(dict):
    """A memo under which ``Shape`` of a tensor reads its static sizes as numbers: the
    values a shape computation takes for this model's input shapes (``shape_values``)."""


def shape_values(value: Value | None, memo: NumericMemo | None = None) -> list[int] | None:
    """The numbers a computed 1-D shape tensor holds for the model's static shapes, or None
    when some entry depends on a size that is not static."""
    entries = shape_entries(value, NumericMemo() if memo is None else memo)
    if entries is None or not all(isinstance(e, int) for e in entries):
        return None
    return entries  # type: ignore[return-value]


_UNARY_SHAPE_OPS = frozenset(
    [
        "Cast",
        "Identity",
        "Gather",
        "Slice",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Transpose",
        "ConstantOfShape",
    ]
)
_BINARY_SHAPE_OPS = frozenset(
    ["Mul", "Add", "Sub", "Div", "Mod", "Max", "Min", "Equal", "Less", "Greater"]
)
_MAX_ENTRIES = MAX_ELEMENTS  # shape arithmetic only
# how many inputs ``_evaluate`` reads from the memo: the first, or all
_READS = dict.fromkeys(_UNARY_SHAPE_OPS, 1) | dict.fromkeys(
    [*_BINARY_SHAPE_OPS, "Concat", "Where"], 2
)


def shape_entries(value: Value | None, memo: Memo | None = None) -> list[Entry] | None:
    """The entries of a computed 1-D shape tensor, or None when they cannot be read.

    Evaluated iteratively (no recursion, whatever the depth of the shape arithmetic) and
    lazily: an op's inputs are only visited when the op is one that shape arithmetic uses,
    and a value that cannot be a shape tensor (floating point, or of rank 3 or more) stops
    the walk at once. ``memo`` shares results between calls, so a whole analysis visits
    each value at most once. Intermediate values may be 2-D (torch's ``F.pad`` writes its
    pads as ``Reshape(-1, 2)``, a reversing ``Slice``, ``Transpose`` and ``Reshape(-1)``).
    """
    if value is None:
        return None
    memo = {} if memo is None else memo
    if value not in memo:
        if value.is_const:  # a literal (most slice bounds, axes): no walk to set up
            _store(value, memo)
        else:
            _fill(value, memo)
    t = memo[value]
    if t is None or len(t[0]) > 1:
        return None
    return list(t[1])


# A value's entries in the memo: (shape, entries in C order). Tensors of rank 0 and 1 (almost
# every shape tensor) are computed on these tuples directly; others go through numpy object
# arrays (``_np``), which define the semantics the fast paths reproduce.
Entries = tuple[tuple[int, ...], tuple]


def _fill(value: Value, memo: Memo) -> None:
    stack: list[tuple[Value, list[Value] | None]] = [(value, None)]
    pop, push = stack.pop, stack.append
    on_stack: set[Value] = set()  # values hash by identity
    while stack:
        v, deps = pop()
        if v in memo:
            continue
        if deps is None:
            deps = [d for d in _deps(v) if d not in memo]
            if deps:
                on_stack.add(v)
                push((v, deps))
                for d in deps:
                    if d in on_stack:  # a cycle (malformed model): nothing to read
                        memo[d] = None
                    else:
                        push((d, None))
                continue
        on_stack.discard(v)
        _store(v, memo)


def _store(value: Value, memo: Memo) -> None:
    try:
        memo[value] = _evaluate(value, memo)
    except (ValueError, IndexError, TypeError):  # malformed shape arithmetic
        memo[value] = None


def _as_array(result) -> np.ndarray | None:
    """numpy hands back a bare element where a 0-D result is meant."""
    if result is None or isinstance(result, np.ndarray):
        return result
    scalar = np.empty((), dtype=object)
    scalar[()] = result
    return scalar


def _np(t: Entries) -> np.ndarray:
    return _objects(t[1], t[0])


def _from_np(result) -> Entries | None:
    arr = _as_array(result)
    return None if arr is None else (arr.shape, tuple(arr.reshape(-1)))


def _kind(dtype) -> str:
    return dtype.kind if isinstance(dtype, np.dtype) else np.dtype(dtype).kind


def _may_be_shape(value: Value) -> bool:
    dtype = value.dtype
    if dtype is not None:
        kind = dtype.kind if isinstance(dtype, np.dtype) else np.dtype(dtype).kind
        if kind not in "iub":
            return False
    shape = value.shape
    return shape is None or len(shape) <= 2


def _deps(value: Value) -> list[Value]:
    """The inputs ``_evaluate`` reads for ``value`` (none for leaves and unreadable ops)."""
    node = value.producer
    if node is None or value.is_const or not _may_be_shape(value):
        return []
    reads = _READS.get(node.op_type)
    if reads is None:
        return []
    inputs = node.inputs
    if reads == 1:
        x = inputs[0] if inputs else None
        return [x] if x is not None else []
    return [v for v in inputs if v is not None]


def _objects(values, shape=None) -> np.ndarray:
    flat = list(values)
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr if shape is None else arr.reshape(shape)


def _evaluate(value: Value, memo: Memo) -> Entries | None:
    """One value's entries from its inputs' (already in ``memo``)."""
    if value.is_const:
        arr = np.asarray(value.const)
        kind = arr.dtype.kind
        if kind not in "iub" or arr.ndim > 2 or arr.size > _MAX_ENTRIES:
            return None
        flat = arr.reshape(-1).tolist()  # Python ints (or bools, made ints)
        return arr.shape, (tuple(int(x) for x in flat) if kind == "b" else tuple(flat))
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
        axes = range(*slice(start, end).indices(x.rank))
        shape_of_shape = x.dtype is not None and _kind(x.dtype) in "iu"
        if (shape_of_shape or isinstance(memo, NumericMemo)) and x.shape is not None:
            dims = x.shape
            flat = tuple(dims[a] if isinstance(dims[a], int) else Dim(x, a) for a in axes)
        else:
            flat = tuple(Dim(x, a) for a in axes)
        return (len(flat),), flat
    inputs = [memo.get(v) if v is not None else None for v in node.inputs]
    if op == "Concat":
        if any(p is None for p in inputs) or not inputs:
            return None
        axis = node.attr("axis", 0)
        if axis in (0, -1) and all(len(p[0]) == 1 for p in inputs):
            flat = tuple(e for p in inputs for e in p[1])
            return (len(flat),), flat
        return _from_np(np.concatenate([_np(p) for p in inputs], axis=axis))
    if op in _BINARY_SHAPE_OPS:
        a, b = inputs[0], inputs[1] if len(inputs) > 1 else None
        if a is None or b is None:
            return None
        return _elementwise(lambda x, y: _arith(op, x, y), [a, b])
    if op == "Where":  # torch writes expand/repeat sizes as Where(size == -1, 1, size)
        if len(inputs) != 3 or any(p is None for p in inputs):
            return None
        return _elementwise(_where, inputs)
    src = inputs[0] if inputs else None
    if src is None:
        return None
    return _structural(op, node, src)


def _elementwise(fn, args: list[Entries]) -> Entries:
    """``fn`` entry by entry with numpy's broadcasting."""
    n = None  # the length of a 1-D result (None: 0-D)
    for shape, _ in args:
        if len(shape) > 1:
            return _from_np(np.frompyfunc(fn, len(args), 1)(*(_np(t) for t in args)))
        if shape:
            if n is None or n == 1:
                n = shape[0]
            elif shape[0] != 1 and shape[0] != n:
                raise ValueError("shapes do not broadcast")
    if n is None:
        return (), (fn(*(t[1][0] for t in args)),)
    cols = [t[1] if len(t[1]) == n else t[1] * n for t in args]  # 0-D or length 1: repeated
    return (n,), tuple(map(fn, *cols))


def _structural(op: str, node: Node, src: Entries) -> Entries | None:
    """Ops that move entries without computing new ones (ranks 0 and 1 on the tuples,
    others on numpy object arrays)."""
    shape, flat = src
    if op in ("Cast", "Identity"):
        return src
    if op in ("Unsqueeze", "Squeeze"):
        axes = node.attr("axes")
        if axes is None and node.input(1) is not None:
            axes = const_ints(node.input(1))
        if op == "Unsqueeze":
            if axes is None:
                return None
            if not shape and len(axes) == 1:
                return (1,), flat
        elif shape == (1,) and (not axes or list(axes) in ([0], [-1])):
            return (), flat
        return _from_np(_np_squeeze(op, _np(src), axes))
    if op == "Gather":
        idx = node.input(1)
        if idx is None or not idx.is_const:
            return None
        ind = np.asarray(idx.const)
        axis = node.attr("axis", 0)
        if len(shape) == 1 and axis in (0, -1) and ind.ndim <= 1 and ind.dtype.kind in "iu":
            return ind.shape, tuple(flat[i] for i in ind.reshape(-1).tolist())
        return _from_np(np.take(_np(src), ind, axis=axis))
    if op == "Reshape":
        target = const_ints(node.input(1))
        if target is None:
            return None
        target = [shape[k] if t == 0 and k < len(shape) else t for k, t in enumerate(target)]
        if len(target) == 1 and target[0] in (-1, len(flat)):
            return (len(flat),), flat
        return _from_np(_np(src).reshape(target))
    if op == "Transpose":
        perm = node.attr("perm")
        if len(shape) <= 1 and (not perm or (shape and list(perm) in ([0], [-1]))):
            return src
        return _from_np(_np(src).transpose(perm or list(reversed(range(len(shape))))))
    if op == "ConstantOfShape":
        if not all(isinstance(d, int) for d in flat):
            return None
        fill = node.attr("value")
        fill = np.asarray(fill).reshape(-1) if fill is not None else np.zeros(1, np.int64)
        if fill.dtype.kind not in "iu":
            return None
        dims = tuple(int(d) for d in flat)
        size = math.prod(dims)
        if size > _MAX_ENTRIES:
            return None
        if all(d >= 0 for d in dims):
            return dims, (int(fill[0]),) * size
        return _from_np(_objects([int(fill[0])] * size, dims))
    return _slice(node, src)


def _np_squeeze(op: str, src: np.ndarray, axes) -> np.ndarray:
    if op == "Unsqueeze":
        out = src
        for a in sorted(a % (src.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    return np.squeeze(src, axis=tuple(axes)) if axes else np.squeeze(src)


def _slice(node: Node, src: Entries) -> Entries | None:
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    steps = const_ints(node.input(4)) if node.input(4) is not None else None
    if node.attr("starts") is not None:  # opset < 10 form
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    shape, flat = src
    ndim = len(shape)
    index: list[slice] = [slice(None)] * ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        index[a % ndim] = slice(*_clamp(s, e, st, shape[a % ndim]))
    if ndim == 1:
        picked = flat[index[0]]
        return (len(picked),), picked
    return _from_np(_np(src)[tuple(index)])


def _clamp(start: int, end: int, step: int, dim: int) -> tuple[int | None, int | None, int]:
    """ONNX Slice bounds as a Python slice (huge sentinels mean 'to the end')."""
    lo, hi, st = slice(start, end, step).indices(dim)
    if st < 0 and hi < 0:
        return lo, None, st
    return lo, hi, st


def _where(cond: Entry, x: Entry, y: Entry) -> Entry:
    if not isinstance(cond, int):
        return DERIVED
    return x if cond else y


def _arith(op: str, x: Entry, y: Entry) -> Entry:
    if not isinstance(x, int) or not isinstance(y, int):
        return _symbolic(op, x, y)
    if op in _COMPARE:
        return int(_COMPARE[op](x, y))
    if op == "Max":
        return max(x, y)
    if op == "Min":
        return min(x, y)
    if op == "Mul":
        return x * y
    if op == "Add":
        return x + y
    if op == "Sub":
        return x - y
    if op == "Mod":
        return x % y if y else DERIVED
    return x // y if y else DERIVED


_COMPARE = {"Equal": operator.eq, "Less": operator.lt, "Greater": operator.gt}
_SIZE_ARITH = frozenset(["Mul", "Add", "Sub", "Div"])
MAX_TERMS = 64  # an Expr evaluates in at most this many steps (shape_resolve.entry_dim)


def _symbolic(op: str, x: Entry, y: Entry) -> Entry:
    """Arithmetic with a size known only at run time: an ``Expr`` for the four operations
    sizes take (``H // 7``, ``B * heads``); a comparison of a size (never negative) with a
    negative literal is decided (torch's ``Where(size == -1, 1, size)``); else ``DERIVED``."""
    sized = isinstance(x, int | Dim | Expr) and isinstance(y, int | Dim | Expr)
    if op in _SIZE_ARITH and sized:
        if y == (0 if op in ("Add", "Sub") else 1):  # x * 1, x // 1, x + 0, x - 0
            return x
        if (op == "Mul" and x == 1) or (op == "Add" and x == 0):
            return y
        expr = Expr(op, x, y)
        return expr if expr.size <= MAX_TERMS else DERIVED  # deep arithmetic: not followed
    if op in _COMPARE and sized:
        if isinstance(y, int) and y < 0 and _nonnegative(x):
            return int(op == "Greater")
        if isinstance(x, int) and x < 0 and _nonnegative(y):
            return int(op == "Less")
    return DERIVED


def _nonnegative(e: Entry) -> bool:
    if isinstance(e, int):
        return e >= 0
    if isinstance(e, Dim):
        return True
    return isinstance(e, Expr) and e.op != "Sub" and _nonnegative(e.a) and _nonnegative(e.b)


def const_ints(value: Value | None) -> list[int] | None:
    """The flattened values of an integer constant, or None when it is not constant."""
    if value is None or not value.is_const:
        return None
    flat = np.asarray(value.const).reshape(-1)
    return flat.tolist() if flat.dtype.kind in "iu" else [int(x) for x in flat]


def literal_source(value: Value | None, k: int, memo: Memo | None = None):
    """Where entry ``k`` of a computed 1-D shape comes from when it is a literal that a
    rewrite can change: ``(node, input index, offset)`` of a constant fed to a ``Concat``
    (through Cast/Identity/Unsqueeze of a constant), else None."""
    memo = {} if memo is None else memo
    while value is not None and not value.is_const:
        node = value.producer
        if node is None or node.op_type != "Concat" or node.attr("axis", 0) not in (0, -1):
            return None
        offset = k
        for i, part in enumerate(node.inputs):
            entries = shape_entries(part, memo)
            if entries is None:
                return None
            if offset < len(entries):
                source = _through_wrappers(part)
                if source is not None and source.is_const:
                    return node, i, offset
                value, k = part, offset
                break
            offset -= len(entries)
        else:
            return None
    return None


def _through_wrappers(value: Value | None) -> Value | None:
    """The constant behind Cast/Identity/Unsqueeze (Constant outputs count as constants)."""
    while value is not None and not value.is_const and value.producer is not None:
        if value.producer.op_type not in ("Cast", "Identity", "Unsqueeze"):
            return None
        value = value.producer.input(0)
    return value
