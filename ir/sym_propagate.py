"""Output shapes with symbolic dims, for the ops whose shape ONNX's one-node inference
loses when the input sizes are symbols (a dynamic batch, height and width).

``propagate_shapes(symbolic=True)`` (``ir/propagate.py``) asks ``symbolic_shape`` for a
node whose inputs all have a known rank and dims that are numbers or symbols. Sizes are
computed with ``ir/symdims`` (``h*w`` for a flattened image, ``((h-1)//2+1)`` after a
strided conv); a shape tensor's entries are read with ``shape_entries`` and evaluated on
the current shapes (``entry_dim``). A dim that cannot be known becomes a fresh symbol
(``fresh()``): the rank stays known and the size is only ever equal to itself, so nothing
downstream takes it for another size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from drpopt.ir import symdims
from drpopt.ir.core import Node, Value
from drpopt.ir.shape_expr import const_ints, shape_entries
from drpopt.ir.shape_resolve import entry_dim, resolve_reshape

Fresh = Callable[[], str]
_BIG = 2**62  # Slice's "to the end" sentinels are larger than any size


def symbolic_shape(node: Node, ins: list[Value], memo: dict, fresh: Fresh) -> tuple | None:
    """The output shape of ``node`` (one output) with symbolic dims, or None to leave it
    to ONNX's inference."""
    fn = _RULES.get(node.op_type)
    if fn is None:
        return None
    try:
        return fn(node, ins, memo, fresh)
    except (ValueError, TypeError, IndexError, ZeroDivisionError):
        return None


def has_negative_input_dims(graph) -> bool:
    return any(
        v.shape is not None and any(isinstance(d, int) and d < 0 for d in v.shape)
        for v in graph.inputs
    )


def name_negative_input_dims(graph) -> None:
    """Graph inputs whose dims are written ``-1`` (paddle2onnx's dynamic axes) get a symbol
    per axis instead (``x.0``), so shapes propagate from them as from any symbolic dim;
    the ``-1`` ONNX's inference copied onto later values is computed again from it."""
    for v in graph.inputs:
        if v.shape is not None and any(isinstance(d, int) and d < 0 for d in v.shape):
            v.shape = tuple(
                f"{v.name}.{a}".replace("*", "_") if isinstance(d, int) and d < 0 else d
                for a, d in enumerate(v.shape)
            )


def keep_declared_sizes(declared: tuple | None, computed: tuple | None) -> tuple | None:
    """A graph output's shape: the computed dims, except where the model declares a fixed
    size and the computation gives a symbol (a symbol declared for a fixed size, torch's
    ``Transposeoutput_dim_2``, gives way to the size)."""
    if declared is None or computed is None or len(declared) != len(computed):
        return computed if computed is not None else declared
    return tuple(
        d if isinstance(d, int) and d >= 0 and not isinstance(c, int) else c
        for d, c in zip(declared, computed, strict=True)
    )


def _dims(value: Value | None, memo: dict, fresh: Fresh) -> list | None:
    """A shape tensor's entries as dims (fresh symbols where an entry is not known)."""
    entries = shape_entries(value, memo)
    if entries is None:
        return None
    out = []
    for e in entries:
        d = entry_dim(e)
        out.append(fresh() if d is None else d)
    return out


def _reshape(node, ins, memo, fresh):
    if len(ins) < 2:
        return None
    entries = shape_entries(ins[1], memo)
    if entries is None:
        return None
    return resolve_reshape(tuple(ins[0].shape), entries, bool(node.attr("allowzero", 0)))


def _broadcast_shapes(shapes: list[tuple], fresh: Fresh) -> tuple:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for axis in range(rank):
        d = symdims.broadcast([s[axis] for s in padded])
        out.append(fresh() if d is None else d)
    return tuple(out)


def _elementwise(node, ins, memo, fresh):
    return _broadcast_shapes([tuple(v.shape) for v in ins], fresh)


def _where(node, ins, memo, fresh):
    return _broadcast_shapes([tuple(v.shape) for v in ins], fresh)


def _matmul(node, ins, memo, fresh):
    a, b = tuple(ins[0].shape), tuple(ins[1].shape)
    if len(a) < 2 or len(b) < 2:
        return None
    batch = _broadcast_shapes([a[:-2], b[:-2]], fresh) if a[:-2] or b[:-2] else ()
    return (*batch, a[-2], b[-1])


def _conv(node, ins, memo, fresh):
    """Conv and pools (explicit pads; ``auto_pad`` and ``ceil_mode`` left to ONNX)."""
    if node.attr("auto_pad", "NOTSET") != "NOTSET" or node.attr("ceil_mode", 0):
        return None
    x = tuple(ins[0].shape)
    n = len(x) - 2
    if n < 1:
        return None
    if node.op_type == "Conv":
        w = ins[1].shape
        if len(w) != len(x):
            return None
        kernel, channels = list(w[2:]), w[0]
    else:
        kernel, channels = node.attr("kernel_shape"), x[1]
    if kernel is None or any(not isinstance(k, int) for k in kernel):
        return None
    pads = node.attr("pads") or [0] * (2 * n)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    spatial = [
        symdims.conv_dim(x[2 + i], kernel[i], strides[i], dilations[i], pads[i] + pads[i + n])
        for i in range(n)
    ]
    return (x[0], channels, *spatial)


def _concat(node, ins, memo, fresh):
    shapes = [tuple(v.shape) for v in ins]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        return None
    axis = node.attr("axis", 0) % rank
    out = []
    for a in range(rank):
        dims = [s[a] for s in shapes]
        if a == axis:
            total = dims[0]
            for d in dims[1:]:
                total = symdims.add(total, d)
            out.append(total)
        else:  # equal at run time: a fixed size where one part has it
            fixed = [d for d in dims if isinstance(d, int) and d != 1]
            out.append(fixed[0] if fixed else dims[0])
    return tuple(out)


def _resize(node, ins, memo, fresh):
    """Resize to computed sizes (``F.interpolate(size=y.shape[2:])``) or by constant
    integer scales."""
    x = tuple(ins[0].shape)
    sizes, scales = node.input(3), node.input(2)
    if sizes is not None:
        dims = _dims(sizes, memo, fresh)
        return tuple(dims) if dims is not None and len(dims) == len(x) else None
    if scales is None or not scales.is_const:
        return None
    factors = np.asarray(scales.const, dtype=np.float64).reshape(-1)
    if len(factors) != len(x):
        return None
    out = []
    for d, f in zip(x, factors, strict=True):
        if f == 1.0:
            out.append(d)
        elif float(f).is_integer():
            out.append(symdims.mul(d, int(f)))
        elif isinstance(d, int):
            out.append(int(np.floor(d * f)))
        else:
            out.append(fresh())
    return tuple(out)


def _expand(node, ins, memo, fresh):
    dims = _dims(node.input(1), memo, fresh)
    if dims is None:
        return None
    return _broadcast_shapes([tuple(ins[0].shape), tuple(dims)], fresh)


def _constant_of_shape(node, ins, memo, fresh):
    dims = _dims(node.input(0), memo, fresh)
    return tuple(dims) if dims is not None else None


def _range(node, ins, memo, fresh):
    args = [_dims(v, memo, fresh) for v in node.inputs]
    if len(args) != 3 or any(a is None or len(a) != 1 for a in args):
        return None
    start, limit, delta = (a[0] for a in args)  # type: ignore[index]
    if delta == 1 and isinstance(limit, str):
        return (symdims.sub(limit, start),)
    return (fresh(),)


def _slice(node, ins, memo, fresh):
    """Slice bounds computed or of symbolic axes: each sliced axis's length where the
    bounds make it plain (the whole axis, a fixed head or tail dropped), else fresh."""
    x = list(ins[0].shape)
    if node.attr("starts") is not None:
        return None
    starts, ends = _dims(node.input(1), memo, fresh), _dims(node.input(2), memo, fresh)
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    steps = const_ints(node.input(4)) if node.input(4) is not None else None
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    if (node.input(3) is not None and axes is None) or (node.input(4) is not None and not steps):
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis %= len(x)
        dim = x[axis]
        if all(isinstance(v, int) for v in (start, end, dim)):
            x[axis] = len(range(*slice(start, end, step).indices(dim)))
        elif step == 1 and start == 0 and (end == dim or (isinstance(end, int) and end >= _BIG)):
            continue
        elif step == 1 and isinstance(start, int) and start >= 0 and isinstance(end, int):
            x[axis] = symdims.sub(dim, start) if end >= _BIG else fresh()
        else:
            x[axis] = fresh()
    return tuple(x)


def _pad(node, ins, memo, fresh):
    x = tuple(ins[0].shape)
    if node.attr("pads") is not None or node.input(1) is None or node.input(3) is not None:
        return None
    pads = _dims(node.input(1), memo, fresh)
    if pads is None or len(pads) != 2 * len(x):
        return None
    n = len(x)
    return tuple(symdims.add(symdims.add(d, pads[i]), pads[i + n]) for i, d in enumerate(x))


def global_pool_shape(x: tuple) -> tuple | None:
    """GlobalAveragePool/GlobalMaxPool of a tensor of shape ``x``: the batch and channel
    dims, then 1s (None under rank 2, which ONNX's inference rejects)."""
    return (*x[:2], *([1] * (len(x) - 2))) if len(x) >= 2 else None


def reduced_shape(node: Node, x: tuple, axes) -> tuple | None:
    """The output shape of the reduction ``node`` of a tensor of shape ``x`` over ``axes``
    (none: every axis, or none with ``noop_with_empty_axes``): reduced dims 1 or dropped
    as ``keepdims`` says, the others as they are. None for an axis out of range (left to
    ONNX's inference, which rejects it)."""
    rank = len(x)
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return tuple(x)
        axes = range(rank)
    if any(not -rank <= a < rank for a in axes):
        return None
    drop = {a % rank for a in axes}
    if node.attr("keepdims", 1):
        return tuple(1 if i in drop else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in drop)


def _global_pool(node, ins, memo, fresh):
    return global_pool_shape(tuple(ins[0].shape))


def _reduce(node, ins, memo, fresh):
    """ReduceMean/Max/Min over the ``axes`` attribute (an ``axes`` input, opset 18, goes to
    ONNX's inference)."""
    if node.input(1) is not None:
        return None
    return reduced_shape(node, tuple(ins[0].shape), node.attr("axes"))


# (ONNX's one-node inference costs about 250k instructions a node: each op answered here
# is one call fewer for a dynamic-input model)
_RULES = {
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce,
    "ReduceMax": _reduce,
    "ReduceMin": _reduce,
    "Reshape": _reshape,
    "Conv": _conv,
    "MaxPool": _conv,
    "AveragePool": _conv,
    "Concat": _concat,
    "Resize": _resize,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Slice": _slice,
    "Pad": _pad,
    "MatMul": _matmul,
    "Where": _where,
}
for _op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "And"):
    _RULES[_op] = _elementwise
