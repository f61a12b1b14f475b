"""The ONNX forms of the normalisations and reductions ``apply-masks`` masks and ``compact``
puts back (``ir/rules_norm.py`` and ``ir/rules_reduce.py`` say when each is used):

- the masked forms, model-local functions of the ``drpopt`` domain written with the ops of
  the model's own default opset: ``MaskedLayerNormalization(X, Scale, Bias, Mask)``
  (attributes ``axes``, default the last, and ``epsilon``), ``MaskedRMSNormalization(X,
  Scale, Mask)`` (``axes``, ``epsilon``, ``stash_type``) and ``MaskedReduceMean(X, Mask)``
  (attributes ``axes``, ``keepdims``, default 1), which count only the entries where
  ``Mask`` (broadcast against ``X``) is 1; ``MaskedReduceMax``/``MaskedReduceMin(X,
  Mask)`` (``axes``, ``keepdims``), where an entry whose ``Mask`` is 0 takes the lowest
  (highest) value of ``X`` over the reduced axes, so it never wins;
- the plain forms written back: a LayerNorm written out in plain ops over given axes,
  GroupNorm(1, C) as torch exports it (Reshape, InstanceNormalization, Reshape), the
  opset-21 ``GroupNormalization``, ReduceMean/Max/Min (axes as attribute or, from opset
  18, input).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import AttributeProto, helper

from drpopt.ir.core import Graph, Node, Value

DOMAIN = "drpopt"
OP = "MaskedLayerNormalization"
MEAN_OP = "MaskedReduceMean"
RMS_OP = "MaskedRMSNormalization"
# the masked max and min: the reduction they stand for, and the one that fills masked entries
EXTREMES = {
    "MaskedReduceMax": ("ReduceMax", "ReduceMin"),
    "MaskedReduceMin": ("ReduceMin", "ReduceMax"),
}


# ---- the functions -----------------------------------------------------------------------
def _ref(node: onnx.NodeProto, name: str, kind: int, attr: str | None = None) -> onnx.NodeProto:
    """Makes the attribute ``attr`` of ``node`` (default: its first) a reference to the
    function's ``name``."""
    a = node.attribute[0] if attr is None else next(x for x in node.attribute if x.name == attr)
    a.ref_attr_name, a.type = name, kind
    for field in ("f", "i", "ints", "t"):
        a.ClearField(field)
    return node


def _keepdims(node: onnx.NodeProto, keep: bool) -> onnx.NodeProto:
    """``keep``: the node's ``keepdims`` refers to the function's (else it stays 1)."""
    return _ref(node, "keepdims", AttributeProto.INT, "keepdims") if keep else node


def _reduce(op: str, x: str, out: str, opset: int, keep: bool = False) -> onnx.NodeProto:
    """``op`` (a Reduce*) of ``x`` over the function's ``axes`` (kept dims, or the
    function's ``keepdims`` with ``keep``), in the ops of ``opset``: ReduceSum takes its axes
    as an input from 13, the other reductions from 18 (``Axes``, see ``_axes``)."""
    if opset >= (13 if op == "ReduceSum" else 18):
        return _keepdims(helper.make_node(op, [x, "Axes"], [out], keepdims=1), keep)
    node = helper.make_node(op, [x], [out], axes=[0], keepdims=1)
    return _keepdims(_ref(node, "axes", AttributeProto.INTS, "axes"), keep)


def _reduce_sum(x: str, out: str, opset: int, keep: bool = False) -> onnx.NodeProto:
    return _reduce("ReduceSum", x, out, opset, keep)


def _axes() -> onnx.NodeProto:
    """``Axes``: the function's ``axes`` as a tensor (for reductions that take an input)."""
    axes = helper.make_node("Constant", [], ["Axes"], value_ints=[0])
    return _ref(axes, "axes", AttributeProto.INTS)


def _count(opset: int, keep: bool = False) -> list[onnx.NodeProto]:
    """``Axes`` (opset 13 on) and ``K``: how many kept entries each statistic reads."""
    return [
        *([_axes()] if opset >= 13 else []),
        helper.make_node("Shape", ["X"], ["XShape"]),
        helper.make_node("Expand", ["Mask", "XShape"], ["MaskX"]),
        _reduce_sum("MaskX", "K", opset, keep),
    ]


def function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedLayerNormalization``, written with the
    ops of the model's own default opset (onnxruntime inlines it at that version): before
    15 there is no CastLike (the epsilon is then float32, as models of those opsets are),
    before 12 Constant takes only a tensor (the node's ``epsilon`` is then a 0-d float32
    tensor)."""
    nodes = [
        *_count(opset),
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        _reduce_sum("XM", "S", opset),
        helper.make_node("Div", ["S", "K"], ["Mean"]),
        helper.make_node("Sub", ["XM", "Mean"], ["D0"]),
        helper.make_node("Mul", ["D0", "Mask"], ["D"]),
        helper.make_node("Mul", ["D", "D"], ["D2"]),
        _reduce_sum("D2", "SS", opset),
        helper.make_node("Div", ["SS", "K"], ["Var"]),
    ]
    if opset >= 12:
        nodes.append(
            _ref(
                helper.make_node("Constant", [], ["Eps0"], value_float=0.0),
                "epsilon",
                AttributeProto.FLOAT,
            )
        )
    else:  # Constant has no value_float: the node's epsilon is a 0-d tensor there
        eps = helper.make_node(
            "Constant", [], ["Eps0"], value=helper.make_tensor("e", 1, [], [0.0])
        )
        nodes.append(_ref(eps, "epsilon", AttributeProto.TENSOR))
    if opset >= 15:
        nodes.append(helper.make_node("CastLike", ["Eps0", "X"], ["Eps"]))
    nodes += [
        helper.make_node("Add", ["Var", "Eps" if opset >= 15 else "Eps0"], ["VE"]),
        helper.make_node("Sqrt", ["VE"], ["Std"]),
        helper.make_node("Div", ["D", "Std"], ["N"]),
        helper.make_node("Mul", ["N", "Scale"], ["NS"]),
        helper.make_node("Add", ["NS", "Bias"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP,
        ["X", "Scale", "Bias", "Mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["epsilon"],
        attribute_protos=[helper.make_attribute("axes", [-1])],  # default: the last axis
    )


def _reduction_function(op: str, nodes: list, opset: int) -> onnx.FunctionProto:
    """The masked reduction ``drpopt.<op>(X, Mask) -> Y`` of ``nodes``: attributes ``axes``
    and ``keepdims`` (default 1)."""
    return helper.make_function(
        DOMAIN,
        op,
        ["X", "Mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["axes"],
        attribute_protos=[helper.make_attribute("keepdims", 1)],
    )


def mean_function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedReduceMean``."""
    nodes = [
        *_count(opset, keep=True),
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        _reduce_sum("XM", "S", opset, keep=True),
        helper.make_node("Div", ["S", "K"], ["Y"]),
    ]
    return _reduction_function(MEAN_OP, nodes, opset)


def extreme_function_proto(op: str, opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedReduceMax`` (``op``) or
    ``MaskedReduceMin``: ``Y = ReduceMax(Where(Mask, X, ReduceMin(X, axes)), axes)``. A
    masked entry takes the least value its reduction reads, so the result is the kept
    entries' maximum exactly (a tie gives the same value), in any dtype and opset."""
    reduce, fill = EXTREMES[op]
    nodes = [
        *([_axes()] if opset >= 18 else []),
        helper.make_node("Cast", ["Mask"], ["Keep"], to=onnx.TensorProto.BOOL),
        _reduce(fill, "X", "Fill", opset),
        helper.make_node("Where", ["Keep", "X", "Fill"], ["XF"]),
        _reduce(reduce, "XF", "Y", opset, keep=True),
    ]
    return _reduction_function(op, nodes, opset)


def rms_function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function that defines ``drpopt.MaskedRMSNormalization`` (models of opset 23
    on, where RMSNormalization exists): as the op, statistics in ``stash_type``, over the
    entries where ``Mask`` is 1::

        XS = Cast(X * Mask, stash_type);  K = ReduceSum(Expand(Mask, Shape(X)), axes)
        Y  = CastLike(XS / sqrt(ReduceSum(XS * XS, axes) / K + epsilon), X) * Scale
    """
    stash = helper.make_node("Cast", ["XM"], ["XS"], to=onnx.TensorProto.FLOAT)
    eps = helper.make_node("Constant", [], ["Eps0"], value_float=0.0)
    nodes = [
        *_count(opset),
        helper.make_node("Mul", ["X", "Mask"], ["XM"]),
        _ref(stash, "stash_type", AttributeProto.INT),
        helper.make_node("CastLike", ["K", "XS"], ["KS"]),
        helper.make_node("Mul", ["XS", "XS"], ["X2"]),
        _reduce_sum("X2", "SS", opset),
        helper.make_node("Div", ["SS", "KS"], ["MS"]),
        _ref(eps, "epsilon", AttributeProto.FLOAT),
        helper.make_node("CastLike", ["Eps0", "XS"], ["Eps"]),
        helper.make_node("Add", ["MS", "Eps"], ["VE"]),
        helper.make_node("Sqrt", ["VE"], ["R"]),
        helper.make_node("Div", ["XS", "R"], ["NS"]),
        helper.make_node("CastLike", ["NS", "X"], ["N"]),
        helper.make_node("Mul", ["N", "Scale"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN,
        RMS_OP,
        ["X", "Scale", "Mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["epsilon"],
        attribute_protos=[
            helper.make_attribute("axes", [-1]),
            helper.make_attribute("stash_type", 1),
        ],
    )


_MAKERS = {
    OP: function_proto,
    MEAN_OP: mean_function_proto,
    RMS_OP: rms_function_proto,
    **{op: functools.partial(extreme_function_proto, op) for op in EXTREMES},
}


def ensure_function(graph: Graph, op: str, make=None) -> None:
    """Adds the function of ``drpopt.<op>`` to the model once (``make(opset)`` writes it;
    default: the norm forms here)."""
    if not any(f.domain == DOMAIN and f.name == op for f in graph.functions):
        make = make or _MAKERS[op]
        graph.functions.append(make(graph.opsets.get("", 17)))
    graph.opsets.setdefault(DOMAIN, 1)


# ---- masking -----------------------------------------------------------------------------
def const_value(graph: Graph, base: str, array: np.ndarray) -> Value:
    return graph.value(
        graph.fresh_name(base), const=array, shape=tuple(array.shape), dtype=array.dtype
    )


def dtype_of(x: Value | None) -> np.dtype:
    return np.dtype(x.dtype if x is not None and x.dtype is not None else np.float32)


def channel_shaped(keep: np.ndarray, axis: int, rank: int, dtype) -> np.ndarray:
    """``keep`` as a constant that broadcasts along ``axis`` of a tensor of ``rank``."""
    return keep.astype(dtype).reshape((keep.size,) + (1,) * (rank - 1 - axis))


def epsilon_attr(graph: Graph, eps: float):
    return np.array(eps, np.float32) if graph.opsets.get("", 17) < 12 else eps  # see function_proto


# ---- putting the plain forms back -----------------------------------------------------------
def filled_with(v: Value | None, value: float) -> bool:
    return v is None or (v.is_const and bool(np.all(np.asarray(v.const) == value)))


def drop_mask(node: Node, keep_inputs: int) -> bool:
    """Whether the mask (last input) keeps every channel; if so it is dropped."""
    mask = node.inputs[-1] if node.inputs else None
    if mask is None or not mask.is_const or not np.all(np.asarray(mask.const) == 1):
        return False
    mask.uses = [(n, j) for n, j in mask.uses if n is not node]
    node.inputs = node.inputs[:keep_inputs]
    return True


def normalised_axes(node: Node, rank: int) -> list[int]:
    return sorted({int(a) % rank for a in node.attrs.get("axes", [-1])})


def reduction_axes(graph: Graph, axes, base: str) -> tuple[list[Value], dict]:
    """The axes of a ReduceMean, ReduceMax or ReduceMin in the ops of the model's opset:
    (extra inputs, attributes): an input from opset 18, an attribute before."""
    if graph.opsets.get("", 17) >= 18:
        return [const_value(graph, f"{base}.axes", np.array(axes, np.int64))], {}
    return [], {"axes": list(axes)}


def write_reduce_mean(graph, x, out, axes, base, before) -> None:
    """``out = ReduceMean(x, axes, keepdims=1)`` in the ops of the model's opset."""
    more, attrs = reduction_axes(graph, axes, base)
    name = graph.fresh_name(f"{base}_ReduceMean")
    graph.add_node("ReduceMean", name, [x, *more], [out], {**attrs, "keepdims": 1}, before=before)


def write_out_layernorm(graph: Graph, node: Node, axes: list[int] | None = None) -> None:
    """A LayerNorm (over the last axis, or ``axes``) as plain ops: mean, centred, variance,
    sqrt, divide, scale, shift (the scale and shift only where they do something)."""
    x, scale, bias, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
    dtype, base = dtype_of(x), node.name
    axes = axes if axes is not None else [x.rank - 1]
    stats = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if x.shape else None
    eps = const_value(
        graph, f"{base}.epsilon", np.array(float(np.asarray(node.attr("epsilon", 1e-5))), dtype)
    )
    steps = [
        ("ReduceMean", ["x"], "mean", stats),
        ("Sub", ["x", "mean"], "centred", y.shape),
        ("Mul", ["centred", "centred"], "square", y.shape),
        ("ReduceMean", ["square"], "var", stats),
        ("Add", ["var", "eps"], "var_eps", stats),
        ("Sqrt", ["var_eps"], "std", stats),
        ("Div", ["centred", "std"], "normalised", y.shape),
    ]
    if not filled_with(scale, 1):
        steps.append(("Mul", ["normalised", "scale"], "scaled", y.shape))
    if not filled_with(bias, 0):
        steps.append(("Add", [steps[-1][2], "bias"], "shifted", y.shape))
    values = {"x": x, "eps": eps, "scale": scale, "bias": bias}
    for op, ins, out, shape in steps:
        values[out] = graph.value(graph.fresh_name(f"{base}.{out}"), shape=shape, dtype=dtype)
        name = graph.fresh_name(f"{base}.{out}_{op}")
        if op == "ReduceMean":
            write_reduce_mean(graph, values[ins[0]], values[out], axes, name, node)
        else:
            graph.add_node(op, name, [values[i] for i in ins], [values[out]], before=node)
    graph.replace_all_uses_with(y, values[steps[-1][2]])
    graph.remove_node(node)


def write_groupnorm_one(graph: Graph, node: Node) -> None:
    """GroupNorm(1, C) as torch exports it: Reshape(x, [0, 1, -1]), InstanceNormalization
    with the node's one-element scale and bias, Reshape back to ``Shape(x)``."""
    x, y, base = node.input(0), node.outputs[0], node.name
    rest = x.shape[1:] if x.shape else None
    known = rest is not None and all(isinstance(d, int) for d in rest)
    flat_shape = (x.shape[0], 1, int(np.prod(rest))) if known else None
    values = [
        graph.value(graph.fresh_name(f"{base}.{n}"), shape=s, dtype=x.dtype)
        for n, s in (("flat", flat_shape), ("normalised", flat_shape))
    ]
    shape = graph.value(
        graph.fresh_name(f"{base}.shape"), shape=(x.rank,), dtype=np.dtype(np.int64)
    )
    target = const_value(graph, f"{base}.flat_shape", np.array([0, 1, -1], np.int64))
    graph.add_node(
        "Reshape", graph.fresh_name(f"{base}.Reshape"), [x, target], [values[0]], before=node
    )
    graph.add_node(
        "InstanceNormalization",
        graph.fresh_name(f"{base}.InstanceNormalization"),
        [values[0], node.input(1), node.input(2)],
        [values[1]],
        {"epsilon": float(np.asarray(node.attr("epsilon", 1e-5)))},
        before=node,
    )
    graph.add_node("Shape", graph.fresh_name(f"{base}.Shape"), [x], [shape], before=node)
    out = graph.value(graph.fresh_name(f"{base}.out"), shape=y.shape, dtype=y.dtype)
    graph.add_node(
        "Reshape", graph.fresh_name(f"{base}.Reshape_1"), [values[1], shape], [out], before=node
    )
    graph.replace_all_uses_with(y, out)
    graph.remove_node(node)


def write_group_normalization(graph: Graph, node: Node) -> None:
    """``GroupNormalization(num_groups=1)`` (opset 21: per-channel scale and bias)."""
    x, base = node.input(0), node.name
    params = []
    for p, fill in ((node.input(1), 1), (node.input(2), 0)):
        arr = np.asarray(p.const) if p is not None and p.is_const else None
        if arr is None:
            arr = np.full(x.shape[1], fill, dtype_of(x))
        params.append(const_value(graph, f"{base}.param", arr.reshape(-1)))
    graph.set_input(node, 1, params[0])
    graph.set_input(node, 2, params[1])
    eps = float(np.asarray(node.attrs.get("epsilon", 1e-5)))
    node.op_type, node.domain, node.attrs = (
        "GroupNormalization",
        "",
        {"num_groups": 1, "epsilon": eps},
    )
