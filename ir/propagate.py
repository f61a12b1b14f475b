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
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.fold import MAX_ELEMENTS
from drpopt.ir.ort_shapes import ORT_SHAPES
from drpopt.ir.rules import ELEMENTWISE_OPS, UNARY_OPS
from drpopt.ir.shape_expr import NumericMemo, shape_values
from drpopt.ir.sym_propagate import (
    has_negative_input_dims,
    keep_declared_sizes,
    name_negative_input_dims,
    symbolic_shape,
)
from drpopt.ir.to_onnx import _node_proto

log = logging.getLogger(__name__)

MAX_DATA = 64  # entries of an integer input handed to inference as data (shape tensors)


def _numbers(value: Value | None, memo: NumericMemo) -> list[int] | None:
    """``shape_values(value, memo)``, read directly when ``value`` is a constant (most
    slice bounds, axes and reshape targets: no object arrays, no memo entry)."""
    if value is not None and value.is_const:
        arr = np.asarray(value.const)
        if arr.dtype.kind not in "iub" or arr.ndim > 1 or arr.size > MAX_ELEMENTS:
            return None
        return [int(x) for x in arr.reshape(-1)]
    return shape_values(value, memo)


def _static(shape) -> bool:
    if shape is None:
        return False
    for d in shape:  # noqa: SIM110 (a loop, not all(): it runs for every node output)
        if not isinstance(d, int) or d < 0:
            return False
    return True


def _known(shape) -> bool:
    """Every dim a number or a symbol (a dynamic batch): what symbolic propagation needs."""
    if shape is None:
        return False
    for d in shape:  # noqa: SIM110 (a loop, not all(): it runs for every node output)
        if not isinstance(d, str) and (not isinstance(d, int) or d < 0):
            return False
    return True


def _settled(shape) -> bool:
    """``_known`` without the symbols ONNX's inference invents (``unk__3``): those are
    computed again, in terms of the input symbols where the ops allow it (a dim that
    stays unknown keeps a fresh name), so the shapes after a computed reshape agree."""
    if not _known(shape):
        return False
    for d in shape:  # noqa: SIM110 (a loop, not any(): it runs for every node output)
        if isinstance(d, str) and d.startswith("unk__"):
            return False
    return True


def propagate_shapes(graph: Graph, opset: int, symbolic: bool = False, dtype_of=None) -> int:
    """Fills static output shapes node by node; returns how many values it learnt.

    ``dtype_of(node, ins, out, opset, opsets)`` gives a one-output node's output dtype where
    it has none yet (a graph typed here from the start: ``infer_types.infer_symbolic``).

    ``symbolic``: for a model with symbolic input dims (a dynamic batch), fills the shapes
    inference left unknown from inputs whose dims are numbers or symbols: ONNX's inference
    of one node takes symbols as they are, and a Reshape whose target is computed from them
    is resolved by ``resolve_reshape`` (torch's channel shuffle ``view(b, g, c // g, h, w)``,
    which ONNX's data propagation stops at: it does not divide)."""
    memo = NumericMemo()
    symbolic = symbolic or has_negative_input_dims(graph)  # paddle2onnx's -1: symbols
    done = _known if symbolic else _static
    settled = _settled if symbolic else _static  # an output shape to leave as it is
    recompute: frozenset = frozenset()
    if symbolic:  # declared output dims may be exporters' symbols for fixed sizes
        name_negative_input_dims(graph)
        recompute = frozenset(v for v in graph.outputs if v is not None)
    fresh = _fresh_symbols(graph)
    entries_memo: dict = {}
    opsets = [helper.make_opsetid(d, v) for d, v in (graph.opsets or {"": opset}).items()]
    learnt = 0
    for node in graph.nodes:
        outs = _unsettled(node.outputs, settled, recompute)
        if not outs:
            continue
        custom = (node.domain, node.op_type) in _CUSTOM_SAME_SHAPE
        ins = [v for v in node.inputs if v is not None]
        if (ms_shape := _MS_SHAPES.get((node.domain, node.op_type))) is not None:
            if all(done(v.shape) and v.dtype is not None for v in ins):
                learnt += ms_shape(node)
            continue
        if node.subgraphs or (node.domain not in ("", "ai.onnx") and not custom):
            continue
        if not all(done(v.shape) and v.dtype is not None for v in ins):
            continue
        if outs[0].dtype is None:
            _give_dtype(node, ins, outs, dtype_of, opset, opsets)
        one = len(outs) == 1 and outs[0].dtype is not None
        shape = _fast_shape(node, ins, memo) if one else None
        if shape is None and one and symbolic:
            shape = symbolic_shape(node, ins, entries_memo, fresh)  # ir/sym_propagate.py
            shape = shape if _known(shape) else None
        declared = [o.shape for o in outs] if recompute else []
        if shape is not None:
            if shape != outs[0].shape:
                outs[0].shape = shape
                learnt += 1
        else:
            symbols = fresh if symbolic else None
            learnt += _infer(node, ins, outs, opset, opsets, memo, done, symbols)
        for o, old in zip(outs, declared, strict=False):
            if o in recompute:
                o.shape = keep_declared_sizes(old, o.shape)
    return learnt


def _unsettled(outputs: list[Value], settled, recompute: frozenset) -> list[Value]:
    """A node's named outputs to compute; none when each is settled and not recomputed."""
    if len(outputs) == 1:  # most nodes: one check when inference gave the shape
        out = outputs[0]
        if out is None or not out.name or (settled(out.shape) and out not in recompute):
            return []
        return [out]
    outs = [o for o in outputs if o is not None and o.name]
    if all(settled(o.shape) and o not in recompute for o in outs):
        return []
    return outs


def _give_dtype(node: Node, ins: list[Value], outs: list[Value], dtype_of, opset, opsets) -> None:
    """Output 0's dtype where it has none: input 0's for the ops whose schema says so
    (``_UNTYPED_SAME_SHAPE``), else ``dtype_of``'s for a one-output node."""
    if (node.domain, node.op_type) in _UNTYPED_SAME_SHAPE:
        outs[0].dtype = ins[0].dtype  # Y has X's type and shape (the op's schema)
    if dtype_of is not None and len(outs) == 1 and outs[0].dtype is None:
        outs[0].dtype = dtype_of(node, ins, outs[0], opset, opsets)


# ops whose output has their (first) input's shape, and broadcasting ops: no protos needed
_SAME_SHAPE = frozenset(UNARY_OPS) | {
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "GroupNormalization",
    "RMSNormalization",
}
_BROADCAST = frozenset(ELEMENTWISE_OPS)
# drpopt's own ops in a sparse model read again (ir/rules_norm.py): ONNX inference
# stops at a model-local function whose input shape it did not know
_CUSTOM_SAME_SHAPE = frozenset({("drpopt", "MaskedLayerNormalization")}) | {
    # onnxruntime's fused ops (transformers optimizer): ONNX does not know them, and every
    # shape after them stayed unknown (their channels left in no group, no lock named)
    ("com.microsoft", op)
    for op in ("Gelu", "FastGelu", "BiasGelu", "QuickGelu")  # (SkipLayerNorm: ORT_SHAPES)
}


def _ms_attention(node: Node) -> int:
    """com.microsoft Attention: ``(batch, sequence, v_hidden)`` from its input and weights
    (``v_hidden``: ``qkv_hidden_sizes[2]``, else a third of the packed weight's width)."""
    x, w, out = node.input(0), node.input(1), node.outputs[0]
    sizes = node.attr("qkv_hidden_sizes")
    if x is None or w is None or x.rank != 3 or w.rank != 2:
        return 0
    v_hidden = int(sizes[2]) if sizes else w.shape[1] // 3  # type: ignore[index]
    out.shape, out.dtype = (*x.shape[:2], v_hidden), x.dtype  # type: ignore[index]
    return 1


def _ms_embed_layer_norm(node: Node) -> int:
    """com.microsoft EmbedLayerNormalization: the embeddings ``(batch, sequence, hidden)``
    of the word table's width, and the int32 ``mask_index`` (batch,)."""
    ids, words = node.input(0), node.input(2)
    if ids is None or words is None or ids.rank != 2 or words.rank != 2:
        return 0
    node.outputs[0].shape = (*ids.shape, words.shape[1])  # type: ignore[misc, index]
    node.outputs[0].dtype = words.dtype
    if len(node.outputs) > 1 and node.outputs[1].name:
        node.outputs[1].shape, node.outputs[1].dtype = ids.shape[:1], np.dtype(np.int32)  # type: ignore[index]
    return 1


# onnxruntime's fused ops whose outputs ONNX cannot infer (its transformers optimizer's
# output): every shape after them stayed unknown, their channels in no group, no lock named
# (and those of onnxruntime's graph optimizer, NCHWc included: ``ir/ort_shapes.py``)
_MS_SHAPES = {
    ("com.microsoft", "Attention"): _ms_attention,
    ("com.microsoft", "EmbedLayerNormalization"): _ms_embed_layer_norm,
    **ORT_SHAPES,
}
# output 0 typed like input 0 where ONNX's inference gives it no type: the fused ops above,
# and onnx 1.23 types no GroupNormalization-21 output (its rule was left without a rank)
_UNTYPED_SAME_SHAPE = _CUSTOM_SAME_SHAPE | {("", "GroupNormalization"), ("", "RMSNormalization")}


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


def _fast_shape(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    """The output shape of the common ops (most of a transformer, the convs after a
    computed slice), without building protos; None leaves the node to ONNX's inference."""
    op = node.op_type
    try:
        if op == "Conv" and node.attr("auto_pad", "NOTSET") == "NOTSET":
            return _conv_shape(node, ins[0].shape, ins[1].shape)  # type: ignore[arg-type]
        if op == "Concat":
            return _concat_shape(node, [tuple(v.shape) for v in ins])  # type: ignore[arg-type]
        if op == "Slice" and node.attr("starts") is None:
            return _slice_shape(node, memo)
        if op in _DATA_SHAPE:
            return _DATA_SHAPE[op](node, ins, memo)
        if op in _SAME_SHAPE or (node.domain, op) in _CUSTOM_SAME_SHAPE:
            return tuple(ins[0].shape)  # type: ignore[arg-type]
        if op in _BROADCAST:
            shapes = [tuple(v.shape) for v in ins]  # type: ignore[arg-type]
            if shapes and all(s == shapes[0] for s in shapes):  # most: no numpy call
                return shapes[0]
            return tuple(np.broadcast_shapes(*shapes))
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
    except (ValueError, TypeError):  # shapes that do not broadcast, symbols: let ONNX say
        return None
    return None


def _reshape(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    target = _numbers(ins[1], memo)
    x = ins[0].shape
    if target is None or node.attr("allowzero", 0):
        return None
    dims = [x[k] if t == 0 and k < len(x) else t for k, t in enumerate(target)]  # type: ignore[index]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        return None
    if -1 in dims:
        rest = math.prod(d for d in dims if d != -1)
        total = math.prod(x)  # type: ignore[arg-type]
        if rest == 0 or total % rest:
            return None
        dims[dims.index(-1)] = total // rest
    return tuple(dims)


def _unsqueeze(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    axes = node.attr("axes")
    if axes is None:
        axes = _numbers(ins[1], memo) if len(ins) > 1 else None
    if axes is None:
        return None
    shape = list(ins[0].shape)  # type: ignore[arg-type]
    rank = len(shape) + len(axes)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return tuple(shape)


def _constant_of_shape(node: Node, ins: list[Value], memo: NumericMemo):
    dims = _numbers(ins[0], memo)
    return tuple(dims) if dims is not None and all(d >= 0 for d in dims) else None


def _expand(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    dims = _numbers(ins[1], memo)
    if dims is None:
        return None
    return tuple(np.broadcast_shapes(tuple(ins[0].shape), tuple(dims)))  # type: ignore[arg-type]


def _range(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    args = [_numbers(v, memo) for v in ins]
    if len(args) != 3 or any(a is None or len(a) != 1 for a in args):
        return None
    start, limit, delta = (a[0] for a in args)  # type: ignore[index]
    return (max(math.ceil((limit - start) / delta), 0),) if delta else None


def _gather(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    data, idx = ins[0].shape, ins[1].shape
    axis = node.attr("axis", 0) % len(data)  # type: ignore[arg-type]
    return (*data[:axis], *idx, *data[axis + 1 :])  # type: ignore[index]


def _pad(node: Node, ins: list[Value], memo: NumericMemo) -> tuple[int, ...] | None:
    """Pad with its pads as an input (opset 11+; no ``axes``): ONNX's inference adds
    ``pads[i] + pads[i + rank]`` to each dim when it is handed the pads as 1-D int64 data."""
    x, pads_in = node.input(0), node.input(1)
    if node.attr("pads") is not None or pads_in is None or node.input(3) is not None:
        return None
    if np.dtype(pads_in.dtype) != np.int64 or len(pads_in.shape) != 1:  # type: ignore[arg-type]
        return None
    shape, count = x.shape, pads_in.numel  # type: ignore[union-attr]
    pads = _numbers(pads_in, memo) if count is not None and count <= MAX_DATA else None
    if pads is None or len(pads) != count or count != 2 * len(shape):  # type: ignore[arg-type]
        return None
    rank = len(shape)  # type: ignore[arg-type]
    out = tuple(d + pads[i] + pads[i + rank] for i, d in enumerate(shape))  # type: ignore[arg-type]
    return out if all(d >= 0 for d in out) else None


_DATA_SHAPE = {
    "Pad": _pad,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Range": _range,
    "Gather": _gather,
    "ScatterND": lambda node, ins, memo: tuple(ins[0].shape),
}


def window_sizes(node: Node, x: tuple[int, ...], kernel) -> list[int]:
    """The spatial output sizes of a convolution or pooling window ``kernel`` over ``x``
    (explicit pads, strides and dilations; the plain floor formula)."""
    n = len(x) - 2
    pads = node.attr("pads") or [0] * (2 * n)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    spatial = []
    for i in range(n):
        span = dilations[i] * (kernel[i] - 1) + 1
        spatial.append((x[2 + i] + pads[i] + pads[i + n] - span) // strides[i] + 1)
    return spatial


def _conv_shape(node: Node, x: tuple[int, ...], w: tuple[int, ...]) -> tuple[int, ...] | None:
    if len(w) != len(x) or len(x) < 3:
        return None
    return (x[0], w[0], *window_sizes(node, x, w[2:]))


def _concat_shape(node: Node, shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    rank = len(shapes[0])
    axis = node.attr("axis", 0) % rank
    if any(
        len(s) != rank or s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :]
        for s in shapes
    ):
        return None
    return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1 :])


def _slice_shape(node: Node, memo: NumericMemo) -> tuple[int, ...] | None:
    """Slice with starts/ends (and axes/steps) whose numbers shape arithmetic gives."""
    shape = list(node.input(0).shape)  # type: ignore[union-attr]
    args = [_numbers(node.input(i), memo) for i in (1, 2, 3, 4)]
    if any(
        node.input(i) is not None and a is None for i, a in zip((1, 2, 3, 4), args, strict=True)
    ):
        return None
    starts, ends, axes, steps = args
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= len(shape)
        shape[axis] = len(range(*slice(start, end, step).indices(shape[axis])))
    return tuple(shape)


def _fresh_symbols(graph: Graph):
    """A maker of new symbol names (``unk@1``, ...; ONNX's inference writes ``unk__1``)."""
    count = [0]

    def fresh() -> str:
        count[0] += 1
        return f"unk@{count[0]}"

    return fresh


def _infer(
    node: Node, ins: list[Value], outs: list[Value], opset, opsets, memo, done=_static, fresh=None
) -> int:
    """ONNX's inference of one node, its numbers as data; ``done`` says which output shapes
    to take (static ones, or with symbols too: ``_known``); ``fresh`` names the dims it
    leaves unknown (symbolic propagation: the rank is known, the size only equals itself)."""
    try:
        data = {}
        wanted = _DATA_INPUTS.get(node.op_type)
        for i, v in enumerate(node.inputs):
            if v is None or (wanted is not None and i not in wanted):
                continue
            arr = _data(v, memo)
            if arr is not None:
                data[v.name] = numpy_helper.from_array(arr, v.name)
        result = infer_node(node, ins, opset, opsets, data)
    except Exception as err:  # an op inference rejects: leave its shapes as they were
        log.debug("no shape for %s '%s': %s", node.op_type, node.name, err)
        return 0
    learnt = 0
    for o in outs:
        tp = result.get(o.name)
        if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
            continue
        dims = tuple(
            int(d.dim_value)
            if d.HasField("dim_value")
            else (d.dim_param if d.HasField("dim_param") and d.dim_param else None)
            for d in tp.tensor_type.shape.dim[:]  # (a list: see ``onnx_types``)
        )
        if fresh is not None and tp.tensor_type.shape.dim:
            dims = tuple(fresh() if d is None else d for d in dims)
        if done(dims) and dims != o.shape:
            o.shape = dims
            if o.dtype is None:
                o.dtype = elem_dtype(tp)
            learnt += 1
    return learnt


def infer_node(node: Node, ins: list[Value], opset, opsets, data=None) -> dict:
    """ONNX's inference of ``node`` alone (its typed inputs ``ins``, the numbers ``data``
    holds): output name -> TypeProto. Raises where the op's inference rejects it."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        if node.domain not in ("", "ai.onnx"):
            raise
        schema = _first_schema(node.op_type)
    types = {v.name: _type(v) for v in ins}
    return onnx.shape_inference.infer_node_outputs(
        schema, _node_proto(node, False, {}), types, data or {}, opset_imports=opsets
    )


def _first_schema(op_type: str) -> onnx.defs.OpSchema:
    """The first definition of an ONNX op newer than a model's opset: onnxruntime registers
    some in the ONNX domain at older opsets (its optimizer writes LayerNormalization into
    opset-13 models), agreeing with that definition."""
    schema = onnx.defs.get_schema(op_type, onnx.defs.onnx_opset_version(), "")
    while schema.since_version > 1:
        try:
            schema = onnx.defs.get_schema(op_type, schema.since_version - 1, "")
        except onnx.defs.SchemaError:
            break
    return schema


def elem_dtype(tp: onnx.TypeProto | None) -> np.dtype | None:
    """The element dtype an inferred tensor type names; None when it names none."""
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.elem_type:
        return None
    return np.dtype(helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type))


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
    values = _numbers(v, memo)
    if values is None or len(values) != (v.numel or 0):
        return None
    return np.asarray(values, dtype=dtype).reshape(v.shape)  # type: ignore[arg-type]
