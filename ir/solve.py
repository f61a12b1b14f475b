"""Solving a channel graph: spaces an identity ties merged into classes, cuts to a
fixpoint over the concats and expansions between classes, atomic segments per class, the
networkx segment graph, and its connected components as coupled groups (see
``ir/channels.py``).

Most relations are identities (an activation, a BN, an add): merging their spaces first
(union-find) leaves the segment graph only the edges that change a channel's index, so a
stage of RegNet cut into 55 conv groups is 55 segments, not 55 per value. Work is per
space where it can be (roles sorted, locks collected once), and a lone segment nothing
produces is skipped before any walk: most attention and shape axes are such segments.
Components become groups in ``ir/group_maker.py``.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx

from drpopt.ir.channel_types import Group, Lock, Space
from drpopt.ir.core import Node, Value
from drpopt.ir.group_maker import GroupMaker, components

if TYPE_CHECKING:
    from drpopt.ir.channels import ChannelGraph


def propagate_cuts(relations: list[tuple], spaces: list[Space]) -> None:
    """Cuts every space at each boundary any related space has, to a fixpoint.

    Every rule maps one cut to cuts of related spaces, so the fixpoint is reached cut by
    cut: a worklist of (space, cut) pairs, each handled once by the rules of its space's
    relations; a concat's own part boundaries are the first cuts. Linear in the cuts made
    times the relations per space."""
    rules = _cut_rules(relations, spaces)
    todo: deque[tuple[int, int]] = deque()

    def add(sid: int, cut: int) -> None:
        sp = spaces[sid]
        if 0 < cut < sp.length and cut not in sp.cuts:  # type: ignore[operator]
            sp.cuts.add(cut)
            todo.append((sid, cut))

    for sid, sp in enumerate(spaces):
        if sp.cuts:
            todo.extend((sid, c) for c in sp.cuts)
    for rel in relations:
        if rel[0] == "cat":
            offset = 0
            for p in rel[2][:-1]:
                offset += spaces[p].length  # type: ignore[operator]
                add(rel[1], offset)
    while todo:
        sid, cut = todo.popleft()
        for kind, other, arg in rules.get(sid, ()):
            if kind == _SAME:
                add(other, cut)
            elif kind == _PART:  # a part's cut, at its offset in the output
                add(other, arg + cut)
            elif kind == _WHOLE:  # an output's cut, in the part it falls inside
                offsets = arg
                i = bisect.bisect_right(offsets, cut) - 1
                if i < len(other) and offsets[i] < cut:
                    add(other[i], cut - offsets[i])
            elif kind == _SMALL:  # entry boundary c of the small space: c * k of the big
                add(other, cut * arg)
            elif cut % arg[1] == 0:  # _BIG, on a block boundary
                add(other, cut // arg[1])
            else:
                # a cut inside a block makes that block's small entry a segment of its own
                # (locked when grouped, see segment_edges): the blocks around it still map
                big, k = arg
                b = cut // k
                add(other, b)
                add(other, b + 1)
                add(big, b * k)
                add(big, (b + 1) * k)


_SAME, _PART, _WHOLE, _SMALL, _BIG = range(5)
CUT_BLOCK = "cut-block"  # the kind of the lock on an entry whose expanded block is cut


def _cut_rules(relations: list[tuple], spaces: list[Space]) -> dict[int, list[tuple]]:
    """Per space, how its cuts map through each relation: (kind, target, argument)."""
    rules: dict[int, list[tuple]] = {}
    for rel in relations:
        kind = rel[0]
        if kind == "id":
            rules.setdefault(rel[1], []).append((_SAME, rel[2], None))
            rules.setdefault(rel[2], []).append((_SAME, rel[1], None))
        elif kind == "cat":
            out, parts = rel[1], rel[2]
            offsets = [0]
            for p in parts:
                rules.setdefault(p, []).append((_PART, out, offsets[-1]))
                offsets.append(offsets[-1] + spaces[p].length)  # type: ignore[operator]
            rules.setdefault(out, []).append((_WHOLE, parts, offsets))
        else:
            big, small, k = rel[1], rel[2], rel[3]
            rules.setdefault(small, []).append((_SMALL, big, k))
            rules.setdefault(big, []).append((_BIG, small, (big, k)))
    return rules


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
    space, start, size, bounds = table.space, table.start, table.length, table.bounds
    for sid, sp in enumerate(spaces):
        sp.seg0 = len(space)
        length = sp.length or 0
        if not sp.cuts:  # most spaces: one segment, the whole space
            bounds.append([0, length])
            space.append(sid)
            start.append(0)
            size.append(length)
            continue
        b = [0, *sorted(sp.cuts), length]
        bounds.append(b)
        space += [sid] * (len(b) - 1)
        start += b[:-1]
        size += [e - s for s, e in itertools.pairwise(b)]
    return table


def segment_edges(
    relations: list[tuple], spaces: list[Space], bounds: list[list[int]]
) -> tuple[list[tuple[int, int]], dict[tuple[int, int], int], dict[int, tuple[Node, int]]]:
    """Edges between segments the relations tie; the expansion edges ((small segment, big
    segment) -> entries per small entry); the small segments whose block a cut splits (one
    entry each, cut so by ``propagate_cuts``), each with the node whose expansion it is and
    the big space: tied to every piece of the block, their group stays whole (a lock of
    kind ``CUT_BLOCK``, which the analysis lifts from a unit of wider layers)."""
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
    """Classes of identical spaces, their segments, the networkx segment graph (the
    segments an edge relates), and its components as groups. Spaces an identity relation ties
    (elementwise ops, BN, an activation) share one set of segments: only concats and
    expansions become edges."""
    spaces = cg.spaces
    _roles_through_layout(cg.relations, spaces)
    cls = SpaceClasses(cg.relations, spaces)
    propagate_cuts(cls.relations, cls.spaces)
    table = segment_table(cls.spaces)
    class_spaces = cls.spaces
    for sp, c in zip(spaces, cls.of, strict=True):
        csp = class_spaces[c]
        sp.cuts, sp.seg0 = csp.cuts, csp.seg0
    edges, expansions, split_blocks = segment_edges(cls.relations, cls.spaces, table.bounds)
    cg.expansions = expansions
    g = nx.Graph()
    g.add_edges_from(edges)
    locked, pending = cg.locked_values, cg.pending_locks
    if locked:
        for key, sid in cg._index.items():
            if key[0] in locked:
                spaces[sid].locks.append(locked[key[0]])
            if key in pending:
                spaces[sid].locks.append(pending[key])
    elif pending:  # (the usual case) a space has one lock from here at most: any order
        index = cg._index
        for key, lock in pending.items():
            sid = index.get(key)
            if sid is not None:
                spaces[sid].locks.append(lock)
    maker = GroupMaker(cg, g, table, expansions, cls)
    for seg, (node, big) in split_blocks.items():
        why = (
            f"{node.op_type} '{node.name}': a cut inside an expanded block of '{spaces[big].label}'"
        )
        maker.seg_locks[seg] = Lock(CUT_BLOCK, why, node.name, node.op_type)
    made = [(grp, comp) for comp in components(g, table, cls, maker) if (grp := maker.make(comp))]
    # a group nothing produces (a weight's input axis behind a lock) is listed apart, for
    # its reason: it is no group to prune, and the level search does not read it
    cg.group_segments = [(grp, comp) for grp, comp in made if id(grp) not in maker.unproduced]
    groups = [grp for grp, _comp in cg.group_segments]
    groups.sort(key=_order)
    cg.unproduced = sorted((grp for grp, _ in made if id(grp) in maker.unproduced), key=_order)
    for i, gr in enumerate(groups + cg.unproduced):
        gr.id = i
    return groups, g


def _order(group: Group) -> int:
    return group.order


class _ClassSpace:
    """The length, cuts and first segment of a class of spaces (what cutting reads)."""

    __slots__ = ("cuts", "length", "seg0")

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.cuts: set[int] = set()
        self.seg0 = 0


def _merge_identities(relations: list[tuple], spaces: list[Space]) -> tuple[list[int], list]:
    """Union-find over the identity relations: each space's parent (a class's root is its
    first space), and the relations that are not identities. An identity between spaces of
    different lengths locks both instead."""
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
        # a root, or a space whose parent is one, found without the call (most are)
        ra = parent[a]
        if parent[ra] != ra:
            ra = find(a)
        rb = parent[b]
        if parent[rb] != rb:
            rb = find(b)
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb
    return parent, rest


class SpaceClasses:
    """Spaces an identity relation ties, merged (union-find): they always have the same
    cuts and their segments map one to one, so a class is cut and grouped once. The
    concats and expansions between classes remain (``relations``, on class ids; an
    expansion keeps its own spaces for the lock it may need). An identity between spaces of
    different lengths ties nothing: both are locked, named by their labels."""

    def __init__(self, relations: list[tuple], spaces: list[Space]) -> None:
        parent, rest = _merge_identities(relations, spaces)
        # a parent is never after its child (a root is its class's first space), so in
        # order every space's parent already has its class
        self.of: list[int] = []
        self.members: list[list[int]] = []
        self.spaces: list[_ClassSpace] = []
        of, members = self.of, self.members
        for sid, sp in enumerate(spaces):
            up = parent[sid]
            if up == sid:
                c = len(members)
                members.append([sid])
                self.spaces.append(_ClassSpace(sp.length))
            else:
                c = of[up]
                members[c].append(sid)
            of.append(c)
            if sp.cuts:
                self.spaces[c].cuts |= sp.cuts
        self.relations: list[tuple] = []
        for rel in rest:
            if rel[0] == "cat":
                self.relations.append(("cat", of[rel[1]], [of[p] for p in rel[2]]))
            else:
                _, big, small, k, node = rel
                self.relations.append(("exp", of[big], of[small], k, node, big, small))


# Split: torch's dynamo exporter splits nn.MultiheadAttention's packed in_proj weight at run
# time (roles pass along the axes it keeps whole, not the one it cuts)
# DequantizeLinear: a QDQ model's int8 weight (ir/rules_deploy.py; its axes pass 1:1)
LAYOUT_OPS = frozenset(
    [
        "Reshape",
        "Transpose",
        "Identity",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "DequantizeLinear",
    ]
)


def _roles_through_layout(relations: list[tuple], spaces: list[Space]) -> None:
    """The roles a layer gives a weight it reads through layout ops (``weight_like``) pass
    back along the 1:1 axis maps to the constant, so that it is the layer's consumer (or
    producer), not a bare constant. Relations come in node order: walked backwards, a chain
    of layout ops hands the roles down one op at a time."""
    for rel in reversed(relations):
        if rel[0] == "cat":
            _roles_through_split(rel[1], rel[2], spaces)
            continue
        if rel[0] != "id":
            continue
        # roles pass only from a space that has some to one that has none (most have none)
        if bool(spaces[rel[1]].roles) is bool(spaces[rel[2]].roles):
            continue
        for c, o in ((rel[1], rel[2]), (rel[2], rel[1])):
            src, out = spaces[c], spaces[o]
            if src.roles or not out.roles or src.value is None or out.value is None:
                continue
            node = out.value.producer
            if node is not None and _weight_operand(node) is src.value and weight_like(src.value):
                # through a modulation only the columns a layer reads: its rows may be
                # scaled by their own norm at run time (StyleGAN2's demodulation; dynamo
                # writes rsqrt(sum(w^2)) without the epsilon), zeroed rows would be 0 * inf
                layout = node.op_type in LAYOUT_OPS
                src.roles.extend(
                    r for r in out.roles if r[2] is None and (layout or r[0] == "consumer")
                )


def _roles_through_split(whole: int, parts: list[int], spaces: list[Space]) -> None:
    """A constant ``Split`` into row blocks, each read by its own layer (nn.MultiheadAttention's
    packed ``in_proj_weight`` split into q, k and v): the blocks' roles pass to the packed
    constant's split axis, so its rows are the layers' producer rows (masked, zeroed), not
    a bare constant."""
    src = spaces[whole]
    if src.roles or src.value is None:
        return
    outs = [spaces[p] for p in parts]
    if any(o.value is None or o.value.producer is None for o in outs):
        return
    node = outs[0].value.producer
    if node.op_type != "Split" or node.input(0) is not src.value:
        return
    if any(o.value.producer is not node for o in outs) or not weight_like(src.value):
        return
    kinds = {r[0] for o in outs for r in o.roles if r[2] is None}
    if len(kinds) == 1:  # every block is read the same way (producer rows of each layer)
        src.roles.extend(r for o in outs for r in o.roles if r[2] is None)


def _weight_operand(node: Node) -> Value | None:
    """The input of ``node`` that a weight read through it is: a layout op's data, or the
    one operand of a Mul with the product's own shape (a weight modulated at run time,
    StyleGAN2's ``weight * style * demod``: the other operands broadcast over it)."""
    if node.op_type in LAYOUT_OPS:
        return node.input(0)
    if node.op_type != "Mul" or node.outputs[0].shape is None:
        return None
    full = [v for v in node.inputs if v is not None and v.shape == node.outputs[0].shape]
    return full[0] if len(full) == 1 else None


def weight_like(value: Value) -> bool:
    """A constant, or a constant seen through layout ops the loader did not fold (too large
    to fold: onnx-caffe2's ``Reshape(classifier_w, [1000, 1024])`` before its Gemm) or
    through run-time modulations (``_weight_operand``). The layer's roles on such a value
    pass to the constant's axes (``ir/solve.py``)."""
    for _ in range(8):  # a few ops at most; bounded, whatever the graph
        if value.is_const:
            return True
        node = value.producer
        operand = _weight_operand(node) if node is not None else None
        if operand is None:
            return False
        value = operand
    return False
