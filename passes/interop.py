"""Model kinds in and out: the one place a model crosses between formats.

The public API (``drpopt.api``) and the ``onnx_ir`` pass adapters accept a path, an
``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph`` or a drpopt IR
``Graph``, and hand back the kind they were given (a path gives an ``onnx.ModelProto``: a
path cannot hold a new model until it is written).

Rules and costs (drpopt's IR is still its own, ``ir/core.py``):
- every kind goes through an ``onnx.ModelProto``: ``onnx_ir`` by ``onnx_ir.serde``
  (serialising copies each weight's bytes once; deserialising wraps the proto's tensors
  without a copy), graphsurgeon by ``export_onnx`` / ``import_onnx``;
- proto -> drpopt graph is ``ir.from_onnx`` (weights read into numpy, one copy), drpopt
  graph -> proto is ``ir.to_onnx`` (one copy back);
- onnx_ir and graphsurgeon are imported only when a model of that kind is given;
  onnx-graphsurgeon is an optional dependency (``pip install drpopt[graphsurgeon]``): only
  this module uses it, and without it a graphsurgeon model asked for is a one-line
  ``BadInputError`` saying what to install.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import onnx

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph

Kind = Literal["path", "proto", "onnx_ir", "graphsurgeon", "drpopt"]


def model_kind(model: Any) -> Kind:
    """Which kind ``model`` is (``BadInputError`` for anything else)."""
    if isinstance(model, Graph):
        return "drpopt"
    if isinstance(model, onnx.ModelProto):
        return "proto"
    if isinstance(model, str | os.PathLike):
        return "path"
    module = type(model).__module__
    if module.startswith("onnx_ir"):
        import onnx_ir

        if isinstance(model, onnx_ir.Model):
            return "onnx_ir"
    if module.startswith("onnx_graphsurgeon") and isinstance(model, _graphsurgeon().Graph):
        return "graphsurgeon"
    raise BadInputError(
        f"a {type(model).__name__} is not a model drpopt reads; give a path, an "
        "onnx.ModelProto, an onnx_ir.Model or an onnx_graphsurgeon.Graph"
    )


def _graphsurgeon() -> Any:
    """The ``onnx_graphsurgeon`` module (an optional dependency), imported on first need."""
    try:
        import onnx_graphsurgeon
    except ImportError as err:
        raise BadInputError(
            "onnx-graphsurgeon is not installed; pip install onnx-graphsurgeon "
            "(or drpopt[graphsurgeon]) to hand drpopt graphsurgeon graphs"
        ) from err
    return onnx_graphsurgeon


def to_proto(model: Any) -> onnx.ModelProto:
    """``model`` (any kind) as an ``onnx.ModelProto`` (a given proto is returned as is)."""
    kind = model_kind(model)
    if kind in ("path", "proto"):
        from drpopt.ir.from_onnx import load_model

        return load_model(model)
    if kind == "onnx_ir":
        import onnx_ir

        return onnx_ir.serde.serialize_model(model)
    if kind == "graphsurgeon":
        return _graphsurgeon().export_onnx(model)
    from drpopt.ir.to_onnx import to_onnx

    return to_onnx(model)


def from_proto(proto: onnx.ModelProto, kind: Kind) -> Any:
    """``proto`` as a model of ``kind`` (a path gives the proto itself)."""
    if kind in ("path", "proto"):
        return proto
    if kind == "onnx_ir":
        import onnx_ir

        return onnx_ir.serde.deserialize_model(proto)
    if kind == "graphsurgeon":
        return _graphsurgeon().import_onnx(proto)
    from drpopt.ir.from_onnx import from_onnx

    return from_onnx(proto)


def to_graph(model: Any, input_shapes: Any = None) -> Graph:
    """A drpopt graph of ``model``; the model as given becomes the verification reference
    (``passes.manager.load_graph``). A drpopt graph is returned as is."""
    from drpopt.passes.manager import load_graph

    if model_kind(model) in ("drpopt", "path", "proto"):
        return load_graph(model, input_shapes)
    return load_graph(to_proto(model), input_shapes)


def from_graph(graph: Graph, kind: Kind) -> Any:
    """``graph`` as a model of ``kind`` (a drpopt graph is returned as is)."""
    if kind == "drpopt":
        return graph
    from drpopt.ir.to_onnx import to_onnx

    return from_proto(to_onnx(graph), kind)
