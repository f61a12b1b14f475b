"""Fine-grained patterns in the Pruner: n:m, blocks and single weights inside kept channels.

Rules checked, for nm 2:4 and 1:4, block 4, unstructured (layer and global scope), each with
and without channel pruning, after a gradual cubic schedule with SGD steps in between:
- every targeted weight meets the pattern exactly (nm: at most ``n`` nonzeros in every
  ``m``; block: a block's channel-kept weights are all alive or all zero);
- the final channel rate and the pattern's share of the channel-kept weights are reached;
- masks only grow sparser, pruned weights stay exactly zero through optimizer steps;
- a checkpoint round trip (``state_dict`` into a fresh model with a fresh Pruner) keeps masks
  and weights; the sparse ONNX export passes ``check_model`` for the target's pattern.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drpopt.errors import BadInputError
from drpopt.passes.check import _violations, check_model
from drpopt.retrain.pruner import Pruner
from drpopt.zoo.torch_models import digits_cnn

END = 10
CASES = {
    "nm-2-4": {"granularity": "nm", "n": 2, "m": 4},
    "nm-1-4": {"granularity": "nm", "n": 1, "m": 4},
    "block-4": {"granularity": "block", "block": 4, "pattern_rate": 0.5},
    "unstructured-layer": {"granularity": "unstructured", "pattern_rate": 0.6},
    "unstructured-global": {"granularity": "unstructured", "pattern_rate": 0.6, "scope": "global"},
}


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(500 + i)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def _pruner(model: torch.nn.Module, rate: float, kwargs: dict) -> Pruner:
    return Pruner(
        model,
        _batch(0)[0][:1],
        final_rate=rate,
        schedule="cubic",
        start_step=1,
        end_step=END,
        frequency=3,
        **kwargs,
    )


def _train(model: torch.nn.Module, pruner: Pruner, opt, steps: int, first: int = 0) -> None:
    for i in range(first, first + steps):
        pruner.update()
        x, y = _batch(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _masks(pruner: Pruner) -> dict[str, np.ndarray]:
    return {k: e.mask.detach().numpy().copy() for k, e in pruner._masked.items()}


def _channel_kept(pruner: Pruner) -> dict[str, np.ndarray]:
    """The channel-only masks of the pattern layers (from the current keep sets)."""
    saved = _masks(pruner)
    pruner._write_masks(pruner.keep_sets())
    out = {
        x.param: pruner._masked[x.param].mask.detach().numpy() > 0.5 for x in pruner.pattern_layers
    }
    with torch.no_grad():
        for k, e in pruner._masked.items():
            e.mask.copy_(torch.from_numpy(saved[k]))
    return out


def _block_partial(w: np.ndarray, chan: np.ndarray, axis: int, block: int) -> int:
    """(row, block) pairs whose channel-kept weights are partly zero."""
    zero = np.moveaxis((w == 0) & chan, axis, -1)
    kept = np.moveaxis(chan, axis, -1)
    size = zero.shape[-1]
    pad = (-size) % block

    def blocks(a: np.ndarray) -> np.ndarray:
        rows = a.reshape(a.shape[0], -1, size)
        rows = np.concatenate([rows, np.zeros((*rows.shape[:-1], pad), bool)], axis=-1)
        return rows.reshape(rows.shape[0], rows.shape[1], -1, block).sum(axis=(1, 3))

    dead, total = blocks(zero), blocks(kept)
    return int(((dead > 0) & (dead < total)).sum())


@pytest.mark.parametrize("rate", [0.0, 0.5], ids=["pattern-only", "channels-0.5"])
@pytest.mark.parametrize("case", list(CASES))
def test_pattern_after_gradual_schedule(case: str, rate: float) -> None:
    kwargs = CASES[case]
    torch.manual_seed(0)
    model = digits_cnn()
    pruner = _pruner(model, rate, kwargs)
    assert [x.param for x in pruner.pattern_layers] == [
        "conv2.weight",
        "conv3.weight",
        "conv4.weight",
        "fc1.weight",
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    previous = _masks(pruner)
    for i in range(END + 1):
        _train(model, pruner, opt, 1, first=i)
        now = _masks(pruner)
        for k in now:  # never revived
            assert not ((now[k] > 0.5) & (previous[k] < 0.5)).any(), k
        previous = now
    assert pruner.rate == pytest.approx(rate)
    profile = pruner.pattern
    chan = _channel_kept(pruner)
    kept = zeros = 0
    for x in pruner.pattern_layers:
        w = pruner._masked[x.param].param.detach().numpy()
        if profile.granularity == "nm":
            assert _violations(w, x.axis, profile)[0] == 0, x.param
        if profile.granularity == "block":
            assert _block_partial(w, chan[x.param], x.axis, profile.block) == 0, x.param
        layer_kept, layer_zeros = int(chan[x.param].sum()), int((chan[x.param] & (w == 0)).sum())
        if profile.granularity == "unstructured" and profile.sparsity_scope == "layer":
            assert layer_zeros == round(profile.pattern_rate * layer_kept), x.param
        if profile.granularity in ("nm", "block") and rate == 0:
            # with channel pruning, pruned input channels already fill part of the pattern
            assert layer_zeros / layer_kept >= profile.pattern_rate - 0.02, x.param
        kept, zeros = kept + layer_kept, zeros + layer_zeros
    if profile.sparsity_scope == "global":
        assert zeros == round(profile.pattern_rate * kept)
    # masks hold through more optimizer steps (no update steps left)
    final = _masks(pruner)
    _train(model, pruner, opt, 4, first=END + 1)
    for k, e in pruner._masked.items():
        assert np.array_equal(e.mask.numpy(), final[k]), k
        assert (e.param.detach().numpy()[final[k] < 0.5] == 0).all(), k
    # checkpoint round trip into a fresh model and Pruner
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = digits_cnn()
    again = _pruner(fresh, rate, kwargs)
    fresh.load_state_dict(state)
    assert again.step == pruner.step and again.rate == pytest.approx(rate)
    for k, e in again._masked.items():
        assert np.array_equal(e.mask.numpy(), final[k]), k
        assert torch.equal(e.param, pruner._masked[k].param), k
    _train(fresh, again, torch.optim.SGD(fresh.parameters(), lr=0.01), 2, first=END + 5)
    for k, e in again._masked.items():
        assert np.array_equal(e.mask.numpy(), final[k]), k


@pytest.mark.parametrize("case", ["nm-2-4", "unstructured-global"])
def test_sparse_export_meets_check(case: str, tmp_path) -> None:
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.retrain.export import export_onnx

    torch.manual_seed(1)
    model = digits_cnn()
    pruner = _pruner(model, 0.5, CASES[case])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    _train(model, pruner, opt, END + 1)
    profile = pruner.pattern
    model = pruner.finalize()
    result = export_onnx(model, _batch(0)[0][:1], tmp_path / "sparse.onnx", compact=False)
    report = check_model(from_onnx(str(result.path)), replace(profile, default_rate=0.0))
    assert report.ok, report.summary()
    assert report.sparsity >= profile.pattern_rate


def test_oneshot_and_prune_to_give_the_full_pattern() -> None:
    torch.manual_seed(2)
    model = digits_cnn()
    pruner = Pruner(model, _batch(0)[0][:1], final_rate=0.3, granularity="nm")
    pruner.update()  # one-shot at step 0: channels and the exact 2:4 pattern
    for x in pruner.pattern_layers:
        w = pruner._masked[x.param].param.detach().numpy()
        assert _violations(w, x.axis, pruner.pattern)[0] == 0


def test_channel_granularity_adds_no_masks_and_bad_pattern_is_refused() -> None:
    model = digits_cnn()
    plain = Pruner(model, _batch(0)[0][:1], final_rate=0.5)
    assert plain.pattern.granularity == "channel" and plain.pattern_layers == []
    plain.remove()
    with pytest.raises(BadInputError):
        Pruner(digits_cnn(), _batch(0)[0][:1], granularity="diagonal")
    with pytest.raises(BadInputError):
        Pruner(digits_cnn(), _batch(0)[0][:1], granularity="nm", n=5, m=4)
