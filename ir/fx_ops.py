"""The fx op table of ``ir/from_fx.py``: how each module, function and method becomes
ONNX-typed IR nodes (the mapping rules are listed in ``from_fx``'s docstring).

``MODULE_RULES`` is keyed by module class, ``FUNCTION_RULES`` by function or method name;
function targets are recognised by identity among torch's and ``operator``'s callables, so
a user function that happens to be called ``relu`` is not taken for torch's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from drpopt.ir.core import Value
from drpopt.ir.from_fx import INT64_MAX, _Converter, _metas


def _target_name(n: Any) -> str:
    if n.op == "call_method":
        return str(n.target)
    return getattr(n.target, "__name__", None) or str(n.target)


def _target_key(n: Any) -> str | None:
    """The name a function rule is registered under, or None for a target not known."""
    if n.op == "call_method":
        return str(n.target)
    return _known_functions().get(n.target)


_FUNCTIONS: dict[Any, str] | None = None


def _known_functions() -> dict[Any, str]:
    """torch and operator callables by identity (a user function named relu is not relu)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        import torch
        import torch.nn.functional as F

        table: dict[Any, str] = {}
        for name in FUNCTION_RULES:
            for ns in (torch, F, torch.Tensor, operator):
                fn = getattr(ns, name, None)
                if callable(fn):
                    table.setdefault(fn, name)
        table[operator.truediv] = "div"
        table[operator.getitem] = "getitem"
        table[getattr] = "getattr"
        from torch.fx._symbolic_trace import _assert_is_none

        table[_assert_is_none] = "_assert_is_none"
        _FUNCTIONS = table
    return _FUNCTIONS


# ---- module rules ---------------------------------------------------------------------
ModuleRule = Callable[[_Converter, Any, Any], Any]
FunctionRule = Callable[[_Converter, Any, str, Any, Any], Any]
MODULE_RULES: dict[type, ModuleRule] = {}
FUNCTION_RULES: dict[str, FunctionRule] = {}


def _tuple(v: Any, n: int) -> list[int]:
    return [int(x) for x in v] if isinstance(v, list | tuple) else [int(v)] * n


def _conv(c: _Converter, n: Any, mod: Any) -> Value:
    if mod.padding_mode != "zeros":
        return c.unsupported(n, f"{type(mod).__name__}(padding_mode={mod.padding_mode})")
    w = c.tensor_const(f"{n.target}.weight", mod.weight)
    b = c.tensor_const(f"{n.target}.bias", mod.bias) if mod.bias is not None else None
    out_pad = mod.output_padding if getattr(mod, "transposed", False) else None
    return _conv_ops(
        c, n, c.arg(n.args[0]), w, b, mod.stride, mod.padding, mod.dilation, mod.groups, out_pad
    )


def _conv_ops(
    c: _Converter,
    n: Any,
    x: Value,
    w: Value,
    b: Value | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    output_padding: Any = None,
) -> Value:
    """Conv (ConvTranspose when ``output_padding`` is given) of ``x`` with ``w`` and ``b``."""
    kernel = [int(d) for d in (w.shape or ())[2:]]
    k = len(kernel)
    dil = _tuple(dilation, k)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * (2 * k)
        else:  # "same" (stride 1): torch puts the odd pixel at the end
            total = [d * (s - 1) for d, s in zip(dil, kernel, strict=True)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        p = _tuple(padding, k)
        pads = p + p
    ins = [x, w] + ([b] if b is not None else [])
    y = c.out(n)
    attrs: dict[str, Any] = dict(
        dilations=dil, group=int(groups), kernel_shape=kernel, pads=pads, strides=_tuple(stride, k)
    )
    if output_padding is not None:
        attrs["output_padding"] = _tuple(output_padding, k)
        c.emit("ConvTranspose", n, ins, [y], **attrs)
    else:
        c.emit("Conv", n, ins, [y], **attrs)
    return y


def _linear(c: _Converter, n: Any, mod: Any) -> Value:
    x = c.arg(n.args[0])
    w = c.tensor_const(f"{n.target}.weight", mod.weight)
    b = c.tensor_const(f"{n.target}.bias", mod.bias) if mod.bias is not None else None
    return _linear_ops(c, n, x, w, b)


def _linear_ops(c: _Converter, n: Any, x: Value, w: Value, b: Value | None) -> Value:
    """``y = x @ w.T + b``: one Gemm for 2-D inputs; for N-D inputs (tokens ``[B, N, C]``)
    the leading axes are merged around a Gemm, so the weight stays the parameter itself (a
    ``MatMul`` of ``Transpose(weight)`` would hide it from the channel rules)."""
    y = c.out(n)
    if x.rank == 2:
        ins = [x, w] + ([b] if b is not None else [])
        c.emit("Gemm", n, ins, [y], alpha=1.0, beta=1.0, transB=1)
        return y
    if x.shape is not None and y.shape is not None and x.rank is not None and x.rank > 2:
        rows = int(np.prod(x.shape[:-1]))
        flat = c.tmp(f"{n.name}.rows", (rows, x.shape[-1]), x.dtype)
        c.emit("Reshape", n, [x, c.ints(f"{n.name}.rows_shape", [rows, x.shape[-1]])], [flat])
        out = c.tmp(f"{n.name}.gemm", (rows, y.shape[-1]), y.dtype)
        ins = [flat, w] + ([b] if b is not None else [])
        c.emit("Gemm", n, ins, [out], alpha=1.0, beta=1.0, transB=1)
        c.emit("Reshape", n, [out, c.ints(f"{n.name}.out_shape", list(y.shape))], [y])
        return y
    wt = c.tmp(f"{n.name}.weight_t", tuple(reversed(w.shape or ())), w.dtype)
    c.emit("Transpose", n, [w], [wt], perm=[1, 0])
    if b is None:
        c.emit("MatMul", n, [x, wt], [y])
        return y
    mm = c.tmp(f"{n.name}.matmul", y.shape, y.dtype)
    c.emit("MatMul", n, [x, wt], [mm])
    c.emit("Add", n, [mm, b], [y])
    return y


def _batchnorm(c: _Converter, n: Any, mod: Any) -> Value:
    x = c.arg(n.args[0])
    if mod.running_mean is None or mod.running_var is None:
        return c.unsupported(n, f"{type(mod).__name__}(track_running_stats=False)")
    t = n.target
    size = mod.num_features
    dtype = mod.running_mean.detach().cpu().numpy().dtype
    scale = (
        c.tensor_const(f"{t}.weight", mod.weight)
        if mod.weight is not None
        else c.const(f"{t}.scale", np.ones(size, dtype))
    )
    bias = (
        c.tensor_const(f"{t}.bias", mod.bias)
        if mod.bias is not None
        else c.const(f"{t}.shift", np.zeros(size, dtype))
    )
    mean = c.tensor_const(f"{t}.running_mean", mod.running_mean)
    var = c.tensor_const(f"{t}.running_var", mod.running_var)
    y = c.out(n)
    momentum = 1.0 - (mod.momentum if mod.momentum is not None else 0.1)
    c.emit(
        "BatchNormalization",
        n,
        [x, scale, bias, mean, var],
        [y],
        epsilon=float(mod.eps),
        momentum=momentum,
    )
    return y


def _activation(
    c: _Converter, n: Any, x: Value, op: str, attrs: dict[str, Any] | None = None
) -> Value:
    y = c.out(n)
    if op == "SiLU":
        s = c.tmp(f"{n.name}.sigmoid", x.shape, x.dtype)
        c.emit("Sigmoid", n, [x], [s])
        c.emit("Mul", n, [x, s], [y])
        return y
    c.emit(op, n, [x], [y], **(attrs or {}))
    return y


def _clip(c: _Converter, n: Any, x: Value, lo: float | None, hi: float | None) -> Value:
    y = c.out(n)
    dtype = x.dtype or np.float32
    ins = [
        x,
        None if lo is None else c.const(f"{n.name}.min", np.asarray(lo, dtype)),
        None if hi is None else c.const(f"{n.name}.max", np.asarray(hi, dtype)),
    ]
    while ins[-1] is None:
        ins.pop()
    c.emit("Clip", n, ins, [y])
    return y


def _module_activation(c: _Converter, n: Any, mod: Any) -> Value:
    import torch.nn as nn

    x = c.arg(n.args[0])
    if isinstance(mod, nn.ReLU6):
        return _clip(c, n, x, 0.0, 6.0)
    if isinstance(mod, nn.Hardtanh):
        return _clip(c, n, x, float(mod.min_val), float(mod.max_val))
    op, attrs = _ACTIVATION_MODULES[type(mod)]
    return _activation(c, n, x, op, attrs(mod) if attrs else None)


def _alias(c: _Converter, n: Any, mod: Any = None) -> Any:
    return c.arg(n.args[0])


def _pool(c: _Converter, n: Any, mod: Any) -> Value:
    import torch.nn as nn

    x = c.arg(n.args[0])
    if isinstance(mod, nn.MaxPool2d | nn.MaxPool1d):
        if mod.return_indices:
            return c.unsupported(n, "MaxPool(return_indices=True)")
        return _pool_ops(
            c,
            n,
            x,
            "MaxPool",
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            mod.ceil_mode,
        )
    return _pool_ops(
        c,
        n,
        x,
        "AveragePool",
        mod.kernel_size,
        mod.stride,
        mod.padding,
        1,
        mod.ceil_mode,
        mod.count_include_pad,
    )


def _pool_ops(
    c: _Converter,
    n: Any,
    x: Value,
    op: str,
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Value:
    k = (x.rank or 4) - 2
    ks = _tuple(kernel, k)
    st = _tuple(stride if stride not in (None, [], ()) else kernel, k)
    p = _tuple(padding, k)
    attrs: dict[str, Any] = dict(
        ceil_mode=int(bool(ceil_mode)), kernel_shape=ks, pads=p + p, strides=st
    )
    if op == "MaxPool":
        attrs["dilations"] = _tuple(dilation, k)
    else:
        attrs["count_include_pad"] = int(bool(count_include_pad))
    y = c.out(n)
    c.emit(op, n, [x], [y], **attrs)
    return y


def _adaptive(c: _Converter, n: Any, x: Value, size: Any, op: str) -> Value:
    y = c.out(n)
    k = (x.rank or 4) - 2
    sizes = [s for s in _tuple(size if size is not None else 1, k)]
    ins = (x.shape or ())[2:]
    if all(s == 1 for s in sizes):
        c.emit("Global" + op, n, [x], [y])
        return y
    if all(isinstance(d, int) and s and d % s == 0 for d, s in zip(ins, sizes, strict=False)):
        kernel = [d // s for d, s in zip(ins, sizes, strict=True)]
        c.emit(op, n, [x], [y], kernel_shape=kernel, strides=kernel, pads=[0] * (2 * k))
        return y
    return c.unsupported(n, f"adaptive_{op}")


def _module_adaptive(c: _Converter, n: Any, mod: Any) -> Value:
    import torch.nn as nn

    op = (
        "AveragePool" if isinstance(mod, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool1d) else "MaxPool"
    )
    if op == "MaxPool" and mod.return_indices:
        return c.unsupported(n, "AdaptiveMaxPool(return_indices=True)")
    return _adaptive(c, n, c.arg(n.args[0]), mod.output_size, op)


def _flatten_ops(c: _Converter, n: Any, x: Value, start: int, end: int) -> Value:
    rank = x.rank or 0
    start, end = start % max(rank, 1), end % max(rank, 1)
    if rank <= 1 or start == end:
        return x
    y = c.out(n)
    if start == 1 and end == rank - 1:
        c.emit("Flatten", n, [x], [y], axis=1)
    elif start == 0 and end == rank - 2:
        c.emit("Flatten", n, [x], [y], axis=end + 1)
    else:
        c.emit("Reshape", n, [x, c.ints(f"{n.name}.shape", list(y.shape or ()))], [y])
    return y


def _module_flatten(c: _Converter, n: Any, mod: Any) -> Value:
    return _flatten_ops(c, n, c.arg(n.args[0]), mod.start_dim, mod.end_dim)


def _resize(c: _Converter, n: Any, x: Value, mode: str, align_corners: Any) -> Value:
    y = c.out(n)
    if x.shape is None or y.shape is None:
        return c.unsupported(n, "interpolate")
    scales = [yd / xd for xd, yd in zip(x.shape, y.shape, strict=True)]
    if mode == "nearest":
        attrs = dict(
            coordinate_transformation_mode="asymmetric", mode="nearest", nearest_mode="floor"
        )
    elif mode in ("bilinear", "linear", "trilinear"):
        ctm = "align_corners" if align_corners else "pytorch_half_pixel"
        attrs = dict(coordinate_transformation_mode=ctm, mode="linear")
    else:
        return c.unsupported(n, f"interpolate(mode={mode})")
    roi = c.const(f"{n.name}.roi", np.zeros(0, np.float32))
    sc = c.const(f"{n.name}.scales", np.asarray(scales, np.float32))
    c.emit("Resize", n, [x, roi, sc], [y], **attrs)
    return y


def _module_upsample(c: _Converter, n: Any, mod: Any) -> Value:
    return _resize(c, n, c.arg(n.args[0]), mod.mode, mod.align_corners)


def _module_softmax(c: _Converter, n: Any, mod: Any) -> Value:
    x = c.arg(n.args[0])
    return _activation(c, n, x, "Softmax", {"axis": int(mod.dim if mod.dim is not None else 1)})


def _register_modules() -> None:
    import torch.nn as nn

    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d):
        MODULE_RULES[cls] = _conv
    MODULE_RULES[nn.Linear] = _linear
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        MODULE_RULES[cls] = _batchnorm
    for cls in (*_ACTIVATION_MODULES, nn.ReLU6, nn.Hardtanh):
        MODULE_RULES[cls] = _module_activation
    for cls in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        MODULE_RULES[cls] = _alias
    for cls in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d):
        MODULE_RULES[cls] = _pool
    for cls in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        MODULE_RULES[cls] = _module_adaptive
    MODULE_RULES[nn.Flatten] = _module_flatten
    MODULE_RULES[nn.Upsample] = _module_upsample
    MODULE_RULES[nn.Softmax] = _module_softmax


def _activation_modules() -> dict[type, tuple[str, Callable[[Any], dict] | None]]:
    import torch.nn as nn

    return {
        nn.ReLU: ("Relu", None),
        nn.SiLU: ("SiLU", None),
        nn.Sigmoid: ("Sigmoid", None),
        nn.Tanh: ("Tanh", None),
        nn.Hardswish: ("HardSwish", None),
        nn.Hardsigmoid: ("HardSigmoid", lambda m: {"alpha": 1 / 6, "beta": 0.5}),
        nn.LeakyReLU: ("LeakyRelu", lambda m: {"alpha": float(m.negative_slope)}),
        nn.GELU: ("Gelu", lambda m: {"approximate": m.approximate}),
        nn.ELU: ("Elu", lambda m: {"alpha": float(m.alpha)}),
        nn.Mish: ("Mish", None),
    }


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


_ACTIVATION_MODULES = _activation_modules()
_register_modules()
