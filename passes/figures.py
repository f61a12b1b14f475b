"""One set of figures for every command and report (``analyze``, ``prune``, ``check``,
``report``, ``--json``, the plan).

Meaning (one line each; the README's "Figures" table repeats them):
- ``params``: elements of floating-point weights and other non-scalar float constants
  (biases, BN parameters, per-channel scales), the analysis's parameter rule;
- ``nonzero_params``: those of them that are not zero;
- ``macs``: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul at the stated input
  shapes (dense: zeros computed);
- ``macs_nonzero``: the same with zero weights skipped (what a sparse engine can save);
- ``eligible_channels``: channels of the groups the plan may prune (prunable, not excluded,
  not a first or last layer the target keeps dense); ``pruned_channels``: those removed;
- ``input_shapes``: the input dims the figures were computed for (symbols where unknown:
  counted as 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drpopt.ir.analysis import node_macs
from drpopt.ir.core import Graph, Value
from drpopt.passes.common import weight_of


def _is_param(v: Value) -> bool:
    from drpopt.ir import analysis

    return analysis._is_param(v)  # the analysis's rule: figures and groups agree


def model_figures(graph: Graph, plan: Any = None) -> dict[str, Any]:
    """The figures of ``graph`` (and of ``plan`` when given) as plain data."""
    params = nonzero = 0
    for v in graph.values.values():
        if _is_param(v):
            arr = np.asarray(v.const)
            params += int(arr.size)
            nonzero += int(np.count_nonzero(arr))
    macs = 0
    skipped = 0.0
    for node in graph.nodes:
        m = node_macs(node)
        if not m:
            continue
        macs += m
        w = weight_of(node)
        if w is not None and np.asarray(w.const).size:
            arr = np.asarray(w.const)
            skipped += m * (np.count_nonzero(arr) / arr.size)
        else:
            skipped += m
    out: dict[str, Any] = {
        "params": params,
        "nonzero_params": nonzero,
        "macs": macs,
        "macs_nonzero": int(round(skipped)),
        "input_shapes": graph.meta.get("input_shapes"),
    }
    if plan is not None:
        out.update(plan_figures(plan))
    return out


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
    if figures and figures.get("params"):
        zero = 1 - figures["nonzero_params"] / figures["params"]
        text += f"; total weight sparsity {100 * zero:.1f}%"
    return text
