"""``analyze()``: the coupled channel groups of a model with their parameter and MAC shares.

Counting rules:
- parameters are the elements of floating-point initializers (and Constant outputs) that a
  Conv/ConvTranspose/Gemm/MatMul/normalisation/PRelu reads, whatever their size, plus other
  non-scalar float constants (a per-channel scale) that are not shape arguments;
- MACs are those of Conv, ConvTranspose, Gemm and MatMul (symbolic dims count as 1);
- a group's ``params`` are the elements its channels cover in every member tensor (a tensor
  sliced on two axes by the same group counts each element once); its ``macs`` are the MACs
  those weight elements take part in, so pruning the whole group would save exactly that;
- ``prunable_params`` / ``prunable_macs`` in the totals are the union over prunable groups.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from drpopt.ir.channels import Group, Lock
from drpopt.ir.core import Graph, Value, gc_paused
from drpopt.ir.counting import (
    _distinct_params,
    _group_totals,
    _is_param,
    _removed,
    macs_and_weight_uses,
    member_spans,
    param_info,
)
from drpopt.ir.rules import apply_rules
from drpopt.ir.solve import CUT_BLOCK

SCHEMA_VERSION = 1


@dataclass
class Analysis:
    """The result of ``analyze``: groups, totals, and the IR they refer to."""

    graph: Graph
    groups: list[Group]
    params: int
    macs: int
    prunable_params: int
    prunable_macs: int
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (op_type, node name)
    seconds: float = 0.0
    # locked channel sets nothing produces that a weight reads as its input axis (the
    # axis behind a lock that no group reaches): not groups, listed for their reasons
    unproduced: list[Group] = field(default_factory=list)
    # the locks of axes no rule mapped and no channel space holds (``ungrouped``'s reasons)
    pending_locks: dict = field(default_factory=dict, repr=False)

    @functools.cached_property
    def ungrouped(self) -> list[tuple[str, int, str]]:
        """The weights no group and no listed lock indexes, largest first: (tensor,
        elements, why: the lock of an axis of it no rule mapped, else the nodes that read
        it). Made on first read: most analyses never read it."""
        params = {v.name: v for v in self.graph.values.values() if _is_param(v)}
        return _ungrouped(self.groups + self.unproduced, params, self.pending_locks)

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def locked_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    def locked_by(self) -> dict[str, int]:
        """How many locked groups each cause (a node, a graph input or output) locks."""
        count: Counter[str] = Counter()
        for g in self.locked_groups:
            for cause in dict.fromkeys(_cause(lock) for lock in g.locks) or ["size 1"]:
                count[cause] += 1
        return dict(count.most_common())

    def group(self, producer: str) -> Group:
        """The group whose producers include the node ``producer``."""
        for g in self.groups:
            if producer in g.producers:
                return g
        raise KeyError(f"no group is produced by a node named {producer!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (schema in the README)."""
        return {
            "schema": SCHEMA_VERSION,
            "model": {
                "source": self.graph.meta.get("source"),
                "opset": self.graph.opsets.get(""),
                "nodes": len(self.graph.nodes),
            },
            "groups": [_group_dict(g) for g in self.groups],
            "unproduced": [_group_dict(g) for g in self.unproduced],
            "ungrouped": [
                {"tensor": t, "params": n, "reason": why} for t, n, why in self.ungrouped
            ],
            "totals": {
                "params": self.params,
                "macs": self.macs,
                "prunable_params": self.prunable_params,
                "prunable_macs": self.prunable_macs,
                "groups": len(self.groups),
                "prunable_groups": len(self.prunable_groups),
                "locked_groups": len(self.locked_groups),
                "prunable_channels": sum(g.size for g in self.prunable_groups),
                "channels": sum(g.size for g in self.groups),
                "locked_by": self.locked_by(),
                "unsupported_ops": [{"op": op, "node": n} for op, n in self.unsupported],
            },
        }


def _cause(lock: Lock) -> str:
    if lock.kind in ("graph-input", "graph-output"):
        return lock.message
    if lock.node:
        return f"{lock.op} '{lock.node}'"
    return lock.message


def _group_dict(g: Group) -> dict[str, Any]:
    return {
        "id": g.id,
        "size": g.size,
        "prunable": g.prunable,
        "reason": g.reason,
        "producers": g.producers,
        "params": g.params,
        "macs": g.macs,
        "members": [
            {
                "role": m.role,
                "node": m.node,
                "tensor": m.tensor,
                "attr": m.attr,
                "axis": m.axis,
                "start": m.start,
                "block": m.block,
                "length": m.length,
            }
            for m in g.members
        ],
        "locks": [
            {"kind": lock.kind, "message": lock.message, "node": lock.node} for lock in g.locks
        ],
    }


def analyze(model: Any, where: str | None = None, input_shapes: Any = None) -> Analysis:
    """Finds the coupled channel groups of an ONNX model (a path, an ``onnx.ModelProto``,
    or an IR ``Graph``) and what each would save if pruned; ``input_shapes`` ({input name
    or None: dims}) fixes symbolic input dims first (see ``from_onnx``)."""
    start = time.perf_counter()
    with gc_paused():
        return _analyze(model, where, start, input_shapes)


def _analyze(model: Any, where: str | None, start: float, input_shapes: Any = None) -> Analysis:
    if isinstance(model, Graph):
        graph = model
    else:
        from drpopt.ir.from_onnx import from_onnx

        graph = from_onnx(model, where=where or _where(model), input_shapes=input_shapes)
    macs, uses = macs_and_weight_uses(graph)
    params = {v.name: v for v in graph.values.values() if _is_param(v)}
    info = param_info(params, uses)  # shapes, sizes and storage, read once for every count
    cg, groups, pp, pm = _best_mapping(graph, params, uses, info)
    _group_totals(graph, groups + cg.unproduced, params, uses, info, cg.member_spans)
    result = Analysis(
        graph=graph,
        groups=groups,
        params=_distinct_params(params, info),
        macs=macs,
        prunable_params=pp,
        prunable_macs=pm,
        unsupported=[(n.op_type, n.name) for n in cg.unsupported],
        seconds=time.perf_counter() - start,
        unproduced=cg.unproduced,
        pending_locks=cg.pending_locks,
    )
    return result


def _ungrouped(groups: list[Group], params: dict, pending: dict) -> list:
    """(tensor, elements, why) of the weights no member of ``groups`` indexes (a tensor
    shared by several values once, as the totals count it): in no group, and ``analyze``
    says why instead of leaving it silent."""
    seen = {params[m.tensor].storage for g in groups for m in g.members if m.tensor in params}
    out = []
    for name, v in params.items():
        if v.storage in seen:
            continue
        seen.add(v.storage)
        lock = next((pending[(v, ax)] for ax in range(v.rank or 0) if (v, ax) in pending), None)
        if lock is not None:
            why = lock.message
        else:
            readers = ", ".join(dict.fromkeys(f"{n.op_type} '{n.name}'" for n, _ in v.uses))
            unknown = [x for n, _ in v.uses for x in n.inputs if x is not None and x.shape is None]
            why = f"read by {readers or 'no node'}; " + (
                f"no shape is known for its input '{unknown[0].name}'"
                if unknown
                else "no rule relates its axes to channels"
            )
        out.append((name, int(v.numel or 0), why))
    return sorted(out, key=lambda t: -t[1])


def _solve(graph: Graph, levels: dict[tuple, int], params, uses, info, memos=None):
    cg = apply_rules(graph, levels, memos)
    groups, _ = cg.groups()
    for g in groups + cg.unproduced:
        _finish_group(g, params)
    prunable = [g for g in groups if g.prunable]
    # the pieces each group's members slice, read once for this count and the group totals
    cg.member_spans = {id(g): member_spans(g, params) for g in prunable}
    pp, pm = _removed(graph, prunable, params, uses, info, cg.member_spans)
    return cg, groups, pp, pm


def _best_mapping(graph: Graph, params, uses, info, rounds: int = 3):
    """Solves the channel graph; where a reshape's split or merge leaves the axis that
    carries the channels locked (q/k/v stacked on an axis of 3 before the heads), solves
    again with the next axis carrying them, and keeps whichever prunes more parameters.

    A mapping that waited for another to move (``_raises``) may have to follow it before
    anything gains: EfficientViT's heads split moves to the dims inside each head, and
    only with the merge back at those dims too do they prune. So a trial that gains
    nothing gets one step more, raising just those followers."""
    levels: dict[tuple, int] = {}  # (node, value, first axis) of a split or merge -> level
    values = list(graph.values.values())
    shapes = [v.shape for v in values]
    best = _solve(graph, levels, params, uses, info)
    if not best[0].splits:
        return best  # no reshape split or merge: nothing to map another way
    # the shape tensors read in the first round read the same in the next ones unless a
    # rule refined a shape (a reshape inference left unknown): then they are read again
    same = len(graph.values) == len(values)
    same = same and all(a == v.shape for a, v in zip(shapes, values, strict=True))
    memos = (best[0].shape_memo, best[0].numeric_memo) if same else None
    for _ in range(rounds):
        raise_, waiting = _raises(best[0])
        if not raise_:
            break
        trial_levels = {**levels, **raise_}
        trial = _solve(graph, trial_levels, params, uses, info, memos)
        if _gain(trial) <= _gain(best):
            raised = trial_levels
            for follow in _followers(trial[0], waiting, set(raise_) | waiting):
                trial_levels = {**raised, **follow}
                trial = _solve(graph, trial_levels, params, uses, info, memos)
                if _gain(trial) > _gain(best):
                    break
            else:
                break
        best, levels = trial, trial_levels
    return best


def _followers(cg, waiting: set, held: set) -> list[dict]:
    """What may follow a raise that gained nothing, in the order to try: the mappings that
    waited for it (EfficientViT's merge back to the dims inside the heads), then those the
    raise newly locked (stuck now, not before): SAM's windowed attention merges the
    windows with the heads (``reshape(3, B * heads, HW, -1)``) and splits them back
    (``view(B, heads, H, W, -1)``); raised, the merge sends the heads into the split back,
    which must map at the heads too."""
    raise_ = _raises(cg)[0]
    out = [{k: lv for k, lv in raise_.items() if k in waiting}]
    out.append({k: lv for k, lv in raise_.items() if k not in held})
    return [follow for follow in out if follow]


def _raises(cg) -> tuple[dict, set]:
    """The split and merge mappings to raise a level (key -> level) where the axis that
    carries the channels ends up locked, and the stuck ones left waiting for them."""
    where = cg.group_at()  # the group holding (value, axis), if any
    stuck = {
        key: (level, where(value, axis))
        for key, value, axis, level, n in cg.splits
        if level < n and not getattr(where(value, axis), "prunable", False)
    }
    # a mapping locked only because another stuck one locks its component waits for
    # that one to move (the heads after torchvision's q/k/v split stay heads)
    names = {key[0].name for key in stuck}
    raise_ = {
        key: level + 1
        for key, (level, group) in stuck.items()
        if group is not None and not any(lk.node in names - {key[0].name} for lk in group.locks)
    }
    raise_.update(_together(stuck, raise_, names))
    raise_.update(_past_bare_axes(cg.splits, stuck, where))
    waiting = {key for key, (_level, group) in stuck.items() if group is not None} - set(raise_)
    return raise_, waiting


def _together(stuck, raised, names) -> dict:
    """Stuck mappings that lock one group only through each other move together (SKNet's
    and MIRNet's selective kernel fusion: the streams stacked by ``view(B, M, C, H, W)`` and
    the attention weights viewed alike, both locked by the softmax and sum over ``M``); each
    alone would wait for the other."""
    waiting: dict[int, tuple] = {}
    for key, (level, group) in stuck.items():
        if group is not None and key not in raised:
            waiting.setdefault(id(group), (group, []))[1].append((key, level))
    out = {}
    for group, members in waiting.values():
        mine = {key[0].name for key, _ in members}
        if len(members) > 1 and not any(lk.node in names - mine for lk in group.locks):
            out.update({key: level + 1 for key, level in members})
    return out


def _past_bare_axes(splits, stuck, where) -> dict:
    """A merge whose coarse axes no group holds (no parameters read them: timm's Swin patch
    merging, ``reshape(B, H/2, 2, W/2, 2, C).permute(...).flatten(3)``, merges two spatial
    parities with the channels) maps at the first deeper axis a group holds."""
    out = {}
    for key, value, axis, level, n in splits:
        if key not in stuck or stuck[key][1] is not None or value.shape is None:
            continue
        while level < n:
            axis = next((a for a in range(axis + 1, len(value.shape)) if value.shape[a] != 1), None)
            if axis is None:
                break
            level += 1
            if where(value, axis) is not None:
                out[key] = level
                break
    return out


def _gain(solved) -> tuple[int, int]:
    """What a mapping prunes: the parameters its prunable groups cover, then how many weight
    axes they slice (a q/k/v weight whose input axis a prunable stream already covers gains
    its output axis when the heads map: the same parameters, one more prunable axis)."""
    groups = [g for g in solved[1] if g.prunable]
    axes = {(m.tensor, m.axis) for g in groups for m in g.members if m.tensor}
    return solved[2], len(axes)


def _where(model: Any) -> str:
    return os.fspath(model) if isinstance(model, str | os.PathLike) else "model"


def _finish_group(g: Group, params: dict[str, Value]) -> None:
    """Locks a group with locks (its reason says why) and a group of one channel, except
    one unit of an expansion (a channel shuffle's position deep in a ShuffleNet stage,
    several channels of later layers; or an entry whose block a later split cuts, locked
    only for that and tied to each piece of its block): where its layers have other
    channels it prunes as a whole; where it is all of a layer's channels, that says why."""
    if g.size == 1 and all(lk.kind == CUT_BLOCK for lk in g.locks):
        whole = _expansion_unit(g, params)
        if whole is None:
            g.locks = []
            return
        if whole:
            g.locks.insert(0, whole)
    if g.locks:
        g.prunable = False
        g.reason = "; ".join(dict.fromkeys(lock.message for lock in g.locks[:50]))
        extra = len(g.locks) - 50
        if extra > 0:
            g.reason += f"; and {extra} more"
    elif g.size < 2:
        g.prunable = False
        g.reason = "a single channel (a group keeps at least one)"


def _expansion_unit(g: Group, params: dict[str, Value]) -> Lock | bool | None:
    """For a group of one unit: None when it may prune as a whole (it spans several
    channels somewhere, an expansion's entry; no part of it is a single channel, since a
    size-1 axis broadcasts and where it goes next the analysis does not follow; it cuts
    weights and leaves each weight axis it cuts other channels); else a lock naming the
    layer whose every channel it is, or False (not such a unit)."""
    spans: dict[str, int] = {}  # channels of each space the unit covers
    for s in g.segments:
        if s.space_length < 2:
            return False
        spans[s.label] = spans.get(s.label, 0) + s.block
    if max(spans.values(), default=0) < 2:
        return False
    cut: dict[tuple[str, int], list] = {}
    for m in g.members:
        if m.tensor in params:
            entry = cut.setdefault((m.tensor, m.axis), [0, m.node])
            entry[0] += m.block * m.length
    if not cut:
        return False
    for (name, axis), (n, node) in cut.items():
        if n >= (params[name].shape or (0,) * (axis + 1))[axis]:
            why = (
                f"one unit that is all {n} channels of '{name}' (axis {axis}) of "
                f"'{node}': removing it would leave that layer none"
            )
            return Lock("whole-layer", why, node)
    return None
