"""One set of figures for every command and report (``analyze``, ``prune``, ``check``,
``report``, ``--json``, the plan).

Meaning (one line each; the README's "Figures" table repeats them):
- ``params``: elements of floating-point weights and other non-scalar float constants
  (biases, BN parameters, per-channel scales), the analysis's parameter rule;
- ``nonzero_params``: those of them that are not zero (None where the zeros were not
  counted: ``analyze`` reads no weight unless asked to);
- ``macs``: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul at the stated input
  shapes (dense: zeros computed);
- ``macs_nonzero``: the same with zero weights skipped (what a sparse engine can save;
  None with ``nonzero_params``);
- ``eligible_channels``: channels of the groups the plan may prune (prunable, not excluded,
  not a first or last layer the target keeps dense); ``pruned_channels``: those removed;
- ``input_shapes``: the input dims the figures were computed for (symbols where unknown:
  counted as 1).

Shares of the coupled groups (``group_shares``; each weight element counted once, so they
add up to 100%):
- a group *owns* the weight elements of its output channels: of every element, the group
  that indexes it in the role ranked first (producer < consumer < follower < structure <
  param; then the lower axis), so a conv's rows belong to the group it produces, not to the
  group its input channels form; ``owned_macs`` are the MACs those elements take part in;
- ``prunable_*`` / ``locked_*``: owned by prunable / locked groups; ``ungrouped_*``: the
  rest (constants no group indexes, and MACs of a product of two activations, attention);
  prunable + locked + ungrouped = the model's total;
- ``removes_*`` of a group: what pruning the whole group would remove (its own elements and
  the columns it indexes in the next layers); ``removable_*``: the same for all prunable
  groups at once (each element once). These overlap between groups and do not add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drpopt.ir.core import Graph, Value
from drpopt.ir.counting import RECURRENT_OPS, node_macs, recurrent_steps, recurrent_weights
from drpopt.passes.common import weight_of


def _is_param(v: Value) -> bool:
    from drpopt.ir import counting

    return counting._is_param(v)  # the analysis's rule: figures and groups agree


def model_figures(
    graph: Graph, plan: Any = None, analysis: Any = None, zeros: bool = True
) -> dict[str, Any]:
    """The figures of ``graph`` (and of ``plan`` when given) as plain data; with the
    ``analysis`` of ``graph`` also the group shares (``group_shares``' totals).

    ``zeros`` counts the zero weights (``nonzero_params``, ``macs_nonzero``): that reads
    every weight, one at a time (a weight not loaded yet is not kept loaded). Without it
    no weight is read and those two figures are None; the others do not change."""
    counts: dict[int, tuple[int, int]] = {}  # storage -> (elements, nonzero)
    params = nonzero = 0
    for v in graph.values.values():
        if _is_param(v) and v.storage not in counts:  # a shared tensor counts once
            size, nz = counts[v.storage] = _count(v, zeros)
            params += size
            nonzero += nz
    macs = 0
    skipped = 0.0
    for node in graph.nodes:
        m = node_macs(node)
        if not m:
            continue
        macs += m
        if not zeros:
            continue
        if node.op_type in RECURRENT_OPS:  # W and R: each nonzero element once per step
            steps = recurrent_steps(node)
            for w in recurrent_weights(node):
                skipped += steps * (counts.get(w.storage) or _count(w, True))[1]
            continue
        w = weight_of(node)
        size, nz = (0, 0) if w is None else counts.get(w.storage) or _count(w, True)
        skipped += m * (nz / size) if size else m
    out: dict[str, Any] = {
        "params": params,
        "nonzero_params": nonzero if zeros else None,
        "macs": macs,
        "macs_nonzero": int(round(skipped)) if zeros else None,
        "input_shapes": graph.meta.get("input_shapes"),
    }
    if analysis is not None:
        out.update(group_shares(analysis).totals())
    if plan is not None:
        out.update(plan_figures(plan))
    return out


def _count(v: Value, zeros: bool) -> tuple[int, int]:
    """(elements, nonzero elements) of a constant; without ``zeros`` the elements from its
    shape and no read (nonzero 0)."""
    if not zeros and v.numel is not None:
        return v.numel, 0
    arr = np.asarray(v.peek_const())
    return int(arr.size), int(np.count_nonzero(arr)) if zeros else 0


ROLE_RANK = {"producer": 0, "consumer": 1, "follower": 2, "structure": 3, "param": 4}


@dataclass
class GroupShares:
    """Parameters and MACs per group, each weight element owned by exactly one group (see
    the module docstring), and the model's totals split into prunable, locked, ungrouped."""

    params: int
    macs: int
    owned_params: dict[int, int] = field(default_factory=dict)  # group id -> elements
    owned_macs: dict[int, int] = field(default_factory=dict)
    prunable_params: int = 0
    prunable_macs: int = 0
    locked_params: int = 0
    locked_macs: int = 0
    removable_params: int = 0
    removable_macs: int = 0

    @property
    def ungrouped_params(self) -> int:
        return self.params - self.prunable_params - self.locked_params

    @property
    def ungrouped_macs(self) -> int:
        return self.macs - self.prunable_macs - self.locked_macs

    def totals(self) -> dict[str, int]:
        """The split as flat figures (``--json`` totals, ``prune``'s ``before``)."""
        return {
            f"{part}_{what}": getattr(self, f"{part}_{what}")
            for part in ("prunable", "locked", "ungrouped", "removable")
            for what in ("params", "macs")
        }


def group_shares(analysis: Any) -> GroupShares:
    """Owned parameters and MACs of every group of ``analysis`` (an ``ir.analysis.Analysis``)
    and the totals they add up to; cached on the analysis."""
    cached = getattr(analysis, "_drpopt_shares", None)
    if isinstance(cached, GroupShares):
        return cached
    from drpopt.ir.counting import weight_uses

    graph = analysis.graph
    params = {v.name: v for v in graph.values.values() if _is_param(v)}
    uses = weight_uses(graph)
    ids = [g.id for g in analysis.groups]
    index = {gid: i for i, gid in enumerate(ids)}
    n = len(ids) + 1  # the last slot: no group
    by_tensor: dict[str, list[Member]] = {}
    for g in analysis.groups:
        for m in g.members:
            if m.tensor is not None and m.tensor in params:
                rank = ROLE_RANK.get(m.role, len(ROLE_RANK))
                span = (m.start, m.start + m.length * m.block)
                by_tensor.setdefault(m.tensor, []).append((m.axis, rank, index[g.id], *span))
    prunable_index = {index[g.id] for g in analysis.groups if g.prunable}
    count = np.zeros(n, dtype=np.int64)
    macs = np.zeros(n, dtype=np.float64)
    removable = removable_macs = 0.0
    seen: set[int] = set()
    for name, members in by_tensor.items():
        v = params[name]
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in v.shape or ())
        per_group = _owned_counts(shape, members, n)
        removed = _covered(shape, [m for m in members if m[2] in prunable_index])
        if v.storage not in seen:  # a shared tensor's elements count once
            seen.add(v.storage)
            count += per_group
            removable += removed
        macs += per_group * uses.get(name, 0.0)
        removable_macs += removed * uses.get(name, 0.0)
    prunable = np.array([g.prunable for g in analysis.groups] + [False])
    locked = np.array([not g.prunable for g in analysis.groups] + [False])
    p_macs = int(round(float(macs[prunable].sum())))
    l_macs = int(round(float(macs[prunable | locked].sum()))) - p_macs
    total = sum({v.storage: v.numel or 0 for v in params.values()}.values())  # as figures
    shares = GroupShares(
        params=total,
        macs=analysis.macs,
        owned_params={gid: int(count[i]) for gid, i in index.items()},
        owned_macs={gid: int(round(float(macs[i]))) for gid, i in index.items()},
        prunable_params=int(count[prunable].sum()),
        prunable_macs=p_macs,
        locked_params=int(count[locked].sum()),
        locked_macs=min(l_macs, analysis.macs - p_macs),
        removable_params=int(removable),
        removable_macs=min(int(round(removable_macs)), analysis.macs),
    )
    analysis._drpopt_shares = shares
    return shares


Member = tuple[int, int, int, int, int]  # (axis, role rank, group index, start, stop)


def _axis_keys(shape: tuple[int, ...], members: list[Member], n: int, big: int):
    """Per covered axis, the best (lowest) owner key of every index along it; a key orders
    by role rank, then axis, then group, and ``key % n`` is the group index."""
    ndim = len(shape)
    keys: dict[int, np.ndarray] = {}
    for axis, rank, gi, lo, hi in members:
        if not -ndim <= axis < ndim:
            continue
        axis %= ndim
        key = keys.setdefault(axis, np.full(shape[axis], big, dtype=np.int64))
        seg = key[max(lo, 0) : min(hi, shape[axis])]
        np.minimum(seg, (rank * ndim + axis) * n + gi, out=seg)
    return keys


def _owned_counts(shape: tuple[int, ...], members: list[Member], n: int) -> np.ndarray:
    """How many elements of a tensor of ``shape`` each group owns (index ``n - 1``: none).

    An element's owner has the lowest key over its covered axes (keys of different axes
    never tie), so the elements owned through index ``i`` of axis ``a`` number the product,
    over the other covered axes, of their indices with a higher key: counted by sorting,
    without materialising the tensor."""
    big = np.iinfo(np.int64).max
    keys = _axis_keys(shape, members, n, big)
    size = math.prod(shape)
    counts = np.zeros(n, dtype=np.float64)
    if not keys:
        counts[n - 1] = size
        return counts.astype(np.int64)
    rest = size // math.prod(shape[a] for a in keys)  # uncovered axes multiply every count
    ordered = {a: np.sort(k) for a, k in keys.items()}
    for axis, key in keys.items():
        mult = np.ones(len(key), dtype=np.float64)
        for other, sorted_key in ordered.items():
            if other != axis:
                mult *= len(sorted_key) - np.searchsorted(sorted_key, key, side="right")
        valid = key != big
        counts += np.bincount(key[valid] % n, weights=mult[valid], minlength=n)
    counts[n - 1] += math.prod(int(np.count_nonzero(k == big)) for k in keys.values())
    return np.rint(counts * rest).astype(np.int64)


def _covered(shape: tuple[int, ...], members: list[Member]) -> int:
    """Elements of a tensor of ``shape`` that at least one of ``members`` indexes."""
    ndim = len(shape)
    cover: dict[int, np.ndarray] = {}
    for axis, _, _, lo, hi in members:
        if -ndim <= axis < ndim:
            axis %= ndim
            cover.setdefault(axis, np.zeros(shape[axis], dtype=bool))[max(lo, 0) : hi] = True
    kept = math.prod(
        shape[a] - int(np.count_nonzero(cover[a])) if a in cover else shape[a] for a in range(ndim)
    )
    return math.prod(shape) - kept


def plan_figures(plan: Any) -> dict[str, int]:
    """Eligible and pruned channels of a plan (``Plan`` or its dict form)."""
    data = plan.to_dict() if hasattr(plan, "to_dict") else plan
    groups = [g for g in data.get("groups", []) if isinstance(g, dict)]
    sizes = [int(g.get("size", 0)) for g in groups]
    kept = [len(g.get("keep", [])) for g in groups]
    return {
        "eligible_channels": sum(sizes),
        "pruned_channels": sum(s - k for s, k in zip(sizes, kept, strict=True)),
        "eligible_groups": len(groups),
        "pruned_groups": sum(1 for s, k in zip(sizes, kept, strict=True) if k < s),
    }


def pattern_note(profile: Any, figures: dict[str, Any] | None = None) -> str | None:
    """The target's fine-grained pattern in words, with the total sparsity it gave, or None
    when the target has none (``drpai``: 50% of single weights inside kept channels)."""
    if profile is None or profile.pattern_rate <= 0:
        return None
    what = {
        "nm": f"{profile.n} of every {profile.m} weights kept along the input channels",
        "block": f"{profile.sparsity_rate:.0%} of weight blocks of {profile.block} zeroed",
        "unstructured": f"{profile.sparsity_rate:.0%} of single weights (by magnitude) "
        f"zeroed ({profile.sparsity_scope})",
    }.get(profile.granularity, profile.granularity)
    text = f"target '{profile.name}' adds a pattern inside kept channels: {what}"
    if figures and figures.get("params") and figures.get("nonzero_params") is not None:
        zero = 1 - figures["nonzero_params"] / figures["params"]
        text += f"; total weight sparsity {100 * zero:.1f}%"
    return text
