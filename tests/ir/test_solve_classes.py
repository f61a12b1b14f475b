"""Grouping merges the spaces an identity ties before it cuts and walks them
(``ir/solve.py``): checked against the plain per-space segment graph on generated
channel graphs, where every space has its own segments and an identity is an edge."""

from __future__ import annotations

import itertools

import networkx as nx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Graph, Node

NODE = Node("Op", "op")


@st.composite
def channel_graphs(draw) -> ChannelGraph:
    """Spaces of a few sizes tied by identities, concats, splits and expansions at random."""
    cg = ChannelGraph(Graph())
    for i in range(draw(st.integers(2, 8))):
        cg.virtual(f"s{i}", draw(st.sampled_from([2, 3, 4, 6, 8, 12])))
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["id", "id", "cat", "exp", "split"]))
        n = len(cg.spaces)
        if kind == "id":
            a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
            if cg.spaces[a].length != cg.spaces[b].length:
                b = cg.virtual(f"s{n}", cg.spaces[a].length)  # type: ignore[arg-type]
            cg.identity(a, b, NODE)
        elif kind == "cat":
            parts = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=3))
            total = sum(cg.spaces[p].length for p in parts)  # type: ignore[misc]
            cg.concat(cg.virtual(f"s{n}", total), parts, NODE)
        elif kind == "split":  # cuts an existing space anywhere (inside expanded blocks too)
            whole = draw(st.sampled_from([i for i in range(n) if cg.spaces[i].length > 1]))
            length = cg.spaces[whole].length
            at = draw(st.integers(1, length - 1))  # type: ignore[operator]
            cg.concat(whole, [cg.virtual(f"s{n}", at), cg.virtual(f"s{n + 1}", length - at)], NODE)  # type: ignore[operator]
        else:
            small, k = draw(st.integers(0, n - 1)), draw(st.sampled_from([2, 3]))
            cg.expand(cg.virtual(f"s{n}", cg.spaces[small].length * k), small, k, NODE)  # type: ignore[operator]
    for sid in range(len(cg.spaces)):
        cg.role(sid, "producer", NODE)  # every component is a group
    return cg


def _naive_cuts(relations: list[tuple], spaces) -> None:
    """Every relation made consistent over whole cut sets, again and again until nothing
    changes (what ``propagate_cuts`` reaches cut by cut)."""
    changed = True

    def add(sid: int, new: set[int]) -> None:
        nonlocal changed
        new = {c for c in new if 0 < c < spaces[sid].length} - spaces[sid].cuts
        if new:
            spaces[sid].cuts |= new
            changed = True

    while changed:
        changed = False
        for rel in relations:
            if rel[0] == "id":
                add(rel[1], spaces[rel[2]].cuts)
                add(rel[2], spaces[rel[1]].cuts)
            elif rel[0] == "cat":
                offset, want = 0, set()
                for p in rel[2]:
                    length = spaces[p].length
                    want |= {offset} | {offset + c for c in spaces[p].cuts}
                    add(
                        p, {c - offset for c in spaces[rel[1]].cuts if offset < c < offset + length}
                    )
                    offset += length
                add(rel[1], want)
            else:
                big, small, k = rel[1], rel[2], rel[3]
                inside = {c // k for c in spaces[big].cuts if c % k}
                inside |= {b + 1 for b in inside}
                add(big, {c * k for c in spaces[small].cuts | inside})
                add(small, {c // k for c in spaces[big].cuts if c % k == 0} | inside)


def _reference(cg: ChannelGraph) -> set[frozenset[tuple[int, int]]]:
    """Components of (space, segment start): every space cut and linked on its own."""
    spaces = cg.spaces
    _naive_cuts(cg.relations, spaces)
    bounds = [[0, *sorted(sp.cuts), sp.length] for sp in spaces]
    g = nx.Graph()
    g.add_nodes_from((sid, b[0]) for sid, b in enumerate(bounds) for b in itertools.pairwise(b))
    for rel in cg.relations:
        if rel[0] == "id":
            g.add_edges_from(((rel[1], s), (rel[2], s)) for s in bounds[rel[1]][:-1])
        elif rel[0] == "cat":
            offset = 0
            for p in rel[2]:
                g.add_edges_from(((p, s), (rel[1], offset + s)) for s in bounds[p][:-1])
                offset += spaces[p].length  # type: ignore[operator]
        else:  # each small segment to the big segments its blocks cover (several: a cut block)
            _, big, small, k, _node = rel
            for s, e in itertools.pairwise(bounds[small]):
                g.add_edges_from(
                    ((small, s), (big, b)) for b in bounds[big][:-1] if s * k <= b < e * k
                )
    return {frozenset(c) for c in nx.connected_components(g)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channel_graphs())
def test_merged_identities_group_like_the_plain_segment_graph(cg: ChannelGraph) -> None:
    relations = list(cg.relations)
    plain = ChannelGraph(Graph())
    plain.spaces = [type(sp)(None, 0, sp.length, sp.label) for sp in cg.spaces]
    plain.relations = relations
    want = _reference(plain)
    groups, _ = cg.groups()
    sid = {sp.label: i for i, sp in enumerate(cg.spaces)}
    got = {frozenset((sid[s.label], s.start) for s in g.segments) for g in groups}
    assert got == want
    assert [sp.cuts for sp in cg.spaces] == [sp.cuts for sp in plain.spaces]


def test_an_identity_between_spaces_of_different_sizes_locks_both() -> None:
    """``identity`` refuses unequal sizes itself; a relation added past it (a plugin
    writing ``relations`` directly) must not merge them either."""
    cg = ChannelGraph(Graph())
    a, b = cg.virtual("a", 4), cg.virtual("b", 6)
    for sid in (a, b):
        cg.role(sid, "producer", NODE)
    cg.relations.append(("id", a, b))
    groups, _ = cg.groups()
    assert len(groups) == 2
    assert all(any("differ in size" in lock.message for lock in g.locks) for g in groups)


def test_a_cut_inside_an_expanded_block_keeps_only_that_block() -> None:
    """``big`` is ``small`` in blocks of 2, cut at 3 (a split of 3 + 5): entry 1 of
    ``small`` is block [2, 4), which the cut halves, so it stays (its group is locked,
    naming the node); the entries around it still prune with their blocks."""
    cg = ChannelGraph(Graph())
    node = Node("Reshape", "shuffle")
    small, big = cg.virtual("small", 4), cg.virtual("big", 8)
    cg.expand(big, small, 2, node)
    cg.concat(big, [cg.virtual("head", 3), cg.virtual("tail", 5)], NODE)
    for sid in range(len(cg.spaces)):
        cg.role(sid, "producer", NODE)
    groups, _ = cg.groups()
    got = {
        tuple((s.label, s.start, s.block) for s in g.segments if s.label in ("small", "big")): (
            g.size,
            g.locks[0].message if g.locks else None,
        )
        for g in groups
    }
    assert got == {
        (("small", 0, 1), ("big", 0, 2)): (1, None),
        (("small", 1, 1), ("big", 2, 1), ("big", 3, 1)): (
            1,
            "Reshape 'shuffle': a cut inside an expanded block of 'big'",
        ),
        (("small", 2, 1), ("big", 4, 2)): (2, None),
    }


def test_block_factors_stay_whole_when_an_expansion_is_walked_backwards() -> None:
    """From a big segment root, its small side has a third of an entry per root entry: the
    walk starts again with the root scaled, and the units come out whole (3 : 1)."""
    from drpopt.ir.group_maker import _block_factors, _units

    g = nx.Graph([(0, 1), (1, 2)])
    expansions = {(1, 0): 3, (1, 2): 2}  # segment 1 is the small side of both
    factor, consistent = _block_factors([0, 1, 2], g.neighbors, expansions)
    assert consistent and _units(factor) == {0: 3, 1: 1, 2: 2}
    g.add_edge(0, 2)  # a plain tie between blocks of 3 and of 2: inconsistent
    assert not _block_factors([0, 1, 2], g.neighbors, expansions)[1]
