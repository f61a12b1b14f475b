"""``cleanup``: dead nodes and unused initializers removed, shapes re-inferred, model checked.

Decided on drpopt's IR (no onnx-graphsurgeon): one reverse walk from the graph outputs
over producers, node inputs and the values If/Loop/Scan bodies capture (``uses`` with index
-1, ``node.meta["captured"]``) marks what is live; the live nodes are sorted only when their
order is not topological (a stable Kahn sort). The kept nodes and initializers are written
once as an ``onnx.ModelProto`` (what ONNX shape inference and ``onnx.checker`` read) and read
back once by ``from_onnx``, which refolds shape arithmetic for the shapes the model has now.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import ClassVar

import onnx

from drpopt.errors import CheckFailedError
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.from_onnx import from_onnx, infer_shapes
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.interop import check_structure

log = logging.getLogger(__name__)

# what graph.meta holds about the model itself (set by the frontends), carried to the
# cleaned graph; anything else there is not carried
GRAPH_OWNED = ("source", "producer", "ir_version", "input_shapes", "external_data", "torch_path")


@dataclass
class CleanupPass(Pass):
    """Remove dead nodes and unused initializers, re-infer shapes and check the model.

    Rules:
    - a node is dead when none of its outputs reaches a graph output (also through the
      values If/Loop/Scan bodies capture: an If nothing reads is dead, and so is what only
      its branches read); dead nodes go in one linear walk, so whole dead branches go;
      nodes inside bodies are kept as they are;
    - initializers no remaining node reads go; graph inputs stay, even unused ones;
    - nodes keep their order when it is topological, else they are sorted topologically
      (Kahn's algorithm taking ready nodes in their current order, so independent nodes
      keep their order);
    - ONNX shape inference runs on the result (a failure is logged and the shapes the model
      has are kept), then ``onnx.checker.check_model``; a model the checker rejects (or a
      cycle) raises ``CheckFailedError`` naming the problem;
    - the result is a new Graph: the graph-owned entries of ``graph.meta`` (``GRAPH_OWNED``:
      where it came from, its input shapes, ...; no cached analysis, nothing stale),
      ``graph.metadata`` (``metadata_props``), opset imports, model-local functions,
      ir_version and producer are carried over; analyses of the old graph do not describe
      the new one (the pipeline context, with the plan, is the pipeline's, not the graph's);
      ``modified`` is True only when a node or an initializer was removed.
    """

    name: ClassVar[str] = "cleanup"

    def call(self, model: Graph) -> PassResult:
        live_nodes, live_values = _live(model)
        kept = [n for n in model.nodes if id(n) in live_nodes]
        order = kept if _is_topological(kept) else _toposort(kept, model.name)
        removed_nodes = len(model.nodes) - len(kept)
        removed_inits = sum(
            1 for v in model.initializers if id(v) not in live_values and v not in model.inputs
        )
        cleaned = infer_shapes(_write(model, order))
        problem = _check(cleaned)
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

        modified = removed_nodes > 0 or removed_inits > 0
        if modified:
            log.info(
                "removed %d dead node(s) and %d unused initializer(s)",
                removed_nodes,
                removed_inits,
            )
        return PassResult(graph, modified)


def _live(graph: Graph) -> tuple[set[int], set[int]]:
    """Ids of the nodes and values a graph output depends on (reverse reachability)."""
    own = {id(n) for n in graph.nodes}
    nodes: set[int] = set()
    values: set[int] = set()
    stack: list[Value] = list(graph.outputs)
    while stack:
        value = stack.pop()
        if id(value) in values:
            continue
        values.add(id(value))
        node = value.producer
        if node is None or id(node) in nodes or id(node) not in own:
            continue
        nodes.add(id(node))
        stack.extend(v for v in node.inputs if v is not None)
        stack.extend(node.meta.get("captured", ()))
    return nodes, values


def _reads(node: Node) -> list[Value]:
    return [*(v for v in node.inputs if v is not None), *node.meta.get("captured", ())]


def _is_topological(nodes: list[Node]) -> bool:
    """Whether every value a node reads is produced by an earlier node (or by none here)."""
    members = {id(n) for n in nodes}
    seen: set[int] = set()
    for node in nodes:
        for v in _reads(node):
            p = v.producer
            if p is not None and id(p) in members and id(p) not in seen:
                return False
        seen.add(id(node))
    return True


def _toposort(nodes: list[Node], where: str) -> list[Node]:
    """``nodes`` sorted topologically, a ready node taken in its current order first."""
    index = {id(n): i for i, n in enumerate(nodes)}
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        producers = {index[id(v.producer)] for v in _reads(node) if id(v.producer) in index}
        waiting[i] = len(producers)
        for p in producers:
            users[p].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i] > 0)
        raise CheckFailedError(
            f"cleanup: graph {where!r} has a cycle through node {stuck.name!r}; "
            "a previous pass left a malformed graph (run with --dump-dir to find it)"
        )
    return order


def _write(graph: Graph, order: list[Node]) -> onnx.ModelProto:
    """``graph`` with only ``order``'s nodes, in that order, as a model (``to_onnx`` writes
    the initializers those nodes and the outputs read, and nothing else)."""
    view = Graph(graph.name)
    view.nodes = order
    view.inputs, view.outputs, view.values = graph.inputs, graph.outputs, graph.values
    view.opsets, view.metadata, view.functions = graph.opsets, graph.metadata, graph.functions
    view.meta = graph.meta
    return to_onnx(view)


def _check(model: onnx.ModelProto) -> str | None:
    """What ``onnx.checker`` finds wrong with ``model``, or None."""
    try:
        check_structure(model)  # (an input or output typed without a shape is no error)
    except onnx.checker.ValidationError as err:
        return _short(err)
    return None


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:500] or type(err).__name__
