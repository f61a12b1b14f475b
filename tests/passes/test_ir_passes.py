"""drpopt passes inside an ``onnx_ir.passes.PassManager``, next to onnx_ir's own passes;
results judged by running the models in onnxruntime."""

from __future__ import annotations

import onnx_ir
import onnx_ir.passes.common
import pytest

from drpopt import passes
from drpopt.passes import PassManager, parse_pipeline
from drpopt.passes.ir_passes import context
from drpopt.passes.verify import compare_models
from drpopt.zoo import build


@pytest.fixture(scope="module")
def proto():
    return build("resnet18")


def ir_model(proto):
    return onnx_ir.serde.deserialize_model(proto)


def to_proto(model):
    return onnx_ir.serde.serialize_model(model)


def test_the_passes_are_onnx_ir_passes_of_the_right_kind():
    for cls in (passes.Score, passes.Mask, passes.Verify, passes.Calibrate):
        assert issubclass(cls, onnx_ir.passes.InPlacePass)
    for cls in (passes.ApplyMasks, passes.Compact, passes.FoldBatchNorm, passes.Cleanup):
        assert issubclass(cls, onnx_ir.passes.FunctionalPass)


def test_pruning_in_an_onnx_ir_pass_manager_matches_drpopts_own(proto):
    pm = onnx_ir.passes.PassManager(
        [
            passes.Score(),
            passes.Mask(rate=0.5),
            passes.ApplyMasks(),
            passes.Compact(),
            onnx_ir.passes.common.RemoveUnusedNodesPass(),
            passes.Cleanup(),
        ]
    )
    result = pm(ir_model(proto))
    assert isinstance(result.model, onnx_ir.Model) and result.modified
    ours = PassManager(parse_pipeline("score,mask:rate=0.5,apply-masks,compact,cleanup"))(proto)
    out = to_proto(result.model)
    assert compare_models(ours.to_onnx(), out).ok
    assert not compare_models(proto, out).ok  # pruned: the outputs moved
    assert context(result.model).plan.pruned_channels > 0


def test_folding_and_verify_keep_the_outputs(proto):
    pm = onnx_ir.passes.PassManager(
        [
            passes.FoldBatchNorm(),
            onnx_ir.passes.common.RemoveUnusedNodesPass(),
            passes.Cleanup(),
            passes.Verify(),
        ]
    )
    result = pm(ir_model(proto))
    assert context(result.model).verify.ok
    assert compare_models(proto, to_proto(result.model)).ok
    ops = {n.op_type for n in result.model.graph}
    assert "BatchNormalization" not in ops


def test_a_functional_pass_leaves_its_input_unchanged(proto):
    model = ir_model(proto)
    before = to_proto(model).SerializeToString()
    result = passes.FoldBatchNorm()(model)
    assert result.model is not model and result.modified
    assert to_proto(model).SerializeToString() == before


def test_an_analysis_is_in_place_and_changes_no_output(proto):
    model = ir_model(proto)
    result = passes.Mask(rate=0.5)(model)
    assert result.model is model and not result.modified
    assert context(model).plan is not None
    assert compare_models(proto, to_proto(model)).ok


def test_apply_masks_requires_a_plan(proto):
    with pytest.raises(onnx_ir.passes.PreconditionError, match=r"run drpopt\.passes\.Mask"):
        passes.ApplyMasks()(ir_model(proto))


def test_one_adapter_for_a_whole_pipeline(proto):
    step = passes.Drpopt("score,mask:rate=0.5,apply-masks,compact")
    assert isinstance(step, onnx_ir.passes.FunctionalPass)
    result = onnx_ir.passes.PassManager([step])(ir_model(proto))
    ours = PassManager(parse_pipeline("score,mask:rate=0.5,apply-masks,compact"))(proto)
    assert compare_models(ours.to_onnx(), to_proto(result.model)).ok


def test_a_bad_argument_fails_when_the_pass_is_built():
    from drpopt.errors import BadInputError

    with pytest.raises(BadInputError, match="outside"):
        passes.Mask(rate=1.5)
