"""The channel dependency graph and the coupled channel groups.

A *channel space* is one axis of one value, ``(value, axis)``, or a virtual space a rule
makes (the conv groups of a grouped convolution, the channels a Slice drops). Coupling
rules (``ir/rules.py``, one table keyed by op type) relate spaces in three ways:

- ``identity(a, b)``: channel i of ``a`` is channel i of ``b`` (elementwise ops, BN, ...);
- ``concat(out, parts)``: ``out`` is the parts one after another (Concat, Split, Slice);
- ``expand(big, small, k)``: element i of ``small`` is the block ``[i*k, (i+1)*k)`` of
  ``big`` (Flatten into a Gemm, depthwise channel multipliers, grouped convs).

Spaces are cut into atomic segments wherever a concat boundary falls (propagated to a
fixpoint through every relation; spaces an identity ties share their segments), the
segments become the nodes of a ``networkx`` graph, and its connected components are the
coupled groups. Inside a group every segment maps
group channel ``j`` to the block ``[start + j*block, start + (j+1)*block)`` of its space.

Anything a rule cannot vouch for is *locked*: the lock travels with the component, so a
group is never silently wrong, only (conservatively) not prunable, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from drpopt.ir import solve as _solve
from drpopt.ir.channel_types import ROLE_RANK, Group, Lock, Member, Segment, Space
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.shape_expr import NumericMemo

__all__ = ["ROLE_RANK", "ChannelGraph", "Group", "Lock", "Member", "Segment", "Space"]


class ChannelGraph:
    """Builds the relations between channel spaces; ``rules`` call the methods below."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.spaces: list[Space] = []
        self._index: dict[tuple[Value, int], int] = {}  # keyed by the IR value, not its name
        self.relations: list[tuple] = []
        self.unsupported: list[Node] = []
        self.locked_values: dict[Value, Lock] = {}
        self.shape_memo: dict = {}  # shape_entries results, shared by every rule
        self.numeric_memo: dict = NumericMemo()  # shape_values results, likewise
        # (value, axis) a rule mentioned while it ran, for the central default lock
        self.touched: set[tuple[Value, int]] = set()
        # locks for spaces that may not exist (yet): attached when groups are built
        self.pending_locks: dict[tuple[Value, int], Lock] = {}
        # reshape splits/merges, each keyed by (node, the value of its several axes, the
        # first of them): the level each maps at (set by the analysis), and the mappings
        # made, as (key, value, axis carrying the channels, level, axes)
        self.reshape_levels: dict[tuple[Node, Value, int], int] = {}
        self.splits: list[tuple[tuple[Node, Value, int], Value, int, int, int]] = []
        # (group, its segment ids) as solving made them (see ``group_at``)
        self.group_segments: list[tuple[Group, list[int]]] = []
        # components nothing produces that a weight reads (locked, not groups): see solve
        self.unproduced: list[Group] = []
        # the analysis' count: ``counting.member_spans`` of each prunable group, by id
        self.member_spans: dict[int, tuple] = {}

    # ---- API for rules --------------------------------------------------------------
    def space(self, value: Value, axis: int) -> int | None:
        """The id of ``(value, axis)``; None for size-1 axes (nothing to prune or couple)."""
        shape = value.shape  # (this runs for every axis a rule mentions: kept lean)
        if shape is None:
            return None
        if axis < 0:
            axis += len(shape)
        key = (value, axis)
        self.touched.add(key)
        sid = self._index.get(key)
        if sid is not None:
            return sid
        dim = shape[axis]
        if dim == 1 or dim == 0:
            return None
        length = dim if isinstance(dim, int) else None
        sid = len(self.spaces)
        self.spaces.append(Space(value, axis, length, f"{value.name}[{axis}]"))
        self._index[key] = sid
        if length is None:
            self.spaces[sid].locks.append(
                Lock("unknown-size", f"size of axis {axis} of '{value.name}' is not static")
            )
        return sid

    def virtual(self, label: str, length: int) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(None, 0, length, label))
        return sid

    def identity(self, a: int | None, b: int | None, node: Node) -> None:
        if a is None or b is None or a == b:
            if (a is None) != (b is None):
                # one side has size 1 where the other does not: a broadcast the rule missed
                self._lock_pair(a, b, node, "sizes differ across the op")
            return
        la, lb = self.spaces[a].length, self.spaces[b].length
        if la is None and lb is None:
            return  # both locked already as of unknown size (``space``), neither can map
        if la is None or lb is None or la != lb:
            self._lock_pair(a, b, node, f"sizes {la} and {lb} differ across the op")
            return
        self.relations.append(("id", a, b))

    def concat(self, out: int | None, parts: list[int | None], node: Node) -> None:
        lens = [None if p is None else self.spaces[p].length for p in parts]
        if out is None:
            if any(p is not None for p in parts):
                self._lock_all([p for p in parts if p is not None], node, "cannot map parts")
            return
        total = self.spaces[out].length
        if any(p is None for p in parts) or total is None or None in lens or sum(lens) != total:
            self._lock_all([out, *[p for p in parts if p is not None]], node, "part sizes unknown")
            return
        self.relations.append(("cat", out, list(parts)))

    def expand(self, big: int | None, small: int | None, k: int, node: Node) -> None:
        if k == 1:
            self.identity(big, small, node)
            return
        if big is None or small is None:
            self._lock_pair(big, small, node, "cannot map blocks")
            return
        lb, ls = self.spaces[big].length, self.spaces[small].length
        if lb is None or ls is None or lb != ls * k:
            self._lock_pair(big, small, node, f"block sizes do not match ({lb} vs {ls}x{k})")
            return
        self.relations.append(("exp", big, small, k, node))

    def independent(self, value: Value | None, axes=None) -> None:
        """Declares that the current node neither couples nor constrains these axes of
        ``value`` (all axes when ``axes`` is None): a Shape reads only metadata."""
        if value is None or value.shape is None:
            return
        rank = len(value.shape)
        self.touched.update((value, ax % rank) for ax in (range(rank) if axes is None else axes))

    def lock_untouched(self, node: Node) -> None:
        """Locks every axis of the node's inputs and outputs that its rule neither related
        nor declared independent (a rule that forgets an axis never leaves it free)."""
        touched, locked = self.touched, self.locked_values
        for v in (*node.inputs, *node.outputs):
            if v is None or v.shape is None or v in locked:
                continue
            for ax, dim in enumerate(v.shape):
                if dim == 1:
                    continue
                key = (v, ax)
                if key in touched:
                    continue
                lock = Lock(
                    "rule",
                    f"{node.op_type} '{node.name}': its rule does not say how axis {ax} of "
                    f"'{v.name}' maps",
                    node.name,
                    node.op_type,
                )
                sid = self._index.get(key)
                if sid is not None:
                    self.spaces[sid].locks.append(lock)
                else:
                    self.pending_locks.setdefault(key, lock)
        touched.clear()

    def lock(self, sid: int | None, kind: str, message: str, node: Node | None = None) -> None:
        if sid is not None:
            self.spaces[sid].locks.append(
                Lock(kind, message, node.name if node else None, node.op_type if node else None)
            )

    def lock_value(self, value: Value | None, kind: str, message: str, node: Node | None = None):
        """Locks every axis of ``value`` (also axes whose spaces are made later)."""
        if value is None:
            return
        lock = Lock(kind, message, node.name if node else None, node.op_type if node else None)
        if value.rank is None:
            self.locked_values.setdefault(value, lock)
            return
        for axis in range(value.rank):
            sid = self.space(value, axis)
            if sid is not None:
                self.spaces[sid].locks.append(lock)

    def role(self, sid: int | None, role: str, node: Node, attr: str | None = None) -> None:
        if sid is not None:
            self.spaces[sid].roles.append((role, node.name, attr))

    def _lock_pair(self, a: int | None, b: int | None, node: Node, why: str) -> None:
        self._lock_all([s for s in (a, b) if s is not None], node, why)

    def _lock_all(self, sids: list[int], node: Node, why: str) -> None:
        # one (frozen) Lock for all the spaces: an elementwise op between feature maps of
        # unknown size locks thousands of pairs
        lock = Lock("mismatch", f"{node.op_type} '{node.name}': {why}", node.name, node.op_type)
        spaces = self.spaces
        for s in sids:
            spaces[s].locks.append(lock)

    # ---- solving (ir/solve.py) --------------------------------------------------------
    def groups(self) -> tuple[list[Group], nx.Graph]:
        """The groups, and the networkx segment graph they are the components of (the
        segments an edge relates; any other segment is a component of its own)."""
        return _solve.solve(self)

    def group_at(self) -> Callable[[Value, int], Group | None]:
        """After ``groups()``: ``(value, axis) -> group``, answered as a lookup over the
        segments of every group would (the last group, by id, holding a segment of that
        space), from the segment ids solving gave each group: no group's ``segments`` are
        made (the analysis asks this for a few reshaped axes only)."""
        by_segment: dict[int, Group] = {}
        for grp, segs in self.group_segments:
            by_segment.update(dict.fromkeys(segs, grp))
        index, spaces = self._index, self.spaces

        def at(value: Value, axis: int) -> Group | None:
            sid = index.get((value, axis))
            if sid is None:
                return None
            sp = spaces[sid]
            first = sp.seg0
            count = len(sp.cuts) + 1 if sp.length else 1
            found = [by_segment[s] for s in range(first, first + count) if s in by_segment]
            return max(found, key=_group_id) if found else None

        return at


def _group_id(group: Group) -> int:
    return group.id
