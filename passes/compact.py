"""``compact``: physically remove the pruned channels of the plan, so the smaller model runs
in any runtime and computes what the masked (sparse) model computes.

Rules:
- every channel space of every pruned group gets a keep-mask; every constant with such a
  space is sliced along it (weights, biases, BN parameters, per-channel constants);
- a grouped convolution's ``group`` becomes the number of conv groups kept;
- ``Split`` sizes, channel ``Slice`` starts and ends, constant ``Reshape`` targets, constant
  ``Resize`` sizes and ``Expand`` shapes are rewritten from the kept counts (a constant
  shared with another node is copied first, so the other node keeps its own);
- Concat, Flatten, pooling and elementwise ops need nothing: they follow their inputs;
- a size cast to float (an attention scale from a head dim) is frozen to its original value;
- value shapes are updated; run ``cleanup`` after it to re-infer them and check the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drpopt.ir.core import Graph, Node
from drpopt.ir.rules import _shapes_read, frozen_size_cast, gathered_range
from drpopt.ir.shape_expr import (
    NumericMemo,
    const_ints,
    literal_source,
    shape_entries,
    shape_values,
)
from drpopt.passes.apply_masks import record_metadata, require_plan
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.common import get_analysis, reshare_equal_copies
from drpopt.passes.context import context_of
from drpopt.passes.masked_norm import DOMAIN, OP, unmask_layernorm, write_out_layernorm
from drpopt.passes.plan import keep_masks

Masks = dict[tuple[str | None, int | str], np.ndarray]


@dataclass
class CompactPass(Pass):
    """Remove the pruned channels from every member of each group (compact ONNX)."""

    name: ClassVar[str] = "compact"

    def call(self, model: Graph) -> PassResult:
        plan = require_plan(model, self.name)
        masks = keep_masks(plan.resolve(get_analysis(model)))
        if not masks:
            return PassResult(model, False)
        memo = NumericMemo()
        resized = {name for name, _ in masks if name is not None}
        for node in list(model.nodes):  # sizes used as numbers keep their original values
            frozen = frozen_size_cast(node, memo)
            if frozen is not None and _reads_resized(node, resized):
                model.set_const_input(node, 0, frozen)
        for node in list(model.nodes):
            _update_node(model, node, masks, memo)
        keys: dict[str, tuple] = {}  # copies of one tensor cut alike stay one
        for (name, axis), mask in masks.items():
            if name is not None and model.values[name].is_const:
                value = model.values[name]  # its storage before apply-masks copied it
                key = keys.setdefault(name, (value.meta.get("shared_storage", value.storage),))
                keys[name] = (*key, (int(axis), mask.tobytes()))
        for (name, axis), mask in masks.items():
            if name is None:
                continue
            value = model.values[name]
            if value.is_const:
                if value.producer is not None and value.producer.op_type != "Constant":
                    model.materialize(value)
                value.const = np.compress(mask, value.const, axis=int(axis))
                value.shape = tuple(value.const.shape)
            elif value.shape is not None:
                shape = list(value.shape)
                shape[int(axis)] = int(mask.sum())
                value.shape = tuple(shape)
        reshare_equal_copies(model, {k: (v[0], *sorted(v[1:])) for k, v in keys.items()})
        _fix_computed_targets(model)
        before_17 = model.opsets.get("", 17) < 17  # no LayerNormalization op there
        for node in list(model.nodes):
            masked = node.domain == DOMAIN and node.op_type == OP
            if masked and unmask_layernorm(node) and before_17:
                write_out_layernorm(model, node)
        if not any(n.domain == DOMAIN for n in model.nodes):  # the function is unused now
            model.functions = [f for f in model.functions if f.domain != DOMAIN]
            model.opsets.pop(DOMAIN, None)
        context = context_of(model)
        context.dense_weights = None  # shapes changed: the dense model is gone
        context.compacted = True
        record_metadata(model, plan)
        return PassResult(model, True)


def _reads_resized(node: Node, resized: set[str]) -> bool:
    """Whether a size cast to float reads the shape of a tensor compaction resizes (an
    attention scale from a pruned head dim). Sizes of untouched tensors (a detector's
    anchor grid from the feature map's height and width) stay computed, so a model
    exported with dynamic axes keeps them."""
    read = _shapes_read(node.input(0))  # type: ignore[arg-type]
    return not read or any(v.name in resized for v in read)


def _kept(masks: Masks, name: str | None, axis: int) -> np.ndarray | None:
    return masks.get((name, axis)) if name is not None else None


def _update_node(graph: Graph, node: Node, masks: Masks, memo: NumericMemo) -> None:
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and int(node.attr("group", 1)) > 1:
        mask = masks.get((None, f"{node.name}.groups"))
        if mask is not None:
            node.attrs["group"] = int(mask.sum())
    elif op == "Split":
        _update_split(graph, node, masks)
    elif op == "Slice":
        _update_slice(graph, node, masks, memo)
    elif op == "Gather":
        _update_gather(graph, node, masks)
    elif op == "Reshape":
        _update_shape_input(graph, node, masks, 1, node.outputs[0].name, right_aligned=False)
        _update_computed_target(graph, node, masks)
    elif op == "Resize" and node.input(3) is not None:
        _update_shape_input(graph, node, masks, 3, node.outputs[0].name, right_aligned=False)
    elif op == "Expand":
        _update_shape_input(graph, node, masks, 1, node.outputs[0].name, right_aligned=True)


def _update_split(graph: Graph, node: Node, masks: Masks) -> None:
    x = node.input(0)
    if x is None or x.rank is None:
        return
    axis = int(node.attr("axis", 0)) % x.rank
    if (x.name, axis) not in masks:
        return
    sizes = []
    for y in node.outputs:
        mask = _kept(masks, y.name, axis)
        sizes.append(int(mask.sum()) if mask is not None else int(y.shape[axis]))  # type: ignore[index]
    node.attrs.pop("num_outputs", None)  # explicit sizes from now on (opset 18 form)
    if "split" in node.attrs or graph.opsets.get("", 13) < 13:
        node.attrs["split"] = sizes
    else:
        graph.set_const_input(node, 1, np.array(sizes, dtype=np.int64))


def _update_slice(graph: Graph, node: Node, masks: Masks, memo: NumericMemo) -> None:
    """Slice bounds on a pruned axis are renumbered to the kept channels; computed bounds
    (``torch.chunk``'s ``(C + 1) // 2``, read from the sliced tensor's own shape) become
    constants, since they would compute the split of the compact tensor's size."""
    x = node.input(0)
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    if (starts is None or ends is None) and x is not None and x.static_shape is not None:
        starts, ends = shape_values(node.input(1), memo), shape_values(node.input(2), memo)
    if x is None or x.rank is None or starts is None or ends is None:
        return
    axes = const_ints(node.input(3)) if node.input(3) is not None else list(range(len(starts)))
    if axes is None:
        return
    new_starts, new_ends, changed = list(starts), list(ends), False
    for i, a in enumerate(axes):
        mask = _kept(masks, x.name, a % x.rank)
        if mask is None:
            continue
        lo, hi, _ = slice(starts[i], ends[i]).indices(mask.size)
        new_starts[i] = int(mask[:lo].sum())
        new_ends[i] = new_starts[i] + int(mask[lo:hi].sum())
        changed = True
    if changed:
        graph.set_const_input(node, 1, np.array(new_starts, dtype=np.int64))
        graph.set_const_input(node, 2, np.array(new_ends, dtype=np.int64))


def _update_computed_target(graph: Graph, node: Node, masks: Masks) -> None:
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
        mask = _kept(masks, y.name, k)
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


def _fix_computed_targets(graph: Graph) -> None:
    """A computed Reshape target whose sizes come from another tensor's channels (Swin's
    ``reshape(B, N, 3, heads, C // heads)``, ``C`` read from the residual stream) would
    compute wrong sizes once that stream and the heads are pruned apart. With the new
    shapes in place, each target is evaluated again; entries that no longer give the
    output's new static size are overridden (a constant target, or ``Where`` over the
    computed one so symbolic entries stay computed)."""
    memo = NumericMemo()
    for node in list(graph.nodes):
        if node.op_type != "Reshape":
            continue
        x, target, y = node.input(0), node.input(1), node.outputs[0]
        if x is None or target is None or target.is_const or y.shape is None:
            continue
        entries = shape_entries(target, memo)
        if entries is None or len(entries) != len(y.shape):
            continue
        allowzero = bool(node.attr("allowzero", 0))
        fix = {}
        for k, (entry, want) in enumerate(zip(entries, y.shape, strict=True)):
            if not isinstance(entry, int) or not isinstance(want, int) or entry == -1:
                continue
            got = x.shape[k] if entry == 0 and not allowzero and x.shape else entry
            if got != want:
                fix[k] = want
        if not fix:
            continue
        if len(fix) == len(entries) or all(isinstance(e, int) for e in entries):
            new = [fix.get(k, e) for k, e in enumerate(entries)]
            graph.set_const_input(node, 1, np.array(new, dtype=np.int64))
            continue
        _override_entries(graph, node, target, fix)


def _override_entries(graph: Graph, node: Node, target, fix: dict[int, int]) -> None:
    """``Where(positions, sizes, target)`` in front of ``node``'s target input."""
    n = len(target.shape) and int(target.shape[0])
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


def _update_gather(graph: Graph, node: Node, masks: Masks) -> None:
    """Constant indices that pick one entry or a contiguous range of a pruned axis are
    renumbered to the kept entries (the analysis locks every other kind of Gather)."""
    x, idx = node.input(0), node.input(1)
    if x is None or idx is None or x.rank is None:
        return
    axis = int(node.attr("axis", 0)) % x.rank
    mask = _kept(masks, x.name, axis)
    picked = gathered_range(x, idx, axis) if mask is not None else None
    if picked is None:
        return
    lo, hi = picked
    start = int(mask[:lo].sum())  # type: ignore[index]
    if idx.rank == 0:
        new = np.array(start, dtype=np.asarray(idx.const).dtype)
    else:
        count = int(mask[lo:hi].sum())  # type: ignore[index]
        new = np.arange(start, start + count, dtype=np.asarray(idx.const).dtype)
    graph.set_const_input(node, 1, new)


def _update_shape_input(
    graph: Graph, node: Node, masks: Masks, index: int, out: str, right_aligned: bool
) -> None:
    target = const_ints(node.input(index))
    y = node.outputs[0]
    if target is None or y.rank is None:
        return
    new = list(target)
    off = y.rank - len(target) if right_aligned else 0
    changed = False
    for k in range(len(target)):
        mask = _kept(masks, out, k + off)
        if mask is not None and target[k] not in (-1, 0) and target[k] != 1:
            new[k] = int(mask.sum())
            changed = True
    if changed:
        graph.set_const_input(node, index, np.array(new, dtype=np.int64))
