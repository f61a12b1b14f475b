"""The torch.fx frontend: the same groups as the ONNX-export path, members named by
parameters, unknown ops locked and named, and trace_module's choice of path."""

from __future__ import annotations

import pytest

from drpopt import analyze

torch = pytest.importorskip("torch")
nn = torch.nn

from drpopt.ir.from_fx import FxTraceError, from_fx  # noqa: E402
from drpopt.ir.from_onnx import from_onnx  # noqa: E402
from drpopt.ir.from_torch import FX_PATH, _export_onnx, trace_module  # noqa: E402
from drpopt.zoo.torch_models import TORCH_MODELS, example_input  # noqa: E402

MODELS = ["resnet18", "resnet50", "mobilenetv2", "se", "digits_cnn", "yolox_s_like"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"width": 16} if name == "resnet50" else {}
    return TORCH_MODELS[name](**kwargs).eval()


def onnx_graph(model: nn.Module, x):
    proto, _ = _export_onnx(model, (x,), {}, 17)
    return from_onnx(proto)


def group_of(analysis, tensor: str):
    """The group whose producers include the weight ``tensor``."""
    return next(
        g
        for g in analysis.groups
        if any(m.role == "producer" and m.tensor == tensor for m in g.members)
    )


def summary(analysis):
    return sorted((g.size, g.prunable) for g in analysis.groups)


def param_members(analysis, names: set[str]) -> dict[frozenset, int]:
    """Each prunable group's members on parameters and buffers, with its size."""
    return {
        frozenset(
            (m.role, m.tensor, m.axis, m.start, m.block, m.length)
            for m in g.members
            if m.tensor in names
        ): g.size
        for g in analysis.prunable_groups
    }


@pytest.mark.parametrize("name", MODELS)
def test_fx_and_onnx_export_give_the_same_groups(name):
    model = build(name)
    x = example_input(name)
    fx_side = analyze(from_fx(model, x))
    onnx_side = analyze(onnx_graph(model, x))
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert summary(fx_side) == summary(onnx_side)
    assert param_members(fx_side, names) == param_members(onnx_side, names)
    assert fx_side.macs == onnx_side.macs
    assert fx_side.prunable_params == onnx_side.prunable_params
    assert not fx_side.unsupported
    params = dict(model.named_parameters())
    for g in fx_side.prunable_groups:
        for m in g.members:
            if m.role == "producer":
                assert m.tensor in params, m.tensor


@pytest.mark.parametrize("name", MODELS)
def test_trace_module_takes_the_fx_path(name):
    model = build(name)
    trace = trace_module(model, example_input(name))
    assert trace.path.startswith(FX_PATH)
    assert "eval mode" in trace.path
    assert trace.graph.meta["producer"] == "torch.fx"


def test_values_carry_shapes_dtypes_and_parameter_data():
    model = build("resnet18")
    g = from_fx(model, example_input("resnet18"))
    w = g.values["layer1.0.conv1.weight"]
    assert w.const is not None and w.const.shape == tuple(model.layer1[0].conv1.weight.shape)
    assert (w.const == model.layer1[0].conv1.weight.detach().numpy()).all()
    assert g.values["bn1.running_mean"].const is not None
    assert g.inputs[0].shape == (1, 3, 64, 64) and str(g.inputs[0].dtype) == "float32"
    assert all(v.shape is not None for n in g.nodes for v in n.outputs)
    conv = next(n for n in g.nodes if n.op_type == "Conv")
    assert conv.name == "/conv1/Conv"  # the exporter's node names
    assert set(conv.attrs) == {"dilations", "group", "kernel_shape", "pads", "strides"}


def test_the_onnx_model_is_exported_on_demand():
    model = build("se")
    trace = trace_module(model, example_input("se"))
    assert trace.path.startswith(FX_PATH)
    proto = trace.onnx_model
    assert proto is not None and proto.graph.node


def test_a_detector_computing_its_loss_falls_back_to_onnx_export():
    model = build("yolox_s_like").train()
    x = example_input("yolox_s_like", batch=2)
    targets = torch.zeros(2, 4, 5)
    targets[:, 0] = torch.tensor([1.0, 64.0, 64.0, 20.0, 20.0])
    trace = trace_module(model, {"x": x, "targets": targets})
    assert trace.path.startswith("torch.onnx.export")
    assert "torch.fx failed" in trace.path
    assert trace.onnx_model is not None
    assert len(analyze(trace.graph).prunable_groups) >= 60
    with pytest.raises(FxTraceError, match="symbolic_trace failed"):
        from_fx(model, {"x": x, "targets": targets})


def test_train_mode_leaves_the_callers_statistics_alone():
    model = build("digits_cnn").train()
    before = model.bn1.running_mean.clone()
    trace = trace_module(model, example_input("digits_cnn", batch=2))
    assert trace.path.startswith(FX_PATH) and "train mode" in trace.path
    assert torch.equal(model.bn1.running_mean, before)
    assert model.training


class CumsumNet(nn.Module):
    """conv1 -> cumsum over channels -> conv2: conv1's channels must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv3(self.conv2(torch.cumsum(self.conv1(x), 1)))


def scale_channels(x):
    """A user function torch.fx keeps as one call (a custom op)."""
    return x * torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1, 1)


torch.fx.wrap("scale_channels")


class WrappedNet(CumsumNet):
    def forward(self, x):
        return self.conv3(self.conv2(scale_channels(self.conv1(x))))


@pytest.mark.parametrize(
    ("cls", "op"), [(CumsumNet, "fx::cumsum"), (WrappedNet, "fx::scale_channels")]
)
def test_an_unknown_op_locks_what_it_touches_and_is_named(cls, op):
    model = cls().eval()
    g = from_fx(model, torch.randn(1, 3, 8, 8))
    a = analyze(g)
    assert [t for t, _ in a.unsupported] == [op]
    assert next(n for n in g.nodes if n.op_type == op).domain == "fx"
    locked = group_of(a, "conv1.weight")
    assert not locked.prunable and op in locked.reason
    assert group_of(a, "conv2.weight").prunable  # the groups it does not touch stay prunable


def test_a_module_with_forward_hooks_falls_back_to_onnx_export():
    model = build("se")
    model.conv1.register_forward_hook(lambda m, i, o: None)
    trace = trace_module(model, example_input("se"))
    assert trace.path.startswith("torch.onnx.export") and "forward hooks" in trace.path


def test_functional_ops_map_to_onnx_ops():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding="same")
            self.lin = nn.Linear(8, 6)

        def forward(self, x):
            y = torch.nn.functional.silu(self.conv(x))
            a, b = y.chunk(2, dim=1)
            z = torch.cat([a.relu(), torch.sigmoid(b) * 2.0], dim=1)
            z = torch.nn.functional.interpolate(z, scale_factor=2, mode="nearest")
            z = torch.nn.functional.max_pool2d(z, 2)[:, :, 1:, ::2]
            n, c = z.shape[:2]
            z = z.view(n, c, -1).permute(0, 2, 1)
            return self.lin(z).mean(dim=1)

    g = from_fx(Functional().eval(), torch.randn(1, 3, 8, 8))
    ops = [n.op_type for n in g.nodes]
    for op in ("Conv", "Sigmoid", "Mul", "Split", "Relu", "Concat", "Resize", "MaxPool"):
        assert op in ops, op
    # a Linear on [N, L, C] tokens: Reshape, Gemm on the parameter itself, Reshape back
    for op in ("Slice", "Reshape", "Transpose", "Gemm", "ReduceMean"):
        assert op in ops, op
    assert "MatMul" not in ops
    assert not any(op.startswith("fx::") for op in ops)
    assert g.outputs[0].shape == (1, 6)
    a = analyze(g)
    assert group_of(a, "conv.weight").prunable


def test_token_linear_keeps_its_weight_a_channel_producer():
    """A Linear on ``[B, N, C]`` tokens (a transformer MLP) reads its own parameter, so the
    hidden channels between fc1 and fc2 form a prunable group; ``unbind`` is a Split."""
    from drpopt.ir.analysis import analyze

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc0 = nn.Linear(8, 8)
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            a, b = x.unsqueeze(0).expand(2, -1, -1, -1).unbind(0)
            x = self.fc0(a + b)
            x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
            return self.head(x)

    g = from_fx(Mlp().eval(), torch.randn(2, 5, 8))
    assert not any(n.op_type.startswith("fx::") for n in g.nodes if n.op_type != "fx::expand")
    groups = [x for x in analyze(g).groups if x.prunable]
    hidden = [
        x for x in groups if "fc1.weight" in {m.tensor for m in x.members if m.role == "producer"}
    ]
    assert len(hidden) == 1 and hidden[0].size == 32
    assert {m.tensor for m in hidden[0].members if m.role == "consumer"} == {"fc2.weight"}
