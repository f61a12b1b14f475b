"""Masks hold through training: pruned weights, their gradients and their EMA stay zero.

Rules checked, for SGD (momentum, weight decay) and AdamW, with and without an EMA, in fp32
and under CPU bf16 autocast:
- after every optimizer step every pruned weight is exactly zero;
- after every backward pass every gradient of a pruned weight is exactly zero;
- the EMA's weights are exactly zero wherever the model's masks are zero;
- optimizers built before the Pruner are covered (the Pruner hooks every optimizer step);
- masks change only at the schedule's update steps, and only by pruning more;
- ModelEMA copies masks (also ones the model gains after the EMA was made) and its state
  round-trips; a YOLOX-style EMA over a ``deepcopy_model`` copy keeps pruned weights zero.
"""

from __future__ import annotations

import pytest
import torch

from drpopt.errors import BadInputError
from drpopt.retrain.checkpoint import deepcopy_model
from drpopt.retrain.ema import ModelEMA
from drpopt.retrain.pruner import MASK_SUFFIX, Pruner
from drpopt.zoo.torch_models import digits_cnn

STEPS = 24


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + i)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def _autocast_works() -> bool:
    try:
        with torch.amp.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.Conv2d(1, 2, 3)(torch.randn(1, 1, 8, 8))
        return True
    except Exception:
        return False


def _optimizer(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def _masked(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """parameter name -> (parameter, mask) for every mask buffer of ``model``."""
    params = dict(model.named_parameters())
    out = {}
    for name, buf in model.named_buffers():
        if name.endswith(MASK_SUFFIX):
            key = name[: -len(MASK_SUFFIX)]
            out[key] = (params[key], buf)
    return out


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ema", [False, True], ids=["no-ema", "ema"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_masks_hold(opt_kind: str, ema: bool, amp: bool) -> None:
    if amp and not _autocast_works():
        pytest.skip("torch.amp.autocast('cpu', dtype=torch.bfloat16) does not work here")
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = _optimizer(opt_kind, model)  # built before the Pruner on purpose
    pruner = Pruner(
        model,
        _batch(0)[0],
        final_rate=0.7,
        schedule="cubic",
        start_step=2,
        end_step=12,
        frequency=2,
    )
    average = ModelEMA(model, decay=0.9) if ema else None
    masked = _masked(model)
    assert masked, "the Pruner masks nothing in digits_cnn"
    previous = {k: m.clone() for k, (_, m) in masked.items()}
    try:
        for step in range(STEPS):
            pruner.update()
            x, y = _batch(step)
            if amp:
                with torch.amp.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(x)
            else:
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            for name, (p, m) in masked.items():
                assert p.grad is not None, name
                assert not p.grad[m == 0].any(), f"gradient of pruned {name} at step {step}"
                # masks only ever lose entries
                assert not (m > previous[name]).any(), f"{name} revived at step {step}"
                previous[name] = m.clone()
            optimizer.step()
            if average is not None:
                average.update(model)
            for name, (p, m) in masked.items():
                assert not p[m == 0].any(), f"pruned {name} nonzero after step {step}"
            if average is not None:
                esd = average.ema.state_dict()
                for name, (_, m) in masked.items():
                    assert torch.equal(esd[name + MASK_SUFFIX], m)
                    assert not esd[name][m == 0].any(), f"EMA {name} nonzero at step {step}"
    finally:
        pruner.remove()
    assert pruner.rate == pytest.approx(0.7)
    zeros = sum(int((m == 0).sum()) for _, m in masked.values())
    assert zeros > 0
    for name, (p, m) in masked.items():
        kept = p[m != 0]
        assert kept.abs().sum() > 0, f"{name} kept nothing"


def test_yolox_style_ema_through_deepcopy_model() -> None:
    """An EMA that averages every floating entry (masks included), as YOLOX's ModelEMA does,
    on a deepcopy_model copy: its forward and state_dict keep pruned weights exactly zero."""
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = _optimizer("sgd", model)
    pruner = Pruner(model, _batch(0)[0], final_rate=0.5, schedule="oneshot")
    ema = deepcopy_model(model).eval()
    try:
        for step in range(8):
            pruner.update()
            x, y = _batch(step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # YOLOX's ModelEMA.update with its ramped decay
                d = 0.9998 * (1 - torch.exp(torch.tensor(-(step + 1) / 2000.0)).item())
                msd = model.state_dict()
                for k, v in ema.state_dict().items():
                    if v.dtype.is_floating_point:
                        v *= d
                        v += (1.0 - d) * msd[k].detach()
        ema(_batch(0)[0])  # the forward pre-hooks mask the averaged weights
        params = dict(ema.named_parameters())
        esd = ema.state_dict()
        for name, (_, m) in _masked(model).items():
            assert not params[name][m == 0].any(), name
            assert not esd[name][m == 0].any(), name
            # averaged masks stay on the right side of 0.5
            assert torch.equal(esd[name + MASK_SUFFIX] > 0.5, m > 0.5)
    finally:
        pruner.remove()


def test_deepcopy_model_of_plain_model_is_a_plain_copy() -> None:
    torch.manual_seed(0)
    model = digits_cnn().eval()
    clone = deepcopy_model(model)
    x = _batch(0)[0]
    assert torch.equal(model(x), clone(x))
    assert not clone._forward_pre_hooks
    assert all(not m._forward_pre_hooks for m in clone.modules())


def test_model_ema_made_before_the_pruner_and_its_state_roundtrip() -> None:
    """The EMA picks up masks the model gains later; its state loads into a fresh EMA."""
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = _optimizer("sgd", model)
    average = ModelEMA(model, decay=0.99, tau=10)
    pruner = Pruner(model, _batch(0)[0], final_rate=0.5)
    try:
        for step in range(5):
            pruner.update()
            x, y = _batch(step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            average.update(model)
    finally:
        pruner.remove()
    esd = average.ema.state_dict()
    for name, (_, m) in _masked(model).items():
        assert torch.equal(esd[name + MASK_SUFFIX], m)
        assert not esd[name][m == 0].any(), name
    assert average.updates == 5
    assert 0.0 < average.current_decay() < 0.99

    state = average.state_dict()
    restored = ModelEMA(digits_cnn(), decay=0.5, tau=1)  # a plain model: masks get added
    restored.load_state_dict(state)
    assert restored.updates == 5 and restored.decay == 0.99 and restored.tau == 10
    got = restored.ema.state_dict()
    assert got.keys() == esd.keys()
    assert all(torch.equal(got[k], v) for k, v in esd.items())
    x = _batch(9)[0]
    assert torch.equal(restored.ema(x), average.ema(x))


def test_model_ema_rejects_bad_settings() -> None:
    with pytest.raises(BadInputError, match="decay"):
        ModelEMA(digits_cnn(), decay=1.0)
    with pytest.raises(BadInputError, match="tau"):
        ModelEMA(digits_cnn(), tau=0)
    with pytest.raises(BadInputError, match="'ema'"):
        ModelEMA(digits_cnn()).load_state_dict({"weights": {}})
