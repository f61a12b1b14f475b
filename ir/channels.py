"""The channel dependency graph and the coupled channel groups.

A *channel space* is one axis of one value, ``(value, axis)``, or a virtual space a rule
makes (the conv groups of a grouped convolution, the channels a Slice drops). Coupling
rules (``ir/rules.py``, one table keyed by op type) relate spaces in three ways:

- ``identity(a, b)``: channel i of ``a`` is channel i of ``b`` (elementwise ops, BN, ...);
- ``concat(out, parts)``: ``out`` is the parts one after another (Concat, Split, Slice);
- ``expand(big, small, k)``: element i of ``small`` is the block ``[i*k, (i+1)*k)`` of
  ``big`` (Flatten into a Gemm, depthwise channel multipliers, grouped convs).

Spaces are cut into atomic segments wherever a concat boundary falls (propagated to a
fixpoint through every relation), the segments become the nodes of a ``networkx`` graph,
and its connected components are the coupled groups. Inside a group every segment maps
group channel ``j`` to the block ``[start + j*block, start + (j+1)*block)`` of its space.

Anything a rule cannot vouch for is *locked*: the lock travels with the component, so a
group is never silently wrong, only (conservatively) not prunable, with the reason.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import networkx as nx

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.shape_expr import NumericMemo

ROLE_RANK = {"producer": 0, "consumer": 1, "follower": 2, "structure": 3, "param": 4}


@dataclass(frozen=True)
class Lock:
    """Why a channel space may not be pruned. ``kind`` is a stable keyword for tooling."""

    kind: str
    message: str
    node: str | None = None
    op: str | None = None


@dataclass
class Member:
    """One slice that a group's channels index: group channel ``j`` is the block
    ``[start + j*block, start + (j+1)*block)`` of ``axis`` of ``tensor`` (a weight or other
    constant), or of the attribute ``attr`` of ``node`` (``tensor`` is None then)."""

    role: str
    node: str | None
    tensor: str | None
    axis: int
    start: int
    block: int
    length: int
    attr: str | None = None

    def indices(self, channels: list[int] | range) -> list[int]:
        """The tensor indices along ``axis`` that the given group channels cover."""
        return [self.start + j * self.block + r for j in channels for r in range(self.block)]


class Segment(NamedTuple):
    """One piece of a channel space in a group: group channel ``j`` is the block
    ``[start + j*block, start + (j+1)*block)`` of ``axis`` of ``value`` (or of the virtual
    space ``label`` when ``value`` is None: conv groups, channels a Slice drops)."""

    value: str | None
    axis: int
    start: int
    block: int
    label: str
    space_length: int


@dataclass
class Space:
    value: Value | None
    axis: int
    length: int | None
    label: str
    cuts: set[int] = field(default_factory=set)
    locks: list[Lock] = field(default_factory=list)
    roles: list[tuple[str, str, str | None]] = field(default_factory=list)  # role, node, attr
    seg0: int = 0  # index of its first segment in the segment table


@dataclass
class Group:
    """A set of channels that must be pruned together."""

    id: int
    size: int
    members: list[Member]
    locks: list[Lock]
    prunable: bool = True
    reason: str | None = None
    params: int = 0
    macs: int = 0
    order: int = 0  # position of its first producer in the graph, for stable numbering
    segments: list[Segment] = field(default_factory=list, repr=False)

    @property
    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.node for m in self.members if m.role == "producer" and m.node))


class ChannelGraph:
    """Builds the relations between channel spaces; ``rules`` call the methods below."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.spaces: list[Space] = []
        self._index: dict[tuple[str, int], int] = {}
        self.relations: list[tuple] = []
        self.unsupported: list[Node] = []
        self.locked_values: dict[str, Lock] = {}
        self.shape_memo: dict = {}  # shape_entries results, shared by every rule
        self.numeric_memo: dict = NumericMemo()  # shape_values results, likewise
        # (value name, axis) a rule mentioned while it ran, for the central default lock
        self.touched: set[tuple[str, int]] = set()
        # locks for spaces that may not exist (yet): attached when groups are built
        self.pending_locks: dict[tuple[str, int], Lock] = {}
        # reshape splits/merges: the level each maps at (set by the analysis), and the
        # mappings made, as (node, value, axis carrying the channels, level, axes)
        self.reshape_levels: dict[Node, int] = {}
        self.splits: list[tuple[Node, Value, int, int, int]] = []

    # ---- API for rules --------------------------------------------------------------
    def space(self, value: Value, axis: int) -> int | None:
        """The id of ``(value, axis)``; None for size-1 axes (nothing to prune or couple)."""
        rank = value.rank
        if rank is None:
            return None
        if axis < 0:
            axis += rank
        key = (value.name, axis)
        self.touched.add(key)
        sid = self._index.get(key)
        if sid is not None:
            return sid
        dim = value.shape[axis]  # type: ignore[index]
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
        self.relations.append(("exp", big, small, k))

    def independent(self, value: Value | None, axes=None) -> None:
        """Declares that the current node neither couples nor constrains these axes of
        ``value`` (all axes when ``axes`` is None): a Shape reads only metadata."""
        if value is None or value.rank is None:
            return
        for ax in range(value.rank) if axes is None else axes:
            self.touched.add((value.name, ax % value.rank))

    def lock_untouched(self, node: Node) -> None:
        """Locks every axis of the node's inputs and outputs that its rule neither related
        nor declared independent (a rule that forgets an axis never leaves it free)."""
        touched = self.touched
        for v in (*node.inputs, *node.outputs):
            if v is None or v.rank is None or v.name in self.locked_values:
                continue
            for ax in range(v.rank):
                key = (v.name, ax)
                if key in touched or v.shape[ax] == 1:  # type: ignore[index]
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
            self.locked_values.setdefault(value.name, lock)
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
        for s in sids:
            self.lock(s, "mismatch", f"{node.op_type} '{node.name}': {why}", node)

    # ---- solving --------------------------------------------------------------------
    def propagate_cuts(self) -> None:
        """Cuts every space at each boundary any related space has, to a fixpoint."""
        touching: dict[int, list[int]] = {}
        for ri, rel in enumerate(self.relations):
            for sid in _rel_spaces(rel):
                touching.setdefault(sid, []).append(ri)
        # every space starts uncut, so only a concat can make the first cuts; the others
        # join the queue when a space they touch changes
        queued = [rel[0] == "cat" for rel in self.relations]
        queue = deque(ri for ri, q in enumerate(queued) if q)
        spaces = self.spaces
        while queue:
            ri = queue.popleft()
            queued[ri] = False
            for sid in self._apply(self.relations[ri], spaces):
                for rj in touching.get(sid, ()):
                    if not queued[rj]:
                        queued[rj] = True
                        queue.append(rj)

    @staticmethod
    def _apply(rel: tuple, spaces: list[Space]) -> list[int]:
        """Makes the cuts of one relation consistent; returns the spaces that changed."""
        changed: list[int] = []

        def add(sid: int, new: set[int]) -> None:
            sp = spaces[sid]
            new = {c for c in new if 0 < c < sp.length} - sp.cuts  # type: ignore[operator]
            if new:
                sp.cuts |= new
                changed.append(sid)

        kind = rel[0]
        if kind == "id":
            _, a, b = rel
            add(a, spaces[b].cuts)
            add(b, spaces[a].cuts)
        elif kind == "cat":
            _, out, parts = rel
            offset = 0
            want: set[int] = set()
            for p in parts:
                length = spaces[p].length
                want.add(offset)
                want |= {offset + c for c in spaces[p].cuts}
                add(p, {c - offset for c in spaces[out].cuts if offset < c < offset + length})
                offset += length
            add(out, want)
        else:
            _, big, small, k = rel
            add(big, {c * k for c in spaces[small].cuts})
            add(small, {c // k for c in spaces[big].cuts if c % k == 0})
        return changed

    def groups(self) -> tuple[list[Group], nx.Graph]:
        """Segments, the networkx segment graph, and its components as groups."""
        self.propagate_cuts()
        seg_space: list[int] = []
        seg_start: list[int] = []
        seg_len: list[int] = []
        bounds: list[list[int]] = []
        for sid, sp in enumerate(self.spaces):
            sp.seg0 = len(seg_space)
            length = sp.length or 0
            b = [0, *sorted(sp.cuts), length] if length else [0, 0]
            bounds.append(b)
            for s, e in itertools.pairwise(b):
                seg_space.append(sid)
                seg_start.append(s)
                seg_len.append(e - s)

        g = nx.Graph()
        g.add_nodes_from(range(len(seg_space)))
        edges: list[tuple[int, int]] = []
        # expansion edges only: (small segment, big segment) -> entries per small entry
        self.expansions: dict[tuple[int, int], int] = {}
        bad_expand: set[int] = set()
        spaces = self.spaces
        for rel in self.relations:
            kind = rel[0]
            if kind == "id":
                _, a, b = rel
                sa, sb = spaces[a].seg0, spaces[b].seg0
                n = len(bounds[a]) - 1
                if n == 1:
                    edges.append((sa, sb))
                else:
                    edges.extend(zip(range(sa, sa + n), range(sb, sb + n), strict=True))
            elif kind == "cat":
                _, out, parts = rel
                j = spaces[out].seg0
                for p in parts:
                    sp0 = spaces[p].seg0
                    n = len(bounds[p]) - 1
                    edges.extend(zip(range(sp0, sp0 + n), range(j, j + n), strict=True))
                    j += n
            else:
                _, big, small, k = rel
                if any(c % k for c in spaces[big].cuts):
                    bad_expand.update((big, small))
                    continue
                sb, ss = spaces[big].seg0, spaces[small].seg0
                for j in range(len(bounds[small]) - 1):
                    edges.append((ss + j, sb + j))
                    self.expansions[(ss + j, sb + j)] = k
        g.add_edges_from(edges)
        for sid in bad_expand:
            self.spaces[sid].locks.append(
                Lock("mismatch", f"a cut inside an expanded block of '{self.spaces[sid].label}'")
            )
        if self.locked_values or self.pending_locks:
            for key, sid in self._index.items():
                if key[0] in self.locked_values:
                    self.spaces[sid].locks.append(self.locked_values[key[0]])
                if key in self.pending_locks:
                    self.spaces[sid].locks.append(self.pending_locks[key])

        groups: list[Group] = []
        info = _SpaceInfo(self)
        exp_segs = {s for pair in self.expansions for s in pair}
        # components in the order networkx gives them; a lone segment (most attention and
        # shape axes) is a group only when something produces it, which is checked first
        seen = bytearray(len(seg_space))
        adj = g.adj
        for s in range(len(seg_space)):
            if seen[s]:
                continue
            if not adj[s]:
                if not info.produced[seg_space[s]]:
                    continue
                comp = {s}
            else:
                comp = nx.node_connected_component(g, s)
                for t in comp:
                    seen[t] = 1
            group = self._make_group(comp, g, seg_space, seg_start, seg_len, info, exp_segs)
            if group is not None:
                groups.append(group)
        groups.sort(key=lambda gr: gr.order)
        for i, gr in enumerate(groups):
            gr.id = i
        return groups, g

    def _make_group(self, comp, g, seg_space, seg_start, seg_len, info, exp_segs):
        produced = info.produced
        if not any(produced[seg_space[s]] for s in comp):
            return None
        spaces = self.spaces
        by_space: dict[int, list[int]] = {}
        for s in sorted(comp):
            by_space.setdefault(seg_space[s], []).append(s)
        consistent = True
        if exp_segs.isdisjoint(comp):
            norm: dict[int, int] | None = dict.fromkeys(comp, 1)
        else:
            # block factor of every segment relative to one root, by BFS over the edges
            factor, consistent = _block_factors(comp, g, self.expansions)
            norm = _units(factor)
        sizes = {seg_len[s] // norm[s] for s in comp} if norm else set()
        if norm is None or any(seg_len[s] % norm[s] for s in comp) or len(sizes) != 1:
            consistent = False
        locks: list[Lock] = []
        if not consistent:
            # a locked group: let every member cover its whole segment so counts stay true
            locks.append(Lock("mismatch", "channels map to each other inconsistently"))
            norm = dict.fromkeys(comp, 1)
        size = max(seg_len[s] // norm[s] for s in comp)  # type: ignore[index]
        members: list[Member] = []
        segments: list[Segment] = []
        order = None
        for sid, segs in by_space.items():
            sp = spaces[sid]
            locks.extend(sp.locks)
            roles = info.roles(sid)
            name = sp.value.name if sp.value is not None else None
            segments.extend(
                Segment(name, sp.axis, seg_start[s], norm[s], sp.label, sp.length or 0)  # type: ignore[index]
                for s in segs
            )
            if sp.value is None:
                members.extend(
                    Member(
                        "structure",
                        node,
                        None,
                        0,
                        seg_start[s],
                        norm[s],
                        seg_len[s] // norm[s],
                        attr,
                    )  # type: ignore[index]
                    for s in segs
                    for _role, node, attr in roles
                    if attr is not None
                )
                continue
            pos = info.position(sid)
            if pos is not None:
                order = pos if order is None else min(order, pos)
            if not sp.value.is_const:
                continue
            role, node = (roles[0][0], roles[0][1]) if roles else ("param", _first_user(sp.value))
            members.extend(
                Member(role, node, name, sp.axis, seg_start[s], norm[s], size)  # type: ignore[index]
                for s in segs
            )
        members.sort(key=_member_key)
        return Group(
            0,
            size,
            members,
            _dedupe(locks),
            order=order if order is not None else 0,
            segments=segments,
        )


class _SpaceInfo:
    """Per-space facts ``_make_group`` needs, worked out once per space, not per segment."""

    def __init__(self, cg: ChannelGraph) -> None:
        self._spaces = cg.spaces
        self._node_pos = {n.name: i for i, n in enumerate(cg.graph.nodes)}
        self._roles: dict[int, list[tuple[str, str, str | None]]] = {}
        self._pos: dict[int, int | None] = {}
        # whether some node produces each space (only those start groups)
        self.produced = [any(r[0] == "producer" for r in sp.roles) for sp in cg.spaces]

    def roles(self, sid: int) -> list[tuple[str, str, str | None]]:
        roles = self._roles.get(sid)
        if roles is None:
            roles = self._roles[sid] = sorted(self._spaces[sid].roles, key=_role_rank)
        return roles

    def position(self, sid: int) -> int | None:
        """The position in the graph of the first node producing space ``sid``."""
        if sid not in self._pos:
            pos = self._node_pos
            found = [pos.get(r[1], 0) for r in self._spaces[sid].roles if r[0] == "producer"]
            self._pos[sid] = min(found) if found else None
        return self._pos[sid]


def _role_rank(role: tuple[str, str, str | None]) -> int:
    return ROLE_RANK[role[0]]


def _member_key(m: Member) -> tuple[int, str, int, int]:
    return (ROLE_RANK[m.role], m.tensor or "", m.axis, m.start)


def _block_factors(comp, g, expansions) -> tuple[dict[int, int | Fraction], bool]:
    """Entries per root entry of every segment, by BFS over the edges (ints while they stay
    whole; Fractions only where an expansion is walked backwards unevenly)."""
    root = next(iter(comp))
    factor: dict[int, int | Fraction] = {root: 1}
    consistent = True
    todo = deque([root])
    adj = g.adj
    while todo:
        u = todo.popleft()
        fu = factor[u]
        for v in adj[u]:
            f = fu
            if expansions:
                k = expansions.get((u, v))
                if k is not None:  # u is the small side
                    f = fu * k
                else:
                    k = expansions.get((v, u))
                    if k is not None:
                        f = fu // k if isinstance(fu, int) and fu % k == 0 else Fraction(fu) / k
            old = factor.get(v)
            if old is None:
                factor[v] = f
                todo.append(v)
            elif old != f:
                consistent = False
    return factor, consistent


def _units(factor: dict[int, int | Fraction]) -> dict[int, int] | None:
    """Entries of each segment in one pruning unit: the smallest unit that covers whole
    entries everywhere (scale by the lcm of denominators, divide by the gcd)."""
    lcm = 1
    for f in factor.values():
        if isinstance(f, Fraction):
            lcm = math.lcm(lcm, f.denominator)
    scaled = {s: int(f * lcm) for s, f in factor.items()}
    gcd = 0
    for n in scaled.values():
        gcd = math.gcd(gcd, n)
    if gcd <= 0:
        return None
    return {s: n // gcd for s, n in scaled.items()}


def _rel_spaces(rel: tuple) -> list[int]:
    if rel[0] == "id":
        return [rel[1], rel[2]]
    if rel[0] == "cat":
        return [rel[1], *rel[2]]
    return [rel[1], rel[2]]


def _first_user(value: Value) -> str | None:
    return value.uses[0][0].name if value.uses else None


def _dedupe(locks: list[Lock]) -> list[Lock]:
    return list(dict.fromkeys(locks))
