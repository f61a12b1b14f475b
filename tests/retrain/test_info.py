"""get_model_info: per-layer zeros, sparsity and MACs, checked against hand counts.

Rules checked:
- a conv's MACs are ``H_out * W_out * C_out * C_in/groups * kH * kW`` per image, a Linear's
  ``batch * out * in``; effective MACs scale with the nonzero fraction;
- zeros and sparsity are those of the current weights (a known mask);
- a shared weight is one row with its calls' MACs summed;
- shapes shape inference cannot see (a strided Slice, as YOLOX's Focus) come from a forward;
- the pruner's rates are reported and its trace reused; no inputs and no pruner is an error;
- ``table()`` renders and ``to_dict()`` is plain data.
"""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn

from drpopt.errors import BadInputError
from drpopt.retrain.info import get_model_info, pruner_info
from drpopt.retrain.pruner import MASK_SUFFIX, Pruner
from drpopt.zoo.torch_models import digits_cnn


class TwoConvs(nn.Module):
    """conv 3->8 3x3 pad 1, ReLU, conv 8->4 1x1 with bias, global pool, Linear 4->5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(y.mean(dim=(2, 3)))


class Focus(nn.Module):
    """YOLOX's Focus: four strided slices concatenated, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 6, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        return self.conv(torch.cat(parts, dim=1))


class Shared(nn.Module):
    """One conv applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


def test_hand_counted_macs_and_a_known_mask() -> None:
    torch.manual_seed(0)
    model = TwoConvs().eval()
    with torch.no_grad():
        model.conv1.weight[[1, 5]] = 0.0  # 2 of 8 output channels: 2 * 3 * 3 * 3 zeros
    info = get_model_info(model, torch.randn(2, 3, 16, 16))
    assert [row.name for row in info.layers] == ["conv1", "conv2", "fc"]
    conv1 = info.layer("conv1")
    assert conv1.op == "Conv"
    assert conv1.shape == (8, 3, 3, 3)
    assert conv1.params == 216
    assert conv1.zeros == 54
    assert conv1.sparsity == pytest.approx(0.25)
    assert conv1.macs == 2 * 16 * 16 * 8 * 3 * 3 * 3
    assert conv1.effective_macs == 2 * 16 * 16 * 6 * 3 * 3 * 3
    conv2 = info.layer("conv2.weight")
    assert conv2.macs == 2 * 16 * 16 * 4 * 8
    assert conv2.zeros == 0 and conv2.effective_macs == conv2.macs
    fc = info.layer("fc")
    assert fc.op == "Gemm" and fc.macs == 2 * 5 * 4
    assert info.params == 216 + 32 + 20
    assert info.zeros == 54
    assert info.macs == conv1.macs + conv2.macs + fc.macs
    assert info.model_params == sum(p.numel() for p in model.parameters())
    assert info.model_zeros == 54
    assert info.input_shapes == [(2, 3, 16, 16)]
    assert info.current_rate is None
    with pytest.raises(KeyError, match="nope"):
        info.layer("nope")


def test_grouped_and_transposed_convs_and_matmul() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False),
        nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False),
    ).eval()
    info = get_model_info(model, torch.randn(1, 8, 5, 5))
    grouped, transposed = info.layers
    assert grouped.macs == 5 * 5 * 8 * 2 * 9
    assert transposed.op == "ConvTranspose"
    assert transposed.macs == 1 * 8 * 5 * 5 * 4 * 2 * 2  # input elements x C_out x kernel

    linear3d = nn.Linear(6, 3, bias=False).eval()
    info = get_model_info(linear3d, torch.randn(2, 7, 6))
    (row,) = info.layers
    assert row.weight == "weight" and row.macs == 2 * 7 * 3 * 6


def test_shared_weight_is_one_row() -> None:
    info = get_model_info(Shared().eval(), torch.randn(1, 4, 6, 6))
    (row,) = info.layers
    assert row.macs == 2 * (6 * 6 * 4 * 4 * 9)


def test_shapes_inference_cannot_see_come_from_a_forward() -> None:
    info = get_model_info(Focus().eval(), torch.randn(1, 3, 32, 32))
    (row,) = info.layers
    assert row.macs_exact
    assert row.macs == 16 * 16 * 6 * 12 * 9


class FunctionalSlice(nn.Module):
    """A strided slice, then ``F.conv2d`` with a bare parameter (no module to hook), padded
    so the exporter cannot know the output shape either."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x[..., ::2, ::2], self.weight, padding=1) + 1.0


def test_unknown_shapes_without_a_module_are_flagged() -> None:
    info = get_model_info(FunctionalSlice().eval(), torch.randn(1, 3, 16, 16))
    (row,) = info.layers
    if row.macs_exact:  # shape inference resolved the slice: the count is exact
        assert row.macs == 8 * 8 * 2 * 3 * 9
    else:
        assert row.macs < 8 * 8 * 2 * 3 * 9
        console = Console(record=True, width=140)
        console.print(info.table())
        assert "?" in console.export_text()


def test_pruner_rates_and_sparsity_of_its_masks() -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    x = torch.randn(4, 1, 8, 8)
    pruner = Pruner(model, x, final_rate=0.5)
    try:
        before = pruner_info(pruner)
        assert before.current_rate == 0.0 and before.step == 0
        assert before.zeros == 0
        pruner.update()
        info = pruner_info(pruner)
        assert info.current_rate == pytest.approx(0.5)
        assert info.final_rate == pytest.approx(0.5)
        assert info.step == 1
        masks = {
            name[: -len(MASK_SUFFIX)]: buf
            for name, buf in model.named_buffers()
            if name.endswith(MASK_SUFFIX)
        }
        for row in info.layers:
            if row.weight in masks:
                mask = masks[row.weight]
                assert row.zeros == int((mask == 0).sum())
                assert row.effective_macs == round(row.macs * float(mask.float().mean()))
        # conv2 loses half its output channels, conv3 half its inputs and outputs
        assert info.layer("conv2").sparsity == pytest.approx(0.5)
        assert info.layer("conv3").sparsity == pytest.approx(0.75)
        assert info.effective_macs < info.macs
        # the pruner's trace was reused: same MACs as a fresh trace with the same inputs
        fresh = get_model_info(model, x, pruner=pruner)
        assert [r.macs for r in fresh.layers] == [r.macs for r in info.layers]
    finally:
        pruner.remove()


def test_table_and_dict() -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    pruner = Pruner(model, torch.randn(2, 1, 8, 8), final_rate=0.5)
    try:
        pruner.update()
        info = pruner_info(pruner)
    finally:
        pruner.remove()
    console = Console(record=True, width=140)
    console.print(info.table())
    text = console.export_text()
    assert "conv2" in text and "total" in text and "pruning rate 0.500" in text
    data = json.loads(json.dumps(info.to_dict()))
    assert data["totals"]["params"] == info.params
    assert data["pruning"]["current_rate"] == pytest.approx(0.5)
    assert data["layers"][0]["name"] == "conv1"


def test_needs_inputs_or_a_pruner() -> None:
    with pytest.raises(BadInputError, match="example inputs"):
        get_model_info(TwoConvs())
