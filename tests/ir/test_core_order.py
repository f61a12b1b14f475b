"""``Graph`` node order: removing a node, or putting one before or after another, waits
and is applied in one linear pass when ``graph.nodes`` is next read (``ir/core.py``). Each
case is checked against the same edits made on a plain list, one by one."""

from __future__ import annotations

import gc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drpopt.ir.core import Graph, gc_paused


def _chain(n: int) -> tuple[Graph, list]:
    g = Graph()
    x = g.value("x", shape=(1, 4), dtype=np.float32)
    g.inputs.append(x)
    nodes = []
    for i in range(n):
        y = g.value(f"y{i}", shape=(1, 4), dtype=np.float32)
        nodes.append(g.add_node("Relu", f"n{i}", [x], [y]))
    return g, nodes


def _names(g: Graph) -> list[str]:
    return [n.name for n in g.nodes]


def test_removals_and_insertions_land_where_the_list_edits_would():
    g, nodes = _chain(6)
    held = g.nodes  # a list read before the edits
    x = g.inputs[0]
    g.remove_node(nodes[1])
    b = g.add_node("Neg", "b", [x], [g.value("b")], before=nodes[3])
    b2 = g.add_node("Neg", "b2", [x], [g.value("b2")], before=nodes[3])  # after b
    g.add_node("Neg", "bb", [x], [g.value("bb")], before=b)  # before a pending node
    g.add_node("Neg", "a", [x], [g.value("a")], after=nodes[4])
    g.add_node("Neg", "a2", [x], [g.value("a2")], after=nodes[4])  # just after n4 too
    g.add_node("Neg", "ab", [x], [g.value("ab")], after=b2)
    g.remove_node(nodes[5])
    g.add_node("Neg", "end", [x], [g.value("end")])
    want = ["n0", "n2", "bb", "b", "b2", "ab", "n3", "n4", "a2", "a", "end"]
    assert _names(g) == want
    assert [n.name for n in held] == want  # updated in place
    assert len(g) == len(want) and [n.name for n in g] == want


def test_a_node_put_next_to_a_removed_node_takes_its_place():
    g, nodes = _chain(3)
    x = g.inputs[0]
    g.add_node("Neg", "new", [x], [g.value("new")], before=nodes[1])
    g.remove_node(nodes[1])
    assert _names(g) == ["n0", "new", "n2"]


def test_every_edit_changes_the_version():
    g, nodes = _chain(2)
    v = g.version
    g.detach(nodes[0])
    assert g.version > v and _names(g) == ["n1"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from("rba"), st.integers(0, 10**6)), max_size=40))
def test_random_edits_match_list_edits(ops):
    g, nodes = _chain(5)
    x = g.inputs[0]
    ref = list(nodes)
    for k, (op, r) in enumerate(ops):
        if not ref:
            break
        anchor = ref[r % len(ref)]
        if op == "r":
            anchor.outputs[0].uses.clear()
            g.remove_node(anchor)
            ref.remove(anchor)
        else:
            kw = {"before": anchor} if op == "b" else {"after": anchor}
            new = g.add_node("Neg", f"m{k}", [x], [g.value(f"m{k}")], **kw)
            ref.insert(ref.index(anchor) + (op == "a"), new)
        if r % 7 == 0:  # read in between now and then
            assert g.nodes == ref
    assert g.nodes == ref


def test_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()
