"""Turning the components of the segment graph into groups (``ir/solve.py`` builds the
graph): the segments of every space a component holds, each with its block factor, the
members (a slice of a constant, or of a node attribute for a virtual space), and the locks
of its spaces. Per-space facts are worked out once per space."""

from __future__ import annotations

import functools
import math
import operator
from collections import deque
from typing import TYPE_CHECKING

import networkx as nx

from drpopt.ir.channel_types import ROLE_RANK, Group, Lock, Member, Segment
from drpopt.ir.core import Value

if TYPE_CHECKING:
    from drpopt.ir.channels import ChannelGraph
    from drpopt.ir.solve import Segments, SpaceClasses


def components(g: nx.Graph, table: Segments, cls: SpaceClasses, maker: GroupMaker):
    """The components (lists of segments, the first first) in the order of their first
    (space, segment), as the spaces come; a lone segment (not in ``g``: no edge) of a
    class of one space is yielded only when something produces that space (only those can
    be groups). networkx finds the components of ``g`` once, in one walk."""
    comp_of = {}
    for comp in nx.connected_components(g):
        for t in comp:
            comp_of[t] = comp
    seen = bytearray(len(table.space))
    bounds, spaces, members = table.bounds, cls.spaces, cls.members
    # classes are numbered in the order their first space comes, so class by class is
    # space by space with every later space of a class (all its segments seen) skipped
    for c in range(len(members)):
        s0 = spaces[c].seg0
        for s in range(s0, s0 + len(bounds[c]) - 1):
            if seen[s]:
                continue
            comp = comp_of.get(s)
            if comp is None:
                seen[s] = 1
                if len(members[c]) > 1 or maker.produced[c]:
                    yield [s]
                continue
            for t in comp:
                seen[t] = 1
            yield [s, *(t for t in comp if t != s)]


class GroupMaker:
    """Turns components (of class segments) into groups; per-space facts are worked out
    once per space."""

    def __init__(
        self, cg: ChannelGraph, g: nx.Graph, table: Segments, expansions, cls: SpaceClasses
    ) -> None:
        self.spaces = cg.spaces
        self.cls = cls
        self.neighbours = g.neighbors
        self.table = table
        self.expansions = expansions
        self.exp_segs = {s for pair in expansions for s in pair}
        self._sides = expansion_sides(expansions)
        self.seg_locks: dict[int, Lock] = {}  # locks of single segments (a cut block)
        self._node_pos = {n.name: i for i, n in enumerate(cg.graph.nodes)}
        self._graph = cg.graph
        self.unproduced: set[int] = set()  # ids of the groups nothing produces (locked)
        self._templates: list[tuple | None] = [None] * len(cls.members)  # see _template
        # whether some node produces a space of each class (only those start groups)
        self.produced = produced = [False] * len(cls.members)
        of = cls.of
        for sid, sp in enumerate(cg.spaces):
            if sp.roles and not produced[of[sid]]:
                produced[of[sid]] = any(r[0] == "producer" for r in sp.roles)

    def position(self, sid: int) -> int | None:
        """The position in the graph of the first node producing space ``sid`` (read once
        per space, by ``_template``)."""
        pos = self._node_pos
        found = [pos.get(r[1], 0) for r in self.spaces[sid].roles if r[0] == "producer"]
        return min(found) if found else None

    def units(self, comp: list[int]) -> tuple[dict[int, int], int, list[Lock]]:
        """Entries of each segment per group channel, the group size, and a lock when the
        segments map to each other inconsistently."""
        seg_len = self.table.length
        consistent = True
        norm: dict[int, int] | None
        if self.exp_segs.isdisjoint(comp):
            norm = dict.fromkeys(comp, 1)
        else:
            # block factor of every segment relative to one root, by BFS over the edges
            factor, consistent = _block_factors(comp, self.neighbours, self.expansions, self._sides)
            norm = _units(factor)
        sizes = {seg_len[s] // norm[s] for s in comp} if norm else set()
        if norm is None or any(seg_len[s] % norm[s] for s in comp) or len(sizes) != 1:
            consistent = False
        if consistent:
            return norm, sizes.pop(), []  # type: ignore[return-value]
        # a locked group: let every member cover its whole segment so counts stay true
        norm = dict.fromkeys(comp, 1)
        lock = Lock("mismatch", "channels map to each other inconsistently")
        return norm, max(seg_len[s] for s in comp), [lock]

    def make(self, comp: list[int]) -> Group | None:
        seg_class, produced = self.table.space, self.produced
        if len(comp) == 1:  # (most components: a lone segment)
            made = produced[seg_class[comp[0]]]
        else:
            made = any(produced[seg_class[s]] for s in comp)
        return self._build(comp) if made else self._unproduced(comp)

    def _build(self, comp: list[int]) -> Group:
        seg_class, start, seg_len = self.table.space, self.table.start, self.table.length
        ordered = sorted(comp)
        segs_of: dict[int, list[int]] = {}  # class -> its segments in the component
        for s in ordered:
            segs_of.setdefault(seg_class[s], []).append(s)
        norm, size, locks = self.units(comp)
        if self.seg_locks:
            locks = [self.seg_locks[s] for s in ordered if s in self.seg_locks] + locks
        templates = self._templates
        parts = [(templates[c] or self._template(c), segs) for c, segs in segs_of.items()]
        order = min((t[2] for t, _ in parts if t[2] is not None), default=0)
        if len(parts) == 1:
            (_rows, special, _pos), segs = parts[0]
            special = [(info, segs) for info in special]
        else:  # the spaces of several classes, in the order of the spaces
            special = sorted((info, segs) for t, segs in parts for info in t[1])
        blocks: list[tuple[tuple, list[Member]]] = []  # (member key, its members) per space
        for (_sid, space_locks, kind, use, key, name, axis), segs in special:
            if space_locks:
                locks.extend(space_locks)
            if kind == _CONST:  # a slice of the constant per segment, in its first role
                role, node = use
                if len(segs) == 1:  # (most are one segment: no list comprehension)
                    s = segs[0]
                    unit = norm[s]
                    made = [Member(role, node, name, axis, start[s], unit, seg_len[s] // unit)]
                else:
                    made = [
                        Member(role, node, name, axis, start[s], norm[s], seg_len[s] // norm[s])
                        for s in segs
                    ]
                blocks.append((key, made))
            elif kind == _VIRTUAL and use:  # a slice of each node attribute the space is
                made = [
                    Member("structure", nd, None, 0, start[s], norm[s], seg_len[s] // norm[s], a)
                    for s in segs
                    for nd, a in use
                ]
                blocks.append((key, made))
        members = _sorted_members(blocks)
        group = Group(0, size, members, _dedupe(locks), order=order)
        rows = [(t[0], segs) for t, segs in parts]
        group.segments_later(functools.partial(_segments, rows, start, norm))
        return group

    def _unproduced(self, comp: list[int]) -> Group | None:
        """A component nothing produces is no group; where a layer reads its channels as a
        weight's input axis it is made as a locked one all the same, listed apart
        (``ChannelGraph.unproduced``), so that axis has a reason (YOLOv6's DFL conv behind
        a softmax over the bins; EdgeNeXt's position encoding, made from constants: no
        lock, so one naming the layer). A graph input's own channels (the stem's image
        channels) stay out, as does every component no weight reads."""
        seg_class, members_of = self.table.space, self.cls.members
        spaces = self.spaces
        readers = []
        for c in {seg_class[s] for s in comp}:
            for sid in members_of[c]:
                sp = spaces[sid]
                if sp.roles and sp.value is not None and sp.value.is_const:
                    readers += [r[1] for r in sp.roles if r[0] == "consumer"]
        if not readers:
            return None
        group = self._build(comp)
        if all(lk.kind == "graph-input" for lk in group.locks) and group.locks:
            return None
        if not group.locks:
            name = min(readers, key=lambda n: self._node_pos.get(n, 0))
            op = self._graph.nodes[self._node_pos[name]].op_type if name in self._node_pos else None
            why = f"no layer produces the channels '{name}' reads here (constants or shapes)"
            group.locks.append(Lock("unproduced", why, name, op))
        # in the order of the layers reading them (numbered after every group)
        group.order = len(self._node_pos) + min(self._node_pos.get(n, 0) for n in readers)
        self.unproduced.add(id(group))
        return group

    def _template(self, c: int) -> tuple:
        """What every group holding class ``c`` takes from its spaces, worked out once per
        class: a row (space id, value name, axis, label, length) per space for the
        segments; per space with members, locks or roles, (space id, its locks, its kind (a
        constant, a virtual space, an activation), the role and node of a constant or the
        (node, attribute) pairs of a virtual space, its members' sort key, value name,
        axis); the position of the class's first producer (None if none)."""
        rows, special, pos = [], [], None
        for sid in self.cls.members[c]:
            sp = self.spaces[sid]
            value = sp.value
            name = value.name if value is not None else None
            rows.append((sid, name, sp.axis, sp.label, sp.length or 0))
            const = value is not None and value.is_const
            if not (sp.roles or sp.locks or const):
                continue  # an activation, or a virtual space no node attribute is
            roles = sorted(sp.roles, key=_role_rank)
            use: object = ()
            if value is None:
                kind, use = _VIRTUAL, [(node, attr) for _r, node, attr in roles if attr is not None]
            elif const:
                kind = _CONST
                use = (roles[0][0], roles[0][1]) if roles else ("param", _first_user(value))
            else:
                kind = _ACTIVATION
            if value is not None and roles:
                here = self.position(sid)
                if here is not None and (pos is None or here < pos):
                    pos = here
            # the sort key of its members but their start (see ``_sorted_members``)
            key = (ROLE_RANK[use[0]], name, sp.axis) if kind == _CONST else _VIRTUAL_KEY  # type: ignore[index]
            special.append((sid, sp.locks, kind, use, key, name, sp.axis))
        template = (rows, special, pos)
        self._templates[c] = template
        return template


_CONST, _VIRTUAL, _ACTIVATION = 0, 1, 2
_VIRTUAL_KEY = (ROLE_RANK["structure"], "", 0)  # what ``_member_key`` starts with for them


def _segments(parts: list[tuple], start: list[int], norm: dict[int, int]) -> list[Segment]:
    """A group's segments, space by space: ``parts`` are the rows of each class's spaces
    (``GroupMaker._template``) with the class's segments in the group."""
    if len(parts) == 1:
        rows, segs = parts[0]
        items = [(row, segs) for row in rows]
    else:  # the spaces of several classes, in the order of the spaces
        items = sorted((row, segs) for rows, segs in parts for row in rows)
    new = tuple.__new__  # (a Segment without its Python __new__: a group can have thousands)
    return [
        new(Segment, (name, axis, start[s], norm[s], label, length))
        for (_sid, name, axis, label, length), segs in items
        for s in segs
    ]


def _role_rank(role: tuple[str, str, str | None]) -> int:
    return ROLE_RANK[role[0]]


def _member_key(m: Member) -> tuple[int, str, int, int]:
    return (ROLE_RANK[m.role], m.tensor or "", m.axis, m.start)


def _sorted_members(blocks: list[tuple[tuple, list[Member]]]) -> list[Member]:
    """The members of a group sorted by ``_member_key`` (stable: ties keep the order the
    spaces came in), from one block per space whose members share that key but their
    start and come by increasing start: the blocks are sorted instead of the members. Only
    where two blocks share a key (virtual spaces of several nodes) are the members sorted
    one by one, from that order (equal keys keep the order of their spaces)."""
    if len(blocks) == 1:
        return blocks[0][1]
    blocks.sort(key=_block_key)
    members: list[Member] = []
    prev = None
    for key, made in blocks:
        if key == prev:
            members = [m for _key, made in blocks for m in made]
            members.sort(key=_member_key)
            return members
        members += made
        prev = key
    return members


_block_key = operator.itemgetter(0)


def expansion_sides(expansions: dict[tuple[int, int], int]) -> tuple[dict, dict]:
    """The expansion edges by segment, read once per solve: ``small[u][v]`` is ``k`` for
    an edge ``(u, v)`` where ``u`` is the small side, ``big[u][v]`` the ``k`` of an edge
    ``(v, u)`` (``u`` the big side)."""
    small: dict[int, dict[int, int]] = {}
    big: dict[int, dict[int, int]] = {}
    for (u, v), k in expansions.items():
        small.setdefault(u, {})[v] = k
        big.setdefault(v, {})[u] = k
    return small, big


def _block_factors(comp, neighbours, expansions, sides=None) -> tuple[dict[int, int], bool]:
    """Entries of every segment per entry (or entries) of a root segment, by BFS over the
    edges, as whole numbers: where an expansion walked backwards does not divide evenly,
    the factors found so far are multiplied to make it whole and the walk goes on (the
    walk from the start with the root so scaled would take the same steps: scaling keeps
    every earlier division whole and every comparison as it was). ``sides`` is
    ``expansion_sides(expansions)``, made here when not given; ``neighbours(u)`` are the
    neighbours of segment ``u``."""
    small, big = sides if sides is not None else expansion_sides(expansions)
    root = next(iter(comp))
    factor: dict[int, int] = {root: 1}
    consistent = True
    todo = deque([root])
    while todo:
        u = todo.popleft()
        fu = factor[u]
        ks, kb = small.get(u), big.get(u)
        if ks is None and kb is None:  # most segments: plain ties, the same factor
            for v in neighbours(u):
                old = factor.get(v)
                if old is None:
                    factor[v] = fu
                    todo.append(v)
                elif old != fu:
                    consistent = False
            continue
        for v in neighbours(u):
            old = factor.get(v)
            k = ks.get(v) if ks is not None else None
            if k is not None:  # u is the small side
                f = fu * k
            else:
                k = kb.get(v) if kb is not None else None
                if k is None:
                    f = fu
                elif old is not None:  # v is the small side, seen already: v * k == u?
                    consistent = consistent and old * k == fu
                    continue
                else:
                    if fu % k:  # scale everything found so far to make v whole
                        m = k // math.gcd(fu, k)
                        for s in factor:
                            factor[s] *= m
                        fu *= m
                    f = fu // k
            if old is None:
                factor[v] = f
                todo.append(v)
            elif old != f:
                consistent = False
    return factor, consistent


def _units(factor: dict[int, int]) -> dict[int, int] | None:
    """Entries of each segment in one pruning unit: the smallest unit that covers whole
    entries everywhere (the factors divided by their gcd)."""
    gcd = 0
    for n in factor.values():
        gcd = math.gcd(gcd, n)
    if gcd <= 0:
        return None
    return {s: n // gcd for s, n in factor.items()}


def _first_user(value: Value) -> str | None:
    return value.uses[0][0].name if value.uses else None


def _dedupe(locks: list[Lock]) -> list[Lock]:
    return list(dict.fromkeys(locks))
