"""The battery every model of the unseen-architecture suites goes through
(``test_unseen_architectures.py``, ``test_unseen_round3a.py``, ``test_unseen_round3b.py``):
each suite builds its models and parametrizes its tests; the checks are these functions.

- ``check_locks_and_coverage``: every locked group names its reason, each reason is one the
  architecture is expected to have, and the prunable share reaches the model's minimum;
- ``check_rate_zero``: a plan at rate 0 leaves sparse and compact outputs bit-identical (on a
  reference that is not degenerate);
- ``check_sparse_equals_compact``: a plan's compact outputs equal its sparse ones within
  ``TOLERANCE`` of the spread, with the parameters and MACs the plan says, and at rate 0.5
  the compact model keeps at most ``max_ratio`` of the parameters;
- ``check_exact``: the short form for a single model and plan (outputs and parameters).
"""

from __future__ import annotations

import numpy as np
import onnx
from corpus_checks import (
    CONFIGS,
    TOLERANCE,
    PruneConfig,
    Pruned,
    compact_counts,
    compare_outputs,
    prune,
)
from deadchannels import random_feeds, run_model

from drpopt.ir.analysis import Analysis


def check_locks_and_coverage(name: str, a: Analysis, locked, min_prunable: float) -> None:
    unnamed = [g.id for g in a.locked_groups if not g.reason or not all(x.message for x in g.locks)]
    assert not unnamed, f"{name}: locked groups without a reason: {unnamed}"
    unexpected = [g.reason for g in a.locked_groups if not any(k in g.reason for k in locked)]
    assert not unexpected, f"{name}: locked for an unexpected reason: {unexpected[:3]}"
    assert a.prunable_params / a.params >= min_prunable, (name, a.prunable_params, a.params)


def check_rate_zero(name: str, model: onnx.ModelProto, feeds: dict) -> None:
    pruned = prune(model, PruneConfig("rate0", 0.0))
    reference = run_model(model, feeds)
    compare_outputs(reference, reference, f"{name} reference")  # refuses degenerate outputs
    for form, out_model in (("sparse", pruned.masked), ("compact", pruned.compact)):
        out = run_model(out_model, feeds)
        assert all(np.array_equal(a, b) for a, b in zip(reference, out, strict=True)), form


def check_sparse_equals_compact(
    name: str, model: onnx.ModelProto, feeds: dict, config: PruneConfig, max_ratio: float
) -> None:
    pruned = prune(model, config)
    sparse = run_model(pruned.masked, feeds)
    compact = run_model(pruned.compact, feeds)
    err = compare_outputs(sparse, compact, f"{name} {config.name}: compact vs sparse")
    assert err < TOLERANCE, f"{name} {config.name}: compact differs from sparse by {err:.3g}"
    params, macs = compact_counts(pruned.compact)
    assert params == pruned.expected_params, (params, pruned.expected_params)
    assert macs == pruned.expected_macs or (not pruned.macs_exact and macs < pruned.expected_macs)
    if pruned.plan.pruned_channels:  # a target's channel multiple may keep every channel
        assert params < pruned.before.params and macs < pruned.before.macs
    if config.name == "rate0.5":
        ratio = params / pruned.before.params
        assert ratio <= max_ratio, f"{name}: compact keeps {ratio:.3f} of the parameters"


def check_exact(
    model: onnx.ModelProto, config: str = "rate0.5", feeds: dict | None = None
) -> Pruned:
    """Sparse equals compact with the plan's parameter count; the plan, for more checks."""
    pruned = prune(model, CONFIGS[config])
    feeds = random_feeds(model) if feeds is None else feeds
    sparse, compact = run_model(pruned.masked, feeds), run_model(pruned.compact, feeds)
    assert compare_outputs(sparse, compact) < TOLERANCE, config
    assert compact_counts(pruned.compact)[0] == pruned.expected_params, config
    return pruned
