"""ONNX backend: the drpopt IR back to an ``onnx.ModelProto``.

Rules:
- initializers are the constant values no node produces, in the order first seen;
- a Constant node is written from its output's current ``const`` (so a pass that slices
  the constant slices the node);
- value shapes are written as ``value_info`` only when ``with_shapes`` (a pass that changes
  shapes drops them and lets ``cleanup`` re-infer);
- the opsets, ir_version, producer and ``metadata_props`` of the source model are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from drpopt.ir.core import Graph, Node, Value

TensorWriter = Callable[[Value], onnx.TensorProto]


def to_onnx(
    graph: Graph,
    with_shapes: bool = False,
    reshare: bool = True,
    tensor: TensorWriter | None = None,
) -> onnx.ModelProto:
    """Writes ``graph`` as a model. With ``reshare`` (default) constants that still hold one
    array (shared in the source model, un-shared on load) are written once again; without
    it every value is its own initializer, named as the analysis names it. ``tensor``
    writes the main graph's initializers instead of copying their data in
    (``ir/from_onnx_ir.py`` writes them without data and hands the arrays over)."""
    gp = _graph_proto(graph, with_shapes, reshare, tensor or _tensor_proto)
    opsets = [helper.make_opsetid(domain, version) for domain, version in graph.opsets.items()]
    model = helper.make_model(gp, opset_imports=opsets)
    model.functions.extend(graph.functions)
    model.ir_version = int(graph.meta.get("ir_version", model.ir_version))
    if model.ir_version < 4:
        _list_initializers_as_inputs(model.graph)
    producer = str(graph.meta.get("producer", "")).split(" ")
    model.producer_name = producer[0] or "drpopt"
    if len(producer) > 1:
        model.producer_version = producer[1]
    for key, value in graph.metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def _list_initializers_as_inputs(gp: onnx.GraphProto) -> None:
    """Before IR version 4 every initializer must also be a graph input (older exporters,
    onnx-caffe2's models among them); the IR keeps weights as constants, not inputs."""
    listed = {i.name for i in gp.input}
    for t in gp.initializer:
        if t.name not in listed:
            gp.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def _elem_type(value: Value) -> int:
    if value.dtype is None:
        return onnx.TensorProto.FLOAT
    return helper.np_dtype_to_tensor_dtype(np.dtype(value.dtype))


def _value_info(value: Value, with_shape: bool = True) -> onnx.ValueInfoProto:
    shape = None
    if with_shape and value.shape is not None:
        shape = [d if isinstance(d, int | str) else None for d in value.shape]
    return helper.make_tensor_value_info(value.name, _elem_type(value), shape)


def _graph_proto(
    graph: Graph, with_shapes: bool, reshare: bool = True, tensor: TensorWriter | None = None
) -> onnx.GraphProto:
    produced = {v.name for n in graph.nodes for v in n.outputs}
    written, rename = initializer_plan(graph, reshare, produced)
    initializers = [(tensor or _tensor_proto)(v) for v in written]
    seen = {v.name for v in written}
    nodes = [_node_proto(n, with_shapes, rename) for n in graph.nodes]
    inputs = [_value_info(v) for v in graph.inputs]
    outputs = [_value_info(v) for v in graph.outputs]  # outputs are locked: shapes hold
    value_info = []
    if with_shapes:
        io = {v.name for v in graph.inputs} | {v.name for v in graph.outputs} | seen
        value_info = [
            _value_info(v)
            for v in graph.values.values()
            if v.name in produced and v.name not in io and v.shape is not None and output_name(v)
        ]
    return helper.make_graph(
        nodes, graph.name, inputs, outputs, initializers, value_info=value_info
    )


def initializer_plan(
    graph: Graph, reshare: bool = True, produced: set[str] | None = None
) -> tuple[list[Value], dict[str, str]]:
    """The constants written as initializers, in the order first used, and the names of
    the others: with ``reshare``, values that still hold one array object (constants the
    frontend un-shared and no pass changed since) are written once, under the first name
    (graph outputs and values subgraphs capture keep theirs)."""
    if produced is None:
        produced = {v.name for n in graph.nodes for v in n.outputs}
    used = [v for n in graph.nodes for v in n.inputs if v is not None]
    used += [v for n in graph.nodes for v in n.meta.get("captured", ())]
    written: list[Value] = []
    seen: set[str] = set()
    canonical: dict[int, str] = {}
    rename: dict[str, str] = {}
    keep_names = {v.name for v in graph.outputs}
    keep_names |= {v.name for n in graph.nodes for v in n.meta.get("captured", ())}
    if reshare:  # a Constant node's tensor (onnxsim writes shared ones so) stays a node:
        # the copies the frontend made of it for its other readers read its output again
        for n in graph.nodes:
            for v in n.outputs if n.op_type == "Constant" else ():
                if v.is_const and v.name not in keep_names:
                    canonical.setdefault(v.storage, v.name)
    for v in [*used, *graph.outputs]:
        if not v.is_const or v.name in produced or v.name in seen:
            continue
        seen.add(v.name)
        first = canonical.setdefault(v.storage, v.name) if reshare else v.name
        if first != v.name and v.name not in keep_names and first not in keep_names:
            rename[v.name] = first
            continue
        written.append(v)
    return written, rename


def _tensor_proto(v: Value) -> onnx.TensorProto:
    """The initializer of ``v``: a weight never read since loading is copied as it was
    (no conversion to numpy and back), anything else serialised from its array."""
    lazy = v.__dict__.get("_lazy")
    source = getattr(lazy, "args", (None,))[0] if lazy is not None else None
    if isinstance(source, onnx.TensorProto) and source.data_location != onnx.TensorProto.EXTERNAL:
        proto = onnx.TensorProto()
        proto.CopyFrom(source)
        proto.name = v.name
        return proto
    return numpy_helper.from_array(np.asarray(v.const), v.name)


def _node_proto(node: Node, with_shapes: bool, rename: dict[str, str]) -> onnx.NodeProto:
    attrs: dict[str, Any] = {}
    for key, value in node.attrs.items():
        attrs[key] = _attr(value)
    if node.op_type == "Constant" and node.outputs and node.outputs[0].is_const:
        attrs = {"value": numpy_helper.from_array(np.asarray(node.outputs[0].const))}
    for key, sub in node.subgraphs.items():
        attrs[key] = (
            [_graph_proto(g, with_shapes) for g in sub]
            if isinstance(sub, list)
            else _graph_proto(sub, with_shapes)
        )
    return helper.make_node(
        node.op_type,
        [rename.get(v.name, v.name) if v is not None else "" for v in node.inputs],
        [output_name(v) for v in node.outputs],
        name=node.name,
        domain=node.domain or None,
        **attrs,
    )


def output_name(v: Value) -> str:
    """A node output's name in the written model: ``""`` for an optional output the model
    left out (``from_onnx``'s placeholder) while nothing reads it."""
    return "" if not v.uses and v.meta.get("omitted") else v.name


def _attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return [numpy_helper.from_array(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
