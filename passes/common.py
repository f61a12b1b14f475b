"""Helpers the passes share: the cached analysis, weighted layers, per-layer sparsity."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from drpopt.ir.analysis import Analysis
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.ort_shapes import layer_op

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def get_analysis(graph: Graph) -> Analysis:
    """The coupled-group analysis of ``graph`` as it is now (cached per graph version by
    the analysis manager, ``passes/analyses.py``)."""
    from drpopt.passes.analyses import get_analysis as cached_analysis

    return cached_analysis(graph)


def invalidate(graph: Graph) -> None:
    """Call after changing the graph behind the IR's back: no analysis describes it now."""
    from drpopt.passes.analyses import invalidate as forget

    forget(graph)


def reshare_equal_copies(graph: Graph, keys: dict[str, tuple]) -> None:
    """Values with the same key (the storage they shared before a pass gave each its own
    array, and how the pass cut or masked them) hold one array again when their arrays are
    equal, so the model writes one initializer: a layer applied several times stays one
    tensor. Copies of a constant an exporter shared because it was equal (a zero bias of
    unrelated layers) are cut differently and stay apart."""
    by_key: dict[tuple, list] = {}
    for name, key in keys.items():
        by_key.setdefault(key, []).append(graph.values[name])
    for values in by_key.values():
        first = values[0]
        for v in values[1:]:
            a, b = v.const, first.const
            if a is not b and a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b):
                v.share_const(first)


def weight_of(node: Node):
    """The constant weight of a Conv/ConvTranspose/Gemm/MatMul (or a fused Conv/Gemm), or
    None."""
    if layer_op(node) not in WEIGHTED_OPS:
        return None
    w = node.input(1)
    return w if w is not None and w.is_const else None


def edge_layers(graph: Graph) -> tuple[set[str], set[str]]:
    """(first, last) weighted layers: those a graph input reaches, and those that reach a
    graph output, without passing through another weighted layer (nor through a Shape:
    sizes reach layers only as reshape targets). A lookup in a constant table (a token
    embedding's Gather by the input ids) is the first layer of what it reads: the layers
    after it are not (a language model's every block reads the stream the embedding starts
    through its residual adds)."""
    first = _reach(graph, forward=True)
    last = _reach(graph, forward=False)
    return first, last


def _reach(graph: Graph, forward: bool) -> set[str]:
    found: set[str] = set()
    start = graph.inputs if forward else graph.outputs
    seen = set()
    todo = deque(start)
    while todo:
        v = todo.popleft()
        if v.name in seen:
            continue
        seen.add(v.name)
        nodes = [n for n, _ in v.uses] if forward else ([v.producer] if v.producer else [])
        for n in nodes:
            if forward and n.op_type in ("Shape", "Size"):
                continue  # a size reaches layers only as a reshape's target, not as data
            if weight_of(n) is not None or (forward and _table_lookup(n, v)):
                found.add(n.name)
                continue
            nxt = (
                n.outputs if forward else [i for i in n.inputs if i is not None and not i.is_const]
            )
            todo.extend(nxt)
    return found


def _table_lookup(node: Node, index: Value) -> bool:
    """``node`` gathers rows of a constant table by ``index`` (an embedding)."""
    table = node.input(0)
    return (
        node.op_type == "Gather" and table is not None and table.is_const and node.input(1) is index
    )


def along(arr: np.ndarray, axis: int, index) -> tuple:
    """An index tuple selecting ``index`` along ``axis``."""
    sl = [slice(None)] * arr.ndim
    sl[axis] = index
    return tuple(sl)


@dataclass
class LayerSparsity:
    """Zeros in one weighted layer's weight."""

    node: str
    op: str
    tensor: str
    shape: tuple[int, ...]
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


def layer_sparsity(graph: Graph) -> list[LayerSparsity]:
    """Per weighted layer: the weight's shape and how many of its elements are zero."""
    out = []
    for node in graph.nodes:
        w = weight_of(node)
        if w is None:
            continue
        arr = np.asarray(w.const)
        out.append(
            LayerSparsity(
                node.name,
                node.op_type,
                w.name,
                tuple(arr.shape),
                int(arr.size - np.count_nonzero(arr)),
                int(arr.size),
            )
        )
    return out


def human(n: float) -> str:
    """1234567 -> '1.23M' (for tables and reports)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def pct(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole`` ('-' when ``whole`` is 0)."""
    return f"{100.0 * part / whole:.1f}%" if whole else "-"
