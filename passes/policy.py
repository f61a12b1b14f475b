"""One channel policy: which groups may be pruned, and which channels each one keeps.

The target profile plus the caller's overrides resolve once into a :class:`SelectionPolicy`;
:func:`choose_channels` (pure: groups, scores and policy in, kept channels out) serves both
the ``mask`` pass and the torch ``Pruner``, so both choose the same channels from the same
scores.

Rules:
- ``rate`` is the fraction of the eligible channels to remove, in [0, 1);
- ``allocation=uniform``: each group prunes ``rate`` of its own channels;
  ``allocation=global``: scores are normalised per group (divided by the mean score of the
  group's candidates) and the ``rate`` share of all their channels with the lowest
  normalised scores is removed (ties: the earlier group and channel first; channels that
  are no longer candidates count as removed first), so groups end up with different
  rates (each group's count then follows the rounding rules below);
- a group keeps its highest-scoring candidates (ties: the lower index); the kept count is
  rounded so that the width of the layers it produces is a multiple of ``align`` (a group
  of a grouped convolution stands for G output channels per channel, one in each of its
  G segments, so G x kept must be; a group whose layer width is under ``align`` stays
  whole), never below ``align`` or ``min_channels`` output channels, nor
  ``(1 - max_rate)`` of the group, never zero, never more than its candidates;
- one-unit groups (a channel shuffle's blocks that a later split cuts: each is one unit of
  layers that have other channels; the analysis locks a one-unit group that is all of a
  layer) cannot lose a unit at any rate, so with ``align`` and ``min_channels`` 1 and the
  weight shapes given they are completed per layer: lowest score first (ties: group
  order), one is dropped whole when that brings the weight axes it cuts closer to the
  rate, i.e. when ``sum(w * (|r + e - t*d| - |r - t*d|)) < 0`` over those axes (``d``
  entries, ``e`` of them its own, ``r`` those the other choices remove, ``w`` parameters
  per entry, ``t`` the rate capped at ``max_rate``) and every weight axis and every
  channel space (an activation's axis too: a Slice's output) keeps an entry;
- with ``align`` > 1 and the weight shapes given, a layer whose output channels several
  groups produce (a channel shuffle's units) must keep a multiple of ``align`` in all:
  where the groups' own rounded counts do not add up to one, each of those groups keeps
  all its candidates (repeated until no partly pruned layer is misaligned);
- eligible groups: prunable (not locked), not the first layer's own output channels
  (``keep_first``; a group it shares with later layers, a residual stream it starts, is
  pruned) nor a final prediction layer's (``keep_last``; the channels a prediction layer
  reads are pruned), no producer or consumer of an op type in ``dense_ops`` or whose
  name matches an ``exclude`` pattern (fnmatch).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.channels import Group
from drpopt.ir.core import Graph
from drpopt.passes.plan import group_key
from drpopt.passes.targets import GRANULARITIES, TargetProfile, _check, get_target

Allocation = Literal["uniform", "global"]
ALLOCATIONS = ("uniform", "global")


def check_rate(rate: float, what: str = "rate") -> None:
    """A rate must lie in [0, 1) (BadInputError naming the fix otherwise)."""
    if math.isnan(rate) or not (0.0 <= rate < 1.0):
        raise BadInputError(
            f"{what} {rate} is outside [0, 1): it is the fraction of channels removed "
            "(give e.g. 0.7 to remove 70%)"
        )


@dataclass(frozen=True)
class SelectionPolicy:
    """How channels are chosen: the profile's channel settings with the overrides applied."""

    rate: float = 0.5
    allocation: Allocation = "uniform"
    align: int = 1
    min_channels: int = 1
    max_rate: float = 0.95
    keep_first: bool = True
    keep_last: bool = True
    exclude: tuple[str, ...] = ()
    dense_ops: tuple[str, ...] = ()
    target: str = "generic"

    def __post_init__(self) -> None:
        check_rate(self.rate)
        check_rate(self.max_rate, "max_rate")
        if self.allocation not in ALLOCATIONS:
            raise BadInputError(
                f"allocation {self.allocation!r} is not one of {', '.join(ALLOCATIONS)}"
            )
        if self.align < 1 or self.min_channels < 1:
            raise BadInputError(
                f"align ({self.align}) and min_channels ({self.min_channels}) must be at least 1"
            )

    @classmethod
    def resolve(
        cls,
        target: str | TargetProfile = "generic",
        rate: float | None = None,
        allocation: str = "uniform",
        exclude: Iterable[str] = (),
        **overrides: Any,
    ) -> SelectionPolicy:
        """The policy of ``target`` (a name, a .toml path or a profile) with ``overrides``
        (align, min_channels, max_rate, keep_first, keep_last, dense_ops; None: the
        profile's); ``rate`` None is the profile's recommended rate."""
        profile = target if isinstance(target, TargetProfile) else get_target(target)
        known = {"align", "min_channels", "max_rate", "keep_first", "keep_last", "dense_ops"}
        unknown = set(overrides) - known
        if unknown:
            raise BadInputError(f"unknown policy setting(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "dense_ops" in given:
            given["dense_ops"] = tuple(given["dense_ops"])
        base: dict[str, Any] = {
            "align": profile.align,
            "min_channels": profile.min_channels,
            "max_rate": profile.max_rate,
            "keep_first": profile.keep_first,
            "keep_last": profile.keep_last,
            "dense_ops": tuple(profile.dense_ops),
        }
        return cls(
            rate=profile.default_rate if rate is None else float(rate),
            allocation=allocation,  # type: ignore[arg-type]
            exclude=tuple(exclude),
            target=profile.name,
            **{**base, **given},
        )

    def with_rate(self, rate: float) -> SelectionPolicy:
        """The same policy at another rate (a schedule's intermediate steps)."""
        return replace(self, rate=rate)

    def kept_count(self, size: int, rate: float | None = None, rows: int = 1) -> int:
        """How many of ``size`` channels a group keeps at ``rate`` (default: the policy's).

        ``rows``: the output channels of a layer one channel of the group stands for (a
        grouped convolution's group of G segments: G), so that ``align`` and
        ``min_channels`` hold for the layer's width, not the group's count."""
        rate = self.rate if rate is None else rate
        step = self.align // math.gcd(self.align, rows)
        if size * rows < self.align or rate <= 0:
            return size
        want = size * (1.0 - min(rate, self.max_rate))
        least = math.ceil(self.min_channels / rows)
        floor = max(step, least, math.ceil(size * (1.0 - self.max_rate)))
        floor = math.ceil(floor / step) * step
        return min(max(int(round(want / step)) * step, floor), size)

    def settings(self) -> dict[str, Any]:
        """The settings a plan records (what was done, for a reader of the plan)."""
        out = asdict(self)
        out["exclude"] = list(self.exclude)
        out["dense_ops"] = list(self.dense_ops)
        for key in ("rate", "allocation", "target"):
            out.pop(key)
        return out


PATTERN_SETTINGS = ("granularity", "n", "m", "block", "sparsity_rate", "sparsity_scope")


def pattern_profile(base: TargetProfile, where: str, **overrides: Any) -> TargetProfile:
    """``base`` with the fine-grained pattern overrides (``PATTERN_SETTINGS``; None: the
    profile's), checked once; what ``sparsify`` and the ``Pruner`` zero inside kept channels."""
    unknown = set(overrides) - set(PATTERN_SETTINGS)
    if unknown:
        raise BadInputError(f"{where}: unknown pattern setting(s): {', '.join(sorted(unknown))}")
    granularity = overrides.get("granularity")
    if granularity is not None and granularity not in GRANULARITIES:
        raise BadInputError(
            f"{where}: granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}"
        )
    merged = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    return _check(merged, where)


def is_eligible(
    group: Group,
    policy: SelectionPolicy,
    first: Iterable[str],
    last: Iterable[str],
    op_types: Mapping[str, str],
) -> bool:
    """Whether ``policy`` lets ``group`` be pruned (see the module docstring); ``first`` /
    ``last``: the edge layers' names, ``op_types``: node name -> op type."""
    if not group.prunable:
        return False
    producers = set(group.producers)
    first = set(first)
    if policy.keep_first and producers & first and producers <= first:
        return False  # only the first layer's own channels: a stream it starts is pruned
    if policy.keep_last and producers & set(last):
        return False
    nodes = {m.node for m in group.members if m.role in ("producer", "consumer") and m.node}
    if policy.dense_ops and any(op_types.get(n) in policy.dense_ops for n in nodes):
        return False
    return not any(fnmatch.fnmatchcase(n, pat) for n in nodes for pat in policy.exclude)


def choose_channels(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    policy: SelectionPolicy,
    candidates: Mapping[str, Sequence[int]] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, list[int]]:
    """The channels each of ``groups`` (eligible ones) keeps, by group key, sorted.

    ``scores``: group key -> one score per channel (higher: keep). ``candidates``: group
    key -> the channels still allowed (a gradual schedule never revives one); a group not
    listed (or no mapping) may keep any channel. ``shapes``: weight name -> shape (see
    ``weight_shapes``), for completing one-unit groups per layer; None: they stay whole.
    """
    cands = {}
    for g in groups:
        allowed = None if candidates is None else candidates.get(group_key(g))
        cands[group_key(g)] = list(range(g.size)) if allowed is None else sorted(allowed)
    rows = {group_key(g): layer_rows(g, shapes) for g in groups}
    if policy.allocation == "global":
        counts = _global_counts(groups, scores, policy, cands, rows)
    else:
        counts = {group_key(g): policy.kept_count(g.size, rows=rows[group_key(g)]) for g in groups}
    out = {}
    for g in groups:
        key = group_key(g)
        score = np.asarray(scores[key], dtype=np.float64)
        k = min(counts[key], len(cands[key]))
        order = sorted(cands[key], key=lambda j: (-score[j], j))
        out[key] = sorted(order[:k])
    if shapes is not None and policy.align == 1 and policy.min_channels == 1:
        _complete_one_unit_groups(groups, scores, policy, out, shapes)
    if shapes is not None and policy.align > 1:
        _align_layers(groups, policy, out, cands, shapes)
    return out


def weight_shapes(graph: Graph, groups: Iterable[Group]) -> dict[str, tuple[int, ...]]:
    """The static shapes of the constants ``groups`` slice, by name (``choose_channels``'s
    ``shapes``)."""
    out = {}
    for g in groups:
        for m in g.members:
            v = graph.values.get(m.tensor) if m.tensor else None
            if v is not None and v.is_const and v.static_shape is not None:
                out[m.tensor] = tuple(v.static_shape)
    return out


def layer_rows(g: Group, shapes: Mapping[str, Sequence[int]] | None) -> int:
    """Output channels per channel of ``g`` of the layers it produces (the gcd over them:
    1 for most groups, G for the G segments of a grouped convolution's group); 1 without
    shapes."""
    per = _axes_cut(g, shapes, "producer") if shapes else {}
    return math.gcd(*per.values()) if per else 1


def _axes_cut(
    g: Group, shapes: Mapping[str, Sequence[int]], role: str | None = None
) -> dict[tuple[str, int], int]:
    """Entries of each weight axis (of members in ``role``, any by default) that one
    channel of ``g`` covers."""
    cut: dict[tuple[str, int], int] = {}
    for m in g.members:
        if m.tensor in shapes and (role is None or m.role == role):
            key = (m.tensor, m.axis)
            cut[key] = cut.get(key, 0) + m.block
    return cut


def _spaces_cut(g: Group) -> dict[tuple[str, int], tuple[int, int]]:
    """Entries of each channel space (a value's axis, or a virtual one) that one channel
    of ``g`` covers, with the space's length."""
    cut: dict[tuple[str, int], tuple[int, int]] = {}
    for s in g.segments:
        key = (s.value if s.value is not None else s.label, s.axis)
        cut[key] = (cut.get(key, (0, 0))[0] + s.block, s.space_length)
    return cut


def _complete_one_unit_groups(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    policy: SelectionPolicy,
    kept: dict[str, list[int]],
    shapes: Mapping[str, Sequence[int]],
) -> None:
    """Drops one-unit groups whole where that brings their layers closer to the rate and
    leaves every weight axis and every channel space an entry (the module docstring's
    rule); ``kept`` is updated in place."""
    ones = [(i, g) for i, g in enumerate(groups) if g.size == 1 and kept[group_key(g)]]
    if not ones or policy.rate <= 0:
        return
    rate = min(policy.rate, policy.max_rate)
    removed: dict[tuple[str, int], int] = {}  # weight axes
    taken: dict[tuple[str, int], int] = {}  # channel spaces (an activation's axis too)
    for g in groups:
        dropped = g.size - len(kept[group_key(g)])
        if dropped:
            for axis, n in _axes_cut(g, shapes).items():
                removed[axis] = removed.get(axis, 0) + n * dropped
            for key, (n, _) in _spaces_cut(g).items():
                taken[key] = taken.get(key, 0) + n * dropped
    ones.sort(key=lambda ig: (float(np.asarray(scores[group_key(ig[1])])[0]), ig[0]))
    for _, g in ones:
        spaces = _spaces_cut(g)
        if any(taken.get(k, 0) + e >= n for k, (e, n) in spaces.items()):
            continue  # a value (a Slice's output, say) would lose its last channel
        cut = _axes_cut(g, shapes)
        gain = 0.0
        for (name, axis), e in cut.items():
            shape = shapes[name]
            d, r = shape[axis], removed.get((name, axis), 0)
            if r + e >= d:
                break  # the layer would lose its last entry
            w = math.prod(shape) / d
            gain += w * (abs(r + e - rate * d) - abs(r - rate * d))
        else:
            if cut and gain < 0:
                kept[group_key(g)] = []
                for axis, e in cut.items():
                    removed[axis] = removed.get(axis, 0) + e
                for key, (e, _) in spaces.items():
                    taken[key] = taken.get(key, 0) + e


def _align_layers(
    groups: Sequence[Group],
    policy: SelectionPolicy,
    kept: dict[str, list[int]],
    cands: Mapping[str, list[int]],
    shapes: Mapping[str, Sequence[int]],
) -> None:
    """Layers whose output channels several groups share (a channel shuffle's units) keep
    the sum of those groups' counts, which need not be a multiple of ``align`` when each
    group is rounded alone: every group that produces such a layer keeps all its
    candidates, until no partly pruned layer is misaligned (the module docstring's rule;
    ``kept`` is updated in place)."""
    layers: dict[tuple[str, int], list[tuple[Group, int]]] = {}
    for g in groups:
        for m in g.members:
            if m.role == "producer" and m.tensor in shapes:
                layers.setdefault((m.tensor, m.axis), []).append((g, m.block))
    align, changed = policy.align, True
    while changed:  # each round keeps at least one more group whole: at most len(groups)
        changed = False
        for (name, axis), entries in layers.items():
            d = shapes[name][axis]
            k = d - sum((g.size - len(kept[group_key(g)])) * b for g, b in entries)
            if d < align or not 0 < k < d or k % align == 0:
                continue
            for g, _ in entries:
                key = group_key(g)
                if kept[key] != cands[key]:
                    kept[key], changed = list(cands[key]), True


def _global_counts(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    policy: SelectionPolicy,
    cands: Mapping[str, list[int]],
    rows: Mapping[str, int],
) -> dict[str, int]:
    """Per group, the kept count one global threshold over normalised scores gives."""
    if not groups or policy.rate <= 0:
        return {group_key(g): g.size for g in groups}
    normed = {}
    for g in groups:
        key = group_key(g)
        score = np.asarray(scores[key], dtype=np.float64)
        alive = np.zeros(g.size, dtype=bool)
        alive[cands[key]] = True
        mean = float(score[alive].mean()) if alive.any() else 0.0
        normed[key] = np.where(alive, score / max(mean, 1e-12), -np.inf)
    keys = list(normed)
    values = np.concatenate([normed[k] for k in keys])
    owner = np.concatenate([np.full(normed[k].size, i) for i, k in enumerate(keys)])
    n_prune = int(round(policy.rate * values.size))
    # the n_prune lowest, ties broken by group order then channel: exactly n_prune go
    lowest = np.lexsort((np.arange(values.size), values))[:n_prune]
    below = np.bincount(owner[lowest], minlength=len(keys))
    return {
        key: policy.kept_count(g.size, int(below[i]) / g.size, rows[key])
        for i, (key, g) in enumerate(zip(keys, groups, strict=True))
    }
