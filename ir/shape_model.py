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


def shape_copy(
    model: onnx.ModelProto, folded: dict[str, np.ndarray], folded_nodes: list[int]
) -> bytes:
    """What shape inference needs and no more, serialised: the nodes but the folded ones
    (``folded_nodes``, indices), small constants (they may be shape arguments), folded values
    as constants, large weights as typed inputs (their data never matters for shapes;
    serialising it dominated load time). The typed inputs are written as bytes after the
    copied graph (``_typed_weights``), not built as protos."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, g = model.graph, onnx.GraphProto()
    g.name = src.name
    start = 0
    for index in folded_nodes:  # the runs of nodes between folded ones, copied in C
        if index > start:
            g.node.extend(src.node[start:index])
        start = index + 1
    g.node.extend(src.node[start:] if start else src.node)
    g.input.extend(src.input)
    cut, records = _typed_weights(src)
    if cut:
        skip = set(cut)
        g.initializer.extend(t for i, t in enumerate(src.initializer) if i not in skip)
    else:
        g.initializer.extend(src.initializer)
    g.sparse_initializer.extend(src.sparse_initializer)
    for name, arr in folded.items():
        g.initializer.append(numpy_helper.from_array(arr, name))
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    body = g.SerializeToString() + b"".join(records)
    return light.SerializeToString() + b"\x3a" + encode_varint(len(body)) + body


def shape_bytes(
    model: onnx.ModelProto, layout: Layout, folded: dict[str, np.ndarray], folded_nodes: list[int]
) -> bytes:
    """``shape_copy(model, folded, folded_nodes)`` cut from the bytes the model was read
    from (``ir/onnx_scan.Layout``): the same records, no proto copied."""
    cut, extra = _typed_weights(model.graph)
    extra.extend(initializer_record(numpy_helper.from_array(a, n)) for n, a in folded.items())
    return layout.shape_model(folded_nodes, cut, extra)


def _typed_weights(src: onnx.GraphProto) -> tuple[list[int], list[bytes]]:
    """The initializers shape inference gets as typed inputs, not as data (external, or over
    ``SMALL_CONSTANT`` elements), by index, and an input record for each one the graph does
    not already declare as an input."""
    declared = {i.name for i in src.input}
    cut: list[int] = []
    records: list[bytes] = []
    for index, t in enumerate(src.initializer):
        if t.data_location != _EXTERNAL and math.prod(t.dims) <= SMALL_CONSTANT:
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
