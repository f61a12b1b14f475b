"""Compaction hooks: how the ops that state channel counts or positions in their attributes
or constant inputs are rewritten when ``compact`` cuts channels (the ``compact`` and
``finish`` of their ``OpRule``); every other built-in op follows its members
(``rules.follow_members``). Attached to the rules on import (``ir/rules.py`` imports this
after the coupling modules).

- a grouped convolution's ``group`` becomes the number of conv groups kept;
- ``Split`` sizes, channel ``Slice`` starts and ends, constant ``Reshape`` targets, constant
  ``Resize`` sizes and ``Expand`` shapes are rewritten from the kept counts (a constant
  shared with another node is copied first, so the other node keeps its own);
- a size cast to float (an attention scale from a head dim) is frozen to its original value;
- a computed ``Reshape`` target that would compute the old sizes is overridden (``finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

import drpopt.ir.rules_rnn  # noqa: F401  (registers LSTM, GRU, RNN with their compaction)
from drpopt.ir import (
    rules_deploy,  # noqa: F401  (registers Quantize/DequantizeLinear, DeformConv)
    rules_einsum,  # noqa: F401  (registers the Einsum rule)
    rules_shapes,  # noqa: F401  (registers the reshape rules)
)
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.rules import RULES, CompactHook
from drpopt.ir.rules_cast import _shapes_read, frozen_size_cast
from drpopt.ir.rules_select import gathered_runs, padded_axis, range_axis
from drpopt.ir.shape_expr import (
    NumericMemo,
    const_ints,
    literal_source,
    shape_entries,
    shape_values,
)

Masks = dict[tuple[str | None, int | str], np.ndarray]


class KeptChannels:
    """Which channels stay, per channel space ``compact`` cuts: what compaction hooks read.

    ``mask(value, axis)`` is a boolean keep-mask over the axis as it was before the cut
    (None when the axis is not cut); ``indices`` the kept positions; ``count`` how many.
    ``masks`` is the whole table (``(value name, axis)`` or ``(None, virtual label)``);
    ``memo`` caches shape arithmetic across the hooks of one phase."""

    def __init__(self, masks: Masks, memo: NumericMemo | None = None) -> None:
        self.masks = masks
        self.memo = memo if memo is not None else NumericMemo()
        self.resized = {name for name, _ in masks if name is not None}

    def mask(self, value: Value | str | None, axis: int) -> np.ndarray | None:
        """The keep-mask of ``(value, axis)`` (a negative axis counts from a Value's end)."""
        if value is None:
            return None
        if isinstance(value, Value):
            if axis < 0 and value.rank is not None:
                axis += value.rank
            value = value.name
        return self.masks.get((value, axis))

    def indices(self, value: Value | str | None, axis: int) -> np.ndarray | None:
        """The positions kept along ``(value, axis)``, ascending, or None when not cut."""
        mask = self.mask(value, axis)
        return None if mask is None else np.flatnonzero(mask)

    def count(self, value: Value | str | None, axis: int) -> int | None:
        """How many channels of ``(value, axis)`` stay, or None when it is not cut."""
        mask = self.mask(value, axis)
        return None if mask is None else int(mask.sum())

    def virtual(self, label: str) -> np.ndarray | None:
        """The keep-mask of a virtual space (a grouped conv's ``<node>.groups``)."""
        return self.masks.get((None, label))

    def touches(self, node: Node) -> bool:
        """Whether the cut changes the shape of an input or output of ``node``."""
        return any(v is not None and v.name in self.resized for v in (*node.inputs, *node.outputs))


def compaction(*op_types: str, phase: str = "compact") -> Callable[[CompactHook], CompactHook]:
    """Makes the decorated function the ``compact`` (or ``finish``) hook of the built-in
    rules of ``op_types``."""

    def deco(fn: CompactHook) -> CompactHook:
        for op in op_types:
            RULES[op] = replace(RULES[op], **{phase: fn})
        return fn

    return deco


@compaction("Conv", "ConvTranspose")
def _compact_grouped_conv(graph: Graph, node: Node, kept: KeptChannels) -> None:
    if int(node.attr("group", 1)) > 1:
        mask = kept.virtual(f"{node.name}.groups")
        if mask is not None:
            node.attrs["group"] = int(mask.sum())


@compaction("Cast", "CastLike")
def _freeze_size_cast(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """Sizes used as numbers keep their original values."""
    frozen = frozen_size_cast(node, kept.memo)
    if frozen is not None and _reads_resized(node, kept.resized):
        graph.set_const_input(node, 0, frozen)


def _reads_resized(node: Node, resized: set[str]) -> bool:
    """Whether a size cast to float reads the shape of a tensor compaction resizes (an
    attention scale from a pruned head dim). Sizes of untouched tensors (a detector's
    anchor grid from the feature map's height and width) stay computed, so a model
    exported with dynamic axes keeps them."""
    read = _shapes_read(node.input(0))  # type: ignore[arg-type]
    return not read or any(v.name in resized for v in read)


@compaction("Pad")
def _update_pad(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """Zeros padded onto the channel axis (or the one axis padded: ``rules_select.
    padded_axis``) shrink to the kept ones: the pads become constants (torch computes them
    in the graph)."""
    before, after = kept.virtual(f"{node.name}.before"), kept.virtual(f"{node.name}.after")
    x = node.input(0)
    if (before is None and after is None) or x is None or x.rank is None:
        return
    pads = node.attr("pads")
    if pads is None:
        pads = const_ints(node.input(1)) or shape_values(node.input(1), kept.memo)
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    axes = [a % x.rank for a in axes] if axes is not None else list(range(x.rank))
    if pads is None:
        return
    ax = padded_axis(a for i, a in enumerate(axes) if pads[i] or pads[i + len(axes)])
    if ax is None:
        return
    pads, i = list(pads), axes.index(ax)
    if before is not None:
        pads[i] = int(before.sum())
    if after is not None:
        pads[i + len(axes)] = int(after.sum())
    if node.attr("pads") is not None:
        node.attrs["pads"] = pads
    else:
        graph.set_const_input(node, 1, np.array(pads, dtype=np.int64))


@compaction("Split")
def _update_split(graph: Graph, node: Node, kept: KeptChannels) -> None:
    x = node.input(0)
    if x is None or x.rank is None:
        return
    axis = int(node.attr("axis", 0)) % x.rank
    if (x.name, axis) not in kept.masks:
        return
    sizes = []
    for y in node.outputs:
        mask = kept.mask(y.name, axis)
        sizes.append(int(mask.sum()) if mask is not None else int(y.shape[axis]))  # type: ignore[index]
    node.attrs.pop("num_outputs", None)  # explicit sizes from now on (opset 18 form)
    if "split" in node.attrs or graph.opsets.get("", 13) < 13:
        node.attrs["split"] = sizes
    else:
        graph.set_const_input(node, 1, np.array(sizes, dtype=np.int64))


@compaction("Slice")
def _update_slice(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """Slice bounds on a pruned axis are renumbered to the kept channels; computed bounds
    (``torch.chunk``'s ``(C + 1) // 2``, read from the sliced tensor's own shape) become
    constants, since they would compute the split of the compact tensor's size."""
    x, memo = node.input(0), kept.memo
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    if (starts is None or ends is None) and x is not None and x.shape is not None:
        # numbers only where they come from static sizes (a symbolic batch elsewhere is fine)
        starts, ends = shape_values(node.input(1), memo), shape_values(node.input(2), memo)
    if x is None or x.rank is None or starts is None or ends is None:
        return
    axes = const_ints(node.input(3)) if node.input(3) is not None else list(range(len(starts)))
    if axes is None:
        return
    new_starts, new_ends, changed = list(starts), list(ends), False
    for i, a in enumerate(axes):
        mask = kept.mask(x.name, a % x.rank)
        if mask is None:
            continue
        lo, hi, _ = slice(starts[i], ends[i]).indices(mask.size)
        new_starts[i] = int(mask[:lo].sum())
        new_ends[i] = new_starts[i] + int(mask[lo:hi].sum())
        changed = True
    if changed:
        graph.set_const_input(node, 1, np.array(new_starts, dtype=np.int64))
        graph.set_const_input(node, 2, np.array(new_ends, dtype=np.int64))


@compaction("Gather")
def _update_gather(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """Constant indices that pick one entry, or each entry at most once (a contiguous range,
    a permutation, a selection) of a pruned axis are renumbered to the kept entries (the
    analysis locks every other kind of Gather)."""
    x, idx = node.input(0), node.input(1)
    if x is None or idx is None or x.rank is None:
        return
    axis = int(node.attr("axis", 0)) % x.rank
    mask = kept.mask(x.name, axis)
    if mask is None or gathered_runs(x, idx, axis) is None:
        return
    old = np.asarray(idx.const)
    new_number = np.cumsum(mask) - 1  # each kept entry's place among the kept
    if idx.rank == 0:
        graph.set_const_input(node, 1, np.array(new_number[int(old) % mask.size], old.dtype))
        return
    flat = old.reshape(-1) % mask.size
    picked = flat[mask[flat]]  # a pruned entry's output position goes with it (one group)
    shape = list(old.shape)
    shape[range_axis(idx)] = picked.size
    graph.set_const_input(node, 1, new_number[picked].astype(old.dtype).reshape(shape))


@compaction("Reshape")
def _update_reshape(graph: Graph, node: Node, kept: KeptChannels) -> None:
    _update_shape_input(graph, node, kept, 1, node.outputs[0].name, right_aligned=False)
    _update_computed_target(graph, node, kept)


@compaction("Resize")
def _update_resize(graph: Graph, node: Node, kept: KeptChannels) -> None:
    if node.input(3) is not None:
        _update_shape_input(graph, node, kept, 3, node.outputs[0].name, right_aligned=False)


@compaction("Expand")
def _update_expand(graph: Graph, node: Node, kept: KeptChannels) -> None:
    _update_shape_input(graph, node, kept, 1, node.outputs[0].name, right_aligned=True)


def _update_shape_input(
    graph: Graph, node: Node, kept: KeptChannels, index: int, out: str, right_aligned: bool
) -> None:
    target = const_ints(node.input(index))
    y = node.outputs[0]
    if target is None or y.rank is None:
        return
    new = list(target)
    off = y.rank - len(target) if right_aligned else 0
    changed = False
    for k in range(len(target)):
        mask = kept.mask(out, k + off)
        if mask is not None and target[k] not in (-1, 0) and target[k] != 1:
            new[k] = int(mask.sum())
            changed = True
    if changed:
        graph.set_const_input(node, index, np.array(new, dtype=np.int64))


def _update_computed_target(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """A computed Reshape target with a literal size of a pruned axis (torchvision's MHA:
    ``Concat(Shape slices, [3, 768], ...)``): the constant that holds it is rewritten."""
    target, y = node.input(1), node.outputs[0]
    if target is None or target.is_const or y.rank is None:
        return
    memo: dict = {}
    entries = shape_entries(target, memo)
    if entries is None:
        return
    for k, entry in enumerate(entries):
        mask = kept.mask(y.name, k)
        if mask is None or not isinstance(entry, int) or entry in (-1, 0, 1):
            continue
        source = literal_source(target, k, memo)
        if source is None:
            continue
        concat, index, offset = source
        part = shape_entries(concat.input(index), memo)
        new = np.array(part, dtype=np.int64)
        new[offset] = int(mask.sum())
        graph.set_const_input(concat, index, new.reshape(np.shape(concat.input(index).const)))


@compaction("Reshape", phase="finish")
def _fix_computed_target(graph: Graph, node: Node, kept: KeptChannels) -> None:
    """A computed Reshape target whose sizes come from another tensor's channels (Swin's
    ``reshape(B, N, 3, heads, C // heads)``, ``C`` read from the residual stream) would
    compute wrong sizes once that stream and the heads are pruned apart. With the new
    shapes in place, the target is evaluated again; entries that no longer give the
    output's new static size are overridden (a constant target, or ``Where`` over the
    computed one so symbolic entries stay computed)."""
    x, target, y = node.input(0), node.input(1), node.outputs[0]
    if x is None or target is None or target.is_const or y.shape is None:
        return
    entries = shape_entries(target, kept.memo)
    if entries is None or len(entries) != len(y.shape):
        return
    allowzero = bool(node.attr("allowzero", 0))
    fix = {}
    for k, (entry, want) in enumerate(zip(entries, y.shape, strict=True)):
        if not isinstance(entry, int) or not isinstance(want, int) or entry == -1:
            continue
        got = x.shape[k] if entry == 0 and not allowzero and x.shape else entry
        if got != want:
            fix[k] = want
    if not fix:
        return
    if len(fix) == len(entries) or all(isinstance(e, int) for e in entries):
        new = [fix.get(k, e) for k, e in enumerate(entries)]
        graph.set_const_input(node, 1, np.array(new, dtype=np.int64))
        return
    _override_entries(graph, node, target, fix)


def _override_entries(graph: Graph, node: Node, target: Value, fix: dict[int, int]) -> None:
    """``Where(positions, sizes, target)`` in front of ``node``'s target input."""
    n = len(target.shape) and int(target.shape[0])  # type: ignore[arg-type]
    where = np.zeros(n, dtype=bool)
    sizes = np.zeros(n, dtype=np.int64)
    for k, want in fix.items():
        where[k], sizes[k] = True, want
    base = f"{node.name}.target"
    cond = graph.value(
        graph.fresh_name(f"{base}.where"), const=where, shape=(n,), dtype=where.dtype
    )
    vals = graph.value(
        graph.fresh_name(f"{base}.sizes"), const=sizes, shape=(n,), dtype=sizes.dtype
    )
    out = graph.value(graph.fresh_name(base), shape=(n,), dtype=np.dtype(np.int64))
    name = graph.fresh_name(f"{base}_Where")
    graph.add_node("Where", name, [cond, vals, target], [out], before=node)
    graph.set_input(node, 1, out)
