"""Shapes and dtypes of every node output, node by node, without whole-model inference.

``from_onnx`` runs ONNX shape inference on a light copy of the model: serialising that
copy, the C++ pass and reading its value infos back are a third of the load of a small CNN.
For a model whose inputs are static (the usual export for a given image size) the shapes
follow node by node from the numbers: ``infer_types`` walks the nodes once in graph order
and gives each output its shape and dtype, computed here for the common ops
(``propagate._fast_shape`` and the pools, Gemm, Flatten, Shape, Squeeze and reductions
below) and by ONNX's inference of that one node otherwise (``propagate._infer``, the same
C++ code the whole-model pass runs, with the numbers shape tensors hold as data).

Rules:
- an op's dtype is computed here only where ONNX's schema fixes it simply (the first
  input's, bool for comparisons, int64 for Shape, the ``to`` of a Cast); any other op goes
  to ONNX's one-node inference;
- it answers False as soon as one output stays without a static shape or a dtype (an op
  ONNX cannot infer from static inputs, a data-dependent size): the caller then runs the
  whole-model inference as before, so a model gets the same shapes either way;
- inputs with symbolic dims (``infer_symbolic``): the symbolic propagation that follows
  whole-model inference (``propagate_shapes(symbolic=True)``, which computes again every
  dim inference leaves to an ``unk__`` symbol) types every node output from the start,
  each output's dtype given as above or by ONNX's inference of that one node; it answers
  False when one output stays without a shape or a dtype (the whole model is inferred
  then). Checked to give the same analyses as inference followed by propagation.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.propagate import (
    _fast_shape,
    _infer,
    _numbers,
    _static,
    elem_dtype,
    infer_node,
    propagate_shapes,
    window_sizes,
)
from drpopt.ir.rules import ELEMENTWISE_OPS, UNARY_OPS
from drpopt.ir.shape_expr import NumericMemo
from drpopt.ir.sym_propagate import global_pool_shape, reduced_shape

_BOOL_OPS = frozenset(
    ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not"]
) | {"IsNaN", "IsInf"}
# ops whose (only) output has the first input's dtype in every opset
_FIRST_DTYPE = (
    (frozenset(UNARY_OPS) | frozenset(ELEMENTWISE_OPS))
    - _BOOL_OPS
    - {"Cast", "CastLike", "Where", "BitShift", "Shrink"}
) | {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "GroupNormalization",  # onnx 1.23 gives opset 21's output no type (ir/propagate.py)
    "RMSNormalization",
    "Concat",
    "Slice",
    "Pad",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Expand",
    "Range",
    "Gather",
    "ScatterND",
    "Transpose",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Flatten",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
}
_INT64 = np.dtype(np.int64)
_BOOL = np.dtype(np.bool_)
_REDUCE = frozenset(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"])


def infer_types(graph: Graph, opset: int) -> bool:
    """Gives every node output of ``graph`` (static inputs) its shape and dtype; False
    when one stays unknown (the caller then infers the whole model as before)."""
    memo = NumericMemo()
    opsets = [helper.make_opsetid(d, v) for d, v in (graph.opsets or {"": opset}).items()]
    for node in graph.nodes:
        outs = node.outputs
        if len(outs) == 1:  # most nodes: one check when the output is known (a constant)
            if _done(outs[0]):
                continue
        else:
            outs = [o for o in outs if not o.meta.get("omitted")]
            if all(_done(o) for o in outs):
                continue
        if node.subgraphs or node.domain not in ("", "ai.onnx"):
            return False
        ins = [v for v in node.inputs if v is not None]
        for v in ins:
            if not _done(v):
                return False
        try:
            if len(outs) == 1:
                dtype = _dtype(node, ins)
                shape = _shape(node, ins, memo) if dtype is not None else None
                if shape is not None and _static(shape):
                    out = outs[0]
                    out.shape, out.dtype = shape, dtype
                    continue
            _infer(node, ins, outs, opset, opsets, memo)
        except Exception:  # a dtype numpy lacks, a malformed node: inferred whole instead
            return False
        if not all(_done(o) for o in outs):
            return False
    return True


def infer_symbolic(graph: Graph, opset: int) -> bool:
    """Gives every node output of ``graph`` (inputs with symbolic dims) its shape and
    dtype by symbolic propagation; False when one stays without either."""
    propagate_shapes(graph, opset, symbolic=True, dtype_of=_dtype_of)
    for node in graph.nodes:
        for o in node.outputs:
            if (o.shape is None or o.dtype is None) and not o.meta.get("omitted"):
                return False
    return True


def _dtype_of(node: Node, ins: list[Value], out: Value, opset: int, opsets) -> np.dtype | None:
    """``out``'s dtype: by the simple rules here, else by ONNX's inference of ``node``."""
    dtype = _dtype(node, ins)
    if dtype is not None:
        return dtype
    try:
        found = infer_node(node, ins, opset, opsets)
    except Exception:  # an op inference rejects: the output stays untyped
        return None
    return elem_dtype(found.get(out.name))


def _done(v: Value) -> bool:
    return v.dtype is not None and _static(v.shape)


def _dtype(node: Node, ins: list[Value]) -> np.dtype | None:
    op = node.op_type
    if not ins:
        return None
    if op in _FIRST_DTYPE:
        return ins[0].dtype
    if op in _BOOL_OPS:
        return _BOOL
    if op == "Shape":
        return _INT64
    if op == "Where" and len(ins) == 3:
        return ins[1].dtype
    if op == "ConstantOfShape":
        value = node.attr("value")
        return np.dtype(np.float32) if value is None else np.asarray(value).dtype
    if op == "Cast":
        to = node.attr("to")
        return np.dtype(helper.tensor_dtype_to_np_dtype(to)) if isinstance(to, int) else None
    return None


def _shape(node: Node, ins: list[Value], memo: NumericMemo) -> tuple | None:
    shape = _fast_shape(node, ins, memo)
    if shape is not None:
        return shape
    op = node.op_type
    x = ins[0].shape
    try:
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            return global_pool_shape(tuple(x))  # type: ignore[arg-type]
        if op == "Conv" and node.attr("auto_pad") in ("SAME_UPPER", "SAME_LOWER"):
            # stride 1 keeps the size (other strides: ONNX's own rule for the padding)
            if any(s != 1 for s in node.attr("strides") or ()):
                return None
            return (x[0], ins[1].shape[0], *x[2:])  # type: ignore[index]
        if op in ("MaxPool", "AveragePool"):
            return _pool(node, x)  # type: ignore[arg-type]
        if op == "Flatten":
            axis = node.attr("axis", 1)
            axis = axis + len(x) if axis < 0 else axis  # type: ignore[arg-type]
            return (math.prod(x[:axis]), math.prod(x[axis:]))  # type: ignore[index]
        if op == "Gemm" and len(ins) >= 2:
            a, b = ins[0].shape, ins[1].shape
            m = a[1] if node.attr("transA", 0) else a[0]  # type: ignore[index]
            n = b[0] if node.attr("transB", 0) else b[1]  # type: ignore[index]
            return (m, n) if len(a) == 2 and len(b) == 2 else None  # type: ignore[arg-type]
        if op == "Shape":
            return _shape_of_shape(node, len(x))  # type: ignore[arg-type]
        if op == "Squeeze":
            return _squeeze(node, ins, memo)
        if op in _REDUCE:
            return _reduce(node, ins, memo)
    except (IndexError, TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def _pool(node: Node, x: tuple[int, ...]) -> tuple[int, ...] | None:
    """MaxPool/AveragePool without auto_pad and ceil_mode (the forms ONNX's inference and
    this agree on by the plain formula); others go to ONNX's inference."""
    if node.attr("auto_pad", "NOTSET") != "NOTSET" or node.attr("ceil_mode", 0):
        return None
    kernel = node.attr("kernel_shape")
    if kernel is None or len(kernel) != len(x) - 2 or len(x) < 3:
        return None
    return (*x[:2], *window_sizes(node, x, kernel))


def _shape_of_shape(node: Node, rank: int) -> tuple[int] | None:
    start, end = node.attr("start", 0), node.attr("end")
    return (len(range(rank)[slice(start, end)]),)


def _squeeze(node: Node, ins: list[Value], memo: NumericMemo) -> tuple | None:
    x = ins[0].shape
    axes = node.attr("axes")
    if axes is None and len(ins) > 1:
        axes = _numbers(ins[1], memo)
        if axes is None:
            return None
    rank = len(x)  # type: ignore[arg-type]
    if axes is None:
        return tuple(d for d in x if d != 1)  # type: ignore[union-attr]
    drop = {a % rank for a in axes}
    if any(x[a] != 1 for a in drop):  # type: ignore[index]
        return None
    return tuple(d for i, d in enumerate(x) if i not in drop)  # type: ignore[arg-type]


def _reduce(node: Node, ins: list[Value], memo: NumericMemo) -> tuple | None:
    axes = node.attr("axes")
    if axes is None and len(ins) > 1:
        axes = _numbers(ins[1], memo)
        if axes is None:
            return None
    return reduced_shape(node, tuple(ins[0].shape), axes)  # type: ignore[arg-type]
