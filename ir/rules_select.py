"""Coupling rules of the ops that select or add channels by constants: ``Pad`` (zeros padded
onto the channel axis are channels of their own), ``Gather`` (one entry, a range, a
permutation or a selection of the channels) and ``GatherElements`` (channels pass through
on the axes it does not gather along). Registered into ``ir.rules.RULES`` on import
(``ir/rules_compact.py`` imports this and holds their compaction hooks)."""

from __future__ import annotations

import numpy as np

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node, Value
from drpopt.ir.rules import lock_axis, rule, same_axes
from drpopt.ir.rules_shapes import _part_space
from drpopt.ir.shape_expr import const_ints, shape_entries, shape_values


@rule("Pad")
def _pad(node: Node, cg: ChannelGraph) -> None:
    x, y = node.input(0), node.outputs[0]
    pads = node.attr("pads") if node.attr("pads") is not None else const_ints(node.input(1))
    if pads is None and node.input(1) is not None:
        # pads computed from shapes (Swin's window padding): only literal zeros leave an
        # axis unpadded; every entry computed at run time counts as padding it
        entries = shape_entries(node.input(1), cg.shape_memo)
        numbers = shape_values(node.input(1), cg.numeric_memo)
        if numbers is not None and x is not None and x.static_shape is not None:
            half = len(numbers) // 2
            if half == x.rank and (y.shape is None or y.static_shape is None):
                y.shape = tuple(d + numbers[a] + numbers[a + half] for a, d in enumerate(x.shape))
        if entries is not None:
            pads = [e if isinstance(e, int) else 1 for e in entries]
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    if x is None or x.rank is None or pads is None or (node.input(3) is not None and axes is None):
        cg.lock_value(x, "rule", f"Pad '{node.name}' has computed pads", node)
        cg.lock_value(y, "rule", f"Pad '{node.name}' has computed pads", node)
        return
    axes = [a % x.rank for a in axes] if axes is not None else list(range(x.rank))
    n = len(axes)
    padded = {a for i, a in enumerate(axes) if pads[i] or pads[i + n]}
    if x.shape is not None and (y.shape is None or len(y.shape) == x.rank):
        # shape inference leaves every dim unknown after computed pads: unpadded axes keep
        # their size
        old = y.shape or (None,) * x.rank
        y.shape = tuple(
            x.shape[a] if a not in padded and not isinstance(old[a], int) else old[a]
            for a in range(x.rank)
        )
    channel = _padded_channels(node, cg, x, y, axes, padded)
    padded.discard(channel)
    same_axes(cg, node, x, y, axes=[a for a in range(x.rank) if a not in padded | {channel}])
    lock_axis(cg, node, [x, y], sorted(padded), "pads this axis")


def padded_axis(padded) -> int | None:
    """The axis a constant Pad maps as a concat: the channel axis (1) when it is padded,
    else the only padded axis (EfficientViT's ``F.pad(v, (0, 0, 0, 1), value=1)`` appends
    a row of ones to each head's value dims, axis 2), else None."""
    padded = set(padded)
    return 1 if 1 in padded else (next(iter(padded)) if len(padded) == 1 else None)


def _padded_channels(node: Node, cg: ChannelGraph, x: Value, y: Value, axes, padded) -> int | None:
    """BlazeFace widens a residual by ``F.pad(x, (0, 0, 0, 0, 0, k))``: a constant Pad of
    the channel axis (1) (or of the one axis padded, ``padded_axis``) is the concat of the
    pad's channels and ``x``'s, which map 1:1. Zeros padded prune too (``compact`` shrinks
    the pads: ``rules_compact._update_pad``); another padding value is locked. Returns the
    axis mapped so."""
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ax = padded_axis(padded)
    if ax is None or mode != "constant" or x.shape is None or y.shape is None:
        return None
    pads = node.attr("pads")
    if pads is None and node.input(1) is not None:
        pads = const_ints(node.input(1))
        if pads is None:
            pads = shape_values(node.input(1), cg.numeric_memo)
    n = len(axes)
    if pads is None or len(pads) != 2 * n or ax not in axes:
        return None
    before, after = pads[axes.index(ax)], pads[axes.index(ax) + n]
    width = x.shape[ax]
    if (
        before < 0
        or after < 0
        or not isinstance(width, int)
        or y.shape[ax] != before + width + after
    ):
        return None
    why = f"Pad '{node.name}' adds these channels with a value other than zero"
    value = node.attr("value", 0.0) if node.input(2) is None else _scalar_const(node.input(2))
    parts = []
    for label, size in ((".before", before), ("", width), (".after", after)):
        if not size:
            continue
        if label:
            part = cg.virtual(f"{node.name}{label}", size)
            if value != 0:  # None: computed, unknown
                cg.lock(part, "rule", why, node)
        else:
            part = cg.space(x, ax)
        parts.append(part)
    cg.concat(cg.space(y, ax), parts, node)
    return ax


def _scalar_const(value: Value | None) -> float | None:
    """A constant scalar's value (a Pad's ``constant_value``), else None (not 0)."""
    if value is None or not value.is_const or np.asarray(value.const).size != 1:
        return None
    return float(np.asarray(value.const).reshape(-1)[0])


@rule("Gather")
def _gather(node: Node, cg: ChannelGraph) -> None:
    """Other axes pass through; along the gathered axis constant indices that pick one
    entry or a contiguous ascending range map channels exactly (like a Slice), and so do
    a permutation or a selection without repeats (each run of consecutive indices is one
    part of both sides: ``gathered_runs``); repeated or computed indices lock the axis on
    both sides."""
    x, idx, y = node.input(0), node.input(1), node.outputs[0]
    if x is None or idx is None or x.rank is None or idx.rank is None or y.rank is None:
        cg.lock_value(x, "rule", f"Gather '{node.name}': rank unknown", node)
        cg.lock_value(y, "rule", f"Gather '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis", 0) % x.rank
    for ax in range(x.rank):
        if ax < axis:
            cg.identity(cg.space(x, ax), cg.space(y, ax), node)
        elif ax > axis:
            cg.identity(cg.space(x, ax), cg.space(y, ax - 1 + idx.rank), node)
    picked = gathered_range(x, idx, axis)
    if picked is None:
        runs = gathered_runs(x, idx, axis)
        if runs is not None:
            _gather_runs(cg, node, x, y, axis + range_axis(idx), axis, runs)
            return
        why = "gathers along this axis (repeated or computed indices)"
        lock_axis(cg, node, [x], [axis], why)
        lock_axis(cg, node, [y], range(axis, axis + idx.rank), why)
        return
    lo, hi = picked
    dim = x.shape[axis]  # type: ignore[index]
    parts: list[int | None] = []
    if lo > 0:
        parts.append(cg.virtual(f"{node.name}.dropped_head", lo))
    if idx.rank == 0:
        parts.append(cg.virtual(f"{node.name}.picked", 1))
    else:
        parts.append(_part_space(cg, y, axis + range_axis(idx), node))
    if hi < dim:
        parts.append(cg.virtual(f"{node.name}.dropped_tail", dim - hi))
    cg.concat(cg.space(x, axis), parts, node)


@rule("GatherElements")
def _gather_elements(node: Node, cg: ChannelGraph) -> None:
    """``out[..., q, ...] = data[..., idx[..., q, ...], ...]`` along ``axis``; ``idx`` and
    ``out`` have one shape. Along every other axis position ``p`` of ``out`` reads
    position ``p`` of ``data`` and ``idx``: where the three sizes agree the axes are one
    channel space (pruning ``p`` drops it from all three: constant indices are cut as a
    ``param``, computed ones with what computes them); where ``idx`` is shorter it reads
    only the first entries of ``data`` (locked). Along ``axis`` ``out`` and ``idx`` are one
    space, and ``data``'s axis is read at the positions the indices hold (locked: constant
    or computed, pruning it would leave them pointing at other entries)."""
    x, idx, y = node.input(0), node.input(1), node.outputs[0]
    ranks = {v.rank for v in (x, idx, y) if v is not None}
    if x is None or idx is None or None in ranks or len(ranks) != 1:
        for v in (x, idx, y):
            cg.lock_value(v, "rule", f"GatherElements '{node.name}': rank unknown", node)
        return
    axis = node.attr("axis", 0) % x.rank
    same_axes(cg, node, idx, y)
    shorter = [
        ax
        for ax in range(x.rank)
        if ax != axis and x.shape[ax] != idx.shape[ax]  # type: ignore[index]
    ]
    same_axes(cg, node, x, idx, axes=[a for a in range(x.rank) if a != axis and a not in shorter])
    lock_axis(cg, node, [x], [axis], "gathers along this axis (at the positions its indices hold)")
    lock_axis(cg, node, [x, idx, y], shorter, "reads only the first entries of this axis")


def gathered_range(x: Value, idx: Value, axis: int) -> tuple[int, int] | None:
    """``(lo, hi)`` when a Gather's constant indices pick entry ``lo`` (a scalar index) or
    the contiguous ascending range ``[lo, hi)`` of ``axis``, laid along one axis of the
    indices (``range_axis``; the others of size 1, as the dynamo exporter writes
    ``as_strided`` of a flattened ``(1, C, 1, 1)`` tensor); None otherwise."""
    indices = const_ints(idx)
    dim = x.shape[axis] if x.shape is not None else None
    if indices is None or not isinstance(dim, int) or not indices:
        return None
    if sum(d != 1 for d in np.shape(idx.const)) > 1:
        return None
    if any(not -dim <= i < dim for i in indices):
        return None
    indices = [i % dim for i in indices]
    lo = indices[0]
    if indices != list(range(lo, lo + len(indices))):
        return None
    return lo, lo + len(indices)


def gathered_runs(x: Value, idx: Value, axis: int) -> list[tuple[int, int]] | None:
    """A Gather's constant indices along one axis of the indices (as ``gathered_range``)
    that pick each entry of ``axis`` at most once, as runs ``(x_start, length)`` of
    consecutive entries in output order; None for repeats, computed indices or more than
    one axis of indices."""
    indices = const_ints(idx)
    dim = x.shape[axis] if x.shape is not None else None
    if indices is None or not isinstance(dim, int) or not indices:
        return None
    if sum(d != 1 for d in np.shape(idx.const)) > 1 or any(not -dim <= i < dim for i in indices):
        return None
    indices = [i % dim for i in indices]
    if len(set(indices)) != len(indices):
        return None
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _gather_runs(
    cg: ChannelGraph, node: Node, x: Value, y: Value, y_axis: int, axis: int, runs: list
) -> None:
    """Each run of a permuting or selecting Gather is one virtual part, placed in input
    order (with the entries nobody picks) in ``x``'s axis and in output order in ``y``'s."""
    parts = [cg.virtual(f"{node.name}.run{k}", n) for k, (_, n) in enumerate(runs)]
    order = sorted(range(len(runs)), key=lambda k: runs[k][0])
    x_parts: list[int | None] = []
    at = 0
    for k in order:
        start, n = runs[k]
        if start > at:
            x_parts.append(cg.virtual(f"{node.name}.dropped{at}", start - at))
        x_parts.append(parts[k])
        at = start + n
    dim = x.shape[axis]  # type: ignore[index]
    if at < dim:
        x_parts.append(cg.virtual(f"{node.name}.dropped{at}", dim - at))
    cg.concat(cg.space(x, axis), x_parts, node)
    cg.concat(cg.space(y, y_axis), list(parts), node)


def range_axis(idx: Value) -> int:
    """The axis of a Gather's constant indices that ``gathered_range`` reads its range
    along: the one of more than one entry (the last when all have one)."""
    shape = np.shape(idx.const)
    return next((j for j, d in enumerate(shape) if d != 1), len(shape) - 1)
