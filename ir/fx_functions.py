"""The fx function and method rules (``torch.add``, ``x.view``, ``F.interpolate``,
``operator.getitem``, ...), registered into ``ir.fx_ops.FUNCTION_RULES`` on import; the op
builders they share with the module rules are in ``ir/fx_ops.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from drpopt.ir.core import Value
from drpopt.ir.from_fx import INT64_MAX, _Converter, _metas
from drpopt.ir.fx_ops import (
    FUNCTION_RULES,
    FunctionRule,
    _activation,
    _adaptive,
    _clip,
    _conv_ops,
    _flatten_ops,
    _linear_ops,
    _pool_ops,
    _resize,
    _tuple,
)


# ---- function and method rules --------------------------------------------------------
def _fn(*names: str) -> Callable[[FunctionRule], FunctionRule]:
    def deco(fn: FunctionRule) -> FunctionRule:
        for name in names:
            FUNCTION_RULES[name] = fn
        return fn

    return deco


def _get(args: Any, kwargs: Any, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


@_fn("_assert_is_none")
def _f_nothing(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return None


@_fn("contiguous", "clone", "detach", "dropout", "identity")
def _f_alias(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return args[0]


@_fn("to", "float", "type_as", "half", "double")
def _f_cast(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x = args[0]
    y = c.out(n)
    if y.dtype == x.dtype:
        return x
    import onnx

    c.emit("Cast", n, [x], [y], to=int(onnx.helper.np_dtype_to_tensor_dtype(y.dtype)))
    return y


_BINARY = {"add": "Add", "iadd": "Add", "sub": "Sub", "isub": "Sub", "mul": "Mul"}
_BINARY |= {"imul": "Mul", "div": "Div", "truediv": "Div", "itruediv": "Div"}


@_fn(*_BINARY)
def _f_binary(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    a, b = args[0], _get(args, kwargs, 1, "other")
    if key == "div" and kwargs.get("rounding_mode") is not None:
        return c.unsupported(n, "div(rounding_mode)")
    ref = a if isinstance(a, Value) else b
    dtype = ref.dtype or np.float32
    if not isinstance(a, Value):
        a = c.const(f"{n.name}.a", np.asarray(a, dtype))
    if not isinstance(b, Value):
        b = c.const(f"{n.name}.b", np.asarray(b, dtype))
    alpha = kwargs.get("alpha", 1)
    if alpha != 1:
        scaled = c.tmp(f"{n.name}.alpha", b.shape, b.dtype)
        c.emit(
            "Mul",
            n,
            [b, c.const(f"{n.name}.alpha_v", np.asarray(alpha, dtype))],
            [scaled],
        )
        b = scaled
    y = c.out(n)
    c.emit(_BINARY[key], n, [a, b], [y])
    return y


@_fn("neg")
def _f_neg(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return _activation(c, n, args[0], "Neg")


_UNARY = {
    "relu": "Relu",
    "relu_": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "silu": "SiLU",
    "hardswish": "HardSwish",
    "mish": "Mish",
    "exp": "Exp",
}


@_fn(*_UNARY)
def _f_unary(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return _activation(c, n, args[0], _UNARY[key])


@_fn("hardsigmoid")
def _f_hardsigmoid(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return _activation(c, n, args[0], "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})


@_fn("leaky_relu")
def _f_leaky(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    alpha = float(_get(args, kwargs, 1, "negative_slope", 0.01))
    return _activation(c, n, args[0], "LeakyRelu", {"alpha": alpha})


@_fn("gelu")
def _f_gelu(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return _activation(c, n, args[0], "Gelu", {"approximate": kwargs.get("approximate", "none")})


@_fn("elu")
def _f_elu(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return _activation(c, n, args[0], "Elu", {"alpha": float(_get(args, kwargs, 1, "alpha", 1.0))})


@_fn("relu6", "hardtanh", "clamp", "clip")
def _f_clip(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    if key == "relu6":
        lo, hi = 0.0, 6.0
    elif key == "hardtanh":
        lo = _get(args, kwargs, 1, "min_val", -1.0)
        hi = _get(args, kwargs, 2, "max_val", 1.0)
    else:
        lo, hi = _get(args, kwargs, 1, "min"), _get(args, kwargs, 2, "max")
    if isinstance(lo, Value) or isinstance(hi, Value):
        return c.unsupported(n, f"{key}(tensor bounds)")
    return _clip(c, n, args[0], lo, hi)


@_fn("softmax")
def _f_softmax(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    dim = _get(args, kwargs, 1, "dim")
    if dim is None:
        return c.unsupported(n, "softmax(dim=None)")
    return _activation(c, n, args[0], "Softmax", {"axis": int(dim)})


@_fn("cat", "concat", "concatenate")
def _f_cat(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    parts = list(args[0])
    if not all(isinstance(p, Value) for p in parts):
        return c.unsupported(n, key)
    axis = _get(args, kwargs, 1, "dim", kwargs.get("axis", 0))
    y = c.out(n)
    c.emit("Concat", n, parts, [y], axis=int(axis))
    return y


@_fn("flatten")
def _f_flatten(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    start = _get(args, kwargs, 1, "start_dim", 0)
    end = _get(args, kwargs, 2, "end_dim", -1)
    return _flatten_ops(c, n, args[0], int(start), int(end))


@_fn("view", "reshape", "squeeze", "unsqueeze", "expand_as_shape")
def _f_reshape(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x = args[0]
    y = c.out(n)
    if y.shape == x.shape:
        return x
    c.emit("Reshape", n, [x, c.ints(f"{n.name}.shape", list(y.shape or ()))], [y])
    return y


@_fn("permute", "transpose")
def _f_transpose(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x = args[0]
    rank = x.rank or 0
    if key == "permute":
        dims = args[1:] if len(args) > 2 or not isinstance(args[1], list | tuple) else args[1]
        if not dims:
            dims = kwargs.get("dims")
        perm = [int(d) % rank for d in dims]
    else:
        a = int(_get(args, kwargs, 1, "dim0")) % rank
        b = int(_get(args, kwargs, 2, "dim1")) % rank
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    if perm == list(range(rank)):
        return x
    y = c.out(n)
    c.emit("Transpose", n, [x], [y], perm=perm)
    return y


@_fn("chunk", "split")
def _f_split(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x = args[0]
    metas = _metas(n.meta.get("tensor_meta"))
    axis = int(_get(args, kwargs, 2, "dim", 0)) % (x.rank or 1)
    outs = [c.out(n, i) for i in range(len(metas))]
    sizes = [int(v.shape[axis]) for v in outs]  # type: ignore[index]
    c.emit("Split", n, [x, c.ints(f"{n.name}.split", sizes)], outs, axis=axis)
    return tuple(outs)


@_fn("unbind")
def _f_unbind(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    """``x.unbind(dim)`` as ONNX writes it: a Split into size-1 parts, each squeezed."""
    x = args[0]
    if x.rank is None or x.shape is None:
        return c.unsupported(n, "unbind of a tensor of unknown shape")
    axis = int(_get(args, kwargs, 1, "dim", 0)) % x.rank
    count = int(x.shape[axis])
    part = tuple(1 if a == axis else int(d) for a, d in enumerate(x.shape))
    parts = [c.tmp(f"{n.name}.part{i}", part, x.dtype) for i in range(count)]
    c.emit("Split", n, [x, c.ints(f"{n.name}.split", [1] * count)], parts, axis=axis)
    outs = [c.out(n, i) for i in range(count)]
    for p, y in zip(parts, outs, strict=True):
        c.emit("Squeeze", n, [p, c.ints(f"{n.name}.axes", [axis])], [y])
    return tuple(outs)


@_fn("mean", "sum")
def _f_reduce(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x = args[0]
    dim = _get(args, kwargs, 1, "dim")
    keep = bool(_get(args, kwargs, 2, "keepdim", False))
    if kwargs.get("dtype") is not None:
        return c.unsupported(n, f"{key}(dtype)")
    rank = x.rank or 0
    axes = list(range(rank)) if dim is None else _tuple(dim, 1)
    axes = sorted(int(a) % rank for a in axes)
    y = c.out(n)
    if key == "mean":
        c.emit("ReduceMean", n, [x], [y], axes=axes, keepdims=int(keep))
    else:
        c.emit("ReduceSum", n, [x, c.ints(f"{n.name}.axes", axes)], [y], keepdims=int(keep))
    return y


@_fn("max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d")
def _f_pool(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x = args[0]
    kernel = _get(args, kwargs, 1, "kernel_size")
    stride = _get(args, kwargs, 2, "stride")
    padding = _get(args, kwargs, 3, "padding", 0)
    if key.startswith("max"):
        if _get(args, kwargs, 6, "return_indices", False):
            return c.unsupported(n, f"{key}(return_indices=True)")
        dil = _get(args, kwargs, 4, "dilation", 1)
        ceil = _get(args, kwargs, 5, "ceil_mode", False)
        return _pool_ops(c, n, x, "MaxPool", kernel, stride, padding, dil, ceil)
    if _get(args, kwargs, 6, "divisor_override") is not None:
        return c.unsupported(n, f"{key}(divisor_override)")
    ceil = _get(args, kwargs, 4, "ceil_mode", False)
    cip = _get(args, kwargs, 5, "count_include_pad", True)
    return _pool_ops(c, n, x, "AveragePool", kernel, stride, padding, 1, ceil, cip)


@_fn("adaptive_avg_pool2d", "adaptive_avg_pool1d")
def _f_adaptive(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    return _adaptive(c, n, args[0], _get(args, kwargs, 1, "output_size"), "AveragePool")


@_fn("interpolate", "upsample")
def _f_interpolate(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    mode = _get(args, kwargs, 3, "mode", "nearest")
    return _resize(c, n, args[0], mode, _get(args, kwargs, 4, "align_corners"))


@_fn("linear")
def _f_linear(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    w, b = _get(args, kwargs, 1, "weight"), _get(args, kwargs, 2, "bias")
    if not isinstance(w, Value) or (b is not None and not isinstance(b, Value)):
        return c.unsupported(n, key)
    return _linear_ops(c, n, args[0], w, b)


@_fn("conv1d", "conv2d", "conv3d")
def _f_conv(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    w, b = _get(args, kwargs, 1, "weight"), _get(args, kwargs, 2, "bias")
    if not isinstance(w, Value) or (b is not None and not isinstance(b, Value)):
        return c.unsupported(n, key)
    stride = _get(args, kwargs, 3, "stride", 1)
    padding = _get(args, kwargs, 4, "padding", 0)
    dilation = _get(args, kwargs, 5, "dilation", 1)
    groups = _get(args, kwargs, 6, "groups", 1)
    return _conv_ops(c, n, args[0], w, b, stride, padding, dilation, groups)


@_fn("getattr")
def _f_getattr(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    # tensor attributes with data (x.T, x.real) are not mapped; sizes never get here
    return c.unsupported(n, f"getattr.{args[1]}")


@_fn("getitem")
def _f_getitem(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x, index = args
    if not isinstance(x, Value):
        return x[index]
    return _index(c, n, x, index)


def _index(c: _Converter, n: Any, x: Value, index: Any) -> Any:
    idx = index if isinstance(index, tuple) else (index,)
    if x.shape is None or any(
        not (i is None or i is Ellipsis or isinstance(i, int | slice)) for i in idx
    ):
        return c.unsupported(n, "getitem")
    if any(
        isinstance(s, slice) and any(isinstance(v, Value) for v in (s.start, s.stop, s.step))
        for s in idx
    ):
        return c.unsupported(n, "getitem")
    rank = len(x.shape)
    real = [i for i in idx if i is not None and i is not Ellipsis]
    out: list[Any] = []
    for i in idx:
        if i is Ellipsis:
            out.extend([slice(None)] * (rank - len(real)))
        else:
            out.append(i)
    axis = 0
    slices, gathers = [], []
    shape = list(x.shape)
    for i in out:
        if i is None:
            continue
        if isinstance(i, slice):
            if i != slice(None) and i != slice(None, None, 1):
                step = 1 if i.step is None else int(i.step)
                start = i.start if i.start is not None else (0 if step > 0 else -1)
                stop = i.stop if i.stop is not None else (INT64_MAX if step > 0 else -INT64_MAX)
                slices.append((axis, int(start), int(stop), step))
                shape[axis] = len(range(*slice(i.start, i.stop, i.step).indices(shape[axis])))
        else:
            gathers.append((axis, int(i)))
        axis += 1
    y_final = c.out(n)
    cur = x
    steps = (1 if slices else 0) + len(gathers) + (1 if None in out else 0)
    if steps == 0:
        return x
    if slices:
        nxt = y_final if steps == 1 else c.tmp(f"{n.name}.slice", tuple(shape), x.dtype)
        ins = [cur] + [
            c.ints(f"{n.name}.{part}", [s[k] for s in slices])
            for k, part in ((1, "starts"), (2, "ends"), (0, "axes"), (3, "steps"))
        ]
        c.emit("Slice", n, ins, [nxt])
        cur, steps = nxt, steps - 1
    for ax, i in sorted(gathers, reverse=True):
        del shape[ax]
        nxt = y_final if steps == 1 else c.tmp(f"{n.name}.gather", tuple(shape), x.dtype)
        c.emit("Gather", n, [cur, c.ints(f"{n.name}.index", i)], [nxt], axis=ax)
        cur, steps = nxt, steps - 1
    if steps:
        target = c.ints(f"{n.name}.shape", list(y_final.shape or ()))
        c.emit("Reshape", n, [cur, target], [y_final])
    return y_final
