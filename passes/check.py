"""``check``: does a model (drpopt's or another tool's) have the sparsity a target wants?

Rules:
- the layers checked are the weighted layers the profile targets (first layer, final
  prediction layers and ``dense_ops`` excluded, as when pruning);
- per layer: the share of zero weights, the share of all-zero output channels, and the
  pattern violations: ``nm``: groups of ``m`` consecutive weights along the input-channel
  axis with more than ``n`` nonzeros; ``block``: blocks of ``block`` input channels of one
  output channel that are only partly zero; ``channel``/``unstructured``: none;
- a layer whose output channels are partly pruned must keep a multiple of the profile's
  ``align`` channels (a layer with fewer than ``align`` channels is left whole): a kept
  count off the alignment is flagged;
- with an ``unstructured``/``block`` pattern of ``layer`` scope each checked layer must be
  at least the pattern's rate zero (the share the profile zeroes inside kept channels; a
  percent of slack for rounding; depthwise convs take no block pattern): a layer below it
  is flagged;
- the model meets the profile when the checked layers' weights are at least
  ``min_sparsity`` zero in total (default: the larger of the profile's recommended rate
  and its pattern's rate) and no layer is flagged; the report names the worst layers
  otherwise, and gives the whole model's sparsity (every weighted layer) beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from drpopt.ir.core import Graph
from drpopt.passes.common import layer_op, weight_of
from drpopt.passes.sparsify import input_axis, output_axis, targeted_layers
from drpopt.passes.targets import TargetProfile


@dataclass
class LayerCheck:
    """One layer: how sparse, in what structure, and whether it fits the pattern."""

    node: str
    op: str
    tensor: str
    shape: tuple[int, ...]
    zeros: int
    total: int
    zero_channels: int
    channels: int
    violations: int
    groups: int
    misaligned: bool = False
    below_floor: bool = False

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    @property
    def kept_channels(self) -> int:
        return self.channels - self.zero_channels

    @property
    def conforms(self) -> bool:
        return self.violations == 0 and not self.misaligned and not self.below_floor


_TOTAL_SLACK = 1e-3  # the share is shown to 0.1%: 69.96% meets a 70% target


@dataclass
class CheckReport:
    """Every checked layer, the totals, and the verdict."""

    target: str
    granularity: str
    min_sparsity: float
    layers: list[LayerCheck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    model_zeros: int = 0
    model_total: int = 0
    align: int = 1
    layer_floor: float = 0.0

    @property
    def model_sparsity(self) -> float:
        """The share of zero weights over every weighted layer, checked or not."""
        return self.model_zeros / self.model_total if self.model_total else 0.0

    @property
    def sparsity(self) -> float:
        total = sum(layer.total for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / total if total else 0.0

    @property
    def ok(self) -> bool:
        enough = self.sparsity + _TOTAL_SLACK >= self.min_sparsity
        return enough and all(x.conforms for x in self.layers)

    def worst(self, k: int = 3) -> list[LayerCheck]:
        """Layers that break the pattern first, then the least sparse."""
        return sorted(self.layers, key=lambda x: (x.conforms, x.sparsity))[:k]

    def summary(self) -> str:
        if not self.layers:  # nothing measured: say so, not "0.0% ... worst: " (nothing)
            return (
                f"the model does not meet target '{self.target}': none of its layers is one "
                "the target checks (a Conv, ConvTranspose, Gemm or MatMul reading a constant "
                f"weight, not left dense by the profile: {len(self.skipped)} left dense), so "
                "nothing was measured"
            )
        verdict = "meets" if self.ok else "does not meet"
        text = (
            f"the model {verdict} target '{self.target}': {100 * self.sparsity:.1f}% of the "
            f"checked weights are zero (needs {100 * self.min_sparsity:.1f}%; "
            f"{100 * self.model_sparsity:.1f}% over the whole model's weighted layers)"
        )
        bad = [x for x in self.layers if x.violations]
        if bad:
            text += f"; {len(bad)} layer(s) break the {self.granularity} pattern"
        off = [x for x in self.layers if x.misaligned]
        if off:
            shown = ", ".join(f"{x.node} keeps {x.kept_channels}" for x in off[:3])
            text += (
                f"; {len(off)} layer(s) keep a channel count that is not a multiple of "
                f"{self.align}: {shown}"
            )
        low = [x for x in self.layers if x.below_floor]
        if low:
            shown = ", ".join(f"{x.node} ({100 * x.sparsity:.0f}%)" for x in low[:3])
            text += (
                f"; {len(low)} layer(s) below the profile's {100 * self.layer_floor:.0f}% "
                f"per layer: {shown}"
            )
        if not self.ok:
            names = ", ".join(
                f"{x.node} ({100 * x.sparsity:.0f}%"
                + (f", {x.violations} violations" if x.violations else "")
                + (", misaligned)" if x.misaligned else ")")
                for x in self.worst()
            )
            text += f"; worst: {names}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "granularity": self.granularity,
            "min_sparsity": self.min_sparsity,
            "sparsity": self.sparsity,
            "model_sparsity": self.model_sparsity,
            "align": self.align,
            "layer_floor": self.layer_floor,
            "ok": self.ok,
            "layers": [
                {
                    **asdict(x),
                    "sparsity": x.sparsity,
                    "kept_channels": x.kept_channels,
                    "conforms": x.conforms,
                }
                for x in self.layers
            ],
            "skipped": self.skipped,
        }


def _violations(w: np.ndarray, axis: int, profile: TargetProfile) -> tuple[int, int]:
    """(violating groups, groups) of the profile's pattern in ``w``."""
    nz = np.moveaxis(w != 0, axis, -1)
    size = nz.shape[-1]
    if profile.granularity == "nm":
        pad = (-size) % profile.m
        padded = np.concatenate([nz, np.zeros((*nz.shape[:-1], pad), bool)], axis=-1)
        counts = padded.reshape(*nz.shape[:-1], -1, profile.m).sum(axis=-1)
        return int((counts > profile.n).sum()), int(counts.size)
    if profile.granularity == "block":
        rows = nz.reshape(nz.shape[0], -1, size)
        pad = (-size) % profile.block
        rows = np.concatenate([rows, np.zeros((*rows.shape[:-1], pad), bool)], axis=-1)
        blocks = rows.reshape(rows.shape[0], rows.shape[1], -1, profile.block)
        live = blocks.sum(axis=(1, 3))
        full = np.ones_like(blocks).sum(axis=(1, 3))
        partial = (live > 0) & (live < full)
        return int(partial.sum()), int(live.size)
    return 0, 0


_FLOOR_SLACK = 0.01


def check_model(
    graph: Graph, profile: TargetProfile, min_sparsity: float | None = None
) -> CheckReport:
    """Measures ``graph``'s sparsity against ``profile``."""
    need = max(profile.default_rate, profile.pattern_rate) if min_sparsity is None else min_sparsity
    floor = (
        profile.pattern_rate
        if profile.granularity in ("unstructured", "block") and profile.sparsity_scope == "layer"
        else 0.0
    )
    report = CheckReport(
        profile.name, profile.granularity, need, align=profile.align, layer_floor=floor
    )
    targeted = {n.name for n in targeted_layers(graph, profile, [])}
    for node in graph.nodes:
        value = weight_of(node)
        if value is None:
            continue
        w = np.asarray(value.const)
        report.model_total += int(w.size)
        report.model_zeros += int(w.size - np.count_nonzero(w))
        if node.name not in targeted:
            report.skipped.append(node.name)
            continue
        out_axis = output_axis(node)
        rows = np.moveaxis(w != 0, out_axis, 0).reshape(w.shape[out_axis], -1)
        depthwise = layer_op(node) == "Conv" and w.shape[1] == 1 and int(node.attr("group", 1)) > 1
        violations, groups = (0, 0) if depthwise else _violations(w, input_axis(node), profile)
        channels, kept = int(rows.shape[0]), int(rows.any(axis=1).sum())
        misaligned = (
            profile.align > 1 and channels >= profile.align and 0 < kept < channels
        ) and kept % profile.align != 0
        zeros = int(w.size - np.count_nonzero(w))
        exempt = depthwise and profile.granularity == "block"
        below = floor > 0 and not exempt and w.size > 0 and zeros / w.size < floor - _FLOOR_SLACK
        report.layers.append(
            LayerCheck(
                node.name,
                node.op_type,
                value.name,
                tuple(int(d) for d in w.shape),
                int(w.size - np.count_nonzero(w)),
                int(w.size),
                int((~rows.any(axis=1)).sum()),
                int(rows.shape[0]),
                violations,
                groups,
                misaligned,
                below,
            )
        )
    return report
