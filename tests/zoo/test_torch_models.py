"""The torch example models: right output shapes, torchvision / YOLOX layouts and parameter
counts, a data-dependent YOLOX training loss that trains eagerly but defeats torch.fx."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drpopt.zoo import torch_models as tm
from drpopt.zoo.torch_models import TORCH_MODELS, example_input

EXPECTED_OUT: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 10),
    "resnet50": (1, 10),
    "mobilenetv2": (1, 10),
    "yolox_s_like": (1, (128 // 8) ** 2 + (128 // 16) ** 2 + (128 // 32) ** 2, 5 + 20),
    "se": (1, 10),
    "digits_cnn": (1, 10),
}

KEY_PARAMS: dict[str, list[str]] = {
    "resnet18": [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
        "fc.weight",
    ],
    "resnet50": [
        "layer1.0.downsample.1.weight",
        "layer1.0.conv3.weight",
        "layer3.5.bn3.weight",
        "layer4.0.downsample.0.weight",
    ],
    "mobilenetv2": [
        "features.0.0.weight",
        "features.1.conv.0.0.weight",
        "features.2.conv.0.0.weight",
        "features.17.conv.3.running_mean",
        "features.18.1.weight",
        "classifier.1.weight",
    ],
    "yolox_s_like": [
        "backbone.backbone.stem.conv.conv.weight",
        "backbone.backbone.dark2.0.bn.weight",
        "backbone.backbone.dark3.1.m.2.conv2.conv.weight",
        "backbone.backbone.dark5.1.conv2.conv.weight",
        "backbone.lateral_conv0.conv.weight",
        "backbone.C3_n4.conv3.bn.bias",
        "head.stems.0.conv.weight",
        "head.cls_convs.1.1.conv.weight",
        "head.reg_convs.2.0.bn.weight",
        "head.cls_preds.0.bias",
        "head.reg_preds.1.weight",
        "head.obj_preds.2.bias",
    ],
    "se": ["conv1.weight", "se.fc1.weight", "se.fc2.bias", "bn2.weight", "fc.weight"],
    "digits_cnn": ["conv1.weight", "bn3.weight", "conv4.weight", "fc1.weight", "fc2.bias"],
}

TRACEABLE = ["resnet18", "mobilenetv2", "se", "digits_cnn"]


def _build(name: str) -> nn.Module:
    """A seeded model from the registry, in eval mode."""
    torch.manual_seed(0)
    return TORCH_MODELS[name]().eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _targets() -> torch.Tensor:
    """Two images of targets [2, 4, 5]: two objects, then none (all padding rows)."""
    t = torch.zeros(2, 4, 5)
    t[0, 0] = torch.tensor([3.0, 40.0, 50.0, 30.0, 20.0])
    t[0, 1] = torch.tensor([17.0, 100.0, 90.0, 20.0, 60.0])
    return t


def test_registry_matches_expectations() -> None:
    assert set(TORCH_MODELS) == set(EXPECTED_OUT) == set(KEY_PARAMS)


@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_eval_forward_shape(name: str) -> None:
    model = _build(name)
    with torch.no_grad():
        out = model(example_input(name))
    assert tuple(out.shape) == EXPECTED_OUT[name]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_key_parameter_names(name: str) -> None:
    keys = set(_build(name).state_dict())
    missing = [k for k in KEY_PARAMS[name] if k not in keys]
    assert not missing, f"{name}: missing {missing}"


def test_example_input_is_seeded_and_batched() -> None:
    a, b = example_input("digits_cnn", batch=4), example_input("digits_cnn", batch=4)
    assert tuple(a.shape) == (4, 1, 8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, example_input("digits_cnn", batch=4, seed=1))


def test_example_input_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="digits_cnn"):
        example_input("nope")


def test_resnet_blocks_and_downsample() -> None:
    model = tm.resnet18_like()
    assert isinstance(model.layer1[0], tm.BasicBlock)
    assert model.layer1[0].downsample is None
    down = model.layer2[0].downsample
    assert isinstance(down, nn.Sequential)
    assert isinstance(down[0], nn.Conv2d) and isinstance(down[1], nn.BatchNorm2d)
    r50 = tm.resnet50_like()
    assert isinstance(r50.layer1[0], tm.Bottleneck)
    assert r50.layer1[0].downsample is not None  # 16 -> 64 channels
    assert r50.fc.in_features == 16 * 8 * 4


def test_resnet50_full_size_parameter_count() -> None:
    """Width 64 and 1000 classes is torchvision's resnet50 exactly."""
    assert _n_params(tm.resnet50_like(width=64, num_classes=1000)) == 25_557_032


def test_mobilenetv2_residuals_and_classifier() -> None:
    model = tm.mobilenetv2_like()
    blocks = [m for m in model.features if isinstance(m, tm.InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_res_connect for b in blocks) == 10
    assert isinstance(model.classifier[0], nn.Dropout)
    assert model.classifier[1].in_features == 1280  # max(1, width_mult) keeps 1280


def test_yolox_s_parameter_count() -> None:
    assert _n_params(tm.yolox_s()) == pytest.approx(8.97e6, rel=0.01)


def test_yolox_inference_output_is_sigmoided() -> None:
    model = _build("yolox_s_like")
    with torch.no_grad():
        out = model(example_input("yolox_s_like"))
    probs = out[..., 4:]
    assert ((probs >= 0) & (probs <= 1)).all()
    bn = model.backbone.backbone.stem.conv.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03)


def test_yolox_train_mode_without_targets_returns_predictions() -> None:
    model = _build("yolox_s_like").train()
    out = model(example_input("yolox_s_like"))
    assert tuple(out.shape) == EXPECTED_OUT["yolox_s_like"]


def test_yolox_training_loss_is_finite_and_backprops() -> None:
    model = _build("yolox_s_like").train()
    losses = model(example_input("yolox_s_like", batch=2), _targets())
    assert {"total_loss", "iou_loss", "l1_loss", "conf_loss", "cls_loss", "num_fg"} <= set(losses)
    for key, value in losses.items():
        assert torch.isfinite(value).all(), key
    assert losses["iou_loss"] > 0 and losses["cls_loss"] > 0
    losses["total_loss"].backward()
    for name in ("backbone.backbone.stem.conv.conv", "head.cls_preds.0", "head.reg_preds.2"):
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and torch.isfinite(grad).all(), name
    assert model.get_submodule("backbone.backbone.stem.conv.conv").weight.grad.abs().sum() > 0


def test_yolox_training_loss_without_objects() -> None:
    """All-padding targets: only the objectness loss remains, and it still backprops."""
    model = _build("yolox_s_like").train()
    losses = model(example_input("yolox_s_like", batch=2), torch.zeros(2, 3, 5))
    assert losses["iou_loss"].item() == 0.0 and losses["cls_loss"].item() == 0.0
    assert losses["conf_loss"].item() > 0
    losses["total_loss"].backward()


@pytest.mark.parametrize("name", TRACEABLE)
def test_fx_symbolic_trace_matches_eager(name: str) -> None:
    model = _build(name)
    traced = torch.fx.symbolic_trace(model)
    x = example_input(name, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_fx_traces_yolox_in_eval_mode() -> None:
    model = _build("yolox_s_like")
    traced = torch.fx.symbolic_trace(model)
    x = example_input("yolox_s_like")
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_fx_fails_on_yolox_training_loss() -> None:
    """The loss turns the per-image object count into Python ints and branches on them."""
    model = _build("yolox_s_like").train()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
