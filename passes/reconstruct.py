"""``reconstruct``: refit each consumer's kept input weights (and bias) by ridge least
squares so its outputs on calibration data match the dense model's.

Rules:
- runs after ``mask`` (before or after ``apply-masks``), before ``sparsify`` and
  ``compact``, on calibration data (``calibrate``);
- consumers are refitted layer by layer in topological order: a consumer's inputs come from
  the masked model with every upstream consumer already refitted, its targets are the dense
  model's outputs of the same layer on the same batch (consumers with no refitted consumer
  between them share one pass over the data);
- features are im2col patches per conv group (grouped and depthwise convs included) at
  ``positions`` sampled output positions per sample; only the kept input channels are
  features, plus a constant for the bias; statistics (``A^T A``, ``A^T Y``) accumulate per
  batch, so memory is one batch plus one Gram matrix per layer;
- the fit is ``min |Y - A theta|^2 + lam |theta_w - w_dense|^2`` with
  ``lam = ridge * mean diag(A^T A)``: it shrinks towards the dense weights, not to zero;
- a layer with more than ``max_features`` kept features per group (a Gemm after a large
  Flatten) gets the bias correction only; pruned slices stay zero (compact = sparse).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.activations import run_batches
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.bias_correct import correct_biases
from drpopt.passes.consumers import (
    Consumer,
    begin,
    consumer_layers,
    dense_const,
    levels,
    reapply_masks,
)
from drpopt.passes.context import context_of

log = logging.getLogger(__name__)


class _Ridge:
    """Running ``A^T A`` and ``A^T Y`` of one conv group (A: kept features and a 1)."""

    def __init__(self) -> None:
        self.gram: np.ndarray | None = None
        self.cross: np.ndarray | None = None
        self.mean_x: np.ndarray | None = None
        self.n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        a = np.concatenate([x, np.ones((x.shape[0], 1), x.dtype)], axis=1)
        g = (a.T @ a).astype(np.float64)
        c = (a.T @ np.asarray(y, np.float32)).astype(np.float64)
        if self.gram is None:
            self.gram, self.cross = g, c
        else:
            self.gram += g
            self.cross += c
        self.n += x.shape[0]

    def solve(self, w0: np.ndarray, b0: np.ndarray, ridge: float) -> np.ndarray:
        """theta (features + 1, outputs) shrunk towards (w0^T; b0)."""
        assert self.gram is not None and self.cross is not None
        f = self.gram.shape[0] - 1
        scale = float(np.mean(np.diag(self.gram)[:f])) if f else 0.0
        lam = ridge * scale + 1e-12
        prior = np.concatenate([w0.T, b0[None, :]], axis=0)
        reg = np.full(f + 1, lam)
        reg[f] = lam * 1e-6  # the bias is barely shrunk
        lhs = self.gram + np.diag(reg)
        rhs = self.cross + reg[:, None] * prior
        try:
            return np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


@dataclass
class ReconstructPass(Pass):
    """Refit consumers' kept weights by ridge least squares on calibration data."""

    name: ClassVar[str] = "reconstruct"
    preserves_outputs: ClassVar[bool] = False

    ridge: float = 1e-2
    positions: int = 32
    max_features: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ridge < 0:
            raise BadInputError(f"reconstruct:ridge {self.ridge} must not be negative")
        if self.positions < 1:
            raise BadInputError(f"reconstruct:positions {self.positions} must be at least 1")

    def call(self, model: Graph) -> PassResult:
        started = begin(model, self.name)
        if started is None:
            return PassResult(model, False)
        data, dense, consumers = started
        fallback = [c for c in consumers if not self._fits(c)]
        if fallback:
            log.info(
                "reconstruct: %d layer(s) too wide to refit, bias-corrected instead: %s",
                len(fallback),
                ", ".join(c.layer.node.name for c in fallback[:5]),
            )
            correct_biases(model, dense, fallback, data)
        fit = [c for c in consumer_layers(model) if self._fits(c)]
        by_level: dict[int, list[Consumer]] = defaultdict(list)
        for c, lv in zip(fit, levels(model, fit), strict=True):
            by_level[lv].append(c)
        rng = np.random.default_rng(self.seed)
        context = context_of(model)
        if context.dense_weights is None:
            context.dense_weights = {}
        dense_added = context.dense_weights
        for lv in sorted(by_level):
            layer_set = by_level[lv]
            self._refit(model, dense, layer_set, data, rng, dense_added, lv, len(by_level))
        reapply_masks(model)
        return PassResult(model, True)

    def _fits(self, c: Consumer) -> bool:
        chans = c.layer.feature_channels(len(c.kept))
        return max(int(c.kept[ch].sum()) for ch in chans) <= self.max_features

    def _refit(self, model, dense, layer_set, data, rng, dense_added, lv, n_levels) -> None:
        pruned = to_onnx(model)
        xs = list(dict.fromkeys(c.layer.x for c in layer_set))
        ys = list(dict.fromkeys(c.layer.y for c in layer_set))
        stats = {c.layer.node.name: None for c in layer_set}
        chans = {c.layer.node.name: c.layer.feature_channels(len(c.kept)) for c in layer_set}
        desc = f"reconstruct {lv + 1}/{n_levels}"
        for outs_p, outs_d in run_batches([pruned, dense], [xs, ys], data, desc):
            for c in layer_set:
                name = c.layer.node.name
                feats, target = c.layer.features(
                    outs_p[c.layer.x], outs_d[c.layer.y], rng, self.positions
                )
                target = target.reshape(target.shape[0], -1)
                per = target.shape[1] // len(feats)
                if stats[name] is None:
                    stats[name] = [_Ridge() for _ in feats]
                for g, (f, ridge) in enumerate(zip(feats, stats[name], strict=True)):
                    keep = c.kept[chans[name][g]]
                    ridge.add(f[:, keep], target[:, g * per : (g + 1) * per])
        for c in layer_set:
            self._write(model, c, stats[c.layer.node.name], chans[c.layer.node.name], dense_added)

    def _write(self, model, c: Consumer, stats, chans, dense_added) -> None:
        layer = c.layer
        w_dense = dense_const(model, layer.weight)
        mats = layer.matrices(w_dense)
        bias = layer.bias(model)
        per = len(bias) // len(mats)
        new_mats, new_bias = [], bias.copy()
        for g, (w, ridge) in enumerate(zip(mats, stats, strict=True)):
            keep = c.kept[chans[g]]
            theta = ridge.solve(w[:, keep], bias[g * per : (g + 1) * per], self.ridge)
            w_new = np.zeros_like(w)
            w_new[:, keep] = theta[:-1].T
            new_mats.append(w_new)
            new_bias[g * per : (g + 1) * per] = theta[-1]
        current = np.asarray(model.values[layer.weight].const)
        model.set_const_input(layer.node, 1, layer.from_matrices(new_mats, current))
        layer.set_bias(model, new_bias, dense_added)
        log.info("%s: refitted on %d samples", layer.node.name, stats[0].n)
