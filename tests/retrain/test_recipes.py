"""The public Extension Pack recipes' calls, replayed on small faithful models.

Rules checked (``drpopt.retrain.drpai`` with only the import line changed):
- ResNet-50 (``input_data=[images]``, one-shot, ``final_pr=0.0`` + strict ``load_state_dict``
  resume), YOLOX-s (``input_data={"x", "targets"}`` in training mode, the recipe's own
  ``PrunedModelEMA(ModelEMA)`` over ``deepcopy_model``, resume with ``updates=10000``,
  ``IS_PRUNED_WEIGHT`` loading, ``get_model_info(model, [shape])``, the ``torch2onnx`` export
  named ``images``), ViT-B/16 (``input_size=[(5, 3, H, W)]``): every call works;
- after a few steps at ``final_pr=0.7`` between 65% and 80% of the pruning layers' weights
  are zero and ``get_model_info`` reports that share; masks hold through the optimizer and
  the EMA; both reload idioms reproduce outputs exactly;
- YOLOv8 (with its loss) and TopFormer (conv stem plus attention blocks) prune to the same
  share from the calls their trainer callbacks make;
- masks and the pruning state are not floating point; old float checkpoints still load.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from recipe_models import TopFormer, YOLOv8, vit_b_16_like, yolov8_loss

from drpopt.ir.from_onnx import from_onnx
from drpopt.passes.check import check_model
from drpopt.passes.targets import get_target
from drpopt.retrain.drpai import (
    PrunedModelEMA,
    Pruner,
    deepcopy_model,
    get_model_info,
    load_pruned_state_dict,
    make_pruning_layer_list,
)
from drpopt.retrain.export import export_onnx
from drpopt.retrain.pruner import MASK_SUFFIX, STATE_BUFFER
from drpopt.zoo.torch_models import resnet50_like, yolox_s_like


def _share(model: torch.nn.Module, layers: list[str]) -> float:
    params = dict(model.named_parameters())
    weights = [params[f"{name}.weight"] for name in layers]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(MASK_SUFFIX)}


def _pruned_are_zero(sd: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> bool:
    return all(not sd[k[: -len(MASK_SUFFIX)]][~m].any() for k, m in masks.items())


# ---- YOLOX's ModelEMA and the recipe's PrunedModelEMA, as written upstream ----------------
class ModelEMA:
    """YOLOX 0.3.0 ``yolox/utils/ema.py``: averages every floating-point state-dict entry."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, updates: int = 0):
        import copy

        self.ema = copy.deepcopy(model).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / 2000))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            self.updates += 1
            d = self.decay(self.updates)
            msd = model.state_dict()
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v *= d
                    v += (1.0 - d) * msd[k].detach()


class RecipeEMA(ModelEMA):
    """The recipe's ``PrunedModelEMA``: ``deepcopy_model`` in place of ``deepcopy``."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, updates: int = 0):
        self.ema = deepcopy_model(model).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / 2000))
        for p in self.ema.parameters():
            p.requires_grad_(False)


# ---- ResNet-50 ------------------------------------------------------------------------------
def _images(i: int, shape=(4, 3, 32, 32)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(100 + i))


def test_resnet50_recipe_oneshot_and_resume() -> None:
    torch.manual_seed(0)
    model = resnet50_like(width=16, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = _images(0)
    layers = make_pruning_layer_list(model, input_data=[images])
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    try:
        assert get_model_info(model, input_data=[images]).pruning_sparsity == 0.0
        for i in range(3):
            pruner.update()
            loss = torch.nn.functional.cross_entropy(model(_images(i)), torch.arange(4) % 10)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        share = _share(model, layers)
        assert 0.65 <= share <= 0.80
        info = get_model_info(model, input_data=[images])
        assert info.pruning_sparsity == pytest.approx(share)
        assert 0.0 < pruner.channel_rate < 0.7  # channels, then fine-grained zeros
        kept = {k: int(v.flatten(1).any(1).sum()) for k, v in _masks(model).items() if v.ndim == 4}
        assert any(n % 8 == 0 and n < 64 for n in kept.values())  # aligned channel counts
        model.eval()
        expected = model(_images(9))
        sd = model.state_dict()
    finally:
        pruner.remove()
    assert all(v.dtype == torch.bool for k, v in sd.items() if k.endswith(MASK_SUFFIX))
    assert sd[STATE_BUFFER].dtype == torch.int64

    # resume: Pruner(final_pr=0.0), then strict load_state_dict
    fresh = resnet50_like(width=16, num_classes=10)
    resumed = Pruner(fresh, make_pruning_layer_list(fresh, input_data=[images]), final_pr=0.0)
    try:
        fresh.load_state_dict(sd)
        assert torch.equal(fresh.eval()(_images(9)), expected)
        assert resumed.rate == pytest.approx(0.7)
    finally:
        resumed.remove()
    plain = load_pruned_state_dict(resnet50_like(width=16, num_classes=10), sd).eval()
    assert torch.equal(plain(_images(9)), expected)


# ---- YOLOX-s --------------------------------------------------------------------------------
def _targets(i: int, batch: int = 2, size: int = 64, classes: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(200 + i)
    t = torch.zeros(batch, 4, 5)
    for b in range(batch):
        wh = torch.rand(2, 2, generator=gen) * size / 3 + 4
        cxy = torch.rand(2, 2, generator=gen) * (size - 2 * wh) + wh
        t[b, :2] = torch.cat([torch.randint(0, classes, (2, 1), generator=gen), cxy, wh], 1)
    return t


def _yolox_step(model, optimizer, pruner, ema, i: int) -> None:
    pruner.update()
    out = model(_images(i, (2, 3, 64, 64)), _targets(i))
    optimizer.zero_grad()
    out["total_loss"].backward()
    optimizer.step()
    ema.update(model)


@pytest.mark.parametrize("ema_first", [False, True])
def test_yolox_recipe_ema_resume_and_export(tmp_path, ema_first: bool) -> None:
    """The recipe's EMA (averaging every float entry) keeps pruned weights exactly zero, in a
    fresh run and in a resumed one (``updates=10000``); its checkpoint reloads both ways."""
    torch.manual_seed(0)
    model = yolox_s_like(width=0.125, num_classes=3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    imgs, targets = _images(0, (2, 3, 64, 64)), _targets(0)
    layers = make_pruning_layer_list(model, input_data={"x": imgs, "targets": targets})
    ema = RecipeEMA(model, 0.9998, updates=10000) if ema_first else None
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    ema = ema or RecipeEMA(model, 0.9998, updates=10000)
    try:
        get_model_info(model, input_data={"x": imgs, "targets": targets})
        for i in range(3):
            _yolox_step(model, optimizer, pruner, ema, i)
        masks = _masks(model)
        assert 0.65 <= _share(model, layers) <= 0.80
        assert _pruned_are_zero(model.state_dict(), masks)
        esd = ema.ema.state_dict()
        assert _pruned_are_zero(esd, masks)  # the EMA's pruned weights: exactly zero
        assert all(torch.equal(esd[k], m) for k, m in masks.items())
        ckpt = {"model": {k: v.clone() for k, v in esd.items()}}
        ema.ema.eval()
        x = _images(7, (1, 3, 64, 64))
        with torch.no_grad():
            expected = ema.ema(x)
    finally:
        pruner.remove()

    # IS_PRUNED_WEIGHT: load_pruned_state_dict into a plain model (torch2onnx.py)
    plain = yolox_s_like(width=0.125, num_classes=3)
    load_pruned_state_dict(plain, ckpt["model"])
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), expected)
    info = get_model_info(plain, [(1, 3, 64, 64)])  # positional list of shapes
    assert 0.65 <= info.pruning_sparsity <= 0.80
    out = tmp_path / "yolox.onnx"
    export_onnx(plain, [x], out, opset=11, input_names=["images"], fold_batchnorm=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    got = sess.run(None, {"images": x.numpy()})[0]
    ref = expected.numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    import onnx

    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(out).graph.node)
    report = check_model(from_onnx(out), get_target("drpai"))
    assert report.ok, report.summary()

    # strict resume from the EMA checkpoint: masks restored, training continues, masks hold
    model2 = yolox_s_like(width=0.125, num_classes=3).train()
    layers2 = make_pruning_layer_list(model2, input_data={"x": imgs, "targets": targets})
    pruner2 = Pruner(model2, pruning_layer_list=layers2, final_pr=0.0)
    try:
        model2.load_state_dict(ckpt["model"])
        optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.01, momentum=0.9)
        ema2 = RecipeEMA(model2, 0.9998, updates=10000)
        for i in range(3, 5):
            _yolox_step(model2, optimizer2, pruner2, ema2, i)
        assert all(torch.equal(m, masks[k]) for k, m in _masks(model2).items())
        assert _pruned_are_zero(ema2.ema.state_dict(), masks)
    finally:
        pruner2.remove()


def test_shipped_pruned_model_ema() -> None:
    torch.manual_seed(0)
    model = yolox_s_like(width=0.125, num_classes=3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    layers = make_pruning_layer_list(
        model, input_data={"x": _images(0, (2, 3, 64, 64)), "targets": _targets(0)}
    )
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    ema = PrunedModelEMA(model, 0.9998, updates=10000)
    try:
        for i in range(2):
            _yolox_step(model, optimizer, pruner, ema, i)
        assert ema.updates == 10002
        assert _pruned_are_zero(ema.ema.state_dict(), _masks(model))
    finally:
        pruner.remove()


def test_old_float_checkpoint_loads() -> None:
    """drpopt checkpoints before bool masks: float masks (EMA-averaged) and a float state."""
    torch.manual_seed(0)
    model = resnet50_like(width=8, num_classes=10)
    layers = make_pruning_layer_list(model, input_size=[(1, 3, 32, 32)])
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    try:
        pruner.update()
        sd = model.state_dict()
    finally:
        pruner.remove()
    old = {k: (v.float() * 0.998 + 1e-3 if k.endswith(MASK_SUFFIX) else v) for k, v in sd.items()}
    old[STATE_BUFFER] = torch.tensor([1.0, 0.7], dtype=torch.float64)
    fresh = resnet50_like(width=8, num_classes=10)
    again = Pruner(fresh, make_pruning_layer_list(fresh, input_size=[(1, 3, 32, 32)]), 0.0)
    try:
        fresh.load_state_dict(old)
        assert all(torch.equal(m, sd[k]) for k, m in _masks(fresh).items())
        assert again.step == 1 and again.rate == pytest.approx(0.7)
        x = _images(3)
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    finally:
        again.remove()
    plain = load_pruned_state_dict(resnet50_like(width=8, num_classes=10), old).eval()
    assert torch.equal(plain(x), model(x))

    # an older drop-in's checkpoint has no masks for fine-grained-only layers: strict
    # loading still works, and those masks keep their values
    lacking = dict(old)
    gone = next(k for k in lacking if k.endswith(MASK_SUFFIX))
    del lacking[gone]
    third = resnet50_like(width=8, num_classes=10)
    p3 = Pruner(third, make_pruning_layer_list(third, input_size=[(1, 3, 32, 32)]), 0.0)
    try:
        third.load_state_dict(lacking)
        assert bool(third.state_dict()[gone].all())
    finally:
        p3.remove()


# ---- ViT-B/16 -------------------------------------------------------------------------------
def test_vit_recipe_input_size() -> None:
    torch.manual_seed(0)
    model = vit_b_16_like(img_size=32, dim=48, depth=2, heads=3)
    layers = make_pruning_layer_list(model, input_size=[(5, 3, 32, 32)])
    assert {"blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc2"} <= set(layers)
    assert "head" not in layers
    # the patch embedding produces the embedding width, which the masked LayerNorms (the
    # default) let prune: listed, left out of the fine-grained pattern (the first layer)
    assert "patch_embed.proj" in layers
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    try:
        for i in range(3):
            pruner.update()
            loss = model(_images(i, (5, 3, 32, 32))).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert 0.65 <= _share(model, layers) <= 0.80
        fc1 = model.blocks[0].mlp.fc1.weight
        assert (fc1 == 0).all(dim=1).sum() > 0  # MLP hidden channels pruned whole
        assert (model.blocks[0].norm1.weight == 0).any()  # and the embedding width
        info = get_model_info(model, input_size=[(5, 3, 32, 32)])
        assert info.pruning_sparsity == pytest.approx(_share(model, layers))
    finally:
        pruner.remove()


def test_optimizer_hooks_are_scoped_to_the_pruned_model() -> None:
    torch.manual_seed(0)
    model = resnet50_like(width=8, num_classes=10)
    pruner = Pruner(model, make_pruning_layer_list(model, input_size=[(1, 3, 32, 32)]), 0.7)
    other = torch.nn.Linear(4, 4)
    calls = []
    pruner.apply_masks = lambda: calls.append(1)  # type: ignore[method-assign]
    try:
        opt = torch.optim.SGD(other.parameters(), lr=0.1)
        other(torch.randn(2, 4)).sum().backward()
        opt.step()
        assert calls == []
        own = torch.optim.SGD(model.parameters(), lr=0.1)
        own.step()
        assert calls == [1]
    finally:
        pruner.remove()


# ---- YOLOv8 and TopFormer: the same calls from the frameworks' trainer callbacks ------------
def _train_share(model, layers, loss_fn, x, steps: int = 2) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    try:
        for _ in range(steps):
            pruner.update()  # on_train_batch_start / before_train_iter
            loss = loss_fn(model(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        masks = _masks(model)
        assert _pruned_are_zero(model.state_dict(), masks)
        assert get_model_info(model).pruning_sparsity == pytest.approx(_share(model, layers))
        return _share(model, layers)
    finally:
        pruner.remove()


def test_yolov8_recipe_with_its_loss() -> None:
    torch.manual_seed(0)
    model = YOLOv8(nc=3, w=0.125).train()
    x = _images(0, (2, 3, 64, 64))
    targets = torch.tensor([[0, 1, 4, 4, 40, 30], [1, 2, 10, 10, 60, 60]], dtype=torch.float)
    layers = make_pruning_layer_list(model, input_data=[x])
    assert "model.0" not in layers  # the stem stays dense
    assert not any(name.endswith(("cv2.0.2", "cv3.0.2")) for name in layers)  # predictions
    share = _train_share(model, layers, lambda out: yolov8_loss(model, out, targets), x)
    assert 0.65 <= share <= 0.80
    model.eval()
    assert model(x).shape == (2, 4 + 3, 8 * 8 + 4 * 4 + 2 * 2)


def test_topformer_recipe() -> None:
    torch.manual_seed(0)
    model = TopFormer(num_classes=5, width=8).train()
    x = _images(0, (2, 3, 64, 64))
    layers = make_pruning_layer_list(model, input_data=[x])
    assert "trans.0.mlp.fc1.c" in layers and "trans.0.attn.to_q.c" in layers
    share = _train_share(model, layers, lambda out: out.pow(2).mean(), x)
    assert 0.65 <= share <= 0.80
