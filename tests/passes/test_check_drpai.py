"""``check --target drpai`` on a model pruned by the drop-in: the layers the profile prunes,
kept channel counts on the profile's alignment, per-layer floor, whole-model sparsity."""

from __future__ import annotations

import torch

from drpopt.ir.from_onnx import from_onnx
from drpopt.passes.check import check_model
from drpopt.passes.targets import get_target
from drpopt.retrain.drpai import Pruner, make_pruning_layer_list
from drpopt.retrain.export import export_onnx
from drpopt.zoo.torch_models import resnet50_like


def _pruned(tmp_path, rate: float = 0.7):
    torch.manual_seed(0)
    model = resnet50_like(width=16, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    pruner = Pruner(model, make_pruning_layer_list(model, input_data=[x]), final_pr=rate)
    pruner.update()
    model = pruner.finalize().eval()
    return model, x


def test_drpai_check_passes_a_drop_in_pruned_model_and_flags_misalignment(tmp_path) -> None:
    model, x = _pruned(tmp_path)
    good = tmp_path / "good.onnx"
    export_onnx(model, [x], good, fold_batchnorm=True)
    report = check_model(from_onnx(good), get_target("drpai"))
    assert report.ok, report.summary()
    assert report.skipped  # the stem and the classifier are left dense by the profile
    assert 0.0 < report.model_sparsity < report.sparsity
    assert "whole model" in report.summary()
    pruned = [x for x in report.layers if x.zero_channels > 0]
    assert pruned and all(x.kept_channels % 8 == 0 for x in pruned)

    # one more output channel zeroed in a pruned layer: 7 or 15... kept, off the alignment
    conv = model.layer2[0].conv1
    with torch.no_grad():
        alive = conv.weight.flatten(1).any(dim=1).nonzero().flatten()
        conv.weight[alive[0]] = 0
    bad = tmp_path / "bad.onnx"
    export_onnx(model, [x], bad, fold_batchnorm=True)
    report = check_model(from_onnx(bad), get_target("drpai"))
    assert not report.ok
    assert any(x.misaligned for x in report.layers)
    assert "not a multiple of 8" in report.summary()


def test_drpai_check_flags_a_layer_below_the_pattern_rate(tmp_path) -> None:
    model, x = _pruned(tmp_path)
    conv = model.layer3[0].conv2
    with torch.no_grad():  # revive the fine-grained zeros of one layer (channels stay)
        rows = conv.weight.flatten(1).any(dim=1)
        conv.weight[rows] = torch.randn_like(conv.weight[rows])
    path = tmp_path / "dense_layer.onnx"
    export_onnx(model, [x], path, fold_batchnorm=True)
    report = check_model(from_onnx(path), get_target("drpai"), min_sparsity=0.0)
    low = [x for x in report.layers if x.below_floor]
    assert len(low) == 1 and not report.ok
