"""Per-node shape propagation where whole-model ONNX shape inference stops.

``onnx.shape_inference`` gives up on a shape computed by ops it does not propagate data
through (Mod, ConstantOfShape, a reversing Slice: torch's ``F.pad``, Swin's window padding)
and every shape after such a value is unknown or symbolic (``unk__3``). For a model whose
inputs have static shapes those values are plain numbers: ``shape_values`` reads them from
the IR. This pass walks the nodes once in graph order and, for each node whose outputs are
not static while its inputs are, runs ONNX's own inference for that one node
(``onnx.shape_inference.infer_node_outputs``) with the numbers its shape inputs hold.

Linear: each node is visited once, shape arithmetic is evaluated under one memo, and a node
whose outputs are already static costs one check.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.rules import ELEMENTWISE_OPS, UNARY_OPS
from drpopt.ir.shape_expr import NumericMemo, shape_values

log = logging.getLogger(__name__)

MAX_DATA = 64  # entries of an integer input handed to inference as data (shape tensors)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def propagate_shapes(graph: Graph, opset: int) -> int:
    """Fills static output shapes node by node; returns how many values it learnt."""
    memo = NumericMemo()
    opsets = [helper.make_opsetid(d, v) for d, v in (graph.opsets or {"": opset}).items()]
    learnt = 0
    for node in graph.nodes:
        outs = [o for o in node.outputs if o is not None and o.name]
        if not outs or all(_static(o.shape) for o in outs):
            continue
        if node.subgraphs or node.domain not in ("", "ai.onnx"):
            continue
        ins = [v for v in node.inputs if v is not None]
        if not all(_static(v.shape) and v.dtype is not None for v in ins):
            continue
        shape = _fast_shape(node, ins) if len(outs) == 1 and outs[0].dtype is not None else None
        if shape is not None:
            if shape != outs[0].shape:
                outs[0].shape = shape
                learnt += 1
            continue
        learnt += _infer(node, ins, outs, opset, opsets, memo)
    return learnt


# ops whose output has their (first) input's shape, and broadcasting ops: no protos needed
_SAME_SHAPE = frozenset(UNARY_OPS) | {
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "BatchNormalization",
}
_BROADCAST = frozenset(ELEMENTWISE_OPS)


# inputs whose values (not only shapes) decide the output shape; other ops get none
_DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Concat": (),
    "Unsqueeze": (1,),
    "Squeeze": (1,),
    "Gather": (),
    "ScatterND": (),
    "ScatterElements": (),
    "Shape": (),
    "Mod": (),
    "Sub": (),
    "Add": (),
    "Mul": (),
    "Div": (),
    "Cast": (),
    "Equal": (),
    "Where": (),
}


def _fast_shape(node: Node, ins: list[Value]) -> tuple[int, ...] | None:
    """The output shape of the ops that need no data to infer it (most of a transformer),
    without building protos; None leaves the node to ONNX's inference."""
    op = node.op_type
    try:
        if op in _SAME_SHAPE:
            return tuple(ins[0].shape)  # type: ignore[arg-type]
        if op in _BROADCAST:
            return tuple(np.broadcast_shapes(*(tuple(v.shape) for v in ins)))  # type: ignore[arg-type]
        if op == "Transpose":
            shape = ins[0].shape
            perm = node.attr("perm") or list(reversed(range(len(shape))))  # type: ignore[arg-type]
            return tuple(shape[p] for p in perm)  # type: ignore[index]
        if op == "MatMul" and len(ins) == 2 and min(len(v.shape) for v in ins) >= 2:  # type: ignore[arg-type]
            a, b = ins[0].shape, ins[1].shape
            if a[-1] != b[-2]:  # type: ignore[index]
                return None
            batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))  # type: ignore[index]
            return (*batch, a[-2], b[-1])  # type: ignore[index]
    except ValueError:  # shapes that do not broadcast: let ONNX say so
        return None
    return None


def _infer(node: Node, ins: list[Value], outs: list[Value], opset, opsets, memo) -> int:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
        types = {v.name: _type(v) for v in ins}
        data = {}
        wanted = _DATA_INPUTS.get(node.op_type)
        for i, v in enumerate(node.inputs):
            if v is None or (wanted is not None and i not in wanted):
                continue
            arr = _data(v, memo)
            if arr is not None:
                data[v.name] = numpy_helper.from_array(arr, v.name)
        result = onnx.shape_inference.infer_node_outputs(
            schema, _proto(node), types, data, opset_imports=opsets
        )
    except Exception as err:  # an op inference rejects: leave its shapes as they were
        log.debug("no shape for %s '%s': %s", node.op_type, node.name, err)
        return 0
    learnt = 0
    for o in outs:
        tp = result.get(o.name)
        if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
            continue
        dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") else None for d in tp.tensor_type.shape.dim
        )
        if _static(dims) and dims != o.shape:
            o.shape = dims
            if o.dtype is None and tp.tensor_type.elem_type:
                o.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type))
            learnt += 1
    return learnt


def _type(v: Value) -> onnx.TypeProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype))
    return helper.make_tensor_type_proto(elem, list(v.shape))  # type: ignore[arg-type]


def _data(v: Value, memo: NumericMemo) -> np.ndarray | None:
    """The numbers a small integer input holds, for inference of the ops that read them
    (Reshape targets, pads, slice bounds, sizes), or a small float constant (``Resize``
    scales: ``nn.Upsample`` behind a shape ONNX inference lost)."""
    dtype = np.dtype(v.dtype)
    if len(v.shape) > 1 or (v.numel or 0) > MAX_DATA:  # type: ignore[arg-type]
        return None
    if dtype.kind == "f":  # Resize scales
        return np.asarray(v.const, dtype=dtype) if v.is_const else None
    if dtype.kind not in "iu":
        return None
    values = shape_values(v, memo)
    if values is None or len(values) != (v.numel or 0):
        return None
    return np.asarray(values, dtype=dtype).reshape(v.shape)  # type: ignore[arg-type]


def _attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _proto(node: Node) -> onnx.NodeProto:
    return helper.make_node(
        node.op_type,
        [v.name if v is not None else "" for v in node.inputs],
        [v.name for v in node.outputs],
        name=node.name,
        **{k: _attr(a) for k, a in node.attrs.items()},
    )
