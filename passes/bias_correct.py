"""``bias-correct``: fold each removed channel's mean contribution into its consumers' biases.

Rules:
- runs after ``mask`` (before or after ``apply-masks``) on calibration data (``calibrate``);
- one pass of the dense model over the data gives, for every consumer layer, the exact
  mean input patch over all output positions (zero padding included); the removed
  channels' share of the consumer's mean output, ``W[:, removed] @ mean[removed]`` (dense
  weights), is added to its bias, so the consumer's mean output on the data is the dense
  model's wherever its input differs only by the removed channels;
- a consumer without a bias gets one; the biases of pruned output channels stay zero, so the
  compact model computes what the sparse one does;
- no pruned group, no change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drpopt.ir.core import Graph
from drpopt.passes.activations import fetch_chunks, run_batches
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.calibrate import CalibrationData
from drpopt.passes.consumers import (
    Consumer,
    begin,
    dense_const,
    reapply_masks,
)
from drpopt.passes.context import context_of

log = logging.getLogger(__name__)


@dataclass
class BiasCorrectPass(Pass):
    """Add the removed channels' mean contribution to their consumers' biases (calibration)."""

    name: ClassVar[str] = "bias-correct"
    preserves_outputs: ClassVar[bool] = False

    def call(self, model: Graph) -> PassResult:
        started = begin(model, self.name)
        if started is None:
            return PassResult(model, False)
        data, dense, consumers = started
        correct_biases(model, dense, consumers, data)
        reapply_masks(model)
        return PassResult(model, True)


def correct_biases(model: Graph, dense, consumers: list[Consumer], data: CalibrationData) -> None:
    """Adds to each consumer's bias the dense mean contribution of its removed channels
    (the caller re-applies the masks afterwards)."""
    sums: dict[str, list[np.ndarray]] = {}
    batches = 0
    fetch = list(dict.fromkeys(c.layer.x for c in consumers))
    for chunk in fetch_chunks(model, fetch, data.batch_size):
        batches = 0
        for (outs,) in run_batches([dense], [chunk], data, "bias correction"):
            for c in consumers:
                if c.layer.x not in outs:
                    continue
                x = outs[c.layer.x]
                means = c.layer.mean_features(x)
                acc = sums.setdefault(c.layer.node.name, [np.zeros_like(m) for m in means])
                for a, m in zip(acc, means, strict=True):
                    a += m * x.shape[0]
            batches += next(iter(outs.values())).shape[0]
            outs.clear()
    context = context_of(model)
    if context.dense_weights is None:
        context.dense_weights = {}
    dense_added = context.dense_weights
    for c in consumers:
        layer = c.layer
        mats = layer.matrices(dense_const(model, layer.weight))
        chans = layer.feature_channels(len(c.kept))
        delta = np.concatenate(
            [
                w[:, ~c.kept[ch]] @ (s[~c.kept[ch]] / batches)
                for w, ch, s in zip(mats, chans, sums[layer.node.name], strict=True)
            ]
        )
        layer.set_bias(model, layer.bias(model) + delta, dense_added)
        log.info("%s: bias corrected by up to %.3g", layer.node.name, float(np.abs(delta).max()))
