"""Analyses with a lifetime: graph versions, the analysis manager, preserved analyses, and
the pipeline context (plan and reference outside ``graph.meta``)."""

from __future__ import annotations

import numpy as np
import pytest

from drpopt.ir.analysis import Analysis
from drpopt.ir.from_onnx import from_onnx
from drpopt.passes import MaskPass, PassManager, ScorePass, parse_pipeline
from drpopt.passes.analyses import ANALYSES, Scores, get_analysis, node_by_name
from drpopt.passes.apply_masks import ApplyMasksPass
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.context import PipelineContext, context_of
from drpopt.passes.plan import group_key
from drpopt.passes.score import _node, group_scores
from drpopt.zoo import build


def top_k(scores: np.ndarray, k: int) -> list[int]:
    return sorted(int(j) for j in np.argsort(-scores, kind="stable")[:k])


def test_second_mask_after_compact_and_cleanup_scores_the_new_graph():
    """The issue's repro: scores of the first graph leaked (through ``cleanup``'s copy of
    ``graph.meta``) into the second ``mask``, so every group of its plan kept the wrong
    channels and verify still passed."""
    spec = "score,mask:rate=0.5,apply-masks,compact,cleanup,mask:rate=0.5"
    result = PassManager(parse_pipeline(spec))(build("resnet18"))
    graph, plan = result.model, result.plan
    groups = {group_key(g): g for g in get_analysis(graph).groups}
    assert plan.groups
    for gp in plan.groups:
        group = groups[gp.key]
        assert group.size == gp.size
        fresh = group_scores(graph, group, "l2", np.random.default_rng(0))
        assert gp.keep == top_k(fresh, len(gp.keep)), gp.key
    plan.resolve(get_analysis(graph))  # the plan fits the graph it was made for
    assert "plan" not in graph.meta and "scores" not in graph.meta


def test_every_mutation_bumps_the_version():
    graph = from_onnx(build("resnet18"))
    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    w = conv.inputs[1]
    seen = [graph.version]

    def bumped() -> None:
        assert graph.version > seen[-1]
        seen.append(graph.version)

    w.const = np.array(w.const, copy=True)
    bumped()
    new = graph.value("extra", const=np.zeros(3, np.float32), shape=(3,))
    bumped()
    node = graph.add_node("Identity", "extra_id", [new], [graph.value("extra_out")])
    bumped()
    graph.set_input(node, 0, w)
    bumped()
    graph.set_const_input(conv, 1, np.array(w.const, copy=True))
    bumped()
    graph.replace_all_uses_with(node.outputs[0], graph.value("other"))
    bumped()
    graph.remove_node(node)
    bumped()
    graph.touch()
    bumped()


def test_a_stale_analysis_is_never_returned():
    graph = from_onnx(build("resnet18"))
    first = get_analysis(graph)
    assert get_analysis(graph) is first  # cached while nothing changes
    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    conv.inputs[1].const = np.zeros_like(conv.inputs[1].const)
    assert ANALYSES.cached(graph, Analysis) is None
    assert get_analysis(graph) is not first


def test_the_node_index_follows_a_same_size_edit():
    """score's node index was validated by node count: a node replaced by another (same
    count) left the old one in the index."""
    graph = from_onnx(build("resnet18"))
    relu = next(n for n in graph.nodes if n.op_type == "Relu")
    assert _node(graph, relu.name) is relu
    x, y = relu.inputs[0], relu.outputs[0]
    tmp = graph.value(graph.fresh_name("tmp"))
    graph.replace_all_uses_with(y, tmp)
    graph.remove_node(relu)
    other = graph.add_node("Relu", "renamed", [x], [tmp])
    assert _node(graph, relu.name) is None and node_by_name(graph)["renamed"] is other


def test_passes_keep_only_what_they_declare():
    graph = from_onnx(build("resnet18"))
    PassManager([ScorePass(), MaskPass(rate=0.5)])(graph)
    analysis = ANALYSES.cached(graph, Analysis)
    assert analysis is not None and ANALYSES.cached(graph, Scores) is not None
    ApplyMasksPass()(graph)  # zeros only: the groups stay, the scores go
    assert ANALYSES.cached(graph, Analysis) is analysis
    assert ANALYSES.cached(graph, Scores) is None

    class RenamePass(Pass):
        """Changes an attribute behind the IR's back and says it modified the graph."""

        name = "rename"

        def call(self, model):
            model.nodes[0].attrs["note"] = 1
            return PassResult(model, True)

    RenamePass()(graph)  # declares nothing preserved: nothing survives
    assert ANALYSES.cached(graph, Analysis) is None


def test_the_plan_and_reference_travel_in_the_context():
    model = build("resnet18")
    ctx = PipelineContext()
    result = PassManager([ScorePass(), MaskPass(rate=0.5)])(model, context=ctx)
    assert result.context is ctx and ctx.plan is result.plan and ctx.plan.groups
    assert ctx.reference is not None  # the loaded model, for verify
    assert not {"plan", "reference", "scores", "analysis"} & set(result.model.meta)
    other = PassManager([ScorePass(), MaskPass(rate=0.25)])(model)
    assert other.context is not ctx and other.plan.pruned_channels < ctx.plan.pruned_channels
    # a graph returned by a pipeline continues that pipeline's context
    again = PassManager([ApplyMasksPass()])(result.model)
    assert again.context is ctx and context_of(result.model) is ctx


def test_scores_are_refused_once_the_graph_changed():
    graph = from_onnx(build("se"))
    PassManager([ScorePass(criterion="random", seed=1)])(graph)
    assert ANALYSES.cached(graph, Scores).criterion == "random"
    graph.touch()
    assert ANALYSES.cached(graph, Scores) is None
    with pytest.raises(LookupError, match="Scores"):
        ANALYSES.get(graph, Scores)


def test_cached_analyses_do_not_keep_a_graph_alive():
    import gc
    import weakref

    graph = from_onnx(build("se"))
    PassManager([ScorePass(), MaskPass(rate=0.5)])(graph)
    node_by_name(graph)
    ref = weakref.ref(graph)
    del graph
    gc.collect()
    assert ref() is None
