"""The locks ``ChannelGraph`` rules leave on spaces they cannot map (``ir/channels.py``):
an elementwise op between feature maps of unknown size (a dynamic height and width) adds
nothing to the "unknown-size" lock each space already has, and a mismatch names the op
on both sides."""

from __future__ import annotations

import numpy as np

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node


def _spaces(*dims):
    graph = Graph()
    cg = ChannelGraph(graph)
    values = [
        graph.value(f"v{i}", shape=(1, 8, d), dtype=np.dtype(np.float32))
        for i, d in enumerate(dims)
    ]
    return cg, [cg.space(v, 2) for v in values]


def test_identity_of_two_unknown_sizes_adds_no_mismatch_lock():
    cg, (a, b) = _spaces("h", "h")
    cg.identity(a, b, Node("Add", "add"))
    for sid in (a, b):
        assert [lock.kind for lock in cg.spaces[sid].locks] == ["unknown-size"]
    assert cg.relations == []  # not tied: each stays its own locked space


def test_identity_of_unknown_and_known_sizes_locks_the_known_one_naming_the_op():
    cg, (a, b) = _spaces("h", 5)
    cg.identity(a, b, Node("Mul", "mul"))
    assert [lock.kind for lock in cg.spaces[a].locks] == ["unknown-size", "mismatch"]
    assert [lock.kind for lock in cg.spaces[b].locks] == ["mismatch"]
    assert cg.spaces[a].locks[1] == cg.spaces[b].locks[0]
    assert cg.spaces[b].locks[0].message == "Mul 'mul': sizes None and 5 differ across the op"
    assert cg.spaces[b].locks[0].node == "mul" and cg.relations == []
