"""Means, maxima and minima over channels (``ir/rules_reduce.py``) and RMS normalisation
(``ir/rules_norm.py``) on small torch models exported as their projects do (TorchScript at
opsets 13 and 18, the dynamo exporter at 18 and 23): the channels they read prune, the
sparse model (masked forms over the kept channels) equals the compact one (plain ops) in
onnxruntime, the dead-channel check holds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import random_feeds, run_model
from deploy_ops import rms_norm23
from export_torch import export_as
from reduce_torch import (
    ChannelReduce,
    ResNetCBAM,
    RMSBlock,
    SquareExtreme,
    TwoAxes,
    export_dynamo,
)
from test_default_locks import FREE, assert_same, prune
from test_rules_reduce import _prunes_exactly

from drpopt import analyze
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import ApplyMasksPass, MaskPass, PassManager, ScorePass


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _compact_is_plain(compact: onnx.ModelProto) -> None:
    assert not any(n.domain == "drpopt" for n in compact.graph.node) and not compact.functions


# ---- a reduction over channels as a gate ---------------------------------------------------
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdim", [True, False])
@pytest.mark.parametrize(
    ("how", "op"),
    [("mean", "ReduceMean"), ("amax", "ReduceMax"), ("amin", "ReduceMin"), ("max", "ReduceMax")],
)
def test_a_reduction_over_channels_prunes_exactly(how, op, keepdim, opset):
    model = export_as(ChannelReduce(how, keepdim=keepdim), (1, 3, 8, 8), opset=opset)
    assert op in _ops(model)
    sparse, compact = _prunes_exactly(model)
    assert f"Masked{op}" in _ops(sparse) and op in _ops(compact)
    (node,) = [n for n in compact.graph.node if n.op_type == op]
    assert next(a.i for a in node.attribute if a.name == "keepdims") == int(keepdim)
    _compact_is_plain(compact)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize(("how", "dims"), [("mean", (1, 2, 3)), ("amax", (1, 2)), ("amin", (2, 1))])
def test_a_reduction_over_channels_and_pixels_prunes_exactly(how, dims, opset):
    """The statistic reads the kept channels at every pixel it reduces."""
    model = export_as(ChannelReduce(how, dims), (1, 3, 8, 8), opset)
    _compact_is_plain(_prunes_exactly(model)[1])


def test_axes_given_as_an_input_prune_exactly():
    """The dynamo exporter writes the axes as an initializer input, and ``keepdims=0``."""
    model = export_dynamo(ChannelReduce("max", keepdim=False), (1, 3, 8, 8), 18)
    reduce = next(n for n in model.graph.node if n.op_type == "ReduceMax")
    assert len(reduce.input) == 2
    _compact_is_plain(_prunes_exactly(model)[1])


# ---- the mask is what makes the sparse model right --------------------------------------------
@pytest.mark.parametrize(("how", "op"), [("amax", "ReduceMax"), ("amin", "ReduceMin")])
def test_the_mask_is_what_makes_the_sparse_max_right(how, op):
    model = export_as(SquareExtreme(how), (1, 3, 8, 8), opset=13)
    sparse, compact = _prunes_exactly(model)
    (masked,) = [n for n in sparse.graph.node if n.op_type == f"Masked{op}"]
    masked.op_type, masked.domain = op, ""  # the plain reduction over every channel
    del masked.input[1:]
    feeds = random_feeds(model)
    a, b = run_model(sparse, feeds)[0], run_model(compact, feeds)[0]
    assert np.abs(a - b).max() > 1e-2 * np.abs(b).max()


# ---- two masked axes, and a sparse model pruned again ------------------------------------------
def test_a_reduction_over_two_pruned_axes_prunes_exactly():
    model = export_as(TwoAxes(), (1, 3, 8), opset=13)
    sparse, _ = _prunes_exactly(model)
    mask = next(n for n in sparse.graph.node if n.op_type == "MaskedReduceMax").input[1]
    (init,) = [t for t in sparse.graph.initializer if t.name == mask]
    assert list(init.dims) == [16, 12]  # the outer product of both keep-masks


def test_a_sparse_model_pruned_again_widens_the_mask():
    """Pruned first without the Linear's features (its mask covers the channels only),
    the sparse model pruned again masks them too: sparse equals compact."""
    model = export_as(TwoAxes(), (1, 3, 8), opset=13)
    first = PassManager(
        [ScorePass(), MaskPass(rate=0.5, exclude=["/lin/*"], **FREE), ApplyMasksPass()]
    )(model)
    once = to_onnx(first.model)
    mask = next(n for n in once.graph.node if n.op_type == "MaskedReduceMax").input[1]
    assert [list(t.dims) for t in once.graph.initializer if t.name == mask] == [[16, 1]]
    sparse, compact = prune(once)
    assert_same(sparse, compact, random_feeds(model))


# ---- CBAM ------------------------------------------------------------------------------------
@pytest.mark.parametrize("exporter", ["ts13", "ts18", "dynamo18"])
def test_cbam_prunes_exactly(exporter):
    """Every group of the block prunes (the stream through CBAM's channel mean and max,
    the block's hidden channels, the attention MLP's); the classes stay."""
    net = ResNetCBAM()
    if exporter == "dynamo18":
        model = export_dynamo(net, (1, 3, 16, 16), 18)
    else:
        model = export_as(net, (1, 3, 16, 16), opset=int(exporter[2:]))
    assert {"ReduceMean", "ReduceMax"} <= _ops(model)
    a = analyze(model)
    locked = [g.reason for g in a.locked_groups]
    assert not [r for r in locked if "Reduce" in r] and len(a.prunable_groups) >= 3, locked
    assert a.prunable_params / a.params > 0.95
    _compact_is_plain(_prunes_exactly(model)[1])


# ---- RMS normalisation -------------------------------------------------------------------------
def _rms_prunes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The stream (through both norms) and the MLP's hidden channels prune, exactly."""
    a = analyze(model)
    assert any(g.size == 32 for g in a.prunable_groups)  # the MLP's hidden channels
    assert not a.locked_groups or all("output" in g.reason for g in a.locked_groups)
    return _prunes_exactly(model)


@pytest.mark.parametrize("opset", [13, 18])
def test_t5_rms_norm_written_out_prunes_exactly(opset):
    model = export_as(RMSBlock(written=True), (1, 3, 16, 16), opset=opset)
    assert {"Pow", "ReduceMean", "Sqrt"} <= _ops(model)
    sparse, compact = _rms_prunes(model)
    assert "MaskedReduceMean" in _ops(sparse)
    _compact_is_plain(compact)


@pytest.mark.parametrize("opset", [18, 23])
def test_nn_rms_norm_prunes_exactly(opset):
    """At 18 the dynamo exporter writes nn.RMSNorm out (Pow, ReduceMean, Add, Sqrt,
    Reciprocal, Mul); at 23 as RMSNormalization, which becomes MaskedRMSNormalization in
    the sparse model and the op again in the compact one."""
    model = export_dynamo(RMSBlock(), (1, 3, 16, 16), opset)
    sparse, compact = _rms_prunes(model)
    if opset == 23:
        assert "RMSNormalization" in _ops(model) and "MaskedRMSNormalization" in _ops(sparse)
        assert "RMSNormalization" in _ops(compact)
    else:
        assert "RMSNormalization" not in _ops(model) and "MaskedReduceMean" in _ops(sparse)
    _compact_is_plain(compact)


def test_rms_normalization_op_built_with_onnx_helper_prunes_exactly():
    """``deploy_ops.rms_norm23`` (MatMul -> RMSNormalization-23 -> MLP): the stream prunes
    with the norm's scale."""
    _compact_is_plain(_prunes_exactly(rms_norm23())[1])


def test_rms_normalization_over_several_axes_stays_locked():
    """Over the last two axes (``axis=-2``) the statistic reads both: locked, named."""
    model = rms_norm23()
    node = next(n for n in model.graph.node if n.op_type == "RMSNormalization")
    node.attribute[0].i = -2
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    arr = np.tile(onnx.numpy_helper.to_array(scale), (6, 1))
    scale.CopyFrom(onnx.numpy_helper.from_array(arr, scale.name))
    a = analyze(model)
    assert any("RMSNormalization" in g.reason and "normalises" in g.reason for g in a.locked_groups)
    sparse, compact = prune(model)
    assert_same(sparse, compact, random_feeds(model))
