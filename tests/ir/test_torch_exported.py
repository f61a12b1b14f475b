"""Models exported by torch.onnx (the TorchScript exporter, dynamic batch): the graphs users
actually bring, with Shape/Gather/Concat shape arithmetic and exporter-chosen names."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
from deadchannels import assert_groups_complete

from drpopt import analyze

torch = pytest.importorskip("torch")
nn = torch.nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.block = Block(16)
        self.head = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        y = self.head(self.block(torch.relu(self.stem(x))))
        z = torch.cat([y[:, :4], torch.sigmoid(y[:, 4:])], dim=1)
        return self.fc(z.view(z.size(0), -1))


def export(module: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(1, 3, 8, 8),),
            buf,
            dynamo=False,
            opset_version=13,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        )
    return onnx.load_from_string(buf.getvalue())


def test_torch_exported_model_groups():
    torch.manual_seed(0)
    model = export(Net())
    a = analyze(model)
    assert a.unsupported == []
    sizes = sorted((g.size, g.prunable) for g in a.groups)
    # stem + residual stream (16), conv1 inside the block (16), the head split by the slices
    # into 4 + 8 channels (each read by fc with a block of 16 features), fc locked (10)
    assert sizes == [(4, True), (8, True), (10, False), (16, True), (16, True)]
    head = [g for g in a.groups if g.size in (4, 8)]
    for g in head:
        fc = next(m for m in g.members if m.tensor == "fc.weight")
        assert fc.block == 16
    assert_groups_complete(a, model)
