"""``cleanup``: dead nodes and unused initializers removed, shapes re-inferred, model checked.

Built on onnx-graphsurgeon's ``cleanup()`` (and ``toposort()`` when the order is not
topological, after transforms that appended nodes) over the model ``to_onnx`` writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import onnx

from drpopt.errors import CheckFailedError
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx, infer_shapes
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.base import Pass, PassResult

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)

# what graph.meta holds about the model itself (set by the frontends), carried to the
# cleaned graph; anything else there is not carried
GRAPH_OWNED = ("source", "producer", "ir_version", "input_shapes", "external_data", "torch_path")


@dataclass
class CleanupPass(Pass):
    """Remove dead nodes and unused initializers, re-infer shapes and check the model.

    Rules:
    - a node is dead when none of its outputs reaches a graph output (also through
      If/Loop/Scan bodies); dead nodes go, repeatedly, so whole dead branches go;
    - initializers no remaining node reads go; graph inputs stay, even unused ones;
    - nodes keep their order when it is topological, else they are sorted topologically
      (graphsurgeon's ``toposort``, which also reorders independent nodes);
    - ONNX shape inference runs on the result (a failure is logged and the shapes the model
      has are kept), then ``onnx.checker.check_model``; a model the checker rejects raises
      ``CheckFailedError`` naming the problem;
    - the result is a new Graph: the graph-owned entries of ``graph.meta`` (``GRAPH_OWNED``:
      where it came from, its input shapes, ...; no cached analysis, nothing stale),
      ``graph.metadata`` (``metadata_props``), opset imports, ir_version and producer are
      carried over; analyses of the old graph do not describe the new one (the pipeline
      context, with the plan, is the pipeline's, not the graph's); ``modified`` is True only
      when a node or an initializer was removed.
    """

    name: ClassVar[str] = "cleanup"

    def call(self, model: Graph) -> PassResult:
        import onnx_graphsurgeon as gs

        source = to_onnx(model)
        try:
            gs_graph = gs.import_onnx(source)
            gs_graph.cleanup(remove_unused_graph_inputs=False)
            cleaned = _export(gs_graph, source)
            problem = _check(cleaned)
            if problem is not None:  # perhaps only the order: sort (this reorders) and retry
                cleaned = _export(gs_graph.toposort(), source)
        except Exception as err:  # graphsurgeon raises plain exceptions on malformed graphs
            raise CheckFailedError(
                f"cleanup: onnx-graphsurgeon cannot clean graph {model.name!r}: {_short(err)}; "
                "a previous pass left a malformed graph (run with --dump-dir to find it)"
            ) from err
        problem = _check(cleaned) if problem is not None else None
        if problem is not None:
            raise CheckFailedError(
                f"cleanup: graph {model.name!r} fails onnx.checker: {problem}; "
                "a previous pass left an invalid model (run with --dump-dir to find it)"
            )

        where = str(model.meta.get("source", "model"))
        graph = from_onnx(cleaned, where=where)
        graph.meta.update({k: v for k, v in model.meta.items() if k in GRAPH_OWNED})
        graph.metadata = dict(model.metadata)
        graph.functions = list(model.functions)
        graph.opsets = dict(model.opsets)

        removed_nodes = len(model.nodes) - len(graph.nodes)
        removed_inits = len(model.initializers) - len(graph.initializers)
        modified = removed_nodes > 0 or removed_inits > 0
        if modified:
            log.info(
                "removed %d dead node(s) and %d unused initializer(s)",
                removed_nodes,
                removed_inits,
            )
        return PassResult(graph, modified)


def _export(gs_graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """The graphsurgeon graph as a shape-inferred model with the source's model fields."""
    import onnx_graphsurgeon as gs

    model = gs.export_onnx(gs_graph, do_type_check=False)
    _restore_model_fields(model, source)
    return infer_shapes(model)


def _check(model: onnx.ModelProto) -> str | None:
    """What ``onnx.checker`` finds wrong with ``model``, or None."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        return _short(err)
    return None


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:500] or type(err).__name__


def _restore_model_fields(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Puts back what graphsurgeon does not carry: model metadata, opsets, ir_version."""
    model.ir_version = source.ir_version
    model.producer_name = source.producer_name
    model.producer_version = source.producer_version
    del model.opset_import[:]
    model.opset_import.extend(source.opset_import)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    model.graph.name = source.graph.name
