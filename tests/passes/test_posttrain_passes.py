"""Post-training pruning passes: data-aware scores, bias-correct and reconstruct, checked by
running the models in onnxruntime (consumer outputs against the dense model's, compact
against sparse)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from drpopt.errors import BadInputError
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import (
    ApplyMasksPass,
    BiasCorrectPass,
    CalibrationData,
    CleanupPass,
    CompactPass,
    MaskPass,
    PassFailedError,
    PassManager,
    ReconstructPass,
    ScorePass,
    SparsifyPass,
    parse_pipeline,
)
from drpopt.passes.activations import run_batches
from drpopt.passes.analyses import scores_of
from drpopt.passes.context import context_of
from drpopt.passes.manager import load_graph
from drpopt.zoo.builder import OnnxBuilder

OPEN = {"keep_first": False, "keep_last": False}


def chain(k2: int = 3, groups2: int = 1, bias2: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x -> c1 (8) -> relu -> c2 (8, k2, groups2) -> relu -> c3 (4): c1's channels are pruned,
    c2 is their consumer; c2's own channels are pruned too (consumer c3)."""
    b = OnnxBuilder(seed=seed)
    x = b.input("x", ["N", 3, 10, 10])
    h = b.relu(b.conv(x, 8, name="c1"))
    h = b.relu(b.conv(h, 8, k=k2, groups=groups2, bias=bias2, name="c2"))
    b.output(b.conv(h, 4, name="c3"))
    return b.build()


def calib(model: onnx.ModelProto, n: int = 32, seed: int = 0) -> CalibrationData:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    shape[0] = n
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return CalibrationData({model.graph.input[0].name: x}, batch_size=8)


def run(model, passes, data):
    graph = load_graph(model)
    context_of(graph).calibration = data
    return PassManager(passes)(graph).model


def values(model: onnx.ModelProto, names: list[str], data: CalibrationData) -> list[np.ndarray]:
    parts = [outs for (outs,) in run_batches([model], [names], data)]
    return [np.concatenate([p[n] for p in parts]) for n in names]


def masked(model, data, rate=0.5, criterion="l2", post=None, **mask):
    passes = [ScorePass(criterion=criterion), MaskPass(rate=rate, **{**OPEN, **mask})]
    passes.append(ApplyMasksPass())
    if post is not None:
        passes.append(post)
    return run(model, passes, data)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- scores ---------------------------------------------------------------------------
def test_activation_keeps_a_small_weight_large_bias_channel():
    model = chain()
    w = {t.name: t for t in model.graph.initializer}
    arr = onnx.numpy_helper.to_array(w["c1.weight"]).copy()
    bias = onnx.numpy_helper.to_array(w["c1.bias"]).copy()
    arr[0] *= 0.01  # channel 0: tiny weights (l2 ranks it last), large bias (always on)
    bias[0] = 5.0
    w["c1.weight"].CopyFrom(onnx.numpy_helper.from_array(arr, "c1.weight"))
    w["c1.bias"].CopyFrom(onnx.numpy_helper.from_array(bias, "c1.bias"))
    data = calib(model)
    keep = {}
    for criterion in ("l2", "activation"):
        g = masked(model, data, rate=0.25, criterion=criterion)
        plan = context_of(g).plan
        keep[criterion] = next(gp.keep for gp in plan.groups if gp.key.startswith("c1."))
    assert 0 not in keep["l2"]
    assert 0 in keep["activation"]


def test_reconstruction_criterion_ranks_redundant_channels_last():
    model = chain()
    w = {t.name: t for t in model.graph.initializer}
    for name in ("c1.weight", "c1.bias"):
        arr = onnx.numpy_helper.to_array(w[name]).copy()
        arr[1] = arr[0] * 1.0  # channel 1 copies channel 0 ...
        arr[0] *= 3.0  # ... scaled: both large, each rebuilt exactly from the other
        arr[1] *= 3.0
        w[name].CopyFrom(onnx.numpy_helper.from_array(arr, name))
    data = calib(model)
    graph = run(model, [ScorePass(criterion="reconstruction")], data)
    scores = scores_of(graph)["c1.weight[0]@0"]
    assert set(np.argsort(scores)[:2]) == {0, 1}
    l2 = scores_of(run(model, [ScorePass(criterion="l2")], data))["c1.weight[0]@0"]
    assert not set(np.argsort(l2)[:2]) & {0, 1}


def test_data_criteria_and_passes_need_calibration_data():
    for passes in (
        [ScorePass(criterion="activation")],
        [MaskPass(rate=0.5, **OPEN), BiasCorrectPass()],
        [MaskPass(rate=0.5, **OPEN), ReconstructPass()],
    ):
        with pytest.raises(PassFailedError, match="needs calibration data"):
            PassManager(passes)(chain())


# ---- bias-correct ---------------------------------------------------------------------
@pytest.mark.parametrize(("k2", "bias2"), [(3, True), (1, False)])
def test_bias_correct_restores_the_consumer_mean(k2, bias2):
    model = chain(k2, 1, bias2)
    data = calib(model)
    # prune c1's channels only: c2's input differs from the dense one by those channels
    plain = to_onnx(masked(model, data, exclude=["c3"]))
    fixed = to_onnx(masked(model, data, post=BiasCorrectPass(), exclude=["c3"]))
    (dense,) = values(model, ["c2"], data)
    (before,) = values(plain, ["c2"], data)
    (after,) = values(fixed, ["c2"], data)
    mean = dense.mean(axis=(0, 2, 3))
    kept = np.abs(after).sum(axis=(0, 2, 3)) > 0  # pruned output channels stay zero
    scale = np.abs(dense).mean()
    assert np.abs(before.mean(axis=(0, 2, 3)) - mean)[kept].max() > 1e-2 * scale
    np.testing.assert_allclose(after.mean(axis=(0, 2, 3))[kept], mean[kept], atol=1e-4 * scale)
    if not bias2:
        assert len(next(n for n in fixed.graph.node if n.name == "c2").input) == 3


def test_bias_correct_and_reconstruct_change_nothing_without_pruned_channels():
    model = chain()
    data = calib(model)
    for post in (BiasCorrectPass(), ReconstructPass()):
        graph = run(model, [MaskPass(rate=0.0, **OPEN), post], data)
        assert context_of(graph).plan.pruned_channels == 0
        after = to_onnx(graph)
        for a, b in zip(model.graph.initializer, after.graph.initializer, strict=True):
            np.testing.assert_array_equal(
                onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)
            )


# ---- reconstruct ----------------------------------------------------------------------
@pytest.mark.parametrize(("k2", "groups2", "bias2"), [(3, 1, True), (1, 1, False), (3, 4, True)])
def test_reconstruct_beats_masking_and_bias_correction_on_the_output(k2, groups2, bias2):
    model = chain(k2, groups2, bias2)
    data = calib(model, n=48)
    (dense,) = values(model, ["c3"], data)
    errors = {}
    for label, post in (
        ("mask", None),
        ("bias", BiasCorrectPass()),
        ("recon", ReconstructPass(positions=64)),
    ):
        out = to_onnx(masked(model, data, post=post))
        errors[label] = rel(values(out, ["c3"], data)[0], dense)
    # random channels are nearly independent: what the kept ones can rebuild is modest
    assert errors["recon"] < 0.95 * errors["bias"] < 0.95 * errors["mask"]


def test_reconstruct_refits_gemm_and_matmul_consumers():
    b = OnnxBuilder(seed=3)
    x = b.input("x", ["N", 12])
    h = b.relu(b.gemm(x, 16, name="g1"))
    h = b.relu(b.matmul(h, 10, name="m2"))
    b.output(b.gemm(h, 3, name="g3"))
    model = b.build()
    data = calib(model, n=64)
    (dense,) = values(model, ["g3"], data)
    plain = to_onnx(masked(model, data))
    fixed = to_onnx(masked(model, data, post=ReconstructPass()))
    assert rel(values(fixed, ["g3"], data)[0], dense) < 0.8 * rel(
        values(plain, ["g3"], data)[0], dense
    )
    assert any(n.op_type == "Add" for n in fixed.graph.node)  # the MatMul got a bias
    check_compact_equals_sparse(fixed, masked(model, data, post=ReconstructPass()), data)


def test_reconstruct_runs_the_same_before_and_after_apply_masks():
    model = chain()
    data = calib(model)
    after = to_onnx(masked(model, data, post=ReconstructPass()))
    graph = run(
        model, [ScorePass(), MaskPass(rate=0.5, **OPEN), ReconstructPass(), ApplyMasksPass()], data
    )
    before = to_onnx(graph)
    (a,) = values(after, ["c3"], data)
    (b,) = values(before, ["c3"], data)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_reconstruct_refuses_after_compact_or_sparsify():
    model = chain()
    data = calib(model)
    for later in (CompactPass(), SparsifyPass(target="drpai")):
        with pytest.raises(PassFailedError, match="before"):
            run(
                model,
                [MaskPass(rate=0.5, **OPEN), ApplyMasksPass(), later, ReconstructPass()],
                data,
            )
    with pytest.raises(BadInputError, match="ridge"):
        ReconstructPass(ridge=-1)


# ---- compact == sparse ----------------------------------------------------------------
def check_compact_equals_sparse(sparse: onnx.ModelProto, graph, data) -> None:
    compact = to_onnx(PassManager([CompactPass(), CleanupPass()])(graph).model)
    names = [o.name for o in sparse.graph.output]
    a = values(sparse, names, data)
    b = values(compact, names, data)
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() <= 1e-4 * np.abs(x).max()


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("resnet18", "generic"),
        ("mobilenetv2", "generic"),
        ("se", "generic"),
        ("grouped_conv", "generic"),
        ("densenet", "generic"),
        ("flatten_gemm", "generic"),
        ("channel_shuffle", "generic"),
        ("mobilenetv2", "cpu"),
        ("resnet18", "drpai"),
        ("resnet18", "nm-2-4"),
        ("yolox_s_like", "drpai"),
    ],
)
def test_compact_equals_sparse_after_bias_correct_and_reconstruct(zoo_models, name, target):
    model = zoo_models[name]
    data = calib(model, n=8)
    for post in ("bias-correct", "reconstruct:positions=8"):
        steps = f"score:criterion=activation,mask:rate=0.5:target={target}"
        steps += ":keep_first=false:keep_last=false" if target == "generic" else ""
        steps += f",apply-masks,{post},sparsify:target={target}"
        graph = run(model, parse_pipeline(steps), data)
        if context_of(graph).plan.pruned_channels == 0:
            pytest.fail(f"{name}: nothing pruned, the check would prove nothing")
        check_compact_equals_sparse(to_onnx(graph), graph, data)


def test_a_pipeline_string_with_verify(tmp_path, zoo_models):
    model = zoo_models["resnet18"]
    data = calib(model, n=8)
    np.savez(tmp_path / "c.npz", input=data.arrays["input"])
    passes = parse_pipeline(
        f"calibrate:data={tmp_path / 'c.npz'}:batch=4,score:criterion=reconstruction,"
        "mask:rate=0.5,apply-masks,reconstruct,compact,cleanup,verify"
    )
    result = PassManager(passes)(model)
    assert result.verify.ok


def test_reconstruct_goes_layer_by_layer_and_holds_on_unseen_data(zoo_models, monkeypatch):
    model = zoo_models["resnet18"]
    data, unseen = calib(model, n=16), calib(model, n=16, seed=5)
    calls = []
    original = ReconstructPass._refit

    def counting(self, *args):
        calls.append(len(args[2]))
        return original(self, *args)

    monkeypatch.setattr(ReconstructPass, "_refit", counting)
    graph = masked(model, data, post=ReconstructPass(positions=8))
    assert len(calls) > 4  # one pass over the data per level of consumers
    (dense,) = values(model, ["fc"], unseen)
    plain = rel(values(to_onnx(masked(model, data)), ["fc"], unseen)[0], dense)
    assert rel(values(to_onnx(graph), ["fc"], unseen)[0], dense) < 0.2 * plain


def test_reconstruct_after_bias_correct_still_targets_the_dense_model():
    model = chain()
    data = calib(model)
    alone = to_onnx(masked(model, data, post=ReconstructPass()))
    passes = [ScorePass(), MaskPass(rate=0.5, **OPEN), ApplyMasksPass(), BiasCorrectPass()]
    graph = run(model, [*passes, ReconstructPass()], data)
    (a,) = values(alone, ["c3"], data)
    (b,) = values(to_onnx(graph), ["c3"], data)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * np.abs(a).max())


def test_a_graph_with_nothing_prunable_is_left_alone():
    b = OnnxBuilder()
    b.output(b.conv(b.input("x", ["N", 3, 8, 8]), 4))  # one layer: its channels are locked
    model = b.build()
    passes = parse_pipeline(
        "score:criterion=reconstruction,mask:rate=0.5,apply-masks,bias-correct,reconstruct"
    )
    result = PassManager(passes)(_with_data(model))
    assert result.scores == {} and not result.modified


def _with_data(model):
    graph = load_graph(model)
    context_of(graph).calibration = calib(model, n=4)
    return graph


def test_output_drift_measures_cosine_and_relative_error():
    from drpopt.passes.drift import output_drift

    model = chain()
    doubled = onnx.ModelProto()
    doubled.CopyFrom(model)
    for t in doubled.graph.initializer:
        if t.name.startswith("c3."):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 2, t.name))
    data = calib(model)
    (same,) = output_drift(model, model, data)
    assert same.cosine == pytest.approx(1.0) and same.rel_error == 0.0 and not same.large
    (d,) = output_drift(model, doubled, data)  # y -> 2y: same direction, twice as large
    assert d.cosine == pytest.approx(1.0) and d.rel_error == pytest.approx(1.0) and d.large
