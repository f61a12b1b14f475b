"""Data-aware channel scores for ``score`` (calibration data through onnxruntime).

Rules:
- ``activation``: for every activation a group's channels index (each channel space of the
  group that is not a constant: conv outputs, activations after them, consumer inputs),
  the mean |x| of each channel's block over the calibration data, divided by that space's
  mean so each counts equally, summed over the spaces;
- ``reconstruction``: for every consumer layer of the group (Conv with one conv group, Gemm,
  MatMul), the output energy the other input channels cannot rebuild when the channel goes,
  ``|W[:, c]|^2 / [(Cov + lam I)^-1]_cc`` (Cov: the covariance of the consumer's input
  channels; the mean is what ``bias-correct`` restores), normalised per layer and summed;
  grouped or too-wide consumers use ``|W[:, c]|^2 * E[x_c^2]``; a group with no consumer
  falls back to ``activation``;
- one pass over the data for all groups; statistics are accumulated per batch.
"""

from __future__ import annotations

import logging

import numpy as np

from drpopt.ir.channels import Group
from drpopt.ir.core import Graph
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.activations import ChannelMoments, fetch_chunks, run_batches
from drpopt.passes.calibrate import CalibrationData
from drpopt.passes.linear_layers import as_linear

log = logging.getLogger(__name__)

MAX_COV = 4096  # consumer inputs wider than this use the diagonal (energy) form


def _activation_spaces(graph: Graph, group: Group) -> list[tuple[str, int, int, int]]:
    out = []
    for seg in group.segments:
        v = graph.values.get(seg.value) if seg.value is not None else None
        if v is None or v.const is not None or v.rank is None:
            continue
        out.append((seg.value, seg.axis, seg.start, seg.block))
    return out


class _Cov:
    """Running first and second moments of a consumer input's channels."""

    def __init__(self, axis: int, full: bool) -> None:
        self.axis, self.full = axis, full
        self.n = 0
        self.s: np.ndarray | None = None
        self.ss: np.ndarray | None = None

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        m = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis]).astype(np.float32)
        if m.shape[0] > 8192:
            m = m[rng.choice(m.shape[0], 8192, replace=False)]
        s = m.sum(0, dtype=np.float64)
        ss = (m.T @ m).astype(np.float64) if self.full else (m * m).sum(0, dtype=np.float64)
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss
        self.n += m.shape[0]

    def unexplained(self) -> np.ndarray:
        """Per channel: the variance the other channels cannot explain linearly."""
        mean = self.s / max(self.n, 1)
        if not self.full:
            return self.ss / max(self.n, 1)  # E[x^2]: the energy form
        cov = self.ss / max(self.n, 1) - np.outer(mean, mean)
        lam = 1e-3 * max(float(np.mean(np.diag(cov))), 1e-12)
        prec = np.linalg.inv(cov + lam * np.eye(len(cov)))
        return 1.0 / np.maximum(np.diag(prec), 1e-30)


def data_scores(
    graph: Graph, groups: list[Group], criterion: str, data: CalibrationData, seed: int = 0
) -> dict[int, np.ndarray]:
    """Scores per group id (higher means keep) for ``activation`` or ``reconstruction``."""
    consumers: dict[int, list] = {}
    covs: dict[str, _Cov] = {}
    if criterion == "reconstruction":
        consumers, covs = _consumers(graph, groups)
    # activations: every group for ``activation``, the groups without a consumer otherwise
    spaces = {g.id: _activation_spaces(graph, g) for g in groups if not consumers.get(g.id)}
    fetch_act = {(v, a) for sp in spaces.values() for v, a, _, _ in sp}
    moments = {key: ChannelMoments(key[1]) for key in fetch_act}
    names = sorted({v for v, _ in fetch_act} | set(covs))
    if not names:  # no activation to look at: every channel ties
        return {g.id: np.ones(g.size) for g in groups}
    proto = to_onnx(graph)
    rng = np.random.default_rng(seed)
    for chunk in fetch_chunks(graph, names, data.batch_size):
        desc = f"scoring ({criterion})" + (f" {len(chunk)} tensors" if chunk != names else "")
        for (outs,) in run_batches([proto], [chunk], data, desc):
            for v in chunk:
                for axis in (a for (u, a) in moments if u == v):
                    moments[(v, axis)].add(outs[v])
                if v in covs:
                    covs[v].add(outs[v], rng)
            outs.clear()
    unexplained = {v: cov.unexplained() for v, cov in covs.items()}
    return {
        g.id: _group_score(g, consumers.get(g.id, []), spaces.get(g.id, []), moments, unexplained)
        for g in groups
    }


def _consumers(graph: Graph, groups: list[Group]) -> tuple[dict[int, list], dict[str, _Cov]]:
    """Per group id, its consumer layers with the segment of their input the group owns,
    and a covariance accumulator per consumer input (``reconstruction``)."""
    consumers: dict[int, list] = {}
    covs: dict[str, _Cov] = {}
    nodes = {n.name: n for n in graph.nodes}
    for g in groups:
        found = []
        for m in g.members:
            node = nodes.get(m.node or "")
            layer = as_linear(node) if node is not None and m.role == "consumer" else None
            if layer is None or m.tensor != layer.weight:
                continue
            x = node.inputs[0]
            axis = layer.channel_axis % (x.rank or 2)
            seg = next((s for s in g.segments if s.value == x.name and s.axis == axis), None)
            if seg is None:
                continue
            width = x.shape[axis] if x.shape else None
            full = layer.groups == 1 and isinstance(width, int) and width <= MAX_COV
            covs.setdefault(x.name, _Cov(axis, full))
            found.append((layer, seg))
        consumers[g.id] = found
    return consumers, covs


def _group_score(
    g: Group, consumers: list, spaces: list, moments: dict, unexplained: dict
) -> np.ndarray:
    """A group's score: the normalised unexplained input energy its consumers lose, or
    without a consumer the mean |activation| of its channels."""
    total = np.zeros(g.size)
    used = 0
    for layer, seg in consumers:
        energy = column_energy(layer) * unexplained[seg.value]
        idx = seg.start + np.arange(g.size)[:, None] * seg.block + np.arange(seg.block)
        per = energy[idx].sum(axis=1)
        total += _normalised(per)
        used += 1
    if not used:
        for v, a, start, block in spaces:
            mean_abs = moments[(v, a)].mean_abs
            idx = start + np.arange(g.size)[:, None] * block + np.arange(block)
            total += _normalised(mean_abs[idx].sum(axis=1))
    return total


def column_energy(layer) -> np.ndarray:
    """Per input channel of ``layer``: the sum of its squared weights over every output."""
    w = np.asarray(layer.node.inputs[1].const, np.float64)
    if layer.kind != "conv":
        mat = layer.matrices(w)[0]
        return (mat * mat).sum(axis=0)
    per_out = (w * w).sum(axis=(2, 3))  # (Cout, Cin per group)
    cout, cin_g = per_out.shape
    g = layer.groups
    return per_out.reshape(g, cout // g, cin_g).sum(axis=1).reshape(g * cin_g)


def _normalised(v: np.ndarray) -> np.ndarray:
    mean = float(v.mean())
    return v / mean if mean > 0 else v
