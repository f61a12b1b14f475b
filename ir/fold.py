"""Folding of small constant subgraphs (the shape arithmetic exporters write), so shape
inference and the coupling rules see literal values.

torch's exporter writes ``x[..., ::2, ::2]`` as ``Slice`` whose bounds come from
``Unsqueeze(Constant)``; ONNX shape inference does not evaluate those, and every shape after
them becomes unknown. ``fold_constants`` evaluates, with numpy, the nodes of a small set of
integer/shape ops whose inputs are all constants, and returns their values by output name.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

MAX_ELEMENTS = 4096  # shape arithmetic only: never fold real tensors
_INT_TYPES = frozenset(
    [onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8]
)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _axes(node: onnx.NodeProto, vals: list, index: int = 1) -> list[int] | None:
    axes = _attr(node, "axes")
    if axes is None and len(vals) > index and vals[index] is not None:
        axes = [int(a) for a in np.asarray(vals[index]).reshape(-1)]
    return axes


def _eval(node: onnx.NodeProto, vals: list) -> list[np.ndarray] | None:
    op = node.op_type
    x = vals[0] if vals else None
    if op in ("Identity",):
        return [x]
    if op == "Cast":
        return [np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(_attr(node, "to")))]
    if op == "Unsqueeze":
        out = np.asarray(x)
        axes = _axes(node, vals)
        if axes is None:
            return None
        rank = out.ndim + len(axes)
        for a in sorted(a % rank for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        axes = _axes(node, vals)
        out = np.asarray(x)
        return [np.squeeze(out, axis=tuple(axes)) if axes else np.squeeze(out)]
    if op == "Concat":
        return [np.concatenate([np.asarray(v) for v in vals], axis=_attr(node, "axis", 0))]
    if op == "Gather":
        return [np.take(np.asarray(x), np.asarray(vals[1]), axis=_attr(node, "axis", 0))]
    if op == "Mod":
        a, b = np.asarray(vals[0]), np.asarray(vals[1])
        out = np.fmod(a, b) if _attr(node, "fmod", 0) else np.mod(a, b)
        return [np.asarray(out).astype(np.result_type(a, b))]
    if op in ("Add", "Sub", "Mul", "Div"):
        a, b = np.asarray(vals[0]), np.asarray(vals[1])
        if op == "Div":
            out = a // b if a.dtype.kind in "iu" and b.dtype.kind in "iu" else a / b
        else:
            out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
        return [np.asarray(out).astype(np.result_type(a, b))]
    if op == "Reshape":
        return [np.reshape(np.asarray(x), [int(d) for d in np.asarray(vals[1]).reshape(-1)])]
    if op == "Transpose":
        perm = _attr(node, "perm")
        return [np.transpose(np.asarray(x), perm)]
    if op == "ConstantOfShape":
        value = _attr(node, "value")
        fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1)
        shape = [int(d) for d in np.asarray(x).reshape(-1)]
        if np.prod(shape, dtype=np.int64) > MAX_ELEMENTS:
            return None
        dtype = fill.dtype if value is not None else np.float32
        return [np.full(shape, fill[0], dtype=dtype)]
    if op in ("Equal", "Less", "Greater"):
        fn = {"Equal": np.equal, "Less": np.less, "Greater": np.greater}[op]
        return [fn(np.asarray(vals[0]), np.asarray(vals[1]))]
    if op == "Not":
        return [np.logical_not(np.asarray(x))]
    if op == "Where":
        return [np.where(np.asarray(vals[0]), np.asarray(vals[1]), np.asarray(vals[2]))]
    if op in ("Max", "Min"):
        fn = np.maximum if op == "Max" else np.minimum
        out = np.asarray(vals[0])
        for v in vals[1:]:
            out = fn(out, np.asarray(v))
        return [out]
    if op == "Range":
        start = np.asarray(vals[0])  # the output has the inputs' type (numpy widens float32)
        return [np.arange(start, np.asarray(vals[1]), np.asarray(vals[2]), dtype=start.dtype)]
    if op == "Slice":
        starts, ends = np.asarray(vals[1]).reshape(-1), np.asarray(vals[2]).reshape(-1)
        arr = np.asarray(x)
        axes = (
            np.asarray(vals[3]).reshape(-1)
            if len(vals) > 3 and vals[3] is not None
            else range(len(starts))
        )
        steps = (
            np.asarray(vals[4]).reshape(-1)
            if len(vals) > 4 and vals[4] is not None
            else [1] * len(starts)
        )
        index = [slice(None)] * arr.ndim
        for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
            index[int(a)] = slice(int(s), int(e), int(st))
        return [arr[tuple(index)]]
    return None


FOLDABLE = frozenset(
    [
        "Identity",
        "Cast",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Gather",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Mod",
        "Reshape",
        "Transpose",
        "ConstantOfShape",
        "Max",
        "Min",
        "Equal",
        "Less",
        "Greater",
        "Not",
        "Where",
        "Range",
        "Slice",
    ]
)


def fold_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the outputs of foldable nodes whose inputs are all (small) constants."""
    consts: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        # shape arithmetic runs on integers: float weights (biases) are never read here
        small = math.prod(init.dims) <= MAX_ELEMENTS
        inline = init.data_location != onnx.TensorProto.EXTERNAL
        if init.data_type in _INT_TYPES and small and inline:
            consts[init.name] = numpy_helper.to_array(init)
    folded: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if isinstance(value, onnx.TensorProto) and math.prod(value.dims) <= MAX_ELEMENTS:
                consts[node.output[0]] = numpy_helper.to_array(value)
            continue
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type not in FOLDABLE:
            continue
        names = list(node.input)
        if not names or any(n and n not in consts for n in names):
            continue
        vals = [consts[n] if n else None for n in names]
        try:
            outs = _eval(node, vals)
        except Exception as err:  # a malformed node: leave it to shape inference
            log.debug("could not fold %s: %s", node.name, err)
            continue
        if not outs:
            continue
        for name, arr in zip(node.output, outs, strict=False):
            arr = np.asarray(arr)
            if arr.size <= MAX_ELEMENTS:
                consts[name] = arr
                folded[name] = arr
    return folded
