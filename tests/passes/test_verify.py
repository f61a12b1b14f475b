"""verify: compare_models' tolerance rule, NaN and mismatch handling, inputs files, and the
pass inside pipelines (a perturbed weight fails it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from drpopt.errors import BadInputError, CheckFailedError
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.cleanup import CleanupPass
from drpopt.passes.context import context_of
from drpopt.passes.fold_batchnorm import FoldBatchNormPass
from drpopt.passes.manager import PassFailedError, PassManager
from drpopt.passes.verify import (
    ModelRunError,
    VerifyPass,
    VerifyReport,
    compare_models,
    load_inputs,
    random_inputs,
)

REF = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)  # max|ref| = 3


def const_model(values, name: str = "y", shape=(1, 4)) -> onnx.ModelProto:
    """y = x * 0 + C: its output is exactly C whatever the (finite) input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    c = numpy_helper.from_array(np.asarray(values, np.float32).reshape(shape), "c")
    zero = numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero")
    nodes = [
        helper.make_node("Mul", ["x", "zero"], ["z"]),
        helper.make_node("Add", ["z", "c"], [name]),
    ]
    graph = helper.make_graph(nodes, "const", [x], [y], [c, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ---- compare_models ---------------------------------------------------------------------
def test_identical_models_match():
    report = compare_models(const_model(REF), const_model(REF))
    assert isinstance(report, VerifyReport)
    assert report.ok and report.worst == "y" and not report.problems
    out = report.outputs["y"]
    assert out.max_abs == 0.0 and out.max_rel == 0.0 and out.max_ref == 3.0 and out.ok
    assert out.shape == (1, 4)


SPREAD = float(np.ptp(REF.astype(np.float64)))  # the range, max - min


@pytest.mark.parametrize(("factor", "ok"), [(0.95, True), (1.05, False)])
def test_tolerance_is_relative_to_the_output_spread(factor, ok):
    """rtol 1e-3 of the reference's range allows 1e-3 x range anywhere, even on the
    smallest entry."""
    delta = factor * 1e-3 * SPREAD
    changed = REF.copy()
    changed[0, 3] += delta
    report = compare_models(const_model(REF), const_model(changed), rtol=1e-3, atol=0.0)
    assert report.ok is ok
    out = report.outputs["y"]
    assert out.max_abs == pytest.approx(delta, rel=1e-3)
    assert out.max_rel == pytest.approx(delta / SPREAD, rel=1e-3)
    assert out.spread == pytest.approx(SPREAD, rel=1e-6)
    assert out.mean_abs == pytest.approx(delta / 4, rel=1e-3)
    assert 0.999 < out.cosine <= 1.0


def test_atol_alone():
    changed = REF + np.float32(1e-3)
    assert compare_models(const_model(REF), const_model(changed), rtol=0.0, atol=2e-3).ok
    assert not compare_models(const_model(REF), const_model(changed), rtol=0.0, atol=5e-4).ok


def test_nan_in_the_model_only_fails_and_shared_nan_and_inf_pass():
    nan = REF.copy()
    nan[0, 1] = np.nan
    report = compare_models(const_model(REF), const_model(nan))
    assert not report.ok and math.isinf(report.outputs["y"].max_abs)
    assert "NaN" in report.outputs["y"].message and "NaN" in report.summary()
    assert compare_models(const_model(nan), const_model(nan)).ok
    inf = REF.copy()
    inf[0, 2] = np.inf
    report = compare_models(const_model(inf), const_model(inf))
    assert report.ok and report.outputs["y"].max_ref == 2.0  # max over finite values
    neg = inf.copy()
    neg[0, 2] = -np.inf
    assert not compare_models(const_model(inf), const_model(neg)).ok


def test_output_names_that_differ_fail_with_a_message():
    report = compare_models(const_model(REF), const_model(REF, name="other"))
    assert not report.ok
    assert report.outputs == {}
    assert "only in the reference: y" in report.summary()
    assert "only in the model: other" in report.summary()


def test_output_shapes_that_differ_fail_with_a_message():
    report = compare_models(const_model(REF), const_model(REF, shape=(4, 1)))
    out = report.outputs["y"]
    assert not report.ok and not out.ok and report.worst == "y"
    assert "shape (4, 4) differs from the reference's (1, 4)" in out.message


def test_worst_output_is_the_one_furthest_beyond_its_tolerance():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")]

    def model(scale_a: float, scale_b: float) -> onnx.ModelProto:
        inits = [
            numpy_helper.from_array(np.array(scale_a, np.float32), "sa"),
            numpy_helper.from_array(np.array(scale_b, np.float32), "sb"),
        ]
        nodes = [
            helper.make_node("Mul", ["x", "sa"], ["a"]),
            helper.make_node("Mul", ["x", "sb"], ["b"]),
        ]
        m = helper.make_model(
            helper.make_graph(nodes, "two", [x], outs, inits),
            opset_imports=[helper.make_opsetid("", 17)],
        )
        m.ir_version = 8
        return m

    report = compare_models(model(1.0, 1.0), model(1.01, 1.1))
    assert not report.ok and report.worst == "b"
    assert not report.outputs["a"].ok and not report.outputs["b"].ok
    assert "worst output 'b'" in report.summary()
    assert report.to_dict()["worst"] == "b"


def test_given_inputs_are_used_and_checked():
    x = np.full((1, 4), 2.0)  # float64: cast to the input's float32
    report = compare_models(const_model(REF), const_model(REF), inputs={"x": x})
    assert report.ok
    with pytest.raises(BadInputError, match="no array for model input 'x'"):
        compare_models(const_model(REF), const_model(REF), inputs={"y": x})
    with pytest.raises(BadInputError, match="is int64"):
        compare_models(const_model(REF), const_model(REF), inputs={"x": x.astype(np.int64)})


def test_random_inputs_use_one_for_symbolic_dims_and_sensible_dtypes():
    ins = [
        helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2]),
        helper.make_tensor_value_info("i", TensorProto.INT64, [None, 2]),
        helper.make_tensor_value_info("b", TensorProto.BOOL, [2]),
    ]
    graph = helper.make_graph([], "g", ins, ins)
    feeds = random_inputs(helper.make_model(graph), seed=3)
    assert feeds["f"].shape == (1, 3) and feeds["f"].dtype == np.float32
    assert feeds["h"].dtype == np.float16
    assert feeds["i"].shape == (1, 2) and feeds["i"].dtype == np.int64 and not feeds["i"].any()
    assert feeds["b"].dtype == np.bool_
    again = random_inputs(helper.make_model(graph), seed=3)
    np.testing.assert_array_equal(feeds["f"], again["f"])


def test_a_model_onnxruntime_cannot_load_raises_model_run_error():
    broken = const_model(REF)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelRunError, match="cannot load the model") as info:
        compare_models(const_model(REF), broken)
    assert info.value.which == "model" and info.value.exit_code == 2


def test_negative_tolerances_are_bad_input():
    with pytest.raises(BadInputError, match="must not be negative"):
        compare_models(const_model(REF), const_model(REF), rtol=-1.0)


# ---- load_inputs ------------------------------------------------------------------------
def test_load_inputs_roundtrip_and_errors(tmp_path):
    good = tmp_path / "in.npz"
    np.savez(good, x=REF, other=np.arange(3))
    arrays = load_inputs(good, ["x"])
    np.testing.assert_array_equal(arrays["x"], REF)
    assert set(arrays) == {"x", "other"}

    with pytest.raises(BadInputError, match="no such inputs file"):
        load_inputs(tmp_path / "missing.npz")
    with pytest.raises(BadInputError, match="no array for input"):
        load_inputs(good, ["x", "mask"])
    npy = tmp_path / "one.npy"
    np.save(npy, REF)
    with pytest.raises(BadInputError, match="single array"):
        load_inputs(npy)
    junk = tmp_path / "junk.npz"
    junk.write_text("not numpy at all")
    with pytest.raises(BadInputError, match=r"not a readable \.npz"):
        load_inputs(junk)
    with pytest.raises(BadInputError, match="no such inputs file"):
        load_inputs(tmp_path)  # a directory


# ---- the pass ---------------------------------------------------------------------------
@dataclass
class PerturbPass(Pass):
    """Test pass: adds ``delta`` to the weight of the first Conv."""

    name: ClassVar[str] = "perturb"
    delta: float = 0.1

    def call(self, model: Graph) -> PassResult:
        conv = next(n for n in model.nodes if n.op_type == "Conv")
        w = conv.inputs[1]
        new = model.value(f"{w.name}.perturbed", const=w.const + np.float32(self.delta))
        new.shape, new.dtype = w.shape, w.dtype
        model.set_input(conv, 1, new)
        model.meta.pop("analysis", None)
        return PassResult(model, True)


def test_verify_fails_when_the_pipeline_is_given_an_ir_graph(zoo_models):
    """A Graph given directly is snapshotted as the reference before any pass runs."""
    graph = from_onnx(zoo_models["resnet18"])
    with pytest.raises(PassFailedError, match="verify"):
        PassManager([PerturbPass(delta=5.0), VerifyPass()])(graph)


def test_pipeline_fold_cleanup_verify_passes(zoo_models):
    model = zoo_models["yolox_s_like"]
    result = PassManager([FoldBatchNormPass(), CleanupPass(), VerifyPass()])(model)
    assert [r.modified for r in result.records] == [True, False, False]
    report = result.verify
    assert isinstance(report, VerifyReport) and report.ok
    assert report.worst in {o.name for o in model.graph.output}
    assert not any(n.op_type == "BatchNormalization" for n in result.model.nodes)


def test_pipeline_verify_fails_after_a_perturbed_weight(zoo_models):
    model = zoo_models["resnet18"]
    passes = [FoldBatchNormPass(), PerturbPass(), VerifyPass()]
    with pytest.raises(PassFailedError) as info:
        PassManager(passes)(model)
    err = info.value
    assert err.pass_name == "verify" and err.exit_code == 1
    assert err.ran_before == ["fold-batchnorm", "perturb"]
    text = str(err)
    assert "pass 'verify' failed after fold-batchnorm, perturb" in text
    assert "worst output 'fc'" in text and "max abs" in text and "x spread" in text
    assert "cosine" in text and "random input sample" in text
    assert isinstance(err.__cause__, CheckFailedError)


def test_verify_pass_on_its_own_stores_the_report(tmp_path, zoo_models):
    model = zoo_models["resnet18"]
    graph = from_onnx(model)
    context_of(graph).reference = model
    result = VerifyPass()(graph)
    assert result.modified is False and result.model is graph
    assert context_of(graph).verify.ok

    path = tmp_path / "inputs.npz"
    np.savez(path, input=np.ones((1, 3, 64, 64), np.float32))
    VerifyPass(inputs=str(path))(graph)
    assert context_of(graph).verify.ok

    np.savez(path, image=np.ones((1, 3, 64, 64), np.float32))
    with pytest.raises(PassFailedError, match="no array for input") as info:
        PassManager([VerifyPass(inputs=str(path))])(model)
    assert info.value.exit_code == 2


def test_verify_pass_arguments_and_tolerance():
    assert VerifyPass.name == "verify"
    p = VerifyPass.from_args({"rtol": "1e-2", "atol": "0", "inputs": "x.npz", "seed": "3"})
    assert p == VerifyPass(rtol=1e-2, atol=0.0, inputs="x.npz", seed=3)
    assert p.spec() == "verify:rtol=0.01:atol=0.0:inputs=x.npz:seed=3"
    assert VerifyPass.from_args({"inputs": "none"}).inputs is None

    graph = from_onnx(const_model(REF))
    changed = REF.copy()
    changed[0, 0] += 0.01
    context_of(graph).reference = const_model(changed)
    with pytest.raises(CheckFailedError, match="worst output 'y'"):
        VerifyPass()(graph)
    assert not context_of(graph).verify.ok
    assert VerifyPass(rtol=1e-2)(graph).modified is False


def test_verify_pass_on_a_trivial_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    model = helper.make_model(
        helper.make_graph([], "empty", [x], [x]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    result = PassManager([VerifyPass()])(model)
    assert result.verify.ok and result.modified is False


def test_a_broken_transformed_model_is_a_failed_check():
    graph = from_onnx(const_model(REF))
    context_of(graph).reference = const_model(REF)
    graph.nodes[0].op_type = "NoSuchOp"
    with pytest.raises(CheckFailedError, match="cannot load the model"):
        VerifyPass()(graph)
