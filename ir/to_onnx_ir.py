"""drpopt's IR back to an ``onnx_ir.Model``, built directly, weights handed over uncopied.

Rules:
- the model is the one ``onnx_ir.serde.deserialize_model(to_onnx(graph))`` gives: the same
  nodes, names and attributes (sorted, as ``onnx.helper.make_node`` writes them), the
  initializers ``to_onnx`` writes (``to_onnx.initializer_plan``: constants un-shared on
  load and still one array are one initializer again), inputs and outputs with their
  dtypes and dims, opsets, ir_version, producer, metadata and model-local functions;
  other values carry no shape or type, as ``to_onnx`` writes none (a pass that changed
  shapes leaves them to re-inference);
- it is built node by node, no proto in between; a graph with subgraphs (If/Loop/Scan
  bodies) goes through ``to_onnx`` and ``onnx_ir.serde`` instead (its main graph's
  initializers written without data and handed over the same way);
- an initializer holds (``tensor_of``): the onnx_ir tensor object it was loaded from while
  its constant is unchanged (read or not: ``Value.origin``, ``ir/from_onnx_ir.py``), unless
  it now has another name (serialising renames a tensor object, and one may wrap the
  caller's own proto); a proto tensor no pass read, wrapped as it is
  (``onnx_ir.TensorProtoTensor``); else ``onnx_ir.tensor(array)`` (wraps, no copy). A
  Constant node's tensor wraps its output's array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir
from onnx import helper, numpy_helper

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.from_onnx_ir import typed_tensor
from drpopt.ir.to_onnx import initializer_plan, output_name, to_onnx


def to_onnx_ir(graph: Graph) -> onnx_ir.Model:
    """``graph`` as an ``onnx_ir.Model`` whose initializers hold the graph's constants
    without a copy (see the module rules)."""
    if any(n.subgraphs for n in graph.nodes):
        return _through_proto(graph)
    ir_version = int(graph.meta.get("ir_version", onnx.IR_VERSION))
    written, rename = initializer_plan(graph)
    values: dict[str, onnx_ir.Value] = {}
    for v in written:
        tensor = tensor_of(v)
        values[v.name] = onnx_ir.Value(
            name=v.name,
            shape=onnx_ir.Shape(tensor.shape),
            type=onnx_ir.TensorType(tensor.dtype),
            const_value=tensor,
        )
    initializers = list(values.values())

    def value(v: Value) -> onnx_ir.Value:
        name = rename.get(v.name, v.name)
        found = values.get(name)
        if found is None:
            found = values[name] = onnx_ir.Value(name=name)
        return found

    nodes = [_node(n, value) for n in graph.nodes]
    inputs = [_typed(value(v), v) for v in graph.inputs]
    if ir_version < 4:  # every initializer is also a graph input (as to_onnx writes it)
        inputs += [v for v in initializers if v not in inputs]
    outputs = [_typed(value(v), v) for v in graph.outputs]
    main = onnx_ir.Graph(
        inputs,
        outputs,
        nodes=nodes,
        initializers=initializers,
        opset_imports=dict(graph.opsets),
        name=graph.name,
    )
    producer = str(graph.meta.get("producer", "")).split(" ")
    return onnx_ir.Model(
        main,
        ir_version=ir_version,
        producer_name=producer[0] or "drpopt",
        producer_version=producer[1] if len(producer) > 1 else None,
        functions=[onnx_ir.serde.deserialize_function(f) for f in graph.functions],
        metadata_props=dict(graph.metadata),
    )


def _typed(out: onnx_ir.Value, v: Value) -> onnx_ir.Value:
    """A graph input or output with the dtype and dims ``to_onnx`` writes for it."""
    if out.const_value is None:
        dtype = np.dtype(v.dtype) if v.dtype is not None else np.dtype(np.float32)
        out.type = onnx_ir.TensorType(onnx_ir.DataType.from_numpy(dtype))
        if v.shape is not None:
            out.shape = onnx_ir.Shape([d if isinstance(d, int | str) else None for d in v.shape])
    return out


def _node(node: Node, value) -> onnx_ir.Node:
    inputs = [value(v) if v is not None else None for v in node.inputs]
    # an optional output the model left out is an unnamed value, as onnx_ir reads ""
    outputs = [value(v) if output_name(v) else onnx_ir.Value(name="") for v in node.outputs]
    return onnx_ir.Node(
        node.domain,
        node.op_type,
        inputs,
        _attributes(node),
        outputs=outputs,
        name=node.name or None,
    )


def _attributes(node: Node) -> list[onnx_ir.Attr]:
    """The node's attributes as ``onnx.helper.make_node`` writes them: sorted by name,
    None left out; a Constant's ``value`` is its output's current constant."""
    if node.op_type == "Constant" and node.outputs and node.outputs[0].is_const:
        return [onnx_ir.AttrTensor("value", onnx_ir.tensor(np.asarray(node.outputs[0].const)))]
    return [_attribute(k, v) for k, v in sorted(node.attrs.items()) if v is not None]


def _attribute(key: str, value: Any) -> onnx_ir.Attr:
    """The common kinds directly, anything else as ``onnx.helper`` types it."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return onnx_ir.AttrInt64(key, int(value))
    if isinstance(value, float | np.floating):
        return onnx_ir.AttrFloat32(key, float(value))
    if isinstance(value, str):
        return onnx_ir.AttrString(key, value)
    if isinstance(value, list) and value and all(type(x) is int for x in value):
        return onnx_ir.AttrInt64s(key, value)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return onnx_ir.AttrTensor(key, onnx_ir.tensor(value))
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(value)
    elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        value = [numpy_helper.from_array(v) for v in value]
    return onnx_ir.serde.deserialize_attribute(helper.make_attribute(key, value))


def _through_proto(graph: Graph) -> onnx_ir.Model:
    """``to_onnx_ir`` for a graph with subgraphs: the structure through a proto whose
    main-graph initializers hold no data, then the tensors handed over."""
    tensors: dict[str, Any] = {}

    def stand_in(value: Value) -> onnx.TensorProto:
        tensor = tensors[value.name] = tensor_of(value)
        return typed_tensor(tensor.dtype, tensor.shape.dims, value.name)

    model = onnx_ir.serde.deserialize_model(to_onnx(graph, tensor=stand_in))
    initializers = model.graph.initializers
    for name, tensor in tensors.items():
        initializers[name].const_value = tensor
    return model


def tensor_of(value: Value) -> Any:
    """The onnx_ir tensor of constant ``value``, without a copy of its data."""
    origin = value.origin
    if origin is not None and origin.name in (None, "", value.name):
        return origin
    lazy = value.__dict__.get("_lazy")  # a weight of a proto that no pass has read
    source = getattr(lazy, "args", (None,))[0] if lazy is not None else None
    if (
        isinstance(source, onnx.TensorProto)
        and source.data_location != onnx.TensorProto.EXTERNAL
        and source.name == value.name
    ):
        return onnx_ir.TensorProtoTensor(source)
    array = value.peek_const()
    if array is None:
        raise ValueError(f"value {value.name!r} is written as an initializer but holds no constant")
    return onnx_ir.tensor(array)
