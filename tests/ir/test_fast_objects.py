"""The analysis makes its most numerous objects without the dataclass constructors
(``channels.new_space`` / ``new_lock`` for every axis a rule names or leaves,
``from_onnx.new_value`` / ``new_node`` for every node read): they must make the same
objects, field for field, whatever fields the classes gain."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from drpopt.ir.channels import Lock, Space, new_lock, new_space
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.from_onnx import new_node, new_value


def test_new_space_is_the_dataclass_space() -> None:
    v = Value("x", shape=(1, 8))
    made, plain = new_space(v, 1, 8, "x[1]"), Space(v, 1, 8, "x[1]")
    assert made == plain and vars(made) == vars(plain)
    assert list(vars(made)) == [f.name for f in dataclasses.fields(Space)]
    # fresh containers for each space, as the default factories make them
    other = new_space(v, 1, 8, "x[1]")
    assert made.cuts is not other.cuts and made.locks is not other.locks
    assert made.roles is not other.roles


def test_new_lock_is_the_dataclass_lock() -> None:
    made, plain = new_lock("rule", "why", "n", "Conv"), Lock("rule", "why", "n", "Conv")
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert list(vars(made)) == [f.name for f in dataclasses.fields(Lock)]
    assert new_lock("rule", "why") == Lock("rule", "why")
    assert pickle.loads(pickle.dumps(made)) == plain
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.kind = "other"  # type: ignore[misc]  # a lock made directly stays frozen


def test_new_value_is_what_graph_value_makes() -> None:
    graph = Graph()
    plain = graph.value("y")
    made = new_value("y", graph._ref)
    assert vars(made).keys() == vars(plain).keys()
    assert {k: v for k, v in vars(made).items() if k != "_graph"} == {
        k: v for k, v in vars(plain).items() if k != "_graph"
    }
    assert made.__dict__["_graph"] is plain.__dict__["_graph"]
    assert made.uses is not new_value("y", graph._ref).uses
    assert not made.is_const and made.const is None and made.rank is None


def test_new_node_is_the_dataclass_node() -> None:
    x, y = Value("x"), Value("y")
    plain = Node("Relu", "r", [x], [y], {"a": 1}, "")
    made = new_node("Relu", "r", [x], [y], {"a": 1}, "")
    assert vars(made) == vars(plain)
    assert list(vars(made)) == [f.name for f in dataclasses.fields(Node)]
    assert made.meta is not new_node("Relu", "r", [], [], {}, "").meta
