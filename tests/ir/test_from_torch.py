"""The torch frontend: the same groups as the ONNX side, members named by parameters."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from drpopt import analyze
from drpopt.ir.fold import fold_constants
from drpopt.ir.from_onnx import from_onnx
from drpopt.zoo import build
from drpopt.zoo.builder import OnnxBuilder

torch = pytest.importorskip("torch")

from drpopt.ir.from_torch import trace_module  # noqa: E402
from drpopt.zoo.torch_models import TORCH_MODELS, example_input  # noqa: E402


def summary(analysis):
    return sorted((g.size, g.prunable) for g in analysis.groups)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "yolox_s_like", "se"])
def test_torch_and_onnx_models_have_the_same_groups(name):
    torch.manual_seed(0)
    model = TORCH_MODELS[name]().eval()
    trace = trace_module(model, example_input(name))
    onnx_name = {"yolox_s_like": "yolox_s_like"}.get(name, name)
    torch_side, onnx_side = analyze(trace.graph), analyze(build(onnx_name))
    assert summary(torch_side) == summary(onnx_side)
    assert torch_side.macs == onnx_side.macs
    params = dict(model.named_parameters())
    for g in torch_side.prunable_groups:
        for m in g.members:
            if m.role == "producer":
                assert m.tensor in params, m.tensor


def test_a_detector_computing_its_loss_is_traced():
    torch.manual_seed(0)
    model = TORCH_MODELS["yolox_s_like"]().train()
    x = example_input("yolox_s_like", batch=2)
    targets = torch.zeros(2, 4, 5)
    targets[:, 0] = torch.tensor([1.0, 64.0, 64.0, 20.0, 20.0])
    trace = trace_module(model, {"x": x, "targets": targets})
    assert "torch.onnx.export" in trace.path
    a = analyze(trace.graph)
    assert len(a.prunable_groups) >= 60
    assert model.training  # the caller's model is untouched


def test_exporter_shape_arithmetic_is_folded():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 8, name="c1"))
    nodes = [
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("v", 7, [], [2])),
        helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("a", 7, [1], [0])),
        helper.make_node("Unsqueeze", ["two", "ax"], ["step"], name="u_step"),
    ]
    b.nodes.extend(nodes)
    start = b.const("start", np.array([0], np.int64))
    end = b.const("end", np.array([8], np.int64))
    axes = b.const("axes", np.array([2], np.int64))
    s = b.op("Slice", [y, start, end, axes, "step"], (1, 8, 4, 8), name="every_other_row")
    b.output(b.conv(s, 4, name="out"))
    model = b.build(check=False, infer_shapes=False)
    assert "step" in fold_constants(model)
    g = from_onnx(model)
    assert g.values["every_other_row"].shape == (1, 8, 4, 8)
    assert g.values["out"].shape == (1, 4, 4, 8)
    assert analyze(g).group("c1").prunable
