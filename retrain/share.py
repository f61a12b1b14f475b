"""``final_pr`` as the share of zero weights: which layers count, and how channels and the
fine-grained pattern split it.

Rules (the drop-in ``drpopt.retrain.drpai``):
- the pruning layers are the layers the target profile prunes: those producing a group the
  channel analysis may prune, and the weighted layers the profile's fine-grained pattern
  touches (not the first layer, not the final prediction layers, not ``dense_ops``);
- the share counts the weights (``<layer>.weight``) of the pruning layers;
- for a share ``s`` the channel rate ``c`` is the largest one whose kept weights, with the
  profile's own pattern rate ``q0`` on top, still leave at least ``1 - s`` of them
  (``K(c) * (1 - q0) >= 1 - s``, ``K`` over the counted weights that channel pruning can
  touch, so layers whose channels are locked, such as a transformer's attention, do not
  push the others further; a counted layer outside the pattern, such as the first layer,
  counts ``K_l(c)`` without the ``1 - q0``); channel-only profiles pick the ``c`` whose
  ``K(c)`` is nearest ``1 - s``; ``nm`` profiles use ``q0 = 1 - n/m``;
- then each pattern layer ``l`` gets the pattern rate that brings it to ``t`` exactly:
  ``q_l = max(0, 1 - (1 - t) / K_l(c))`` (``unstructured``/``block``), where ``t = s`` when
  the pattern touches every counted layer, else ``t`` is raised so the total reaches ``s``
  (counted layers outside the pattern, such as the first layer when it produces a
  prunable group, keep more; ``t`` at most 0.95), so the total ends near ``s`` zeros;
- ``K`` is counted, not sampled: channel masks are products of per-axis masks, so a layer
  keeps ``prod(kept_a / size_a)`` of its weights whichever channels are chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from drpopt.ir.analysis import analyze
from drpopt.ir.core import Graph
from drpopt.passes.mask import eligible_groups, kept_count
from drpopt.passes.policy import SelectionPolicy, layer_rows
from drpopt.passes.sparsify import targeted_layers
from drpopt.passes.targets import TargetProfile, get_target

MASKED_ROLES = ("producer", "consumer", "follower")
_STEPS = 40
_MAX_PATTERN = 0.95  # the highest zero share a pattern layer is brought to


def listed_layers(graph: Graph, params: Iterable[str], target: str = "drpai") -> dict[str, list]:
    """Module name -> trace node names of the layers ``target`` prunes (graph order)."""
    names = set(params)
    profile = get_target(target)
    policy = SelectionPolicy.resolve(profile, rate=0.5)
    producers: dict[str, list[str]] = {}
    for g in eligible_groups(graph, analyze(graph).groups, policy):
        for m in g.members:
            if m.role == "producer" and m.tensor in names and m.node:
                producers.setdefault(m.tensor.rsplit(".", 1)[0], []).append(m.node)
    pattern: dict[str, list[str]] = {}
    if profile.granularity != "channel":
        for node in targeted_layers(graph, profile, []):
            w = node.input(1)
            if w is not None and w.name in names:
                pattern.setdefault(w.name.rsplit(".", 1)[0], []).append(node.name)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    merged = {k: producers.get(k, []) + pattern.get(k, []) for k in {*producers, *pattern}}
    first = {k: min(order.get(n, 0) for n in v) for k, v in merged.items()}
    return {k: list(dict.fromkeys(merged[k])) for k in sorted(merged, key=lambda k: first[k])}


class ShareSplit:
    """Channel rate and per-layer pattern rates for a weight share (module docstring)."""

    def __init__(
        self, groups: list, shapes: dict[str, tuple[int, ...]], profile: TargetProfile
    ) -> None:
        self.groups = groups
        self.shapes = shapes  # the counted weights: parameter name -> shape
        self.profile = profile
        self.channel_prunable = {
            m.tensor for g in groups for m in g.members if m.role in MASKED_ROLES
        } & set(shapes)

    def kept_fractions(self, rate: float) -> dict[str, float]:
        """Each counted weight's kept fraction after channel pruning at ``rate``."""
        axes: dict[str, dict[int, np.ndarray]] = {}
        for g in self.groups:
            k = kept_count(g.size, rate, self.profile, layer_rows(g, self.shapes))
            if k >= g.size:
                continue
            pruned = list(range(k, g.size))
            for m in g.members:
                if m.role not in MASKED_ROLES or m.tensor not in self.shapes:
                    continue
                shape = self.shapes[m.tensor]
                vec = axes.setdefault(m.tensor, {}).setdefault(
                    m.axis, np.ones(shape[m.axis], dtype=bool)
                )
                vec[m.indices(pruned)] = False
        out = {}
        for name in self.shapes:
            frac = 1.0
            for vec in axes.get(name, {}).values():
                frac *= float(vec.mean())
            out[name] = frac
        return out

    def kept(self, rate: float, off: dict[str, float] | None = None) -> float:
        """The kept fraction of all counted weights after channel pruning at ``rate``; a
        weight in ``off`` counts its kept fraction times that factor."""
        fr = self.kept_fractions(rate)
        sizes = {n: int(np.prod(s)) for n, s in self.shapes.items() if n in self.channel_prunable}
        total = sum(sizes.values())
        off = off or {}
        return sum(fr[n] * sizes[n] * off.get(n, 1.0) for n in sizes) / total if total else 1.0

    def channel_rate(self, share: float, pattern: Iterable[str] | None = None) -> float:
        """The channel rate for weight share ``share``; ``pattern`` (the pattern layers'
        weights, default all): counted weights outside it get no pattern on top, so they
        count ``1 / (1 - q0)`` of their kept fraction."""
        p = self.profile
        if p.granularity == "channel":
            factor = 1.0
        elif p.granularity == "nm":
            factor = p.n / p.m
        else:
            factor = 1.0 - p.pattern_rate
        target = (1.0 - share) / factor
        if share <= 0 or target >= 1.0 or not self.groups:
            return 0.0
        on = set(self.shapes) if pattern is None else set(pattern)
        off = {n: 1.0 / factor for n in self.channel_prunable if n not in on}
        return self._bisect(lambda c: self.kept(c, off), target)

    def _bisect(self, kept: Any, target: float) -> float:
        """The largest channel rate whose ``kept`` is at least ``target`` (channel-only
        profiles: the nearer of the two bounds)."""
        p = self.profile
        lo, hi = 0.0, p.max_rate
        if kept(hi) >= target:
            return hi
        for _ in range(_STEPS):
            mid = (lo + hi) / 2
            if kept(mid) >= target:
                lo = mid
            else:
                hi = mid
        if p.granularity == "channel" and abs(kept(hi) - target) < abs(kept(lo) - target):
            return hi
        return lo

    def split(self, share: float, pattern_params: Iterable[str]) -> tuple[float, Any]:
        """``(channel rate, pattern rate)`` for ``share``: the pattern rate is a dict per
        pattern parameter (``unstructured``/``block``) or one number (``nm``, ``channel``)."""
        pattern_params = list(pattern_params)
        rate = self.channel_rate(share, pattern_params if pattern_params else None)
        p = self.profile
        if p.granularity == "channel":
            return rate, 0.0
        if p.granularity == "nm":
            return rate, (p.pattern_rate if share > 0 else 0.0)
        fr = self.kept_fractions(rate)
        target = self.pattern_target(share, fr, pattern_params)
        out = {}
        for name in pattern_params:
            k = fr.get(name, 1.0)
            q = max(0.0, 1.0 - (1.0 - target) / k) if k > 0 and share > 0 else 0.0
            out[name] = min(q, _MAX_PATTERN)
        return rate, out

    def pattern_target(self, share: float, fr: dict[str, float], pattern: list[str]) -> float:
        """The zero share each pattern layer is brought to so that all counted weights end
        at ``share``: ``share`` itself, raised to make up for counted layers the pattern does
        not touch (the first layer producing a prunable group, e.g. a ViT's patch embedding
        whose width a masked LayerNorm lets prune)."""
        sizes = {n: int(np.prod(s)) for n, s in self.shapes.items()}
        on = [n for n in pattern if n in sizes]
        pattern_total = sum(sizes[n] for n in on)
        if not pattern_total or share <= 0:
            return share
        off_zeros = sum(sizes[n] * (1.0 - fr.get(n, 1.0)) for n in sizes if n not in on)
        wanted = share * sum(sizes.values()) - off_zeros
        return min(max(share, wanted / pattern_total), _MAX_PATTERN)
