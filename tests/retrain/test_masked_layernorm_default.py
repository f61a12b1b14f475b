"""``masked_layernorm`` is on by default: the Pruner prunes a transformer's embedding width as
the ONNX path does, and every consumer of the masked model (EMA copies, the DRP-AI drop-in,
compact exports) counts the same LayerNorm channels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import vit_blocks_torch as V

import drpopt
from drpopt.api import PruneOptions
from drpopt.errors import BadInputError
from drpopt.ir.from_torch import _export_onnx
from drpopt.retrain import ModelEMA, Pruner, export_onnx
from drpopt.retrain.drpai import Pruner as DrpaiPruner
from drpopt.retrain.drpai import make_pruning_layer_list
from drpopt.retrain.masked_norm import MaskedLayerNorm


def example(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def scaled_error(out: np.ndarray, ref: np.ndarray) -> float:
    spread = float(ref.max() - ref.min())
    assert spread > 1e-3 * max(1.0, float(np.abs(ref).max())), "degenerate reference"
    return float(np.abs(out - ref).max()) / spread


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return V.TimmViT().eval()


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_the_default_pruner_keeps_what_the_onnx_path_keeps(tmp_path):
    x = example(0, 1)
    proto, _ = _export_onnx(vit(), (x,), {}, 17)
    onnx_side = drpopt.prune(proto, PruneOptions(rate=0.5, form="compact"))
    onnx_ratio = drpopt.analyze(onnx_side.proto).params / drpopt.analyze(proto).params
    model = vit()
    pruner = Pruner(model, x, final_rate=0.5)
    pruner.update()
    result = export_onnx(model, x, tmp_path / "c.onnx", compact=True)
    torch_ratio = result.params / result.dense_params
    assert abs(torch_ratio - onnx_ratio) < 0.03, (torch_ratio, onnx_ratio)
    assert torch_ratio < 0.4  # the embedding width is pruned (0.5+ when it stays whole)


@pytest.mark.parametrize("ema_first", [True, False])
def test_the_ema_copy_counts_the_same_layernorm_channels(ema_first, tmp_path):
    """Also an EMA built before the Pruner swapped the model's LayerNorms (YOLOX builds its
    EMA first): its LayerNorms become MaskedLayerNorms at the next update."""
    model = vit()
    ema = ModelEMA(model) if ema_first else None
    pruner = Pruner(model, example(0), final_rate=0.5)
    pruner.update()
    ema = ema or ModelEMA(model)
    ema.update(model)
    assert pruner.masked_norms
    mods = dict(ema.ema.named_modules())
    assert all(isinstance(mods[n], MaskedLayerNorm) for n in pruner.masked_norms)
    x = example(5)
    with torch.no_grad():
        ref = model(x).numpy()
        assert scaled_error(ema.ema(x).numpy(), ref) < 1e-5
    export_onnx(ema.ema, example(0), tmp_path / "ema.onnx", compact=True)
    assert scaled_error(run_onnx(tmp_path / "ema.onnx", x), ref) < 1e-5


def test_the_drpai_drop_in_prunes_the_width_and_keeps_final_pr(tmp_path):
    model = vit()
    layers = make_pruning_layer_list(model, input_size=[(2, 3, 32, 32)])
    pruner = DrpaiPruner(model, pruning_layer_list=layers, final_pr=0.7)
    pruner.update()
    assert pruner.masked_norms and pruner.final_pr == 0.7
    params = dict(model.named_parameters())
    weights = [params[f"{n}.weight"] for n in layers]
    share = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    # final_pr is still the zero share of the listed layers (with the patch embedding, which
    # the pattern skips, listed as the producer of the now prunable width)
    assert "patch_embed" in layers and 0.65 <= share <= 0.75
    assert (params["blocks.0.norm1.weight"] == 0).any()  # the width is pruned
    x = example(5)
    export_onnx(model, example(0), tmp_path / "c.onnx", compact=True)
    with torch.no_grad():
        assert scaled_error(run_onnx(tmp_path / "c.onnx", x), model(x).numpy()) < 1e-5


def test_masked_layernorm_false_leaves_the_modules_and_needs_a_matching_list():
    model = vit()
    plain = make_pruning_layer_list(model, input_size=[(2, 3, 32, 32)], masked_layernorm=False)
    pruner = DrpaiPruner(model, pruning_layer_list=plain, final_pr=0.5)
    pruner.update()
    assert not pruner.masked_norms
    assert not any(isinstance(m, MaskedLayerNorm) for m in model.modules())
    pruner.remove()
    other = vit()
    masked = make_pruning_layer_list(other, input_size=[(2, 3, 32, 32)])
    with pytest.raises(BadInputError, match="masked_layernorm=False"):
        DrpaiPruner(other, pruning_layer_list=masked, final_pr=0.5, masked_layernorm=False)
