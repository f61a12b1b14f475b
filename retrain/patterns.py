"""Fine-grained patterns for the Pruner: n:m, blocks or single weights inside kept channels.

The torch-side twin of the ``sparsify`` pass (same helpers, same layout: the dense-shaped
weight, input-channel axis as in ``passes/sparsify.input_axis``). Rules:
- the pattern rate ``q`` is the share of a layer's channel-kept weights (``scope=layer``) or
  of all targeted layers' channel-kept weights (``scope=global``, ``unstructured`` only) that
  the pattern zeroes; weights the pattern already zeroed count towards it, and nothing is
  revived: each call only adds zeros to ``alive = channel mask & previous mask``;
- ``unstructured``: the smallest ``|w|`` of the alive weights go first (global scope: one
  ranking, i.e. one magnitude threshold, across layers);
- ``block``: the alive (output row, input block) pairs with the smallest L2 norm go first,
  whole blocks at a time (a block that channel pruning cut through stays partial, as with
  the ``sparsify`` pass);
- ``nm``: the candidates are the alive weights the full ``n:m`` pattern drops; before the
  final step the smallest of them go first, up to ``q``; at the final step all of them go,
  so the final masks hold the exact ``n:m`` pattern;
- depthwise convs get no ``nm``/``block`` pattern (as in ``sparsify``);
- ``rate`` may be a dict (parameter name to rate): each layer its own rate (layer scope);
- ``unstructured`` never empties a kept output channel: a row the ranking would zero whole
  keeps its largest weight, so the kept channel counts stay those channel pruning chose
  (on the profile's alignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drpopt.passes.sparsify import block_mask, block_scores, input_axis, nm_mask
from drpopt.passes.targets import TargetProfile


@dataclass(frozen=True)
class PatternLayer:
    """A weight the pattern touches: its parameter name, node and input-channel axis."""

    param: str
    node: str
    axis: int
    depthwise: bool


def pattern_layers(graph, profile: TargetProfile, exclude: list[str], params: dict) -> list:
    """The profile's targeted layers whose weight is a parameter of the same shape."""
    from drpopt.passes.sparsify import targeted_layers

    out = []
    for node in targeted_layers(graph, profile, exclude):
        name = node.input(1).name
        p = params.get(name)
        if p is None or tuple(p.shape) != tuple(np.shape(node.input(1).const)):
            continue
        depthwise = node.op_type == "Conv" and p.shape[1] == 1 and int(node.attr("group", 1)) > 1
        out.append(PatternLayer(name, node.name, input_axis(node), depthwise))
    return out


def _kill_smallest(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Boolean array marking the ``k`` candidates with the smallest scores."""
    out = np.zeros(scores.shape, dtype=bool)
    idx = np.flatnonzero(candidates)
    if k <= 0 or idx.size == 0:
        return out
    order = idx[np.argsort(scores.ravel()[idx], kind="stable")[:k]]
    out.ravel()[order] = True
    return out


def _keep_rows(keep: np.ndarray, alive: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """``keep`` with the largest alive weight restored in every output row (``axis``) that
    had alive weights and lost them all."""
    k = np.moveaxis(keep, axis, 0).reshape(keep.shape[axis], -1).copy()
    a = np.moveaxis(alive, axis, 0).reshape(k.shape)
    emptied = a.any(axis=1) & ~k.any(axis=1)
    if emptied.any():
        mags = np.where(a, np.abs(np.moveaxis(w, axis, 0).reshape(k.shape)), -1.0)
        rows = np.flatnonzero(emptied)
        k[rows, mags[rows].argmax(axis=1)] = True
    moved = np.moveaxis(keep, axis, 0).shape
    return np.moveaxis(k.reshape(moved), 0, axis)


def _global_unstructured(
    weights: dict[str, np.ndarray],
    channel: dict[str, np.ndarray],
    alive_of: dict[str, np.ndarray],
    layers: list[PatternLayer],
    rate: float,
) -> dict[str, np.ndarray]:
    """Keep-masks of unstructured sparsity with one magnitude threshold over all ``layers``
    (``sparsity_scope = "global"``): ``rate`` of their channel-kept weights go in total."""
    out: dict[str, np.ndarray] = {}
    universe = sum(int(channel[x.param].astype(bool).sum()) for x in layers)
    dead = sum(int((channel[x.param].astype(bool) & ~alive_of[x.param]).sum()) for x in layers)
    k = int(round(rate * universe)) - dead
    if not layers:
        return out
    mags = np.concatenate([np.abs(weights[x.param]).ravel() for x in layers])
    alive = np.concatenate([alive_of[x.param].ravel() for x in layers])
    killed = _kill_smallest(mags, alive, k)
    start = 0
    for x in layers:
        size = alive_of[x.param].size
        part = killed[start : start + size].reshape(alive_of[x.param].shape)
        ax = 1 - x.axis if x.axis in (0, 1) else 0
        out[x.param] = _keep_rows(
            alive_of[x.param] & ~part, alive_of[x.param], weights[x.param], ax
        )
        start += size
    return out


def pattern_masks(
    weights: dict[str, np.ndarray],
    channel: dict[str, np.ndarray],
    previous: dict[str, np.ndarray],
    layers: list[PatternLayer],
    profile: TargetProfile,
    rate: float | dict[str, float],
    final: bool,
) -> dict[str, np.ndarray]:
    """Keep-masks (bool) of the ``layers``: channel mask, previous mask and the pattern at
    ``rate`` (``final``: the schedule's last step, where ``nm`` becomes exact)."""
    g = profile.granularity
    out: dict[str, np.ndarray] = {}
    alive_of = {
        layer.param: channel[layer.param].astype(bool) & previous[layer.param].astype(bool)
        for layer in layers
    }
    per_layer = rate if isinstance(rate, dict) else None
    if g == "unstructured" and profile.sparsity_scope == "global" and per_layer is None:
        return _global_unstructured(weights, channel, alive_of, layers, rate)
    for x in layers:
        if per_layer is not None:
            rate = per_layer.get(x.param, 0.0)
        w, alive, chan = weights[x.param], alive_of[x.param], channel[x.param].astype(bool)
        universe, dead = int(chan.sum()), int((chan & ~alive).sum())
        if g in ("nm", "block") and x.depthwise:
            out[x.param] = alive
        elif g == "unstructured":
            k = int(round(rate * universe)) - dead
            keep = alive & ~_kill_smallest(np.abs(w), alive, k)
            out[x.param] = _keep_rows(keep, alive, w, 1 - x.axis if x.axis in (0, 1) else 0)
        elif g == "nm":
            candidates = alive & ~nm_mask(np.where(alive, w, 0.0), x.axis, profile.n, profile.m)
            k = int(candidates.sum()) if final else int(round(rate * universe)) - dead
            out[x.param] = alive & ~_kill_smallest(np.abs(w), candidates, k)
        elif g == "block":
            scores = block_scores(np.where(alive, w, 0.0), x.axis, profile.block)
            live = block_scores(alive.astype(np.float64), x.axis, profile.block) > 0
            universe_b = block_scores(chan.astype(np.float64), x.axis, profile.block) > 0
            k = int(round(rate * universe_b.sum())) - int((universe_b & ~live).sum())
            killed = _kill_smallest(scores, live, k)
            keep = block_mask(np.ones(w.shape), x.axis, profile.block, killed | ~live)
            out[x.param] = alive & keep
        else:
            out[x.param] = alive
    return out
