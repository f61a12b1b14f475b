"""``onnx_ir.Model`` into drpopt's IR without a copy of the weights (back: ``to_onnx_ir``).

Rules:
- ``from_onnx_ir(model)`` gives the graph ``from_onnx(onnx_ir.to_proto(model))`` gives
  (same values, shapes, folding, un-sharing, opsets, metadata, model-local functions),
  but no weight goes through a proto: every initializer becomes a lazy constant that
  reads its onnx_ir tensor (``tensor.numpy()``, made read-only) when a pass first needs
  it; an ``onnx_ir.ExternalTensor`` stays in its file until then;
- the structure does go through a proto, one without weights (``structure_proto``):
  ONNX shape inference and drpopt's shape-arithmetic folding (``ir/fold.py``) read protos,
  so the nodes are serialised once for them anyway, and ``from_onnx`` reads the graph from
  that same proto (``from_onnx(..., weights=...)``): one frontend, so the two cannot drift
  apart. The proto holds initializers of up to ``fold.MAX_ELEMENTS`` elements with their
  data (what shape inference may read as shape arguments; a few bytes each) and larger
  ones as name, dtype and dims only;
- still copied, as before: tensors inside Constant nodes and initializers of subgraphs
  (If/Loop/Scan bodies) ride in the proto, and so do model-local functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir

from drpopt.ir.core import Graph
from drpopt.ir.fold import MAX_ELEMENTS
from drpopt.ir.from_onnx import from_onnx


class TensorLoader:
    """The lazy constant of an initializer: reads ``origin`` (an onnx_ir tensor) as a
    read-only array (passes copy on write; the model's own array stays as it is)."""

    __slots__ = ("origin",)

    def __init__(self, origin: Any) -> None:
        self.origin = origin

    def __call__(self) -> np.ndarray:
        array = np.asarray(self.origin.numpy())
        if array.flags.writeable:
            array = array.view()
            array.flags.writeable = False
        return array


class _Weights:
    """``loader(index, tensor)`` for ``from_onnx``: the onnx_ir tensor of initializer
    ``index`` of the structure proto."""

    layout = None  # no file behind it: shape inference reads the structure proto itself

    def __init__(self, tensors: list[Any]) -> None:
        self.tensors = tensors

    def loader(self, index: int, tensor: onnx.TensorProto) -> TensorLoader:
        del tensor
        return TensorLoader(self.tensors[index])


# ---- onnx_ir -> drpopt --------------------------------------------------------------------
def from_onnx_ir(
    model: onnx_ir.Model,
    where: str | None = None,
    input_shapes: Mapping[str | None, Sequence[int]] | None = None,
) -> Graph:
    """The drpopt graph of ``model`` with lazy weights (see the module rules); ``where``
    names it in messages, ``input_shapes`` as in ``from_onnx``."""
    proto, tensors = structure_proto(model)
    graph = from_onnx(
        proto, where=where or "onnx_ir model", input_shapes=input_shapes, weights=_Weights(tensors)
    )
    if any(isinstance(t, onnx_ir.ExternalTensor) for t in tensors):
        graph.meta["external_data"] = True
    return graph


def structure_proto(model: onnx_ir.Model) -> tuple[onnx.ModelProto, list[Any]]:
    """``onnx_ir.to_proto(model)`` without the data of initializers over
    ``MAX_ELEMENTS`` elements (name, dtype and dims only), and the onnx_ir tensor of each
    initializer in the proto's order. ``model`` is not changed."""
    tensors: list[Any] = []
    proto = onnx.ModelProto()
    onnx_ir.serde.serialize_model_into(proto, _ModelView(model, tensors))
    return proto, tensors


def checker_proto(model: onnx_ir.Model) -> onnx.ModelProto:
    """What ``onnx.checker`` can read of ``model`` without its weights: the structure
    proto with the initializers it holds no data for as typed graph inputs."""
    proto, _ = structure_proto(model)
    graph = proto.graph
    declared = {i.name for i in graph.input}
    small = onnx.GraphProto()  # extend copies: the kept ones survive the clearing below
    small.initializer.extend(t for t in graph.initializer if math.prod(t.dims) <= MAX_ELEMENTS)
    for t in graph.initializer:
        if math.prod(t.dims) > MAX_ELEMENTS and t.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    del graph.initializer[:]
    graph.initializer.extend(small.initializer)
    return proto


class _View:
    """An onnx_ir object seen through, but for the attributes set on the view."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ModelView(_View):
    def __init__(self, model: onnx_ir.Model, tensors: list[Any]) -> None:
        super().__init__(model)
        self.graph = _GraphView(model.graph, tensors)


class _GraphView(_View):
    """The main graph with a stand-in tensor for each initializer (its value's name, type
    and shape as they are); ``tensors`` gets the real ones in the order written."""

    def __init__(self, graph: onnx_ir.Graph, tensors: list[Any]) -> None:
        super().__init__(graph)
        self.initializers: dict[str, Any] = {}
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is not None:  # one without a value is not written (as to_proto)
                tensors.append(tensor)
            self.initializers[name] = _InitializerView(value, _stand_in(tensor))

    def __iter__(self):
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)


class _InitializerView(_View):
    def __init__(self, value: onnx_ir.Value, const_value: Any) -> None:
        super().__init__(value)
        self.const_value = const_value


def _stand_in(tensor: Any) -> Any:
    """What the structure proto holds for ``tensor``: a small one a copy of it (an external
    one read now, so the proto names no file), a larger one its dtype and dims only. Never
    the tensor itself: the serialiser renames what it writes, and a tensor may wrap the
    caller's own proto."""
    if tensor is None:
        return None
    if tensor.size <= MAX_ELEMENTS:
        if isinstance(tensor, onnx_ir.ExternalTensor):
            tensor = onnx_ir.Tensor(tensor.numpy(), dtype=tensor.dtype)
        return onnx_ir.TensorProtoTensor(onnx_ir.serde.serialize_tensor(tensor))
    return onnx_ir.TensorProtoTensor(typed_tensor(tensor.dtype, tensor.shape.dims))


def typed_tensor(dtype: onnx_ir.DataType, dims: Sequence[int], name: str = "") -> onnx.TensorProto:
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = dtype.value
    proto.dims.extend(dims)
    return proto
