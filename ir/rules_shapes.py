"""Coupling rules of the ops that move channels without computing: Concat, Split, Slice,
Transpose, and Reshape/Flatten/Squeeze/Unsqueeze (splits and merges at a level, heads);
Pad and Gather are in ``ir/rules_select.py``. Registered into ``ir.rules.RULES`` on import
(``ir/rules.py`` imports this)."""

from __future__ import annotations

import math

from drpopt.ir import symdims
from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node, Value
from drpopt.ir.rules import (
    RESHAPE_OPS,
    lock_axis,
    rule,
    same_axes,
)
from drpopt.ir.shape_expr import (
    const_ints,
    literal_source,
    shape_entries,
    shape_values,
)
from drpopt.ir.shape_resolve import resolve_reshape


@rule("Concat")
def _concat(node: Node, cg: ChannelGraph) -> None:
    y = node.outputs[0]
    if y.rank is None or any(x is not None and x.rank != y.rank for x in node.inputs):
        for v in (*node.inputs, y):
            cg.lock_value(v, "rule", f"Concat '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis") % y.rank
    parts = [x for x in node.inputs if x is not None and x.shape[axis] != 0]  # type: ignore[index]
    cg.concat(cg.space(y, axis), [_part_space(cg, x, axis, node) for x in parts], node)
    others = [a for a in range(y.rank) if a != axis]
    y_spaces: dict[int, int | None] = {}  # y's spaces, asked for once over all the parts
    for x in parts:
        same_axes(cg, node, x, y, axes=others, y_spaces=y_spaces)


def _part_space(cg: ChannelGraph, x: Value, axis: int, node: Node) -> int:
    """A part of a concat/split; a part of size 1 gets a virtual space of its own."""
    sid = cg.space(x, axis)
    if sid is None:
        sid = cg.virtual(f"{x.name}[{axis}]", 1)
    return sid


@rule("Split")
def _split(node: Node, cg: ChannelGraph) -> None:
    x = node.input(0)
    if x is None or x.rank is None or any(y.rank != x.rank for y in node.outputs):
        for v in (x, *node.outputs):
            cg.lock_value(v, "rule", f"Split '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis", 0) % x.rank
    parts = [y for y in node.outputs if y.shape[axis] != 0]  # type: ignore[index]
    cg.concat(cg.space(x, axis), [_part_space(cg, y, axis, node) for y in parts], node)
    for y in parts:
        same_axes(cg, node, x, y, axes=[a for a in range(x.rank) if a != axis])


@rule("Slice")
def _slice(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    axes, steps = const_ints(node.input(3)), const_ints(node.input(4))
    if (
        (starts is None or ends is None)
        and x is not None
        and x.shape is not None
        and (axes is not None or node.input(3) is None)
    ):
        numbers = _static_bounds(node, x, y, cg.numeric_memo)
        if numbers is None:
            _slice_computed(node, cg, x, y, axes)
            return
        starts, ends = numbers
    if x is None or x.rank is None or y.rank != x.rank or starts is None or ends is None:
        cg.lock_value(x, "rule", f"Slice '{node.name}' has computed bounds", node)
        cg.lock_value(y, "rule", f"Slice '{node.name}' has computed bounds", node)
        return
    if (node.input(3) is not None and axes is None) or (
        node.input(4) is not None and steps is None
    ):
        cg.lock_value(x, "rule", f"Slice '{node.name}' has computed axes or steps", node)
        cg.lock_value(y, "rule", f"Slice '{node.name}' has computed axes or steps", node)
        return
    axes = [a % x.rank for a in (axes if axes is not None else range(len(starts)))]
    steps = steps if steps is not None else [1] * len(axes)
    sliced = dict(zip(axes, zip(starts, ends, steps, strict=False), strict=False))
    for ax in range(x.rank):
        if ax not in sliced:
            same_axes(cg, node, x, y, axes=[ax])
            continue
        start, end, step = sliced[ax]
        dim = x.shape[ax]  # type: ignore[index]
        if not isinstance(dim, int):
            lock_axis(cg, node, [x, y], [ax], "slices an axis of unknown size")
            continue
        lo, hi, st = slice(start, end, step).indices(dim)
        if st != 1:
            lock_axis(cg, node, [x, y], [ax], "takes a strided slice of this axis")
            continue
        hi = max(hi, lo)
        if lo == 0 and hi == dim:
            same_axes(cg, node, x, y, axes=[ax])
            continue
        parts = []
        if lo > 0:
            parts.append(cg.virtual(f"{node.name}.dropped_head", lo))
        parts.append(_part_space(cg, y, ax, node) if hi > lo else None)
        if hi < dim:
            parts.append(cg.virtual(f"{node.name}.dropped_tail", dim - hi))
        parts = [p for p in parts if p is not None]
        cg.concat(cg.space(x, ax), parts, node)


def _static_bounds(
    node: Node, x: Value, y: Value, memo: dict
) -> tuple[list[int], list[int]] | None:
    """The numbers computed Slice bounds take for this model's static sizes (``torch.chunk``
    exported as ``Slice`` with bounds ``(C + 1) // 2 * k`` read from the sliced tensor's own
    shape: a channel split like any other; ``compact`` writes the kept bounds as
    constants), when they are numbers: read from static sizes only (a symbolic batch
    elsewhere in the shape does not matter). None otherwise."""
    if x.shape is None or y.shape is None or len(x.shape) != len(y.shape):
        return None
    starts = shape_values(node.input(1), memo)  # type: ignore[arg-type]
    ends = shape_values(node.input(2), memo)  # type: ignore[arg-type]
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    return starts, ends


def _slice_computed(node: Node, cg: ChannelGraph, x: Value, y: Value, axes) -> None:
    """Bounds computed at run time (Swin's crop of window padding): the sliced axes are
    locked, every other axis passes through (and keeps its size where inference lost it)."""
    rank = x.rank or 0
    n = len(shape_entries(node.input(1), cg.shape_memo) or []) if axes is None else len(axes)
    sliced = {a % rank for a in axes} if axes is not None else set(range(n))
    if not sliced and axes is None:
        sliced = set(range(rank))
    old = y.shape if y.shape is not None and len(y.shape) == rank else (None,) * rank
    starts = shape_values(node.input(1), cg.numeric_memo)
    ends = shape_values(node.input(2), cg.numeric_memo)
    steps = const_ints(node.input(4)) if node.input(4) is not None else None
    bounds = {}
    if starts is not None and ends is not None and axes is not None and steps is None:
        for a, s, e in zip(axes, starts, ends, strict=False):
            dim = x.shape[a % rank]
            if isinstance(dim, int):
                lo, hi, _ = slice(s, e).indices(dim)
                bounds[a % rank] = max(hi - lo, 0)
    y.shape = tuple(
        bounds.get(a, old[a])
        if a in sliced
        else (x.shape[a] if old[a] is None or not isinstance(old[a], int) else old[a])
        for a in range(rank)
    )
    same_axes(cg, node, x, y, axes=[a for a in range(rank) if a not in sliced])
    lock_axis(cg, node, [x, y], sorted(sliced), "slices this axis with computed bounds")


@rule("Transpose")
def _transpose(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    if x is None or x.rank is None:
        cg.lock_value(x, "rule", f"Transpose '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"Transpose '{node.name}': rank unknown", node)
        return
    perm = node.attr("perm") or list(reversed(range(x.rank)))
    for i, p in enumerate(perm):
        cg.identity(cg.space(x, p), cg.space(y, i), node)


@rule(*RESHAPE_OPS)
def _reshape(node: Node, cg: ChannelGraph) -> None:
    """Maps axes by matching products of dims: an axis kept as is couples 1:1, axes merged
    into one make the first of them an expansion of it (each element a block), axes split
    from one the reverse; every other axis of a merge or split is locked."""
    x, y = node.input(0), node.outputs[0]
    ok, entries = _reshape_output(node, cg, x, y)
    if not ok:
        return
    if x is None or x.shape is None or y.shape is None:
        cg.lock_value(x, "reshape", f"{node.op_type} '{node.name}' has unknown shapes", node)
        cg.lock_value(y, "reshape", f"{node.op_type} '{node.name}' has unknown shapes", node)
        return
    if entries is not None:
        _lock_fixed_entries(node, cg, y, entries)
    _map_axes(node, cg, x, y)


def _reshape_output(node: Node, cg: ChannelGraph, x: Value | None, y: Value):
    """(False, None) when a computed target cannot be read (both sides locked); else (True,
    the target's entries when computed). Refines the output's shape where inference left
    it unknown: exported reshapes are often 'unk__0'."""
    entries = None
    if node.op_type == "Reshape" and const_ints(node.input(1)) is None:
        entries = shape_entries(node.input(1), cg.shape_memo)
        if entries is None:
            why = "has a target shape computed in a way drpopt cannot read"
            cg.lock_value(x, "reshape", f"Reshape '{node.name}' {why}", node)
            cg.lock_value(y, "reshape", f"Reshape '{node.name}' {why}", node)
            return False, None
    if node.op_type == "Reshape" and x is not None and x.shape is not None:
        target = entries if entries is not None else const_ints(node.input(1))
        resolved = resolve_reshape(x.shape, target, bool(node.attr("allowzero", 0)))
        if resolved is None and entries is not None:
            # sizes computed from static shapes (Swin's window partition): use their values
            numbers = shape_values(node.input(1), cg.numeric_memo)
            if numbers is not None:
                resolved = resolve_reshape(x.shape, numbers, bool(node.attr("allowzero", 0)))
        if resolved is not None and resolved != y.shape:
            y.shape = resolved
    if node.op_type == "Flatten" and x is not None and x.shape is not None:
        axis = node.attr("axis", 1) % (x.rank or 1) if x.rank else 0
        flat = (_product(x.shape[:axis]), _product(x.shape[axis:]))
        if y.shape is None or any(not isinstance(d, int) for d in y.shape):
            y.shape = tuple(
                f if f is not None else d for f, d in zip(flat, y.shape or flat, strict=False)
            )
    return True, entries


def _lock_fixed_entries(node: Node, cg: ChannelGraph, y: Value, entries) -> None:
    """A size fixed inside a computed shape follows pruning only where compaction can
    rewrite the constant it comes from; lock the axis otherwise."""
    out_shape = y.shape
    for k, e in enumerate(entries[: len(out_shape)]):
        if isinstance(e, int) and e not in (-1, 0) and out_shape[k] != 1:
            if literal_source(node.input(1), k, cg.shape_memo) is not None:
                continue
            why = f"fixes the size of axis {k} inside a computed target shape"
            cg.lock(cg.space(y, k), "reshape", f"Reshape '{node.name}' {why}", node)


def _map_axes(node: Node, cg: ChannelGraph, x: Value, y: Value) -> None:
    """Walks both shapes (size-1 axes left out), matching runs of axes of equal product."""
    ins = [(a, d) for a, d in enumerate(x.shape) if d != 1]
    outs = [(a, d) for a, d in enumerate(y.shape) if d != 1]
    if any(isinstance(d, str) for _, d in (*ins, *outs)):
        from drpopt.ir.reshape_symbolic import map_symbolic, pin_symbol

        pinned = pin_symbol(ins, outs)
        if pinned is None:
            map_symbolic(node, cg, x, ins, y, outs)
            return
        ins, outs = pinned
    i = j = 0
    while i < len(ins) and j < len(outs):
        if ins[i][1] == outs[j][1]:
            cg.identity(cg.space(x, ins[i][0]), cg.space(y, outs[j][0]), node)
            i, j = i + 1, j + 1
            continue
        bi, bj = [ins[i]], [outs[j]]
        pi, pj = ins[i][1], outs[j][1]
        while isinstance(pi, int) and isinstance(pj, int) and pi != pj:
            if pi < pj and i + len(bi) < len(ins):
                bi.append(ins[i + len(bi)])
                pi = pi * bi[-1][1] if isinstance(bi[-1][1], int) else None
            elif pj < pi and j + len(bj) < len(outs):
                bj.append(outs[j + len(bj)])
                pj = pj * bj[-1][1] if isinstance(bj[-1][1], int) else None
            else:
                break
        if not isinstance(pi, int) or pi != pj:
            _lock_block(
                cg, node, x, ins[i:], y, outs[j:], "maps axes in a way drpopt cannot follow"
            )
            return
        _map_block(cg, node, x, bi, y, bj)
        i, j = i + len(bi), j + len(bj)
    if i < len(ins) or j < len(outs):
        _lock_block(cg, node, x, ins[i:], y, outs[j:], "maps axes in a way drpopt cannot follow")


def _product(dims) -> int | str | None:
    """The product of dims: an int, a symbolic monomial (``ir/symdims``), or None."""
    ints = [d for d in dims if isinstance(d, int)]
    if len(ints) == len(dims):
        return math.prod(ints)
    return symdims.product(dims)


MAX_REPEATS = 64  # parts a level-t mapping may repeat (3 for q/k/v, 3 x heads ...)


def _map_block(cg: ChannelGraph, node: Node, x: Value, bi, y: Value, bj) -> None:
    """One axis (``single``) against several (``many``) of the same total size.

    At level t (default 1) the t-th of the many axes carries the channels: ``single`` is
    ``prod(many[:t-1])`` repeats of ``prod(many[t-1:])`` entries, each repeat an expansion
    of axis t with blocks of ``prod(many[t:])``; the other axes are locked. Level 1 is the
    coarse index (a Flatten, attention heads); the analysis raises a level when the coarse
    axis ends up locked (torchvision's q/k/v axis of size 3 before the heads)."""
    if len(bj) == 1:
        single, many, kind = (y, bj[0][0]), (x, bi), "merges"
    elif len(bi) == 1:
        single, many, kind = (x, bi[0][0]), (y, bj), "splits"
    else:
        if not _map_factor(cg, node, x, bi, y, bj):
            _lock_block(cg, node, x, bi, y, bj, "mixes several axes into several others")
        return
    value, axes = many
    shuffle = _channel_shuffle(kind, x, y, bi, bj)
    # each split or merge of a reshape has its own level (EfficientViT's reshape splits the
    # channels into heads and merges the pixels: raising one leaves the other alone)
    key = (node, value, axes[0][0])
    level = min(cg.reshape_levels.get(key, 2 if shuffle == "split" else 1), len(axes))
    repeats = math.prod(d for _, d in axes[: level - 1])
    block = math.prod(d for _, d in axes[level:])
    if repeats > MAX_REPEATS:
        level, repeats, block = 1, 1, math.prod(d for _, d in axes[1:])
    whole = cg.space(single[0], single[1])
    target = cg.space(value, axes[level - 1][0])
    if repeats == 1:
        cg.expand(whole, target, block, node)
    else:
        length = math.prod(d for _, d in axes[level - 1 :])
        parts = [cg.virtual(f"{node.name}.repeat{r}", length) for r in range(repeats)]
        cg.concat(whole, parts, node)  # type: ignore[arg-type]
        for part in parts:
            cg.expand(part, target, block, node)
    # a shuffle's two reshapes map as they must: no other level to try
    cg.splits.append((key, value, axes[level - 1][0], level, level if shuffle else len(axes)))
    others = [a for a in axes if a[0] != axes[level - 1][0]]
    why = f"{kind} axis {single[1]} of '{single[0].name}' with other axes"
    if kind == "merges":
        _lock_block(cg, node, x, others, y, [], why)
    else:
        _lock_block(cg, node, x, [], y, others, why)


def _channel_shuffle(kind: str, x: Value, y: Value, bi, bj) -> str | None:
    """Which end of a channel shuffle a reshape of ``x`` to ``y`` is ("split", "merge", None).
    A shuffle (torchvision's and onnx-caffe2's ShuffleNets) is a reshape splitting one
    axis into two, ``(g, n)``, a Transpose swapping just those two, and a reshape merging
    them back to the first reshape's input shape.

    Channel ``i * n + j`` goes to ``j * g + i``: pruning entry ``j`` of every group keeps
    the shuffle a shuffle (the reshapes' sizes follow). So the split maps its input as
    ``g`` repeats of the ``n`` axis (level 2) and the merge maps its output as an
    expansion of that axis with blocks of ``g`` (level 1), which a later split of the
    shuffled channels in halves (ShuffleNet-V2) cuts at block boundaries."""
    if kind == "splits" and len(bj) == 2 and len(y.uses) == 1:
        transpose = y.uses[0][0]
        out = transpose.outputs[0]
        merge = out.uses[0][0] if len(out.uses) == 1 else None
        if merge is None or merge.op_type not in RESHAPE_OPS:
            return None
        a, b = bj[0][0], bj[1][0]
        return "split" if _is_shuffle(x, merge.outputs[0], transpose, a, b) else None
    if kind == "merges" and len(bi) == 2 and x.producer is not None:
        transpose = x.producer
        inner = transpose.input(0)
        split = inner.producer if inner is not None and len(inner.uses) == 1 else None
        if split is None or split.op_type not in RESHAPE_OPS or len(x.uses) != 1:
            return None
        a, b = bi[0][0], bi[1][0]
        return "merge" if _is_shuffle(split.input(0), y, transpose, a, b) else None
    return None


def _is_shuffle(src: Value | None, dst: Value | None, transpose: Node, a: int, b: int) -> bool:
    """Whether ``transpose`` swaps just the adjacent axes ``a`` and ``b`` and the shuffle
    ends in the shape it started from."""
    if transpose.op_type != "Transpose" or b != a + 1 or src is None or dst is None:
        return False
    perm = transpose.attr("perm")
    rank = transpose.outputs[0].rank
    if perm is None or rank is None:
        return False
    swapped = list(range(rank))
    swapped[a], swapped[b] = b, a
    return list(perm) == swapped and src.shape is not None and src.shape == dst.shape


def _map_factor(cg: ChannelGraph, node: Node, x: Value, bi, y: Value, bj) -> bool:
    """Several axes against several, where the leading size of one side is a whole multiple
    of the other's: ``(N, C, H, W) -> (N, G, C // G * H * W)``, torch's GroupNorm export
    (opset < 18: InstanceNormalization over the groups), and back. Entry ``c`` of the
    larger axis lies in entry ``c // (C // G)`` of the smaller, whatever the trailing sizes:
    the larger is an expansion of the smaller with blocks of their ratio, so whole groups
    prune together; every trailing axis is locked. False when neither divides."""
    (ax, dx), (ay, dy) = bi[0], bj[0]
    if not isinstance(dx, int) or not isinstance(dy, int) or dx == dy:
        return False
    if dx % dy == 0:
        cg.expand(cg.space(x, ax), cg.space(y, ay), dx // dy, node)
        why = f"splits axis {ax} of '{x.name}' and merges the rest with other axes"
    elif dy % dx == 0:
        cg.expand(cg.space(y, ay), cg.space(x, ax), dy // dx, node)
        why = f"merges axis {ax} of '{x.name}' with part of another axis"
    else:
        return False
    _lock_block(cg, node, x, bi[1:], y, bj[1:], why)
    return True


def _lock_block(cg: ChannelGraph, node: Node, x: Value, bi, y: Value, bj, why: str) -> None:
    msg = f"{node.op_type} '{node.name}' {why}"
    for a, _ in bi:
        cg.lock(cg.space(x, a), "reshape", msg, node)
    for a, _ in bj:
        cg.lock(cg.space(y, a), "reshape", msg, node)
