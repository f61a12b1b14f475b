"""ONNX frontend: a path or an ``onnx.ModelProto`` into the drpopt IR.

Rules:
- a path is read by ``ir/onnx_load.read_for_analysis`` (checked first; external data and,
  from a path, large weights are left in their files and read when a pass needs them);
- opsets 11 to the newest the installed onnx knows are accepted;
- small integer constant subgraphs (exporters' shape arithmetic) are evaluated first
  (``ir/fold.py``), their outputs become constants, and shape inference (with data
  propagation) fills value shapes; symbolic dims stay strings; it runs on a light model
  (large weights only typed, ``ir/shape_model.py``), from a path cut from the bytes read,
  from a proto copied from it; a model with static inputs and no value info of its own is
  typed node by node instead (``ir/infer_types.py``: the same shapes and dtypes, in the
  same order of values), and inferred whole only when one output stays unknown;
- Constant nodes keep their node and also give their output a ``const``; Identity of a
  constant shares its storage (no copy) and Cast of a constant is computed by
  ``ir/fold.evaluate`` (numeric folding lives in ``ir/fold.py`` only);
- names used inside If/Loop/Scan bodies but defined outside are recorded as uses by the
  enclosing node with input index -1 (``node.meta["captured"]`` lists them).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from drpopt.errors import BadInputError, UnsupportedModelError
from drpopt.ir.core import Graph, Node, Value, gc_paused
from drpopt.ir.fold import fold_constant_node, fold_constants, unshare_constants
from drpopt.ir.onnx_load import check_external, read_for_analysis
from drpopt.ir.onnx_load import load_model as load_model  # re-exported: callers import it here
from drpopt.ir.onnx_scan import FileWeights, tensor_array
from drpopt.ir.onnx_types import attr_value, constant_value, np_dtype, read_types, set_info
from drpopt.ir.shape_model import large_constants, shape_bytes, shape_copy

log = logging.getLogger(__name__)

MIN_OPSET = 11
_GRAPH_ATTR, _GRAPHS_ATTR = onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS
_INT_ATTR, _INTS_ATTR = onnx.AttributeProto.INT, onnx.AttributeProto.INTS
_EXTERNAL = onnx.TensorProto.EXTERNAL


def default_opset(model: onnx.ModelProto) -> int | None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return None


def check_opset(model: onnx.ModelProto, where: str = "model") -> int:
    """Returns the default-domain opset; raises when it is outside the supported range."""
    version = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if version is None:
        raise BadInputError(f"{where}: imports no default ONNX opset; export the model again")
    if version < MIN_OPSET:
        raise UnsupportedModelError(
            f"{where}: opset {version} is older than {MIN_OPSET}; convert it first with "
            f"onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    if version > newest:
        raise UnsupportedModelError(
            f"{where}: opset {version} is newer than the installed onnx knows ({newest}); "
            "upgrade onnx (pip install -U onnx)"
        )
    return version


def infer_shapes(model: onnx.ModelProto | bytes) -> onnx.ModelProto:
    """Runs ONNX shape inference, keeping the model as it was when inference fails (a
    model given as bytes is parsed then)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:
        log.warning("shape inference failed (%s); continuing with the shapes the model has", err)
        return onnx.load_from_string(model) if isinstance(model, bytes) else model


def from_onnx(
    source: str | os.PathLike | onnx.ModelProto,
    where: str | None = None,
    input_shapes: Mapping[str | None, Sequence[int]] | None = None,
    weights: Any = None,
) -> Graph:
    """Loads a model into the IR (shape-inferred); ``where`` names it in error messages.

    ``input_shapes`` ({input name or None: dims}) fixes symbolic input dims before shape
    inference (``ir/input_shapes.py``); ``graph.meta["input_shapes"]`` records the input
    dims the shapes were computed for (unknown ones as their symbol). ``weights`` reads the
    initializers of a given proto that holds no data for them (``loader(index, tensor)``
    and ``layout``, the file records shape inference may cut from or None, as
    ``onnx_scan.FileWeights``; ``ir/from_onnx_ir.py``).
    """
    with gc_paused():
        return _from_onnx(source, where, input_shapes, weights)


def _from_onnx(
    source: str | os.PathLike | onnx.ModelProto,
    where: str | None,
    input_shapes: Mapping[str | None, Sequence[int]] | None,
    given_weights: Any = None,
) -> Graph:
    from drpopt.ir.input_shapes import fix_input_shapes, input_dims
    from drpopt.ir.propagate import propagate_shapes

    model, weights = read_for_analysis(source)
    if given_weights is not None:
        weights = given_weights
    where = where or (str(source) if not isinstance(source, onnx.ModelProto) else "model")
    _check_initializers(model.graph, where)
    base_dir = "" if isinstance(source, onnx.ModelProto) else str(Path(source).parent)
    read = model
    model = fix_input_shapes(model, input_shapes or {})
    opset = check_opset(model, where)
    folded_nodes: list[int] = []
    folded = fold_constants(model, folded_nodes)
    layout = weights.layout if weights is not None else None
    if weights is not None:
        weights.layout = None  # used once: its bytes need not live as long as the weights
    graph = None
    if _types_node_by_node(model.graph):  # no whole-model inference (ir/infer_types.py)
        graph = _convert_graph(
            model.graph, None, base_dir=base_dir, weights=weights, typed=set(folded_nodes)
        )
        _finish_load(graph, model, opset, folded)
        if not _typed(graph, opset):
            graph = None  # an output it could not type: the whole model is inferred
    if graph is None:
        cut = layout if model is read else None  # from a path: cut from the bytes read
        graph = _inferred_graph(model, cut, folded, folded_nodes, base_dir, weights)
        _finish_load(graph, model, opset, folded)
    if graph.meta.pop("typed", False):
        pass  # every output has its static shape: nothing left to propagate
    elif all(v.static_shape is not None for v in graph.inputs):
        # inference stops at shapes computed by Mod, ConstantOfShape, a reversing Slice
        # (torch's F.pad, Swin's window padding): go on node by node with the numbers
        propagate_shapes(graph, opset)
    elif all(v.shape is not None for v in graph.inputs):
        propagate_shapes(graph, opset, symbolic=True)  # with the symbols (a dynamic batch)
    graph.metadata = {p.key: p.value for p in model.metadata_props}
    graph.functions = list(model.functions)
    graph.meta["ir_version"] = model.ir_version
    graph.meta["producer"] = f"{model.producer_name} {model.producer_version}".strip()
    graph.meta["source"] = where
    graph.meta["input_shapes"] = input_dims(model)
    return graph


def _inferred_graph(
    model: onnx.ModelProto, layout: Any, folded: dict, nodes: list[int], base_dir: str, weights: Any
) -> Graph:
    """The graph typed by ONNX's whole-model inference, on a light model (``shape_model``)."""
    consts = large_constants(model.graph)
    if layout is not None:
        light = shape_bytes(model, layout, folded, nodes, consts)
    else:
        light = shape_copy(model, folded, nodes, consts)
    found = infer_shapes(light).graph
    return _convert_graph(model.graph, None, found, base_dir, weights, constants=consts)


def _finish_load(
    graph: Graph, model: onnx.ModelProto, opset: int, folded: dict[str, np.ndarray]
) -> None:
    """The folded values as constants, shared constants un-shared, the opsets."""
    for name, arr in folded.items():
        value = graph.values.get(name)
        if value is not None and value.producer is not None:
            value.const, value.shape, value.dtype = arr, tuple(arr.shape), arr.dtype
            value.producer.meta["folded"] = True
    unshare_constants(graph)
    graph.opsets = {op.domain: op.version for op in model.opset_import}
    graph.opsets.setdefault("", opset)


def _typed(graph: Graph, opset: int) -> bool:
    """Types ``graph`` node by node (``infer_types``, or ``infer_symbolic`` with symbolic
    input dims, which also propagates the symbols); False when an output stays untyped."""
    from drpopt.ir.infer_types import infer_symbolic, infer_types

    if all(v.static_shape is not None for v in graph.inputs):
        return infer_types(graph, opset)
    graph.meta.pop("typed")  # what ``_from_onnx`` would propagate next is done here
    if not infer_symbolic(graph, opset):
        return False
    graph.meta["typed"] = True
    return True


def _types_node_by_node(gp: onnx.GraphProto) -> bool:
    """Whether ``infer_types`` may type the graph instead of whole-model inference: every
    input dim a size or a symbol (the shapes then follow node by node; paddle2onnx's ``-1``
    for a dynamic dim is not: its inputs are inferred whole, then propagated with symbols
    in its place) and no value info of its own (what inference would merge with its own
    findings)."""
    if gp.value_info or not gp.input:
        return False
    for info in gp.input:
        t = info.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return False
        for d in t.tensor_type.shape.dim:
            which = d.WhichOneof("value")
            if which is None or (which == "dim_value" and d.dim_value < 0):
                return False
    return True


def _check_initializers(gp: onnx.GraphProto, where: str) -> None:
    """Two initializers of one name must agree on shape and dtype (onnxruntime takes the
    last of equal ones, and refuses the model otherwise)."""
    names = [init.name for init in gp.initializer]
    if len(set(names)) == len(names):  # the usual case: no name twice, nothing to compare
        return
    seen: dict[str, tuple[int, tuple[int, ...]]] = {}
    for init in gp.initializer:
        here = (init.data_type, tuple(init.dims))
        first = seen.setdefault(init.name, here)
        if first != here:
            kinds = [f"{np_dtype(t)} {dims}" for t, dims in (first, here)]
            raise BadInputError(
                f"{where}: initializer '{init.name}' is defined twice, as {kinds[0]} and as "
                f"{kinds[1]} (onnxruntime refuses such a model too); re-export the model, or "
                "keep one of the two initializers"
            )


# ---- conversion -------------------------------------------------------------------------
def _convert_graph(
    gp: onnx.GraphProto,
    parent: _Scope | None,
    shapes: onnx.GraphProto | None = None,
    base_dir: str = "",
    weights: FileWeights | None = None,
    typed: set[int] | None = None,
    constants: list[tuple[int, str, bytes]] = (),  # type: ignore[assignment]
) -> Graph:
    graph = Graph(gp.name or "graph")
    scope = _Scope(graph, parent)
    _read_constants(gp, graph, base_dir, weights)
    for info in gp.input:
        v = graph.value(info.name)
        if not v.is_const:
            set_info(v, info)
            graph.inputs.append(v)
    first = len(graph.values)
    # what shape inference found (on a light copy of this graph, its value_info included)
    read_types(shapes if shapes is not None else gp, graph, gp, constants)
    _read_nodes(gp, graph, scope)
    for info in gp.output:
        graph.outputs.append(scope.lookup(info.name))
    if typed is not None:
        _order_as_inferred(graph, first, typed)
        graph.meta["typed"] = True
    graph.meta["captured_names"] = sorted(scope.captured)
    return graph


def _read_constants(
    gp: onnx.GraphProto, graph: Graph, base_dir: str, weights: FileWeights | None
) -> None:
    """Initializers as lazy constants (read on first use), sparse ones as arrays."""
    new_value = graph.value
    for index, init in enumerate(gp.initializer):
        value = new_value(init.name, shape=tuple(init.dims), dtype=np_dtype(init.data_type))
        loader = weights.loader(index, init) if weights is not None else None
        value.set_lazy(loader or functools.partial(tensor_array, init, base_dir))
        if init.data_location == _EXTERNAL:
            check_external(init, base_dir)
            graph.meta["external_data"] = True
    for sparse in gp.sparse_initializer:
        arr = numpy_helper.to_array(sparse)
        name = sparse.values.name
        new_value(name, shape=tuple(arr.shape), dtype=arr.dtype, const=arr)


def _order_as_inferred(graph: Graph, first: int, folded: set[int]) -> None:
    """Puts ``graph.values`` in the order whole-model inference would have made them (the
    constants and inputs, the outputs of the nodes it ran, the graph outputs, then what
    the nodes made), so that it is one order however the shapes were found."""
    items = list(graph.values.items())
    order = dict(items[:first])
    outputs = {v.name for v in graph.outputs}
    for index, node in enumerate(graph.nodes):
        if index in folded:
            continue
        for v in node.outputs:
            name = v.name
            if name not in order and name not in outputs and not v.meta.get("omitted"):
                order[name] = v
    for v in graph.outputs:
        order.setdefault(v.name, v)
    if len(order) < len(items):
        for name, v in items[first:]:
            order.setdefault(name, v)
    graph.values.clear()
    graph.values.update(order)


def _read_nodes(gp: onnx.GraphProto, graph: Graph, scope: _Scope) -> None:
    """The nodes, named uniquely, with their attributes and subgraphs; Identity/Cast of a
    constant and Constant nodes give constant outputs.

    ``Graph.add_node`` and ``Graph.value`` written inline (this runs for every node): the
    node is built from its own lists and its def-use links set here."""
    values = graph.values
    names: set[str] = set()
    lookup, nodes = scope.lookup, graph.nodes
    ref = graph._ref
    for i, np_node in enumerate(gp.node):
        op = np_node.op_type
        name = np_node.name or f"{op}_{i}"
        if name in names:
            name = _unique(name, names)
        else:
            names.add(name)
        # repeated fields sliced into lists (see ``onnx_types``: no IndexError per loop)
        in_names = np_node.input[:]
        inputs = [(values[n] if n in values else lookup(n)) if n else None for n in in_names]
        out_names = np_node.output[:]
        outputs = []
        for n in out_names:  # ``graph.value`` inline (the version moves once, below)
            if n in values:
                outputs.append(values[n])
            elif n:
                v = values[n] = Value(n)
                v.__dict__["_graph"] = ref
                outputs.append(v)
        if len(outputs) < len(out_names):
            outputs = _outputs_with_gaps(graph, name, out_names)
        attributes = np_node.attribute[:]  # (each read of a repeated field makes a wrapper)
        if attributes:
            attrs, subgraphs = _read_attributes(attributes, scope)
        else:
            attrs, subgraphs = {}, None
        node = Node(op, name, inputs, outputs, attrs, np_node.domain)
        for k, v in enumerate(inputs):
            if v is not None:
                v.uses.append((node, k))
        for v in outputs:
            v.producer = node
        nodes.append(node)
        if subgraphs:
            _attach_subgraphs(node, subgraphs, lookup)
        if op == "Identity" or op == "Cast":
            if inputs and inputs[0] is not None:
                fold_constant_node(node)
        elif op == "Constant" and outputs:
            out, array = outputs[0], constant_value(np_node, attrs)
            out.const = array
            if array is not None:
                out.shape, out.dtype = array.shape, array.dtype
    graph.touch()


def _outputs_with_gaps(graph: Graph, node: str, names) -> list[Value]:
    """A node's outputs where some optional ones are omitted (``""``, as an LSTM written
    ``["", "Y_h"]``): an omitted one before a given one is a placeholder value (meta
    ``omitted``; ``to_onnx`` writes ``""`` for it again while nothing reads it), so every
    output keeps its position; omitted ones at the end are left out."""
    names = list(names)
    while names and not names[-1]:
        names.pop()
    outputs = []
    for k, n in enumerate(names):
        if n:
            outputs.append(graph.values[n] if n in graph.values else graph.value(n))
        else:
            placeholder = graph.value(graph.fresh_name(f"{node}:omitted{k}"))
            placeholder.meta["omitted"] = True
            outputs.append(placeholder)
    return outputs


def _read_attributes(attributes: list[onnx.AttributeProto], scope: _Scope) -> tuple[dict, dict]:
    attrs: dict[str, Any] = {}
    subgraphs: dict[str, Any] = {}
    for a in attributes:
        kind = a.type
        if kind == _INT_ATTR:  # the common kinds inline (this runs for every node)
            attrs[a.name] = a.i
        elif kind == _INTS_ATTR:
            attrs[a.name] = a.ints[:]
        elif kind == _GRAPH_ATTR:
            subgraphs[a.name] = _convert_graph(a.g, scope)
        elif kind == _GRAPHS_ATTR:
            subgraphs[a.name] = [_convert_graph(g, scope) for g in a.graphs]
        else:
            attrs[a.name] = attr_value(a)
    return attrs, subgraphs


def _attach_subgraphs(node: Node, subgraphs: dict[str, Any], lookup) -> None:
    """A node's If/Loop/Scan bodies, and the outer values they capture as its uses."""
    node.subgraphs = subgraphs
    captured = []
    for sub in _iter_graphs(subgraphs):
        captured.extend(sub.meta.get("captured_names", ()))
    for cname in dict.fromkeys(captured):
        v = lookup(cname)
        v.uses.append((node, -1))
        node.meta.setdefault("captured", []).append(v)


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_k`` when a node already has it (ONNX does not require unique node
    names; plans, locks and group labels name nodes)."""
    if name in taken:
        k = 2
        while f"{name}_{k}" in taken:
            k += 1
        name = f"{name}_{k}"
    taken.add(name)
    return name


def _iter_graphs(subgraphs: dict[str, Any]):
    for g in subgraphs.values():
        if isinstance(g, list):
            yield from g
        else:
            yield g


class _Scope:
    """Name lookup through nested graphs; names found in an outer graph are 'captured'."""

    def __init__(self, graph: Graph, parent: _Scope | None) -> None:
        self.graph = graph
        self.parent = parent
        self.captured: set[str] = set()

    def lookup(self, name: str) -> Value:
        if name in self.graph.values:
            return self.graph.values[name]
        if self.parent is not None and self.parent.has(name):
            self.captured.add(name)
            return self.parent.lookup(name)
        return self.graph.value(name)

    def has(self, name: str) -> bool:
        return name in self.graph.values or (self.parent is not None and self.parent.has(name))


def node_by_name(graph: Graph, name: str) -> Node:
    """The node called ``name`` (KeyError naming close matches otherwise)."""
    for n in graph.nodes:
        if n.name == name:
            return n
    raise KeyError(f"no node named {name!r}")
