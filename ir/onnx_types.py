"""ONNX attributes and value types read into Python values for the IR (``ir/from_onnx.py``).

Rules:
- an element type becomes a numpy dtype (None for one numpy has not), cached per type;
- a value info gives (shape, dtype); a field it leaves unsaid is ``UNSET`` and leaves the
  value as it was; a dim is its number, its symbol, or None;
- attributes: ints and floats as Python numbers, tensors as arrays, strings decoded to
  ``str`` (bytes that are not UTF-8 stay bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from drpopt.ir.core import Graph, Value
from drpopt.ir.onnx_scan import tensor_array

_DTYPES: dict[int, np.dtype | None] = {}


def np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type (None for one numpy has not), cached."""
    dtype = _DTYPES.get(elem_type, False)
    if dtype is False:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        except Exception:
            dtype = None
        _DTYPES[elem_type] = dtype
    return dtype  # type: ignore[return-value]


UNSET = object()  # a field the value info leaves as it is

# Repeated protobuf fields read per node or value are sliced (``field[:]``, a list) before a
# loop or ``list()``: upb's containers have no iterator, so a loop over one ends in an
# IndexError whose message is formatted (over 1,000 instructions, several times per node).


def type_info(t: onnx.TypeProto) -> tuple[Any, Any]:
    """(shape, dtype) a tensor type gives, ``UNSET`` for what it does not say."""
    if not t.HasField("tensor_type"):
        return UNSET, UNSET
    tt = t.tensor_type
    shape: Any = UNSET
    if tt.HasField("shape"):
        dims: list[Any] = []
        for d in tt.shape.dim[:]:
            which = d.WhichOneof("value")
            dims.append(d.dim_value if which == "dim_value" else d.dim_param if which else None)
        shape = tuple(dims)
    elem = tt.elem_type
    return shape, np_dtype(elem) if elem else UNSET


def set_info(value: Value, info: onnx.ValueInfoProto) -> None:
    """Gives ``value`` the shape and dtype ``info`` states (what it leaves unsaid stays)."""
    shape, dtype = type_info(info.type)
    if shape is not UNSET:
        value.shape = shape
    if dtype is not UNSET:
        value.dtype = dtype


def read_types(found: onnx.GraphProto, graph: Graph, gp: onnx.GraphProto, constants) -> None:
    """Shapes and dtypes of the values shape inference typed; the outputs of the Constant
    nodes it got as typed inputs (``shape_model.large_constants``) made where it would
    have typed them, in node order (typed later, from their data)."""
    values, new_value = graph.values, graph.value
    types: dict[bytes, tuple[Any, Any]] = {}  # many values have one type: read it once
    pending = [(index, name) for index, name, _ in reversed(constants)]
    producer = {o: i for i, n in enumerate(gp.node) for o in n.output[:]} if pending else {}
    for outputs, infos in ((False, found.value_info), (True, found.output)):
        for info in infos:
            name = info.name
            if pending:  # the graph outputs come after every value_info
                at = len(gp.node) if outputs else producer.get(name, -1)
                while pending and pending[-1][0] < at:
                    new_value(pending.pop()[1])
            value = values[name] if name in values else new_value(name)
            t = info.type
            key = t.SerializeToString()
            known = types.get(key)
            if known is None:
                known = types[key] = type_info(t)
            shape, dtype = known
            if shape is not UNSET:
                value.shape = shape
            if dtype is not UNSET:
                value.dtype = dtype


_AP = onnx.AttributeProto


def attr_value(a: onnx.AttributeProto) -> Any:
    """An attribute's value as a Python number, list, array or ``str``."""
    kind = a.type  # the common kinds read directly (get_attribute_value tries each field)
    if kind == _AP.INT:
        return a.i
    if kind == _AP.INTS:
        return a.ints[:]
    if kind == _AP.FLOAT:
        return a.f
    if kind == _AP.TENSOR:
        return tensor_array(a.t)
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [_text(v) for v in value]
    if isinstance(value, list) and value and isinstance(value[0], onnx.TensorProto):
        return [numpy_helper.to_array(v) for v in value]
    return value


def _text(value: bytes) -> str | bytes:
    """A string attribute as ``str``, decoded here once (readers compare against ``str``;
    the writers encode it back to the same bytes); bytes that are not UTF-8 stay bytes, so
    they are written back unchanged."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def constant_value(node: onnx.NodeProto, attrs: dict[str, Any]) -> np.ndarray | None:
    """A Constant node's value (``value`` or one of its scalar/list forms) as an array."""
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None
