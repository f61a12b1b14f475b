"""The fx frontend on transformer blocks: torchvision's ViT (``nn.MultiheadAttention``),
timm's ViT (q/k/v by reshape and unbind; also ``F.scaled_dot_product_attention``) and
ConvNeXt give the ONNX path's groups (whole heads of q, k, v and the output projection, MLP
hidden channels, LayerNorm scale and bias with the channels they normalise), the fx IR
computes what torch does, and what it cannot map is named and locked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from drpopt import analyze

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
F = torch.nn.functional

import vit_blocks_torch as V  # noqa: E402

from drpopt.ir.from_fx import from_fx  # noqa: E402
from drpopt.ir.from_onnx import from_onnx  # noqa: E402
from drpopt.ir.from_torch import _export_onnx  # noqa: E402
from drpopt.ir.to_onnx import to_onnx  # noqa: E402

MODELS = {
    "torchvision_vit": lambda: V.TorchvisionViT(),
    "timm_vit": lambda: V.TimmViT(),
    "timm_vit_sdpa": lambda: V.TimmViT(fused=True),
    "convnext": lambda: V.ConvNeXtNet(),
}
HEADED = ("torchvision_vit", "timm_vit", "timm_vit_sdpa")


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def summary(a) -> list:
    return sorted((g.size, g.prunable) for g in a.groups)


def param_members(a, names: set[str]) -> dict:
    """Each prunable group's members on parameters. A token Linear's bias is a ``Gemm``
    follower on the fx side (Reshape-Gemm-Reshape keeps the weight a parameter) and the
    parameter of an ``Add`` after ``MatMul`` in the export: same channels, the role is
    read as one."""
    return {
        frozenset(
            (
                "follower" if m.role == "param" else m.role,
                m.tensor,
                m.axis,
                m.start,
                m.block,
                m.length,
            )
            for m in g.members
            if m.tensor in names
        ): g.size
        for g in a.prunable_groups
    }


def head_groups(a) -> list:
    """Prunable groups whose units are blocks of rows (heads) of a q/k/v weight."""
    return [
        g
        for g in a.prunable_groups
        if any(m.role == "producer" and m.block > 1 and m.axis == 0 for m in g.members)
    ]


def scaled_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| over the reference's spread; a constant reference is refused."""
    spread = float(ref.max() - ref.min())
    assert spread > 1e-3 * max(1.0, float(np.abs(ref).max())), "degenerate reference"
    return float(np.abs(out - ref).max()) / spread


def run_ir(graph, x: torch.Tensor) -> list[np.ndarray]:
    """The fx IR written as ONNX, run by onnxruntime (at opset 20, where Gelu exists; the
    ReduceMean axes move to an input there)."""
    proto = to_onnx(graph)
    for node in proto.graph.node:
        axes = [a for a in node.attribute if a.name == "axes"]
        if node.op_type == "ReduceMean" and axes:
            name = f"{node.name}_axes"
            arr = np.asarray(axes[0].ints, np.int64)
            proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
            node.input.append(name)
            node.attribute.remove(axes[0])
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 20
    sess = ort.InferenceSession(proto.SerializeToString())
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


@pytest.mark.parametrize("name", list(MODELS))
def test_fx_and_onnx_export_give_the_same_transformer_groups(name):
    model, x = build(name), example()
    fx_side = analyze(from_fx(model, x))
    proto, _ = _export_onnx(model, (x,), {}, 17)
    onnx_side = analyze(from_onnx(proto))
    names = {n for n, _ in model.named_parameters()}
    assert not fx_side.unsupported
    assert summary(fx_side) == summary(onnx_side)
    assert param_members(fx_side, names) == param_members(onnx_side, names)
    assert fx_side.prunable_params == onnx_side.prunable_params
    # MLP hidden channels (4x the width) and the LayerNorm-normalised stream are prunable
    hidden = [g for g in fx_side.prunable_groups if g.size == 64]
    assert len(hidden) == 2
    stream = [g for g in fx_side.prunable_groups if g.size in (16, 32)]
    assert len(stream) == 1
    followers = {m.tensor for m in stream[0].members if m.role == "follower"}
    assert any(t.endswith("norm.weight") or t.endswith("ln.weight") for t in followers)


@pytest.mark.parametrize("name", HEADED)
def test_heads_are_units_of_q_k_v_and_the_output_projection(name):
    model = build(name)
    a = analyze(from_fx(model, example()))
    heads = head_groups(a)
    assert len(heads) == 2 and all(g.size == 4 for g in heads)
    for g in heads:
        rows = sorted((m.tensor, m.start, m.block) for m in g.members if m.role == "producer")
        assert [start for _, start, _ in rows] == [0, 32, 64]  # q, k, v of the packed rows
        assert {block for *_, block in rows} == {8}  # head_dim
        consumers = {(m.tensor, m.axis, m.block) for m in g.members if m.role == "consumer"}
        assert len(consumers) == 1
        tensor, axis, block = consumers.pop()
        assert tensor.endswith(("out_proj.weight", "proj.weight")) and (axis, block) == (1, 8)


@pytest.mark.parametrize(
    "model",
    [
        V.TorchvisionViT(attn_drop=0.1),
        V.TimmViT(attn_drop=0.1),
        V.TimmViT(fused=True, attn_drop=0.1),
    ],
)
def test_attention_dropout_while_training_keeps_the_heads(model):
    """Traced in training mode, attention dropout (nn.MultiheadAttention's, SDPA's
    ``dropout_p``, an ``nn.Dropout``) leaves the heads prunable."""
    a = analyze(from_fx(model.train(), example()))
    assert not a.unsupported
    assert len(head_groups(a)) == 2


@pytest.mark.parametrize("name", list(MODELS))
def test_the_fx_ir_computes_what_torch_does(name):
    model, x = build(name), example()
    (out,) = run_ir(from_fx(model, x), x)
    assert scaled_error(out, model(x).detach().numpy()) < 1e-5


class SeqFirstAttention(nn.Module):
    """``nn.MultiheadAttention`` with (tokens, batch, embed) inputs whose weights are read."""

    def __init__(self, average: bool = True) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4)
        self.fc = nn.Linear(16, 8)
        self.average = average

    def forward(self, x):
        x = x.flatten(2).permute(2, 0, 1)
        y, w = self.attn(x, x, x, average_attn_weights=self.average)
        return self.fc(y), w


class CrossAttention(nn.Module):
    """Query from a layer, key and value the input (``kdim``: separate q/k/v weights);
    ``masks``: a boolean key padding mask and a float attention mask."""

    def __init__(self, kdim: int | None = None, masks: bool = False) -> None:
        super().__init__()
        self.q_in = nn.Linear(16, 16)
        self.kv_in = nn.Linear(16, kdim or 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True, kdim=kdim, vdim=kdim)
        self.fc = nn.Linear(16, 8)
        self.masks = masks
        self.register_buffer("pad", torch.tensor([[False] * 4 + [True], [False] * 5]))
        self.register_buffer("bias", torch.randn(5, 5))

    def forward(self, x):
        kv = self.kv_in(x)
        if self.masks:
            y, w = self.attn(self.q_in(x), kv, kv, key_padding_mask=self.pad, attn_mask=self.bias)
            return self.fc(y), w
        y, _ = self.attn(self.q_in(x), kv, kv, need_weights=False)
        return self.fc(y)


class CausalSdpa(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class BoolMaskSdpa(CausalSdpa):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).tril())

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (SeqFirstAttention(), torch.randn(2, 16, 3, 3)),
        (SeqFirstAttention(average=False), torch.randn(2, 16, 3, 3)),
        (CausalSdpa(), torch.randn(2, 5, 16)),
        (CrossAttention(), torch.randn(2, 5, 16)),
        (CrossAttention(kdim=12, masks=True), torch.randn(2, 5, 16)),
        (BoolMaskSdpa(), torch.randn(2, 5, 16)),
    ],
)
def test_attention_variants_compute_what_torch_does(model, x):
    torch.manual_seed(0)
    model.eval()
    g = from_fx(model, x)
    assert not analyze(g).unsupported
    refs = model(x)
    refs = refs if isinstance(refs, tuple) else (refs,)
    outs = run_ir(g, x)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs, strict=True):
        assert scaled_error(out, ref.detach().numpy()) < 1e-5


class UnmappedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_in = nn.Linear(16, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True)

    def forward(self, x):
        q = self.q_in(x)
        return self.attn(q, q, q, need_weights=False)[0]


@pytest.mark.parametrize(
    ("model", "op", "weight"),
    [
        (UnmappedAttention(), "fx::MultiheadAttention(bias_k/add_zero_attn)", "q_in.weight"),
    ],
)
def test_attention_the_frontend_cannot_map_is_named_and_locked(model, op, weight):
    """The call becomes a named ``fx::`` node; the channels of the weights feeding it stay
    whole (SDPA with ``enable_gqa`` is mapped now: tests/ir/test_fx_gqa.py)."""
    a = analyze(from_fx(model.eval(), torch.randn(2, 5, 16)))
    assert op in [t for t, _ in a.unsupported]
    feeding = [
        g for g in a.groups if any(m.role == "producer" and m.tensor == weight for m in g.members)
    ]
    assert feeding and not any(g.prunable for g in feeding)
    if isinstance(model, UnmappedAttention):
        assert op in feeding[0].reason
