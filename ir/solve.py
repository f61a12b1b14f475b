"""Solving a channel graph: spaces an identity ties merged into classes, cuts to a
fixpoint over the concats and expansions between classes, atomic segments per class, the
networkx segment graph, and its connected components as coupled groups (see
``ir/channels.py``).

Most relations are identities (an activation, a BN, an add): merging their spaces first
(union-find) leaves the segment graph only the edges that change a channel's index, so a
stage of RegNet cut into 55 conv groups is 55 segments, not 55 per value. Work is per
space where it can be (roles sorted, locks collected once), and a lone segment nothing
produces is skipped before any walk: most attention and shape axes are such segments.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import networkx as nx

from drpopt.ir.channel_types import ROLE_RANK, Group, Lock, Member, Segment, Space
from drpopt.ir.core import Node, Value

if TYPE_CHECKING:
    from drpopt.ir.channels import ChannelGraph


def propagate_cuts(relations: list[tuple], spaces: list[Space]) -> None:
    """Cuts every space at each boundary any related space has, to a fixpoint."""
    touching: dict[int, list[int]] = {}
    for ri, rel in enumerate(relations):
        for sid in _rel_spaces(rel):
            touching.setdefault(sid, []).append(ri)
    # every space starts uncut, so only a concat can make the first cuts; the others
    # join the queue when a space they touch changes
    queued = [rel[0] == "cat" for rel in relations]
    queue = deque(ri for ri, q in enumerate(queued) if q)
    while queue:
        ri = queue.popleft()
        queued[ri] = False
        for sid in _apply(relations[ri], spaces):
            for rj in touching.get(sid, ()):
                if not queued[rj]:
                    queued[rj] = True
                    queue.append(rj)


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
        big, small, k = rel[1], rel[2], rel[3]
        # a cut inside a block makes that block's small entry a segment of its own (locked
        # when grouped, see segment_edges): the blocks around it still map exactly
        inside = {c // k for c in spaces[big].cuts if c % k}
        inside |= {b + 1 for b in inside}
        add(big, {c * k for c in spaces[small].cuts | inside})
        add(small, {c // k for c in spaces[big].cuts if c % k == 0} | inside)
    return changed


@dataclass
class Segments:
    """The atomic segments of every space: segment ``s`` is ``[start[s], start[s] +
    length[s])`` of space ``space[s]``; ``bounds[sid]`` are a space's cut points."""

    space: list[int]
    start: list[int]
    length: list[int]
    bounds: list[list[int]]


def segment_table(spaces: list[Space]) -> Segments:
    """Cuts every space into its segments (a space of unknown size is one empty segment)."""
    table = Segments([], [], [], [])
    for sid, sp in enumerate(spaces):
        sp.seg0 = len(table.space)
        length = sp.length or 0
        b = [0, *sorted(sp.cuts), length] if length else [0, 0]
        table.bounds.append(b)
        for s, e in itertools.pairwise(b):
            table.space.append(sid)
            table.start.append(s)
            table.length.append(e - s)
    return table


def segment_edges(
    relations: list[tuple], spaces: list[Space], bounds: list[list[int]]
) -> tuple[list[tuple[int, int]], dict[tuple[int, int], int], dict[int, tuple[Node, int]]]:
    """Edges between segments the relations tie; the expansion edges ((small segment, big
    segment) -> entries per small entry); the small segments whose block a cut splits (one
    entry each, cut so by ``propagate_cuts``), each with the node whose expansion it is and
    the big space: tied to every piece of the block, their group stays whole."""
    edges: list[tuple[int, int]] = []
    expansions: dict[tuple[int, int], int] = {}
    split_blocks: dict[int, tuple[Node, int]] = {}
    for rel in relations:
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
            big, small, k, node = rel[1:5]
            sb, ss = spaces[big].seg0, spaces[small].seg0
            if not any(c % k for c in spaces[big].cuts):
                for j in range(len(bounds[small]) - 1):
                    edges.append((ss + j, sb + j))
                    expansions[(ss + j, sb + j)] = k
                continue
            big_bounds, b = bounds[big], 0
            for j, end in enumerate(bounds[small][1:]):
                first = b
                while big_bounds[b + 1] < end * k:
                    b += 1
                if b == first:
                    edges.append((ss + j, sb + b))
                    expansions[(ss + j, sb + b)] = k
                else:  # one entry whose block is cut: each piece is that entry's block there
                    for piece in range(first, b + 1):
                        edges.append((ss + j, sb + piece))
                        expansions[(ss + j, sb + piece)] = big_bounds[piece + 1] - big_bounds[piece]
                    split_blocks.setdefault(ss + j, (node, rel[5] if len(rel) > 5 else big))
                b += 1
    return edges, expansions, split_blocks


def solve(cg: ChannelGraph) -> tuple[list[Group], nx.Graph]:
    """Classes of identical spaces, their segments, the networkx segment graph, and its
    components as groups. Spaces an identity relation ties (elementwise ops, BN, an
    activation) share one set of segments: only concats and expansions become edges."""
    spaces = cg.spaces
    _roles_through_layout(cg.relations, spaces)
    cls = _Classes(cg.relations, spaces)
    propagate_cuts(cls.relations, cls.spaces)
    table = segment_table(cls.spaces)
    for sid, sp in enumerate(spaces):
        csp = cls.spaces[cls.of[sid]]
        sp.cuts, sp.seg0 = csp.cuts, csp.seg0
    g = nx.Graph()
    g.add_nodes_from(range(len(table.space)))
    edges, expansions, split_blocks = segment_edges(cls.relations, cls.spaces, table.bounds)
    cg.expansions = expansions
    g.add_edges_from(edges)
    if cg.locked_values or cg.pending_locks:
        for key, sid in cg._index.items():
            if key[0] in cg.locked_values:
                spaces[sid].locks.append(cg.locked_values[key[0]])
            if key in cg.pending_locks:
                spaces[sid].locks.append(cg.pending_locks[key])
    maker = _GroupMaker(cg, g, table, expansions, cls)
    for seg, (node, big) in split_blocks.items():
        why = (
            f"{node.op_type} '{node.name}': a cut inside an expanded block of '{spaces[big].label}'"
        )
        maker.seg_locks[seg] = Lock("mismatch", why, node.name, node.op_type)
    groups = [grp for comp in _components(g, table, cls, maker) if (grp := maker.make(comp))]
    groups.sort(key=lambda gr: gr.order)
    for i, gr in enumerate(groups):
        gr.id = i
    return groups, g


class _ClassSpace:
    """The length, cuts and first segment of a class of spaces (what cutting reads)."""

    __slots__ = ("cuts", "length", "seg0")

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.cuts: set[int] = set()
        self.seg0 = 0


class _Classes:
    """Spaces an identity relation ties, merged (union-find): they always have the same
    cuts and their segments map one to one, so a class is cut and grouped once. The
    concats and expansions between classes remain (``relations``, on class ids; an
    expansion keeps its own spaces for the lock it may need). An identity between spaces of
    different lengths ties nothing: both are locked, named by the relation's node."""

    def __init__(self, relations: list[tuple], spaces: list[Space]) -> None:
        parent = list(range(len(spaces)))

        def find(a: int) -> int:
            root = a
            while parent[root] != root:
                root = parent[root]
            while parent[a] != root:  # path compression: later finds are direct
                parent[a], a = root, parent[a]
            return root

        rest: list[tuple] = []
        for rel in relations:
            if rel[0] != "id":
                rest.append(rel)
                continue
            a, b = rel[1], rel[2]
            if spaces[a].length != spaces[b].length:
                for s in (a, b):
                    spaces[s].locks.append(
                        Lock(
                            "mismatch",
                            f"'{spaces[a].label}' and '{spaces[b].label}' are "
                            "said to be the same channels but differ in size",
                        )
                    )
                continue
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        index: dict[int, int] = {}
        self.of: list[int] = []
        self.members: list[list[int]] = []
        self.spaces: list[_ClassSpace] = []
        for sid, sp in enumerate(spaces):
            root = find(sid)
            c = index.get(root)
            if c is None:
                c = index[root] = len(self.members)
                self.members.append([])
                self.spaces.append(_ClassSpace(sp.length))
            self.of.append(c)
            self.members[c].append(sid)
            if sp.cuts:
                self.spaces[c].cuts |= sp.cuts
        of = self.of
        self.relations: list[tuple] = []
        for rel in rest:
            if rel[0] == "cat":
                self.relations.append(("cat", of[rel[1]], [of[p] for p in rel[2]]))
            else:
                _, big, small, k, node = rel
                self.relations.append(("exp", of[big], of[small], k, node, big, small))


LAYOUT_OPS = frozenset(["Reshape", "Transpose", "Identity", "Flatten", "Squeeze", "Unsqueeze"])


def _roles_through_layout(relations: list[tuple], spaces: list[Space]) -> None:
    """The roles a layer gives a weight it reads through layout ops (``weight_like``) pass
    back along the 1:1 axis maps to the constant, so that it is the layer's consumer (or
    producer), not a bare constant. Relations come in node order: walked backwards, a chain
    of layout ops hands the roles down one op at a time."""
    for rel in reversed(relations):
        if rel[0] != "id":
            continue
        for c, o in ((rel[1], rel[2]), (rel[2], rel[1])):
            src, out = spaces[c], spaces[o]
            if src.roles or not out.roles or src.value is None or out.value is None:
                continue
            node = out.value.producer
            if (
                node is not None
                and node.op_type in LAYOUT_OPS
                and node.input(0) is src.value
                and weight_like(src.value)
            ):
                src.roles.extend(r for r in out.roles if r[2] is None)


def weight_like(value: Value) -> bool:
    """A constant, or a constant seen through layout ops the loader did not fold (too large
    to fold: onnx-caffe2's ``Reshape(classifier_w, [1000, 1024])`` before its Gemm). The
    layer's roles on such a value pass to the constant's axes (``ir/solve.py``)."""
    for _ in range(8):  # a few layout ops at most; bounded, whatever the graph
        if value.is_const:
            return True
        node = value.producer
        if node is None or node.op_type not in LAYOUT_OPS or node.input(0) is None:
            return False
        value = node.input(0)  # type: ignore[assignment]
    return False


def _components(g: nx.Graph, table: Segments, cls: _Classes, maker: _GroupMaker):
    """The components in the order of their first (space, segment), as the spaces come;
    a lone segment of a class of one space is yielded only when something produces that
    space (only those can be groups)."""
    seen = bytearray(len(table.space))
    adj = g.adj
    bounds, spaces, members = table.bounds, cls.spaces, cls.members
    for c in cls.of:
        s0 = spaces[c].seg0
        for s in range(s0, s0 + len(bounds[c]) - 1):
            if seen[s]:
                continue
            seen[s] = 1
            if not adj[s]:
                if len(members[c]) > 1 or maker.produced[c]:
                    yield {s}
                continue
            comp = nx.node_connected_component(g, s)
            for t in comp:
                seen[t] = 1
            yield comp


class _GroupMaker:
    """Turns components (of class segments) into groups; per-space facts are worked out
    once per space."""

    def __init__(
        self, cg: ChannelGraph, g: nx.Graph, table: Segments, expansions, cls: _Classes
    ) -> None:
        self.spaces = cg.spaces
        self.cls = cls
        self.g = g
        self.table = table
        self.expansions = expansions
        self.exp_segs = {s for pair in expansions for s in pair}
        self.seg_locks: dict[int, Lock] = {}  # locks of single segments (a cut block)
        self._node_pos = {n.name: i for i, n in enumerate(cg.graph.nodes)}
        self._info: list[tuple | None] = [None] * len(cg.spaces)  # see _space_info
        self._pos: dict[int, int | None] = {}
        # whether some node produces a space of each class (only those start groups)
        made = [any(r[0] == "producer" for r in sp.roles) for sp in cg.spaces]
        self.produced = [any(made[sid] for sid in m) for m in cls.members]

    def position(self, sid: int) -> int | None:
        """The position in the graph of the first node producing space ``sid``."""
        if sid not in self._pos:
            pos = self._node_pos
            found = [pos.get(r[1], 0) for r in self.spaces[sid].roles if r[0] == "producer"]
            self._pos[sid] = min(found) if found else None
        return self._pos[sid]

    def units(self, comp: set[int]) -> tuple[dict[int, int], int, list[Lock]]:
        """Entries of each segment per group channel, the group size, and a lock when the
        segments map to each other inconsistently."""
        seg_len = self.table.length
        consistent = True
        norm: dict[int, int] | None
        if self.exp_segs.isdisjoint(comp):
            norm = dict.fromkeys(comp, 1)
        else:
            # block factor of every segment relative to one root, by BFS over the edges
            factor, consistent = _block_factors(comp, self.g, self.expansions)
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

    def make(self, comp: set[int]) -> Group | None:
        seg_class, members_of, of = self.table.space, self.cls.members, self.cls.of
        if not any(self.produced[seg_class[s]] for s in comp):
            return None
        segs_of: dict[int, list[int]] = {}  # class -> its segments in the component
        for s in sorted(comp):
            segs_of.setdefault(seg_class[s], []).append(s)
        norm, size, locks = self.units(comp)
        if self.seg_locks:
            locks = [self.seg_locks[s] for s in sorted(comp) if s in self.seg_locks] + locks
        members: list[Member] = []
        pieces: list[tuple] = []  # (value name, axis, label, length, segments) per space
        order = None
        spaces, start, seg_len, infos = self.spaces, self.table.start, self.table.length, self._info
        for sid in sorted(sid for c in segs_of for sid in members_of[c]):
            info = infos[sid] or self._space_info(sid)
            name, axis, label, length, kind, use, pos = info
            if spaces[sid].locks:
                locks.extend(spaces[sid].locks)
            segs = segs_of[of[sid]]
            pieces.append((name, axis, label, length, segs))
            if kind == _CONST:  # a slice of the constant per segment, in its first role
                role, node = use
                members.extend(
                    Member(role, node, name, axis, start[s], norm[s], seg_len[s] // norm[s])
                    for s in segs
                )
            elif kind == _VIRTUAL:  # a slice of each node attribute the space is
                members.extend(
                    Member("structure", nd, None, 0, start[s], norm[s], seg_len[s] // norm[s], a)
                    for s in segs
                    for nd, a in use
                )
            if pos is not None:
                order = pos if order is None else min(order, pos)
        members.sort(key=_member_key)
        order = order if order is not None else 0
        group = Group(0, size, members, _dedupe(locks), order=order)
        group.segments_later(functools.partial(_segments, pieces, start, norm))
        return group

    def _space_info(self, sid: int) -> tuple:
        """What every group holding space ``sid`` takes from it: its value's name, axis,
        label and length, its kind (a constant, a virtual space, an activation), the role
        and node of a constant or the (node, attribute) pairs of a virtual space, and the
        position of its first producer."""
        sp = self.spaces[sid]
        roles = sorted(sp.roles, key=_role_rank)
        value = sp.value
        use: object = None
        if value is None:
            kind, use = _VIRTUAL, [(node, attr) for _r, node, attr in roles if attr is not None]
        elif value.is_const:
            kind = _CONST
            use = (roles[0][0], roles[0][1]) if roles else ("param", _first_user(value))
        else:
            kind = _ACTIVATION
        pos = self.position(sid) if value is not None else None
        name = value.name if value is not None else None
        info = (name, sp.axis, sp.label, sp.length or 0, kind, use, pos)
        self._info[sid] = info
        return info


_CONST, _VIRTUAL, _ACTIVATION = 0, 1, 2


def _segments(pieces: list[tuple], start: list[int], norm: dict[int, int]) -> list[Segment]:
    """A group's segments, space by space (what ``make`` recorded for them)."""
    return [
        Segment(name, axis, start[s], norm[s], label, length)
        for name, axis, label, length, segs in pieces
        for s in segs
    ]


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
