"""Model kinds in and out: the one place a model crosses between formats.

The public API (``drpopt.api``) and the ``onnx_ir`` pass adapters accept a path, an
``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph`` or a drpopt IR
``Graph``, and hand back the kind they were given (a path gives an ``onnx.ModelProto``: a
path cannot hold a new model until it is written).

Rules and costs (drpopt's IR is still its own, ``ir/core.py``):
- ``onnx_ir`` <-> drpopt graph is ``ir/from_onnx_ir.py`` and ``ir/to_onnx_ir.py``: no
  weight is copied either way (a weight becomes a lazy constant reading its onnx_ir
  tensor; an unchanged one goes back as the same tensor object); only the structure goes
  through a proto without weights on the way in, none on the way out; the verification
  reference is the onnx_ir model, serialised only when ``verify`` runs
  (``passes.manager.reference_model``); ``onnx.checker`` reads its structure with the
  large weights as typed inputs (``checkable_proto``);
- graphsurgeon goes through an ``onnx.ModelProto`` (``export_onnx`` / ``import_onnx``),
  and so does an onnx_ir model handed to ``to_proto`` (``api.check``: onnxruntime needs
  one): ``onnx_ir.serde`` copies each weight's bytes once;
- proto -> drpopt graph is ``ir.from_onnx`` (weights stay in the proto until read),
  drpopt graph -> proto is ``ir.to_onnx`` (one copy back);
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


def checkable_proto(model: Any) -> onnx.ModelProto:
    """What ``onnx.checker`` reads of ``model``: the model itself, but an onnx_ir model's
    structure with its large weights as typed graph inputs (their data is not copied)."""
    if model_kind(model) != "onnx_ir":
        return to_proto(model)
    from drpopt.ir.from_onnx_ir import checker_proto

    return checker_proto(model)


def check_structure(proto: onnx.ModelProto) -> None:
    """``onnx.checker.check_model(proto)``, but a graph input or output typed without a shape
    is checked as if it had one: onnxruntime runs such a model, the checker alone refuses
    it, and graph editors write one for a tensor whose shape they do not know
    (onnx-graphsurgeon, ``helper.make_tensor_value_info(name, dtype, None)``). ``proto`` is
    left as it was."""
    io = [*proto.graph.input, *proto.graph.output]
    shapeless = [
        v.type.tensor_type
        for v in io
        if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
    ]
    for t in shapeless:  # marked present for the check, cleared again after it
        t.shape.SetInParent()
    try:
        onnx.checker.check_model(proto)
    finally:
        for t in shapeless:
            t.ClearField("shape")


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


def to_graph(model: Any, input_shapes: Any = None, context: Any = None) -> Graph:
    """A drpopt graph of ``model``; the model as given becomes the verification reference
    of ``context`` (default: the context the new graph remembers; see
    ``passes.manager.load_graph``). A drpopt graph is returned as is."""
    from drpopt.passes.manager import load_graph

    kind = model_kind(model)
    if kind == "onnx_ir":
        return _onnx_ir_graph(model, input_shapes, context)
    if kind in ("drpopt", "path", "proto"):
        return load_graph(model, input_shapes, context)
    return load_graph(to_proto(model), input_shapes, context)


def _onnx_ir_graph(model: Any, input_shapes: Any, context: Any) -> Graph:
    """The graph of an onnx_ir model, weights not copied; the reference is the model
    itself, serialised only when ``verify`` needs it (``passes.manager.reference_model``;
    whoever may change the model before then keeps a clone instead: ``ir_passes``)."""
    from drpopt.ir.from_onnx_ir import from_onnx_ir
    from drpopt.passes.context import context_of

    graph = from_onnx_ir(model, where="the onnx_ir model", input_shapes=input_shapes)
    reference = model
    if input_shapes:  # the reference needs the same fixed dims: a proto now
        from drpopt.ir.input_shapes import fix_input_shapes

        reference = fix_input_shapes(to_proto(model), input_shapes)
    (context_of(graph) if context is None else context).reference = reference
    return graph


def from_graph(graph: Graph, kind: Kind) -> Any:
    """``graph`` as a model of ``kind`` (a drpopt graph is returned as is)."""
    if kind == "drpopt":
        return graph
    if kind == "onnx_ir":
        from drpopt.ir.to_onnx_ir import to_onnx_ir

        return to_onnx_ir(graph)
    from drpopt.ir.to_onnx import to_onnx

    return from_proto(to_onnx(graph), kind)
