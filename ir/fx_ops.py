"""The fx op table of ``ir/from_fx.py``: how each module, function and method becomes
ONNX-typed IR nodes (the mapping rules are listed in ``from_fx``'s docstring). Module rules
and the shared op builders live here; function and method rules in ``ir/fx_functions.py``,
which registers them into ``FUNCTION_RULES`` when imported (``from_fx`` imports both).

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
from drpopt.ir.from_fx import _Converter


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


_ACTIVATION_MODULES = _activation_modules()
_register_modules()
