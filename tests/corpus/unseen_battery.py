"""The battery every model of the unseen-architecture suites goes through
(``test_unseen_architectures.py``, ``test_unseen_round3a.py`` ... ``test_unseen_round4b.py``):
each suite lists its models (``MODELS``) and how to build them, and binds the battery::

    BATTERY = battery(MODELS, build, slow=SLOW)
    case, analysis = BATTERY.case, BATTERY.analysis
    globals().update(BATTERY.tests)  # collected as this module's tests

``case`` and ``analysis`` build and analyse a model once (the suite's own tests use them
too); the four tests, parametrized over the models, keep the suite's node ids
(``test_unseen_round4b.py::test_rate_zero_is_bit_identical[dinov2]``). Their checks:

- ``check_locks_and_coverage``: every locked group names its reason, each reason is one the
  architecture is expected to have, and the prunable share reaches the model's minimum;
- ``check_rate_zero``: a plan at rate 0 leaves sparse and compact outputs bit-identical (on a
  reference that is not degenerate);
- ``check_sparse_equals_compact``: a plan's compact outputs equal its sparse ones within
  ``TOLERANCE`` of the spread, with the parameters and MACs the plan says, and at rate 0.5
  the compact model keeps at most ``max_ratio`` of the parameters;
- ``assert_groups_complete`` (``deadchannels``): the dead-channel check on every prunable group;
- ``check_exact``: the short form for a single model and plan (outputs and parameters);
- ``check_like_torchscript``: a dynamo export against its TorchScript export's analysis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from corpus_checks import (
    CONFIGS,
    TOLERANCE,
    PruneConfig,
    Pruned,
    compact_counts,
    compare_outputs,
    prune,
)
from deadchannels import assert_groups_complete, random_feeds, run_model

from drpopt import analyze
from drpopt.ir.analysis import Analysis

OUTPUT = "graph output"  # the lock reason of a graph output's channels (every suite allows it)


@dataclass
class Case:
    """A model, the feeds its outputs are compared on, and what its analysis must show."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    min_prunable: float  # prunable / all parameters
    max_ratio: float  # compact / dense parameters at rate 0.5
    locked: set[str] = field(default_factory=set)  # substrings of the allowed lock reasons


def check_locks_and_coverage(name: str, a: Analysis, locked, min_prunable: float) -> None:
    unnamed = [g.id for g in a.locked_groups if not g.reason or not all(x.message for x in g.locks)]
    assert not unnamed, f"{name}: locked groups without a reason: {unnamed}"
    # every lock of a locked group must be one the case expects (a group locked for several
    # reasons does not pass on one of them: "graph output" alone would hide the others)
    unexpected = sorted(
        {
            x.message
            for g in a.locked_groups
            for x in g.locks
            if not any(k in x.message for k in locked)
        }
    )
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


def check_like_torchscript(model: onnx.ModelProto, ts: Analysis, max_ratio: float) -> None:
    """A model exported by torch's default (dynamo) exporter against the analysis ``ts`` of
    its TorchScript export: the same prunable share, no incomplete group, exact compaction
    at every config, and at rate 0.5 at most ``max_ratio`` of the parameters kept."""
    a = analyze(model)
    assert a.prunable_params / a.params >= ts.prunable_params / ts.params - 0.01
    assert_groups_complete(a, model)
    feeds = random_feeds(model)
    for config in CONFIGS:
        pruned = check_exact(model, config, feeds)
        if config == "rate0.5":
            assert compact_counts(pruned.compact)[0] / pruned.before.params <= max_ratio


@dataclass
class Battery:
    """A suite's ``case`` and ``analysis`` of a model (each computed once) and its four
    parametrized battery tests, by name, for the suite to bind in its module namespace."""

    case: Callable[[str], Case]
    analysis: Callable[[str], Analysis]
    tests: dict[str, Callable[..., None]]


def battery(
    models: Mapping[str, tuple],
    build: Callable[[str], onnx.ModelProto],
    *,
    slow: Collection[str] = (),
    marks: Sequence[pytest.MarkDecorator] = (),
    rate_zero_also: Sequence[str] = (),
    feeds: Mapping[str, Callable[[onnx.ModelProto], dict]] | None = None,
) -> Battery:
    """The battery over ``models`` (name -> (how to build it..., min prunable share, max
    parameter ratio at rate 0.5, allowed lock reasons)); ``build(name)`` makes the model.

    ``slow``: the models whose tests are marked ``slow``; ``marks``: marks of every battery
    test (``pytest.mark.corpus``); ``rate_zero_also``: models that only run the rate-0 test
    (no expectations: they need not prune); ``feeds``: name -> the feeds of that model (the
    default is ``random_feeds``).
    """
    feeds = feeds or {}

    @functools.cache
    def case(name: str) -> Case:
        model = build(name)
        share, ratio, locked = models[name][-3:] if name in models else (0.0, 1.0, set())
        return Case(model, feeds.get(name, random_feeds)(model), share, ratio, locked)

    @functools.cache
    def analysis(name: str) -> Analysis:
        return analyze(case(name).model)

    def test_analysis_names_every_lock_and_covers_the_model(name):
        c = case(name)
        check_locks_and_coverage(name, analysis(name), c.locked, c.min_prunable)

    def test_rate_zero_is_bit_identical(name):
        c = case(name)
        check_rate_zero(name, c.model, c.feeds)

    def test_sparse_equals_compact(name, config):
        c = case(name)
        check_sparse_equals_compact(name, c.model, c.feeds, config, c.max_ratio)

    def test_dead_channels_hold_on_every_prunable_group(name):
        assert_groups_complete(analysis(name), case(name).model)

    def params(names) -> list:
        return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]

    def parametrized(test, names, *more) -> Callable[..., None]:
        # "name" first, so the ids read ``[model-config]``
        for decorator in (pytest.mark.parametrize("name", params(names)), *more, *marks):
            test = decorator(test)
        return test

    by_config = pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
    tests = [
        parametrized(test_analysis_names_every_lock_and_covers_the_model, models),
        parametrized(test_rate_zero_is_bit_identical, [*models, *rate_zero_also]),
        parametrized(test_sparse_equals_compact, models, by_config),
        parametrized(test_dead_channels_hold_on_every_prunable_group, models),
    ]
    return Battery(case, analysis, {t.__name__: t for t in tests})
