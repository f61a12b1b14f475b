"""Pruned checkpoints: resuming mid-schedule, loading into plain models, finalize().

Rules checked:
- ``model.state_dict()`` saved mid-schedule and loaded into a fresh model with a fresh
  Pruner continues exactly as an uninterrupted run (masks and weights bit-equal);
- ``load_pruned_state_dict`` into a plain model reproduces the pruned model's outputs
  exactly, drops the mask/state keys, accepts wrappers and ``module.`` prefixes, binarises
  averaged masks, loads masks into a model with a Pruner, and names bad keys;
- ``finalize()`` leaves the keys of a never-pruned model and unchanged outputs.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from drpopt.errors import BadInputError
from drpopt.retrain.checkpoint import load_pruned_state_dict, unwrap_state_dict
from drpopt.retrain.pruner import MASK_SUFFIX, STATE_BUFFER, Pruner
from drpopt.zoo.torch_models import digits_cnn

TOTAL = 16
SCHEDULE = {"schedule": "cubic", "start_step": 1, "end_step": 9, "frequency": 2}


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + i)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def _build(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, Pruner]:
    torch.manual_seed(seed)
    model = digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    pruner = Pruner(model, _batch(0)[0], final_rate=0.6, **SCHEDULE)
    return model, opt, pruner


def _train(model: torch.nn.Module, opt, pruner: Pruner, start: int, stop: int) -> None:
    model.train()
    for i in range(start, stop):
        pruner.update()
        x, y = _batch(i)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.fixture(scope="module")
def uninterrupted():
    model, opt, pruner = _build(0)
    try:
        _train(model, opt, pruner, 0, TOTAL)
        return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    finally:
        pruner.remove()


@pytest.fixture(scope="module")
def pruned():
    """A digits_cnn pruned to 0.6 and trained a few steps, its state dict and the pruner."""
    model, opt, pruner = _build(0)
    _train(model, opt, pruner, 0, 10)
    pruner.remove()
    return model, model.state_dict()


@pytest.mark.parametrize(
    "stop_at", [6, 7, 9], ids=["between-updates", "at-an-update-step", "at-the-last-update"]
)
def test_resume_mid_schedule_equals_uninterrupted(uninterrupted, stop_at: int) -> None:
    expected, _ = uninterrupted
    model, opt, pruner = _build(0)
    try:
        _train(model, opt, pruner, 0, stop_at)
        saved = _roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict()})
        assert 0.0 < pruner.rate < 0.6  # mid-schedule
    finally:
        pruner.remove()
    fresh, fresh_opt, fresh_pruner = _build(seed=123)  # different initial weights
    try:
        fresh.load_state_dict(saved["model"])
        fresh_opt.load_state_dict(saved["optimizer"])
        assert fresh_pruner.step == stop_at
        _train(fresh, fresh_opt, fresh_pruner, stop_at, TOTAL)
        got = fresh.state_dict()
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value), key
        assert fresh_pruner.rate == pytest.approx(0.6)
    finally:
        fresh_pruner.remove()


def test_resume_at_update_step_zeroes_optimizer_state(uninterrupted) -> None:
    _, expected_opt = uninterrupted
    model, opt, pruner = _build(0)
    try:
        _train(model, opt, pruner, 0, 9)  # resume at the schedule's last update step
        saved = _roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict()})
    finally:
        pruner.remove()
    fresh, fresh_opt, fresh_pruner = _build(seed=123)
    try:
        fresh.load_state_dict(saved["model"])
        fresh_opt.load_state_dict(saved["optimizer"])
        _train(fresh, fresh_opt, fresh_pruner, 9, TOTAL)
        got = fresh_opt.state_dict()["state"]
        for idx, st in expected_opt["state"].items():
            assert torch.equal(got[idx]["momentum_buffer"], st["momentum_buffer"]), idx
    finally:
        fresh_pruner.remove()


def test_load_into_plain_model_reproduces_outputs(pruned) -> None:
    model, sd = pruned
    model.eval()
    plain = digits_cnn()
    returned = load_pruned_state_dict(plain, sd)
    assert returned is plain
    plain.eval()
    x = _batch(99)[0]
    assert torch.equal(plain(x), model(x))
    assert set(plain.state_dict()) == set(digits_cnn().state_dict())
    for key, value in sd.items():
        if key.endswith(MASK_SUFFIX):
            weight = plain.state_dict()[key[: -len(MASK_SUFFIX)]]
            assert not weight[value == 0].any(), key
    assert any(not v.all() for k, v in sd.items() if k.endswith(MASK_SUFFIX))


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module-prefix", "both"])
def test_load_accepts_wrappers_and_ddp_prefixes(pruned, wrap: str) -> None:
    model, sd = pruned
    if wrap in ("module-prefix", "both"):
        sd = {f"module.{k}": v for k, v in sd.items()}
    if wrap in ("model", "both"):
        sd = {"model": sd, "optimizer": {}, "start_epoch": 3}
    if wrap == "state_dict":
        sd = {"state_dict": sd}
    plain = load_pruned_state_dict(digits_cnn(), sd).eval()
    x = _batch(99)[0]
    assert torch.equal(plain(x), model.eval()(x))


def test_plain_state_dict_loads_as_is() -> None:
    torch.manual_seed(3)
    source = digits_cnn().eval()
    target = load_pruned_state_dict(digits_cnn(), source.state_dict()).eval()
    x = _batch(5)[0]
    assert torch.equal(source(x), target(x))


def test_averaged_masks_are_binarised(pruned) -> None:
    """An EMA averages masks to values near 0 or 1: they are read as kept above 0.5."""
    model, sd = pruned
    averaged = {
        k: (v * 0.9995 + 0.0002 if k.endswith(MASK_SUFFIX) else v.clone()) for k, v in sd.items()
    }
    for key, value in sd.items():
        if key.endswith(MASK_SUFFIX):  # the weight under a pruned entry is not zero yet
            weight = averaged[key[: -len(MASK_SUFFIX)]]
            weight[value == 0] = 0.25
    plain = load_pruned_state_dict(digits_cnn(), averaged).eval()
    x = _batch(99)[0]
    assert torch.equal(plain(x), model.eval()(x))


def test_load_into_model_with_pruner_restores_masks(pruned) -> None:
    _, sd = pruned
    torch.manual_seed(7)
    target = digits_cnn()
    pruner = Pruner(target, _batch(0)[0], final_rate=0.0)
    try:
        load_pruned_state_dict(target, sd)
        got = target.state_dict()
        for key, value in sd.items():
            assert torch.equal(got[key], value), key
        keep = pruner.keep_sets()
        assert any(len(v) < 64 for v in keep.values())
        assert pruner.rate == pytest.approx(0.6)
    finally:
        pruner.remove()


def test_missing_and_unexpected_keys_are_named(pruned) -> None:
    _, sd = pruned
    broken = {k: v for k, v in sd.items() if k != "fc2.bias"}
    broken["fc3.weight"] = torch.zeros(3)
    with pytest.raises(BadInputError, match=r"missing keys: fc2\.bias.*unexpected.*fc3\.weight"):
        load_pruned_state_dict(digits_cnn(), broken)
    wrong_shape = dict(sd)
    wrong_shape["fc2.bias"] = torch.zeros(3)
    with pytest.raises(BadInputError, match=r"fc2\.bias"):
        load_pruned_state_dict(digits_cnn(), wrong_shape)
    with pytest.raises(BadInputError, match="mapping"):
        load_pruned_state_dict(digits_cnn(), [1, 2])


def test_unwrap_state_dict_keeps_prefix_the_model_has() -> None:
    sd = {"module.a": torch.zeros(1)}
    assert set(unwrap_state_dict(sd, {"module.a"})) == {"module.a"}
    assert set(unwrap_state_dict(sd, {"a"})) == {"a"}


def test_finalize_leaves_plain_keys_and_same_outputs() -> None:
    model, opt, pruner = _build(0)
    _train(model, opt, pruner, 0, 10)
    model.eval()
    x = _batch(42)[0]
    before = model(x)
    assert any(k.endswith(MASK_SUFFIX) for k in model.state_dict())
    plain = pruner.finalize()
    assert plain is model
    assert list(plain.state_dict()) == list(digits_cnn().state_dict())
    assert STATE_BUFFER not in plain.state_dict()
    assert torch.equal(plain(x), before)
    fresh = load_pruned_state_dict(digits_cnn(), plain.state_dict()).eval()
    assert torch.equal(fresh(x), before)
