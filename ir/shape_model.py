"""The model ONNX shape inference runs on, serialised: what it needs and no more.

Rules:
- the nodes but the folded ones (``ir/fold.py``), with the folded values as constants;
- small constants (up to ``SMALL_CONSTANT`` elements: they may be shape arguments) with
  their data; larger or external weights only as typed graph inputs (their data never
  matters for shapes; serialising it dominated load time);
- from a proto (``shape_copy``) the graph is copied without the large weights; from a path
  (``shape_bytes``) it is cut from the bytes ``ir/onnx_scan.read_light`` kept
  (``Layout``), so no proto is copied; both give the same records, and the typed inputs are
  written as bytes (``_typed_weights``), not built as protos.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from drpopt.ir.fold import MAX_ELEMENTS
from drpopt.ir.onnx_scan import Layout, encode_varint, initializer_record, input_record

SMALL_CONSTANT = MAX_ELEMENTS  # constants this small may be shape arguments
_EXTERNAL = onnx.TensorProto.EXTERNAL
_TENSOR_ATTR = onnx.AttributeProto.TENSOR


def shape_copy(
    model: onnx.ModelProto,
    folded: dict[str, np.ndarray],
    folded_nodes: list[int],
    constants: list[tuple[int, str, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """What shape inference needs and no more, serialised: the nodes but the folded ones
    (``folded_nodes``, indices), small constants (they may be shape arguments), folded values
    as constants, large weights as typed inputs (their data never matters for shapes;
    serialising it dominated load time). The graph is written record by record (each
    node, input, ... serialised on its own), not copied into a new proto: copying the
    nodes cost several times serialising them where weights are Constant nodes (PaddleOCR's
    exports). The typed inputs are written as bytes after the others (``_typed_weights``);
    ``constants`` (``large_constants``) are Constant nodes written as typed inputs too."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src = model.graph
    cut, records = _typed_weights(src)
    skip_nodes, skip_inits = {*folded_nodes, *(c[0] for c in constants)}, set(cut)
    parts: list[bytes] = []
    _records(parts, b"\x0a", (n for i, n in enumerate(src.node) if i not in skip_nodes))
    if src.name:
        name = src.name.encode()
        parts += (b"\x12", encode_varint(len(name)), name)
    inits = (t for i, t in enumerate(src.initializer) if i not in skip_inits)
    _records(parts, b"\x2a", inits if skip_inits else src.initializer)
    _records(parts, b"\x2a", (numpy_helper.from_array(a, n) for n, a in folded.items()))
    _records(parts, b"\x5a", src.input)
    _records(parts, b"\x62", src.output)
    _records(parts, b"\x6a", src.value_info)
    _records(parts, b"\x7a", src.sparse_initializer)
    parts.extend(records)
    parts.extend(c[2] for c in constants)
    body = b"".join(parts)
    return light.SerializeToString() + b"\x3a" + encode_varint(len(body)) + body


def _records(parts: list[bytes], tag: bytes, messages) -> None:
    """Appends a length-delimited record of field ``tag`` for each message."""
    for m in messages:
        raw = m.SerializeToString()
        parts += (tag, encode_varint(len(raw)), raw)


def shape_bytes(
    model: onnx.ModelProto,
    layout: Layout,
    folded: dict[str, np.ndarray],
    folded_nodes: list[int],
    constants: list[tuple[int, str, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """``shape_copy(model, folded, folded_nodes, constants)`` cut from the bytes the model
    was read from (``ir/onnx_scan.Layout``): the same records, no proto copied."""
    cut, extra = _typed_weights(model.graph)
    extra.extend(initializer_record(numpy_helper.from_array(a, n)) for n, a in folded.items())
    extra.extend(c[2] for c in constants)
    return layout.shape_model([*folded_nodes, *(c[0] for c in constants)], cut, extra)


def large_constants(src: onnx.GraphProto) -> list[tuple[int, str, bytes]]:
    """Constant nodes holding a weight (over ``SMALL_CONSTANT`` elements: paddle2onnx writes
    every weight so), as (node index, output, input record typing it): shape inference gets
    them as typed inputs, like large initializers. Only for a graph with no value info of
    its own, so the values inference types come in node order (``from_onnx`` puts these
    outputs back in their place, ``onnx_types.read_types``); none where one is a graph output."""
    if src.value_info:
        return []
    found = []
    for index, node in enumerate(src.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.attribute) != 1 or len(node.output) != 1:
            continue
        a = node.attribute[0]
        if a.type != _TENSOR_ATTR or a.name != "value" or a.t.data_location == _EXTERNAL:
            continue
        dims = a.t.dims[:]  # a list (see ``onnx_types``)
        if math.prod(dims) <= SMALL_CONSTANT:
            continue
        record = input_record(node.output[0], a.t.data_type, dims)
        if record is not None:
            found.append((index, node.output[0], record))
    if found:
        outputs = {o.name for o in src.output}
        if any(name in outputs for _, name, _ in found):
            return []
    return found


def _typed_weights(src: onnx.GraphProto) -> tuple[list[int], list[bytes]]:
    """The initializers shape inference gets as typed inputs, not as data (external, or over
    ``SMALL_CONSTANT`` elements), by index, and an input record for each one the graph does
    not already declare as an input."""
    declared = {i.name for i in src.input}
    cut: list[int] = []
    records: list[bytes] = []
    for index, t in enumerate(src.initializer):
        if t.data_location != _EXTERNAL and math.prod(t.dims[:]) <= SMALL_CONSTANT:
            continue
        cut.append(index)
        if t.name not in declared:
            record = input_record(t.name, t.data_type, t.dims)
            if record is None:  # a negative dim: protobuf writes it
                info = onnx.ValueInfoProto()
                _typed_input(info, t)
                record = b"\x5a" + encode_varint(info.ByteSize()) + info.SerializeToString()
            records.append(record)
    return cut, records


def _typed_input(info: onnx.ValueInfoProto, tensor: onnx.TensorProto) -> None:
    """``helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))``
    written in place."""
    info.name = tensor.name
    tt = info.type.tensor_type
    tt.elem_type = tensor.data_type
    shape = tt.shape
    shape.SetInParent()
    for d in tensor.dims:
        shape.dim.add().dim_value = d
