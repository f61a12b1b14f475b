"""The framework-neutral graph: Graph, Node and Value with def-use kept by the IR.

No protobuf and no torch here: frontends (``from_onnx``, later ``from_fx``) build this IR and
``to_onnx`` writes it back. ``Graph.version`` changes on every mutation made through the
methods here (and on every write of a constant the graph owns), so cached analyses
(``passes/analyses.py``) can tell when they no longer describe the graph.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str | None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off for the block (and back as it was after). Loading,
    analysing and transforming a graph make many small long-lived objects and little
    cyclic garbage; every full collection walks all of them again, which made those steps
    superlinear in the graph's size (a mask pass on a 40k-node graph: 4.9 s with
    collections, 0.85 s without). What cyclic garbage the block leaves is collected after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(eq=False)
class Value:
    """A tensor flowing through the graph.

    ``shape`` holds ints for known dims, strings for symbolic ones (``"batch"``) and None for
    unknown ones; ``shape`` itself is None when even the rank is unknown. ``const`` holds the
    data of initializers and Constant outputs.
    """

    name: str
    shape: tuple[Dim, ...] | None = None
    dtype: np.dtype | None = None
    const: np.ndarray | None = None
    producer: Node | None = None
    uses: list[tuple[Node, int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_const(self) -> bool:
        """Whether the value is a constant (without reading a lazily loaded weight)."""
        d = self.__dict__
        return d.get("_const") is not None or d.get("_lazy") is not None

    @property
    def storage(self) -> int:
        """What makes constants one tensor: the same array, or the same weight not read
        yet (values un-shared on load, and Identity outputs of a constant, share it)."""
        d = self.__dict__
        token = d.get("_token")  # set on load, shared by share_const: stable once read
        if token is not None:
            return id(token)
        lazy = d.get("_lazy")
        return id(lazy) if lazy is not None else id(d.get("_const"))

    def set_lazy(self, loader: Any) -> None:
        """Makes the value a constant whose array ``loader()`` makes on first read (weights
        stay in the loaded model until a pass reads or changes them). A loader with an
        ``origin`` attribute (the tensor it reads: ``ir/from_onnx_ir.py``) makes that the
        value's ``origin``."""
        self.__dict__["_const"] = None
        self.__dict__["_lazy"] = loader
        self.__dict__["_token"] = loader if hasattr(loader, "origin") else object()
        self._touch_owner()

    @property
    def origin(self) -> Any:
        """The ``origin`` of the loader the constant came from (``set_lazy``), while the value
        holds that constant, read or not (shared and un-shared copies too); None once a
        constant was assigned, or when the loader named none."""
        return getattr(self.__dict__.get("_token"), "origin", None)

    def peek_const(self) -> np.ndarray | None:
        """The constant, without keeping a lazily loaded weight: one not read yet is read
        and handed over, not stored (a count over every weight holds one at a time)."""
        d = self.__dict__
        const = d.get("_const")
        if const is None and d.get("_lazy") is not None:
            return d["_lazy"]()
        return const

    def share_const(self, other: Value) -> None:
        """Holds the same constant as ``other`` (loaded or not): no copy."""
        self.__dict__["_const"] = other.__dict__.get("_const")
        self.__dict__["_lazy"] = other.__dict__.get("_lazy")
        self.__dict__["_token"] = other.__dict__.get("_token")
        self._touch_owner()

    def _touch_owner(self) -> None:
        ref = self.__dict__.get("_graph")
        owner = ref() if ref is not None else None
        if owner is not None:
            owner.touch()

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def dim(self, axis: int) -> Dim:
        """The size of ``axis`` (negative axes count from the end); None when unknown."""
        if self.shape is None:
            return None
        return self.shape[axis]

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape when every dim is a known int, else None."""
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return tuple(self.shape)  # type: ignore[arg-type]

    @property
    def numel(self) -> int | None:
        shape = self.static_shape
        return None if shape is None else math.prod(shape)

    def __repr__(self) -> str:
        return f"Value({self.name!r}, shape={self.shape})"


def _get_const(self: Value) -> np.ndarray | None:
    d = self.__dict__
    const = d.get("_const")
    if const is None and d.get("_lazy") is not None:
        const = d["_const"] = d["_lazy"]()
        d["_lazy"] = None
    return const


def _set_const(self: Value, array: np.ndarray | None) -> None:
    d = self.__dict__
    d["_const"] = array
    d["_lazy"] = None
    d["_token"] = None
    ref = d.get("_graph")
    owner = ref() if ref is not None else None
    if owner is not None:
        owner.touch()


# ``const`` reads a lazily loaded weight on first use (the dataclass field stays the
# constructor argument; the property replaces its class default)
Value.const = property(_get_const, _set_const)  # type: ignore[assignment]


@dataclass(eq=False)
class Node:
    """One operator application. ``inputs`` may hold None for omitted optional inputs."""

    op_type: str
    name: str
    inputs: list[Value | None] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    subgraphs: dict[str, Graph | list[Graph]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def input(self, i: int) -> Value | None:
        """Input ``i``, or None when absent or omitted."""
        return self.inputs[i] if i < len(self.inputs) else None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def __repr__(self) -> str:
        return f"Node({self.op_type}, {self.name!r})"


def _show(field: Any) -> str:
    """A field of a value for an error message (a constant by its shape, not its data)."""
    if isinstance(field, np.ndarray):
        return f"an array of shape {field.shape}"
    return "none" if field is None else repr(field)


def _contradiction(v: Value, key: str, have: str, given: str) -> None:
    raise ValueError(
        f"value {v.name!r} already exists with {key} {have} and is asked for again with "
        f"{key} {given}: a name is one value (a new value needs a fresh name)"
    )


class Graph:
    """An ordered list of nodes (topological in a well-formed model) with its values.

    Values are unique by name. Def-use links (``value.producer``, ``value.uses``) are kept
    up to date by the methods here; mutate through them, not by editing lists directly.
    ``version`` increases on every such mutation and on every write of the constant of a
    value made by ``value()``; code that edits fields directly (shapes, attributes) calls
    ``touch()`` (a pass that reports ``modified`` is touched for it).
    """

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self._nodes: list[Node] = []
        # node-order edits not applied to ``_nodes`` yet (see ``nodes``): removed nodes, and
        # nodes to go just before / after an anchor node, in the order they were added
        self._removed: dict[int, Node] = {}  # held: a freed node's id could be reused
        self._before: dict[int, list[Node]] = {}
        self._after: dict[int, list[Node]] = {}
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.values: dict[str, Value] = {}
        self.opsets: dict[str, int] = {}
        self.metadata: dict[str, str] = {}
        self.functions: list[Any] = []  # model-local functions (onnx.FunctionProto), kept
        self.meta: dict[str, Any] = {}
        self._version = 0
        self._ref = weakref.ref(self)  # what its values point back with (not keeping it alive)

    @property
    def nodes(self) -> list[Node]:
        """The nodes in order. Removing a node or putting one before or after another is
        O(1): the edits wait and are applied to the list in one linear pass when the list is
        next read (a pass that removes many nodes costs linear time, not quadratic)."""
        if self._removed or self._before or self._after:
            self._apply_order_edits()
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: list[Node]) -> None:
        self._nodes = nodes
        self._removed, self._before, self._after = {}, {}, {}

    def _apply_order_edits(self) -> None:
        removed, before, after = self._removed, self._before, self._after
        out: list[Node] = []

        def emit(node: Node) -> None:  # iterative: an anchor chain can be long
            stack = [(node, 0)]
            while stack:
                n, stage = stack.pop()
                if stage == 0:
                    stack.append((n, 1))
                    stack.extend((m, 0) for m in reversed(before.pop(id(n), ())))
                elif stage == 1:
                    if id(n) not in removed:
                        out.append(n)
                    # the last put after ``n`` is just after it, as ``list.insert`` puts it
                    stack.extend((m, 0) for m in after.pop(id(n), ()))

        for node in self._nodes:
            emit(node)
        if before or after:  # an anchor that is in no list: the graph was edited wrongly
            raise ValueError("a node was put before or after a node that is not in the graph")
        self._nodes[:] = out  # in place: a list read before the edits sees them too
        removed.clear()

    def detach(self, node: Node) -> None:
        """Takes ``node`` out of the node order (O(1)); its edges are the caller's business
        (``remove_node`` keeps them right)."""
        self._removed[id(node)] = node
        self._version += 1

    @property
    def version(self) -> int:
        """A counter that every mutation increases (what cached analyses are stamped with)."""
        return self._version

    def touch(self) -> None:
        """Marks the graph changed: analyses computed before no longer describe it."""
        self._version += 1

    # ---- construction ---------------------------------------------------------------
    def value(self, name: str, **kwargs: Any) -> Value:
        """The value called ``name``, created on first use (kwargs set its fields then).

        Asking for an existing name with fields (``kwargs``) is a statement about that
        value: a ``shape`` or ``dtype`` it does not know yet is filled in, one that
        contradicts what it has raises ``ValueError``, and so does any other field (a
        ``const`` above all) that differs; use ``fresh_name`` for a new value."""
        v = self.values.get(name)
        if v is None:
            v = Value(name, **kwargs)
            v.__dict__["_graph"] = self._ref  # its constant's writes change this graph's version
            self.values[name] = v
            self._version += 1
        elif kwargs:
            self._agree(v, kwargs)
        return v

    def _agree(self, v: Value, fields: dict[str, Any]) -> None:
        """Fills ``v``'s unknown shape or dtype from ``fields``; raises ``ValueError`` when
        a field contradicts ``v`` (a constant counts as the same only if it is the same
        array object: arrays are not compared, lazy weights not read)."""
        for key, given in fields.items():
            if key == "const":
                if given is not v.__dict__.get("_const") or (given is None and v.is_const):
                    have = "a constant" if v.is_const else "no constant"
                    _contradiction(v, key, have, _show(given))
                continue
            if key == "shape" and given is not None:
                given = tuple(given)
            elif key == "dtype" and given is not None:
                given = np.dtype(given)
            have = getattr(v, key)
            if key in ("shape", "dtype") and (have is None or given is None):
                if have is None and given is not None:
                    setattr(v, key, given)
                    self._version += 1
                continue
            if have != given:
                _contradiction(v, key, _show(have), _show(given))

    def add_node(
        self,
        op_type: str,
        name: str,
        inputs: Iterable[Value | None],
        outputs: Iterable[Value],
        attrs: dict[str, Any] | None = None,
        domain: str = "",
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Appends a node (or puts it just before ``before`` or just after ``after``, so the
        order stays topological when it replaces or feeds that node) and links its def-use
        edges; O(1) either way (see ``nodes``)."""
        node = Node(op_type, name, list(inputs), list(outputs), dict(attrs or {}), domain)
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses.append((node, i))
        for v in node.outputs:
            v.producer = node
        if before is not None:
            self._before.setdefault(id(before), []).append(node)
        elif after is not None:
            self._after.setdefault(id(after), []).append(node)
        else:  # pending edits keep their anchors: appending needs none of them applied
            self._nodes.append(node)
        self._version += 1
        return node

    # ---- queries --------------------------------------------------------------------
    @property
    def initializers(self) -> list[Value]:
        """Constant values that no node produces (ONNX initializers)."""
        return [v for v in self.values.values() if v.const is not None and v.producer is None]

    def uses(self, value: Value) -> list[tuple[Node, int]]:
        return list(value.uses)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    # ---- mutation -------------------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Points every consumer of ``old`` (graph outputs included) at ``new``."""
        for node, i in old.uses:
            if i == -1:  # read inside a subgraph: those reads are uses of their own
                captured = node.meta.get("captured", [])
                node.meta["captured"] = [new if v is old else v for v in captured]
            else:
                node.inputs[i] = new
            new.uses.append((node, i))
        old.uses.clear()
        self.outputs = [new if v is old else v for v in self.outputs]
        self._version += 1

    def materialize(self, value: Value) -> None:
        """Turns a constant computed by a node (Identity or Cast of a constant) into an
        initializer of its own, so it can change without touching its source."""
        node = value.producer
        if node is None:
            return
        if value.const is None or len(node.outputs) != 1:
            raise ValueError(f"value {value.name!r} is not a folded constant")
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses = [(n, j) for n, j in v.uses if not (n is node and j == i)]
        self._removed[id(node)] = node
        value.producer = None
        self._version += 1

    def fresh_name(self, base: str) -> str:
        """A value name not used yet, derived from ``base``."""
        if base not in self.values:
            return base
        i = 1
        while f"{base}_{i}" in self.values:
            i += 1
        return f"{base}_{i}"

    def set_const_input(self, node: Node, index: int, array: np.ndarray) -> Value:
        """Gives ``node`` a constant input ``array`` at ``index``: changed in place when only
        this node uses the old constant, else as a new initializer (others keep theirs)."""
        old = node.input(index)
        only_here = old is not None and all(n is node for n, _ in old.uses)
        if only_here and old.const is not None and old.producer is None and old not in self.outputs:
            old.const = array
            old.shape, old.dtype = tuple(array.shape), array.dtype
            return old
        new = self.value(
            self.fresh_name(f"{node.name}.input{index}"),
            const=array,
            shape=tuple(array.shape),
            dtype=array.dtype,
        )
        self.set_input(node, index, new)
        return new

    def remove_node(self, node: Node) -> None:
        """Removes ``node``; its outputs must be unused (raise ValueError otherwise)."""
        for v in node.outputs:
            if v.uses or v in self.outputs:
                raise ValueError(
                    f"cannot remove node {node.name!r}: output {v.name!r} is still used"
                )
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses = [(n, j) for n, j in v.uses if not (n is node and j == i)]
                unread = not v.uses and v.producer is None
                if unread and v not in self.inputs and v not in self.outputs:
                    self.values.pop(v.name, None)  # an initializer nothing reads now
        for v in node.outputs:
            v.producer = None
            self.values.pop(v.name, None)
        self._removed[id(node)] = node
        self._version += 1

    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        """Points input ``index`` of ``node`` at ``value``, keeping the use lists right."""
        while len(node.inputs) <= index:
            node.inputs.append(None)
        old = node.inputs[index]
        if old is not None:
            old.uses = [(n, j) for n, j in old.uses if not (n is node and j == index)]
        node.inputs[index] = value
        if value is not None:
            value.uses.append((node, index))
        self._version += 1
