"""Numeric constant folding: the one place drpopt evaluates ops on constant data.

torch's exporter writes ``x[..., ::2, ::2]`` as ``Slice`` whose bounds come from
``Unsqueeze(Constant)``; ONNX shape inference does not evaluate those, and every shape after
them becomes unknown. ``fold_constants`` evaluates, with numpy, the nodes of a small set of
integer/shape ops (``FOLDABLE``) whose inputs are all constants, and returns their values by
output name; ``evaluate`` computes one such op from its attributes and input arrays.

Rules:
- a size limit (``MAX_ELEMENTS``): only small integer initializers and Constant values are
  read, and no result larger than the limit is kept (shape arithmetic, never real tensors);
- ``fold_constants`` runs on the ``onnx.ModelProto`` before shape inference
  (``ir/from_onnx.py``), so inference sees literal shapes;
- ``fold_constant_node`` (``from_onnx``, on the IR) folds Cast of a constant (a weight
  stored in another dtype) through ``evaluate`` without the limit: the analysis and the
  passes need that weight's data. An Identity of a constant is not computed at all: its
  output shares the source's storage (``Value.share_const``), so a weight exporters share
  through Identity stays one tensor; ``unshare_constants`` then gives every use of a
  shared constant a value of its own, holding the same array;
- ``ir/shape_expr.py`` stays separate on purpose: it evaluates shape tensors whose entries
  may be symbolic (``Dim``: the size of an axis unknown until run time, or ``DERIVED``),
  which numeric folding cannot represent; it shares only this module's size limit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from drpopt.ir.core import Graph, Node
from drpopt.ir.onnx_scan import tensor_array

log = logging.getLogger(__name__)

MAX_ELEMENTS = 4096  # shape arithmetic only: never fold real tensors
_TENSOR = onnx.AttributeProto.TENSOR
_EXTERNAL = onnx.TensorProto.EXTERNAL
_INT_TYPES = frozenset(
    [onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8]
)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (tensors as numpy arrays, as in the IR)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return out


def _axes(attrs: Mapping[str, Any], vals: list, index: int = 1) -> list[int] | None:
    axes = attrs.get("axes")
    if axes is None and len(vals) > index and vals[index] is not None:
        axes = [int(a) for a in np.asarray(vals[index]).reshape(-1)]
    return axes


def evaluate(
    op: str,
    attrs: Mapping[str, Any],
    inputs: Sequence[np.ndarray | None],
    max_elements: int | None = MAX_ELEMENTS,
) -> list[np.ndarray] | None:
    """The outputs of default-domain op ``op`` on constant ``inputs`` (None for omitted ones),
    or None when it is not foldable here or a result would exceed ``max_elements`` (None: no
    limit). ``attrs`` holds attribute values as the IR does (tensors as numpy arrays).
    Malformed nodes raise what numpy raises."""
    outs = _eval(op, attrs, list(inputs), max_elements)
    if outs is None:
        return None
    outs = [np.asarray(o) for o in outs]
    if max_elements is not None and any(o.size > max_elements for o in outs):
        return None
    return outs


def _eval(
    op: str, attrs: Mapping[str, Any], vals: list, max_elements: int | None
) -> list[np.ndarray] | None:
    """One op over numbers: the table below, one small function per op (None: not folded)."""
    fn = _EVAL.get(op)
    if fn is None:
        return None
    out = fn(attrs, vals, max_elements)
    return None if out is None else [out]


def _identity(attrs, vals, _limit):
    return vals[0] if vals else None


def _cast(attrs, vals, _limit):
    return np.asarray(vals[0]).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _unsqueeze(attrs, vals, _limit):
    out = np.asarray(vals[0])
    axes = _axes(attrs, vals)
    if axes is None:
        return None
    rank = out.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(attrs, vals, _limit):
    axes = _axes(attrs, vals)
    out = np.asarray(vals[0])
    return np.squeeze(out, axis=tuple(axes)) if axes else np.squeeze(out)


def _concat(attrs, vals, _limit):
    return np.concatenate([np.asarray(v) for v in vals], axis=attrs.get("axis", 0))


def _gather(attrs, vals, _limit):
    return np.take(np.asarray(vals[0]), np.asarray(vals[1]), axis=attrs.get("axis", 0))


def _mod(attrs, vals, _limit):
    a, b = np.asarray(vals[0]), np.asarray(vals[1])
    out = np.fmod(a, b) if attrs.get("fmod", 0) else np.mod(a, b)
    return np.asarray(out).astype(np.result_type(a, b))


def _arith(op: str):
    def evaluate(attrs, vals, _limit):
        a, b = np.asarray(vals[0]), np.asarray(vals[1])
        if op == "Div":
            out = a // b if a.dtype.kind in "iu" and b.dtype.kind in "iu" else a / b
        else:
            out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
        return np.asarray(out).astype(np.result_type(a, b))

    return evaluate


def _reshape(attrs, vals, _limit):
    return np.reshape(np.asarray(vals[0]), [int(d) for d in np.asarray(vals[1]).reshape(-1)])


def _transpose(attrs, vals, _limit):
    return np.transpose(np.asarray(vals[0]), attrs.get("perm"))


def _constant_of_shape(attrs, vals, limit):
    value = attrs.get("value")
    fill = np.asarray(value).reshape(-1) if value is not None else np.zeros(1)
    shape = [int(d) for d in np.asarray(vals[0]).reshape(-1)]
    if limit is not None and np.prod(shape, dtype=np.int64) > limit:
        return None
    dtype = fill.dtype if value is not None else np.float32
    return np.full(shape, fill[0], dtype=dtype)


def _compare(fn):
    return lambda attrs, vals, _limit: fn(np.asarray(vals[0]), np.asarray(vals[1]))


def _not(attrs, vals, _limit):
    return np.logical_not(np.asarray(vals[0]))


def _where(attrs, vals, _limit):
    return np.where(np.asarray(vals[0]), np.asarray(vals[1]), np.asarray(vals[2]))


def _extreme(fn):
    def evaluate(attrs, vals, _limit):
        out = np.asarray(vals[0])
        for v in vals[1:]:
            out = fn(out, np.asarray(v))
        return out

    return evaluate


def _range(attrs, vals, _limit):
    start = np.asarray(vals[0])  # the output has the inputs' type (numpy widens float32)
    return np.arange(start, np.asarray(vals[1]), np.asarray(vals[2]), dtype=start.dtype)


def _slice(attrs, vals, _limit):
    starts, ends = np.asarray(vals[1]).reshape(-1), np.asarray(vals[2]).reshape(-1)
    arr = np.asarray(vals[0])
    given = [np.asarray(v).reshape(-1) if v is not None else None for v in vals[3:5]]
    given += [None] * (2 - len(given))
    axes = given[0] if given[0] is not None else range(len(starts))
    steps = given[1] if given[1] is not None else [1] * len(starts)
    index = [slice(None)] * arr.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        index[int(a)] = slice(int(s), int(e), int(st))
    return arr[tuple(index)]


_EVAL = {
    "Identity": _identity,
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Gather": _gather,
    "Mod": _mod,
    **{op: _arith(op) for op in ("Add", "Sub", "Mul", "Div")},
    "Reshape": _reshape,
    "Transpose": _transpose,
    "ConstantOfShape": _constant_of_shape,
    "Equal": _compare(np.equal),
    "Less": _compare(np.less),
    "Greater": _compare(np.greater),
    "Not": _not,
    "Where": _where,
    "Max": _extreme(np.maximum),
    "Min": _extreme(np.minimum),
    "Range": _range,
    "Slice": _slice,
}


FOLDABLE = frozenset(_EVAL)


def _constant(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node with a small ``value`` tensor, else None."""
    value = next((a.t for a in node.attribute if a.name == "value" and a.type == _TENSOR), None)
    if value is None or math.prod(value.dims[:]) > MAX_ELEMENTS:
        return None
    return tensor_array(value)


def _values(names: list[str], consts: dict[str, Any]) -> list[np.ndarray | None] | None:
    """The arrays of ``names`` (Constant nodes read now), or None when one is not a small
    constant after all."""
    vals = []
    for n in names:
        arr = consts[n] if n else None
        if isinstance(arr, onnx.NodeProto):
            arr = _constant(arr)
            if arr is None:
                del consts[n]
                return None
            consts[n] = arr
        vals.append(arr)
    return vals


def fold_constants(
    model: onnx.ModelProto, folded_nodes: list[int] | None = None
) -> dict[str, np.ndarray]:
    """Values of the outputs of foldable nodes whose inputs are all (small) constants;
    ``folded_nodes`` gets the index of each node all of whose outputs were folded."""
    consts: dict[str, Any] = {}  # numpy arrays, or Constant nodes not read yet
    for init in model.graph.initializer:
        # shape arithmetic runs on integers: float weights (biases) are never read here
        int_inline = init.data_type in _INT_TYPES and init.data_location != _EXTERNAL
        if int_inline and math.prod(init.dims[:]) <= MAX_ELEMENTS:  # (see ``onnx_types``)
            consts[init.name] = tensor_array(init)
    folded: dict[str, np.ndarray] = {}
    for index, node in enumerate(model.graph.node):
        op = node.op_type
        if op == "Constant":
            consts[node.output[0]] = node  # read when a foldable node needs it
            continue
        if op not in FOLDABLE or node.domain not in ("", "ai.onnx"):
            continue
        names = node.input[:]  # a list (see ``onnx_types``)
        if not names or any(n and n not in consts for n in names):
            continue
        vals = _values(names, consts)
        if vals is None:
            continue
        try:
            outs = evaluate(op, _attrs(node), vals)
        except Exception as err:  # a malformed node: leave it to shape inference
            log.debug("could not fold %s: %s", node.name, err)
            continue
        if not outs:
            continue
        outputs = node.output[:]
        for name, arr in zip(outputs, outs, strict=False):
            consts[name] = folded[name] = arr
        if folded_nodes is not None and outputs and all(o in folded for o in outputs):
            folded_nodes.append(index)
    return folded


def fold_constant_node(node: Node) -> None:
    """Identity/Cast of a constant is a constant of its own (exporters write Identity to
    share one deduplicated initializer between layers; the layers stay independent).

    Identity is not computed: its output shares the source's storage, so the shared weight
    stays one tensor (``to_onnx`` writes it once) and is read only when a pass needs it.
    Cast is computed by ``evaluate`` without its size limit (a weight stored in
    another dtype: the analysis and the passes need its data)."""
    src = node.inputs[0]
    if src is None or not src.is_const:
        return
    out = node.outputs[0]
    if node.op_type == "Cast":
        try:
            outs = evaluate("Cast", node.attrs, [src.const], max_elements=None)
        except Exception:  # no or an unknown ``to``: left as a node
            return
        if not outs:
            return
        out.const = outs[0]
        out.shape, out.dtype = tuple(out.const.shape), out.const.dtype
    else:
        out.share_const(src)  # shared, never written in place (passes copy on write)
        out.shape, out.dtype = src.shape, src.dtype
    node.meta["folded"] = True


def unshare_constants(graph: Graph) -> None:
    """Gives every use of a constant read by several node inputs a value of its own.

    Exporters share one tensor between unrelated layers (torch's Identity sharing of equal
    biases, onnxsim/onnxslim deduplicating equal initializers); a shared value would tie
    those layers into one channel group and be sliced for one of them. The clones hold the
    same array object (no copy: passes copy on write), and ``to_onnx`` writes an array
    that is still shared once, so an unpruned model keeps its size.
    """
    outputs = {id(v) for v in graph.outputs}
    new_value, fresh_name = graph.value, graph.fresh_name
    for value in list(graph.values.values()):
        if len(value.uses) < 2 or not value.is_const or id(value) in outputs:
            continue
        uses = [(n, i) for n, i in value.uses if i >= 0]
        if len(uses) < 2:
            continue
        name, shape, dtype = value.name, value.shape, value.dtype
        from_node = value.producer is not None  # a Constant node's output: keep the node's
        for node, i in uses[1:]:
            clone = new_value(fresh_name(f"{name}__{node.name}"))
            clone.shape, clone.dtype = shape, dtype
            clone.share_const(value)
            if from_node:
                clone.meta["shared_from"] = name
            node.inputs[i] = clone  # use lists fixed once below: linear in the uses
            clone.uses.append((node, i))
        value.uses = [uses[0], *((n, i) for n, i in value.uses if i < 0)]
