"""score, mask and the plan: rules, no-op cases, alignment, exclusions, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drpopt.errors import BadInputError, DrpoptError
from drpopt.passes import MaskPass, PassManager, Plan, ScorePass, parse_pipeline
from drpopt.passes.common import get_analysis
from drpopt.passes.mask import kept_count
from drpopt.passes.plan import group_key
from drpopt.passes.targets import TARGETS, TargetProfile
from drpopt.zoo import build
from drpopt.zoo.builder import OnnxBuilder


def plan_for(model, *passes):
    """The pipeline result (``.model``, ``.plan``, ``.scores``) of ``passes`` on ``model``."""
    return PassManager(list(passes))(model)


def test_l2_scores_follow_weight_norms():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 4, name="c1"))
    b.output(b.conv(y, 2, name="out"))
    model = b.build()
    w = {t.name: t for t in model.graph.initializer}
    from onnx import numpy_helper

    arr = numpy_helper.to_array(w["c1.weight"]).copy()
    arr[2] *= 10.0  # channel 2 is the strongest
    arr[0] *= 0.01  # channel 0 the weakest
    w["c1.weight"].CopyFrom(numpy_helper.from_array(arr, "c1.weight"))
    graph = plan_for(model, ScorePass(criterion="l2"))
    (scores,) = graph.scores.values()
    assert int(np.argmax(scores)) == 2 and int(np.argmin(scores)) == 0
    graph = plan_for(model, ScorePass(), MaskPass(rate=0.5, keep_first=False, keep_last=False))
    (gp,) = graph.plan.groups
    assert 2 in gp.keep and 0 not in gp.keep and len(gp.keep) == 2


def test_bn_gamma_uses_batchnorm_scales():
    graph = plan_for(build("resnet18"), ScorePass(criterion="bn-gamma"))
    analysis = get_analysis(graph.model)
    g = analysis.group("layer1.0.conv1")
    gamma = np.abs(graph.model.values["layer1.0.bn1.weight"].const)
    np.testing.assert_allclose(graph.scores[group_key(g)], gamma / gamma.mean())


def test_random_scores_are_seeded():
    a = plan_for(build("se"), ScorePass(criterion="random", seed=3)).scores
    b = plan_for(build("se"), ScorePass(criterion="random", seed=3)).scores
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_analysis_passes_do_not_modify():
    result = PassManager([ScorePass(), MaskPass(rate=0.5)])(build("resnet18"))
    assert not result.modified
    assert [r.modified for r in result.records] == [False, False]


@pytest.mark.parametrize(
    ("size", "rate", "align", "expected"),
    [
        (64, 0.7, 1, 19),
        (64, 0.7, 8, 16),
        (64, 0.0, 8, 64),
        (16, 0.99, 8, 8),
        (4, 0.5, 8, 4),
        (10, 0.5, 1, 5),
    ],
)
def test_kept_count_alignment(size, rate, align, expected):
    profile = TargetProfile("t", "", align=align, min_channels=1, max_rate=0.95)
    assert kept_count(size, rate, profile) == expected


@pytest.mark.parametrize("target", ["drpai", "cpu"])
def test_target_alignment_on_every_group(target):
    graph = plan_for(build("yolox_s_like"), ScorePass(), MaskPass(rate=0.7, target=target))
    plan = graph.plan
    assert plan.groups and plan.target == target
    align = TARGETS[target].align
    for gp in plan.groups:
        assert len(gp.keep) % align == 0 and len(gp.keep) >= align


def test_uniform_rate_is_reached_and_global_differs_per_group():
    model = build("resnet50")
    uni = plan_for(model, ScorePass(), MaskPass(rate=0.5, keep_first=False, keep_last=False))
    glo = plan_for(
        model,
        ScorePass(),
        MaskPass(rate=0.5, allocation="global", keep_first=False, keep_last=False),
    )
    for graph in (uni, glo):
        plan = graph.plan
        share = plan.pruned_channels / plan.settings["eligible_channels"]
        assert 0.45 <= share <= 0.55
    rates = {len(g.keep) / g.size for g in glo.plan.groups}
    assert len(rates) > 1


def test_first_and_last_layers_stay_dense_by_default():
    graph = plan_for(build("resnet50"), ScorePass(), MaskPass(rate=0.5))
    assert "stem.conv" not in {p for g in graph.plan.groups for p in g.producers}
    graph = plan_for(build("resnet18"), ScorePass(), MaskPass(rate=0.5))
    pruned_producers = {p for g in graph.plan.groups for p in g.producers}
    # resnet18's stem starts layer1's residual stream: that group is not the input layer's
    # own (keeping it would keep the stream dense, ViT's whole embedding width) and is pruned
    assert {"stem.conv", "layer1.0.conv2", "layer1.1.conv2"} <= pruned_producers
    # the channels the prediction layer (fc) reads are pruned: only its outputs stay
    assert "layer4.1.conv2" in pruned_producers
    assert not any("fc" in p for p in pruned_producers)
    assert "layer1.0.conv1" in pruned_producers


def test_exclude_patterns():
    graph = plan_for(
        build("resnet18"), ScorePass(), MaskPass(rate=0.5, exclude=["layer1.*", "layer2.0.conv1"])
    )
    producers = {p for g in graph.plan.groups for p in g.producers}
    assert not any(p.startswith("layer1.") for p in producers)
    assert "layer2.0.conv1" not in producers and "layer2.1.conv1" in producers


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_rate_is_rejected_before_running(rate):
    with pytest.raises(BadInputError, match=r"outside \[0, 1\)"):
        MaskPass(rate=rate)
    with pytest.raises(BadInputError, match=r"outside \[0, 1\)"):
        parse_pipeline(f"score,mask:rate={rate}")


def test_plan_round_trip_and_reuse(tmp_path):
    model = build("mobilenetv2")
    graph = plan_for(model, ScorePass(), MaskPass(rate=0.6))
    plan = graph.plan
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    data = json.loads(path.read_text())
    assert data["format"] == "drpopt-plan" and data["groups"][0]["keep"]
    again = plan_for(model, MaskPass(plan=str(path))).plan
    assert [(g.key, g.keep) for g in again.groups] == [(g.key, g.keep) for g in plan.groups]


def test_plan_for_another_model_is_refused(tmp_path):
    plan = plan_for(build("resnet18"), ScorePass(), MaskPass(rate=0.5)).plan
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    with pytest.raises(DrpoptError, match="does not match this model") as info:
        PassManager([MaskPass(plan=str(path))])(build("mobilenetv2"))
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "other"}', "not a drpopt plan"),
        ('{"format": "drpopt-plan", "version": 9, "groups": []}', "plan version"),
        (
            '{"format": "drpopt-plan", "version": 1, '
            '"groups": [{"key": "a", "size": 2, "keep": []}]}',
            "keeps 0 channels",
        ),
    ],
)
def test_bad_plan_files(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(BadInputError, match=message):
        Plan.load(path)


def test_pipeline_parsing_errors():
    valid = "unknown pass 'frobnicate'; valid passes: fold-batchnorm, score"
    with pytest.raises(BadInputError, match=valid):
        parse_pipeline("score,frobnicate")
    with pytest.raises(BadInputError, match="has no argument 'speed'"):
        parse_pipeline("mask:speed=3")
    with pytest.raises(BadInputError, match="is not key=value"):
        parse_pipeline("mask:0.7")
    with pytest.raises(BadInputError, match="not a number"):
        parse_pipeline("mask:rate=lots")
    with pytest.raises(BadInputError, match="is not one of"):
        parse_pipeline("score:criterion=l7")
    with pytest.raises(BadInputError, match="unknown target"):
        parse_pipeline("mask:target=tpu")
    with pytest.raises(BadInputError, match="empty pass"):
        parse_pipeline("score,,mask")


def test_pipeline_string_and_toml_agree(tmp_path):
    spec = "score:criterion=l1,mask:rate=0.7:exclude=stem.*|fc:allocation=global"
    from_string = parse_pipeline(spec)
    toml = tmp_path / "p.toml"
    toml.write_text(
        '[[pass]]\nname = "score"\ncriterion = "l1"\n\n'
        '[[pass]]\nname = "mask"\nrate = 0.7\nexclude = ["stem.*", "fc"]\nallocation = "global"\n'
    )
    assert parse_pipeline(toml) == from_string
    (tmp_path / "q.toml").write_text(f'pipeline = "{spec}"\n')
    assert parse_pipeline(str(tmp_path / "q.toml")) == from_string
    mask_spec = "mask:rate=0.7:allocation=global:exclude=stem.*|fc"
    assert [p.spec() for p in from_string] == [spec.split(",")[0], mask_spec]


def test_profile_dense_ops_are_honoured(tmp_path):
    """A profile's ``dense_ops`` leaves every group touching such a layer whole (it was
    documented but ignored: half of all Conv channels were pruned)."""
    profile = tmp_path / "noconv.toml"
    profile.write_text(
        'name = "noconv"\n[layers]\ndense_ops = ["Conv"]\nkeep_first = false\nkeep_last = false\n'
    )
    graph = plan_for(build("resnet18"), ScorePass(), MaskPass(rate=0.5, target=str(profile)))
    assert graph.plan.pruned_channels == 0
    gemm_only = tmp_path / "nogemm.toml"
    gemm_only.write_text('name = "nogemm"\n[layers]\ndense_ops = ["Gemm"]\n')
    graph = plan_for(build("resnet18"), ScorePass(), MaskPass(rate=0.5, target=str(gemm_only)))
    assert graph.plan.pruned_channels > 0


@pytest.mark.parametrize(
    "name", ["resnet18", "yolox_s_like", "mobilenetv2", "grouped_conv", "channel_shuffle"]
)
def test_group_keys_name_one_group_each(name):
    """A plan names groups by key: every group with a weight gets a key no other group
    has (a weight slice belongs to one group), consumer-only groups included."""
    from drpopt.ir.analysis import analyze
    from drpopt.ir.from_onnx import from_onnx

    groups = [g for g in analyze(from_onnx(build(name))).groups if any(m.tensor for m in g.members)]
    keys = [group_key(g) for g in groups]
    assert len(set(keys)) == len(keys)
