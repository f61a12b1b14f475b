"""Property-based tests over random DAG CNNs (conv, depthwise, grouped conv, residual add,
concat, split, SE, pooling, resize, slice, PRelu, flatten+gemm): every prunable group is
complete (its dead channels cannot reach an output) and its members tile their tensors."""

from __future__ import annotations

import json

from deadchannels import assert_groups_complete, assert_members_tile
from hypothesis import HealthCheck, given, settings

from drpopt import analyze
from drpopt.zoo.random_graphs import hypothesis_models

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(hypothesis_models(max_blocks=16))
def test_random_graph_groups_are_complete(model):
    analysis = analyze(model)
    assert analysis.unsupported == []
    assert analysis.groups
    assert_members_tile(analysis, model)
    assert_groups_complete(analysis, model)


@SETTINGS
@given(hypothesis_models(max_blocks=16))
def test_random_graph_totals_are_consistent(model):
    analysis = analyze(model)
    data = json.loads(json.dumps(analysis.to_dict()))
    totals = data["totals"]
    assert 0 <= totals["prunable_params"] <= totals["params"]
    assert 0 <= totals["prunable_macs"] <= totals["macs"]
    assert totals["prunable_groups"] + totals["locked_groups"] == len(data["groups"])
    for g in data["groups"]:
        assert g["prunable"] == (g["reason"] is None)
        assert g["params"] > 0
