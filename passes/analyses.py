"""Analyses with a lifetime: typed results cached against a graph's identity and version.

Rules:
- an analysis is a typed object (:class:`~drpopt.ir.analysis.Analysis` for the coupled
  channel groups, :class:`Scores`, :class:`EdgeLayers`, :class:`NodeIndex`); the manager
  keeps at most one of each kind per graph, stamped with ``graph.version`` when stored;
- a cached analysis is returned only while the graph's version equals its stamp: every
  mutation (``ir/core.py`` bumps the version; a pass reporting ``modified`` touches it)
  makes it stale, and a stale analysis is never returned, only recomputed or refused;
- a pass declares what its changes leave valid (``Pass.preserves``, or
  ``PassResult.preserves`` when it depends on what the pass did): only those kinds are
  re-stamped after it; everything else computed before it is gone;
- the cache lives on the graph object (a private attribute, not ``graph.meta``): a graph
  that is dropped takes its analyses with it, and the manager keeps no graph alive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from drpopt.ir.analysis import Analysis, analyze
from drpopt.ir.core import Graph, Node

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Scores:
    """Channel importance per prunable group (group key -> one score per channel; higher
    means keep), and the criterion and seed that made them."""

    criterion: str
    seed: int
    by_group: dict[str, np.ndarray]


@dataclass(frozen=True)
class EdgeLayers:
    """The weighted layers a graph input reaches first and those that feed an output last."""

    first: frozenset[str]
    last: frozenset[str]


@dataclass(frozen=True)
class NodeIndex:
    """The graph's nodes by name."""

    by_name: dict[str, Node]


def _channel_analysis(graph: Graph) -> Analysis:
    return analyze(graph)


def _edge_layers(graph: Graph) -> EdgeLayers:
    from drpopt.passes.common import edge_layers

    first, last = edge_layers(graph)
    return EdgeLayers(frozenset(first), frozenset(last))


def _node_index(graph: Graph) -> NodeIndex:
    return NodeIndex({n.name: n for n in graph.nodes})


_SLOT = "_drpopt_analyses"  # the per-graph cache: {kind: (version stamped, result)}

COMPUTE: dict[type, Callable[[Graph], Any]] = {
    Analysis: _channel_analysis,
    EdgeLayers: _edge_layers,
    NodeIndex: _node_index,
}


class AnalysisManager:
    """Caches analyses per (graph, version); see the module docstring for the rules."""

    def __init__(self) -> None:
        self.computed = 0  # how many analyses were computed (a measure)

    @staticmethod
    def _entries(graph: Graph) -> dict[type, tuple[int, Any]]:
        entries = graph.__dict__.get(_SLOT)
        if entries is None:
            entries = graph.__dict__[_SLOT] = {}
        return entries

    def cached(self, graph: Graph, kind: type[T]) -> T | None:
        """The analysis of ``kind`` if one describes ``graph`` as it is now, else None."""
        entry = self._entries(graph).get(kind)
        if entry is None or entry[0] != graph.version:
            return None
        return entry[1]

    def get(self, graph: Graph, kind: type[T]) -> T:
        """The analysis of ``kind`` for ``graph``, computed when none is valid."""
        found = self.cached(graph, kind)
        if found is not None:
            return found
        compute = COMPUTE.get(kind)
        if compute is None:
            raise LookupError(f"no valid {kind.__name__} for this graph, and none computes it")
        result = compute(graph)
        self.computed += 1
        self.put(graph, result)
        return result

    def put(self, graph: Graph, result: Any) -> None:
        """Stores ``result`` as the analysis of its type for ``graph`` as it is now."""
        self._entries(graph)[type(result)] = (graph.version, result)

    def invalidate(self, graph: Graph) -> None:
        """Forgets every analysis of ``graph``."""
        self._entries(graph).clear()

    def stamps(self, graph: Graph) -> dict[type, int]:
        """The version each cached analysis of ``graph`` was stamped with."""
        return {k: v for k, (v, _) in self._entries(graph).items()}

    def preserve(self, graph: Graph, kinds: Iterable[type], since: int) -> None:
        """Re-stamps the analyses of ``kinds`` made at ``since`` or later (during a pass that
        declared it preserves them) as describing ``graph`` now; drops the others."""
        keep = set(kinds)
        entries = self._entries(graph)
        for kind, (stamp, result) in list(entries.items()):
            if kind in keep and stamp >= since:
                entries[kind] = (graph.version, result)
            else:
                del entries[kind]


ANALYSES = AnalysisManager()


def get_analysis(graph: Graph) -> Analysis:
    """The coupled channel groups of ``graph``, computed once per version."""
    return ANALYSES.get(graph, Analysis)


def edge_layer_names(graph: Graph) -> EdgeLayers:
    """The first and last weighted layers of ``graph`` (cached per version)."""
    return ANALYSES.get(graph, EdgeLayers)


def node_by_name(graph: Graph) -> dict[str, Node]:
    """The nodes of ``graph`` by name (cached per version)."""
    return ANALYSES.get(graph, NodeIndex).by_name


def scores_of(graph: Graph) -> dict[str, np.ndarray] | None:
    """The channel scores of ``graph`` by group key, if valid ones exist, else None."""
    found = ANALYSES.cached(graph, Scores)
    return None if found is None else found.by_group


def invalidate(graph: Graph) -> None:
    """Forgets every cached analysis of ``graph`` (mutations do this by themselves; call it
    after editing fields the version does not see, outside a pass)."""
    graph.touch()
    ANALYSES.invalidate(graph)
