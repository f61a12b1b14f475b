"""The Pruner on vision transformers: whole heads (q, k, v rows and the output projection's
columns together, also inside ``nn.MultiheadAttention``'s packed ``in_proj_weight``) and MLP
hidden channels are masked, and the masked torch model computes what its compact ONNX
export computes in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import swin_torch
import torch
import torch.nn.functional as F
import vit_blocks_torch as V

from drpopt import analyze
from drpopt.ir.from_torch import FX_PATH, trace_module
from drpopt.retrain import Pruner, export_onnx, load_pruned_state_dict
from drpopt.retrain.masked_norm import MaskedLayerNorm, masked_layer_norm

MODELS = {
    "torchvision_vit": lambda: V.TorchvisionViT(),
    "timm_vit": lambda: V.TimmViT(),
    "timm_vit_sdpa": lambda: V.TimmViT(fused=True),
    "swin": lambda: swin_torch.TinySwin(),
    "convnext": lambda: V.ConvNeXtNet(),
}
# (q/k/v weight, output projection weight, heads, head_dim) of each attention layer
ATTENTION = {
    "torchvision_vit": [
        (f"layers.{i}.self_attention.in_proj_weight", f"layers.{i}.self_attention.out_proj.weight")
        for i in range(2)
    ],
    "timm_vit": [(f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.proj.weight") for i in range(2)],
    "swin": [
        ("stage1.0.qkv.weight", "stage1.0.proj.weight"),
        ("stage1.1.qkv.weight", "stage1.1.proj.weight"),
        ("stage2.0.qkv.weight", "stage2.0.proj.weight"),
    ],
}
ATTENTION["timm_vit_sdpa"] = ATTENTION["timm_vit"]
HEADS = {"torchvision_vit": (4, 8), "timm_vit": (4, 8), "timm_vit_sdpa": (4, 8), "swin": None}
MLP_IN = {
    "torchvision_vit": ["layers.0.mlp.0.weight", "layers.1.mlp.0.weight"],
    "timm_vit": ["blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc1.weight"],
    "swin": ["stage1.0.mlp.0.weight", "stage2.0.mlp.0.weight"],
    "convnext": ["blocks.0.pwconv1.weight", "blocks.1.pwconv1.weight"],
}
MLP_IN["timm_vit_sdpa"] = MLP_IN["timm_vit"]


def example(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def pruned(name: str, **kwargs) -> tuple[torch.nn.Module, Pruner]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    pruner = Pruner(model, example(0), final_rate=0.5, **kwargs)
    pruner.update()
    return model, pruner


def mask(pruner: Pruner, name: str) -> np.ndarray:
    return pruner._masked[name].mask.numpy()


def kept_heads(rows: np.ndarray, heads: int) -> np.ndarray:
    """Per q/k/v and head: whether the head's rows are kept; asserts whole heads."""
    per = rows.reshape(3, heads, -1)
    assert (per.all(axis=2) | ~per.any(axis=2)).all(), "a head is cut through"
    return per.all(axis=2)


@pytest.mark.parametrize("name", list(ATTENTION))
def test_whole_heads_of_q_k_v_and_the_output_projection_are_masked(name):
    model, pruner = pruned(name)
    params = dict(model.named_parameters())
    for qkv, proj in ATTENTION[name]:
        e = params[proj].shape[0]
        heads = HEADS[name][0] if HEADS[name] else e // 16  # swin: head_dim 16
        rows = mask(pruner, qkv).any(axis=1)  # a row is kept with its kept input columns
        kept = kept_heads(rows, heads)
        assert (kept == kept[0]).all()  # the same heads of q, k and v
        assert kept[0].sum() == heads // 2
        cols = mask(pruner, proj).any(axis=0).reshape(heads, -1)
        assert (cols.all(axis=1) == kept[0]).all() and (cols.any(axis=1) == kept[0]).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_mlp_hidden_channels_are_masked_by_half(name):
    _, pruner = pruned(name)
    for weight in MLP_IN[name]:
        rows = mask(pruner, weight).any(axis=1)
        assert rows.sum() == rows.size // 2


def scaled_error(out: np.ndarray, ref: np.ndarray) -> float:
    spread = float(ref.max() - ref.min())
    assert spread > 1e-3 * max(1.0, float(np.abs(ref).max())), "degenerate reference"
    return float(np.abs(out - ref).max()) / spread


@pytest.mark.parametrize("name", list(MODELS))
def test_the_masked_model_computes_what_its_compact_export_does(name, tmp_path):
    model, _ = pruned(name)
    result = export_onnx(model, example(0), tmp_path / "compact.onnx", compact=True)
    assert result.params < 0.8 * result.dense_params
    x = example(5)  # not the example the export verified on
    with torch.no_grad():
        masked = model(x).numpy()
        torch.manual_seed(0)
        dense = MODELS[name]().eval()(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "compact.onnx"))
    (compact,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert scaled_error(compact, masked) < 1e-5
    assert scaled_error(dense, masked) > 1e-3  # the masks changed the model


def test_swin_falls_back_to_the_export_and_still_prunes_heads():
    """torchvision's Swin builds its shift mask by slice assignment, which torch.fx cannot
    trace: the Pruner's groups come from the ONNX export (named in the trace path)."""
    _, pruner = pruned("swin")
    assert (
        pruner.trace.path.startswith("torch.onnx.export") and "torch.fx failed" in pruner.trace.path
    )
    assert sum(1 for g in pruner.groups if any(m.block == 16 for m in g.members)) == 3


@pytest.mark.parametrize("name", ["timm_vit", "convnext"])
def test_layernorm_channels_stay_whole_without_masked_layernorm_and_say_why(name):
    """A torch LayerNorm counts every channel in its statistics, so with
    ``masked_layernorm=False`` the channels it normalises (the embedding width) stay whole
    in the Pruner, the reason names it, and no module changes class."""
    model, pruner = pruned(name, masked_layernorm=False)
    assert not pruner.masked_norms
    assert not any(isinstance(m, MaskedLayerNorm) for m in model.modules())
    locked = [g for g in pruner.analysis.groups if not g.prunable and g.size in (16, 32)]
    assert len(locked) == 1 and "LayerNormalization" in locked[0].reason
    assert "normalises over these axes" in locked[0].reason


# ---- masked_layernorm (the default): LayerNorms count only the kept channels -------------
NORMS = {
    "torchvision_vit": "layers.0.ln_1.weight",
    "timm_vit": "blocks.0.norm1.weight",
    "swin": "stage1.0.norm1.weight",
    "convnext": "blocks.0.norm.weight",
}


def test_masked_layer_norm_is_the_layernorm_of_the_kept_channels():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen) for s in ((2, 5, 12), (12,), (12,)))
    kept = torch.rand(12, generator=gen) > 0.4
    y = masked_layer_norm(x, kept, w * kept, b * kept, 1e-5)
    ref = F.layer_norm(x[..., kept], (int(kept.sum()),), w[kept], b[kept], 1e-5)
    assert torch.allclose(y[..., kept], ref, atol=1e-6) and (y[..., ~kept] == 0).all()
    full = F.layer_norm(x, (12,), w, b, 1e-5)
    assert torch.allclose(
        masked_layer_norm(x, torch.ones(12, dtype=torch.bool), w, b, 1e-5), full, atol=1e-6
    )


@pytest.mark.parametrize("name", list(NORMS))
def test_masked_layernorm_prunes_the_normalised_width_and_stays_exact(name, tmp_path):
    model, pruner = pruned(name)  # masked_layernorm is the default
    assert [g.size for g in pruner.analysis.groups if not g.prunable] == [10]  # the logits
    ln = mask(pruner, NORMS[name])
    assert ln.sum() == ln.size // 2
    assert pruner.masked_norms and all(
        isinstance(dict(model.named_modules())[n], MaskedLayerNorm) for n in pruner.masked_norms
    )
    x = example(5)
    with torch.no_grad():
        masked = model(x).numpy()
    for compact in (True, False):
        path = tmp_path / f"{compact}.onnx"
        result = export_onnx(model, example(0), path, compact=compact)
        sess = ort.InferenceSession(str(path))
        (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert scaled_error(out, masked) < 1e-5
        if compact:
            assert result.params < 0.4 * result.dense_params


def test_a_masked_layernorm_model_survives_tracing_finalize_and_reload():
    model, pruner = pruned("timm_vit")
    trace = trace_module(model, example(0))  # MaskedLayerNorm is one fx call, a LayerNorm
    assert trace.path.startswith(FX_PATH)
    assert [g.size for g in analyze(trace.graph).groups if not g.prunable] == [10]
    x = example(5)
    with torch.no_grad():
        masked = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    fresh = MODELS["timm_vit"]().eval()
    load_pruned_state_dict(fresh, state)
    assert isinstance(fresh.blocks[0].norm1, MaskedLayerNorm)
    plain = pruner.finalize()
    with torch.no_grad():
        assert torch.equal(plain(x), masked)
        assert scaled_error(fresh(x).numpy(), masked.numpy()) < 1e-6
    assert set(plain.state_dict()) == set(fresh.state_dict())


class TorchEncoder(torch.nn.Module):
    """torch's own ``nn.TransformerEncoder`` between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 32)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)))


@pytest.mark.parametrize("masked_layernorm", [False, True])
def test_torch_transformer_layers_go_through_the_export_and_prune_heads(masked_layernorm, tmp_path):
    """fx refuses nn.TransformerEncoderLayer (its forward branches on its inputs) by name;
    the export path finds the heads; its LayerNorms stay plain (the fused inference path
    reads their weights directly), so the width stays whole."""
    torch.manual_seed(0)
    model = TorchEncoder().eval()
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(0))
    pruner = Pruner(model, x, final_rate=0.5, masked_layernorm=masked_layernorm)
    pruner.update()
    assert "TransformerEncoder 'encoder' branches on its inputs" in pruner.trace.path
    assert not pruner.masked_norms
    for i in range(2):
        rows = mask(pruner, f"encoder.layers.{i}.self_attn.in_proj_weight").all(axis=1)
        assert kept_heads(rows, 4)[0].sum() == 2
    x2 = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(5))
    export_onnx(model, x, tmp_path / "c.onnx", compact=True)
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"))
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x2.numpy()})
    with torch.no_grad():
        assert scaled_error(out, model(x2).numpy()) < 1e-5
