"""The DRP-AI Extension Pack drop-in, in the idioms of the public examples.

Rules checked:
- ``make_pruning_layer_list`` takes ``input_data`` (list or dict of forward kwargs) or
  ``input_size`` and returns a list of layer names that holds its trace;
- ``Pruner(model, pruning_layer_list=..., final_pr=0.7)`` prunes one-shot at the first
  ``update()``; later updates leave the masks alone; ``schedule="cubic"`` is gradual;
- ``Pruner(..., final_pr=0.0)`` then ``model.load_state_dict(pruned)`` restores the masks
  (strict loading), and ``update()`` never changes them; averaged masks are binarised;
- ``final_pr`` outside [0, 1) and lists not made by ``make_pruning_layer_list`` are errors;
- ``get_model_info`` prints a table and returns the numbers; DDP models are unwrapped.
"""

from __future__ import annotations

import pytest
import torch

from drpopt.errors import BadInputError
from drpopt.retrain.drpai import (
    Pruner,
    PruningLayerList,
    deepcopy_model,
    get_model_info,
    load_pruned_state_dict,
    make_pruning_layer_list,
)
from drpopt.retrain.ema import ModelEMA
from drpopt.retrain.pruner import MASK_SUFFIX
from drpopt.retrain.schedule import Schedule
from drpopt.zoo.torch_models import digits_cnn


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3000 + i)
    return torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def _masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(MASK_SUFFIX)}


def _train(model, optimizer, pruner, steps: int, start: int = 0) -> None:
    for i in range(start, start + steps):
        pruner.update()
        x, y = _batch(i)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


class Keywords(torch.nn.Module):
    """forward(x, scale=None): a model called with keyword arguments, like YOLOX."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.conv4 = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        y = self.conv4(torch.relu(y))
        return y if scale is None else y * scale


@pytest.fixture(scope="module")
def pruned_checkpoint():
    """The state dict of a digits_cnn pruned one-shot to 0.7 and trained 6 steps."""
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    layers = make_pruning_layer_list(model, input_data=[_batch(0)[0]])
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    try:
        _train(model, optimizer, pruner, 6)
        model.eval()
        return model.state_dict(), model(_batch(50)[0])
    finally:
        pruner.remove()


def test_layer_list_from_input_data_and_input_size() -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    from_data = make_pruning_layer_list(model, input_data=[torch.randn(2, 1, 8, 8)])
    assert isinstance(from_data, PruningLayerList) and isinstance(from_data, list)
    # conv1 and fc2 stay dense; fc1 gets the fine-grained pattern only
    assert list(from_data) == ["conv2", "conv3", "conv4", "fc1"]
    assert from_data.trace.graph.nodes
    one_shape = make_pruning_layer_list(model, input_size=[1, 1, 8, 8])
    shapes = make_pruning_layer_list(model, input_size=[(1, 1, 8, 8)])
    assert list(one_shape) == list(shapes) == list(from_data)

    kw = Keywords()
    x = torch.randn(1, 3, 8, 8)
    from_dict = make_pruning_layer_list(kw, input_data={"x": x, "scale": torch.ones(1)})
    # the first and last layers stay dense; conv3 (feeding the last) gets the pattern only
    assert list(from_dict) == ["conv2", "conv3"]
    assert "all example inputs" in from_dict.trace.path
    assert len(from_dict.trace.graph.inputs) == 2
    with pytest.raises(BadInputError, match="input_data or input_size"):
        make_pruning_layer_list(model)
    with pytest.raises(BadInputError, match="input_size"):
        make_pruning_layer_list(model, input_size=[["a"]])


def test_oneshot_at_first_update_then_masks_fixed() -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # before Pruner
    layers = make_pruning_layer_list(model, input_data=[_batch(0)[0]])
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.7)
    try:
        assert pruner.final_pr == pytest.approx(0.7)
        assert all(bool(m.all()) for m in _masks(model).values())  # nothing pruned yet
        _train(model, optimizer, pruner, 1)
        assert pruner.rate == pytest.approx(0.7)
        first = _masks(model)
        assert any(not bool(m.all()) for m in first.values())
        _train(model, optimizer, pruner, 5, start=1)
        assert all(torch.equal(first[k], m) for k, m in _masks(model).items())
    finally:
        pruner.remove()


def test_gradual_schedule() -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    layers = make_pruning_layer_list(model, input_size=[(2, 1, 8, 8)])
    pruner = Pruner(model, layers, final_pr=0.6, schedule="cubic", start_step=0, end_step=4)
    try:
        rates = []
        for i in range(6):
            _train(model, optimizer, pruner, 1, start=i)
            rates.append(pruner.rate)
        assert rates == sorted(rates)
        assert rates[0] == 0.0  # the cubic ramp starts at 0
        assert 0.0 < rates[1] < 0.6
        assert rates[-1] == pytest.approx(0.6)
    finally:
        pruner.remove()
    with pytest.raises(BadInputError, match="end_step"):
        Pruner(model, layers, final_pr=0.6, schedule="cubic")
    with pytest.raises(BadInputError, match="schedule"):
        Pruner(model, layers, final_pr=0.6, schedule="exponential", end_step=3)
    with pytest.raises(BadInputError, match="final_pr"):
        Pruner(model, layers, final_pr=0.6, schedule=Schedule("linear", 0.5, 0, 4))
    pruner = Pruner(model, layers, final_pr=0.5, schedule=Schedule("linear", 0.5, 0, 4))
    pruner.remove()
    assert pruner.schedule.kind == "linear"


def test_final_pr_zero_then_load_state_dict(pruned_checkpoint) -> None:
    """The resume/eval idiom of the examples: masks exist, strict loading restores them."""
    sd, expected = pruned_checkpoint
    torch.manual_seed(5)
    model = digits_cnn()
    layers = make_pruning_layer_list(model, input_size=[(1, 1, 8, 8)])
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.0)
    try:
        model.load_state_dict(sd)  # strict
        loaded = _masks(model)
        assert loaded.keys() == {k for k in sd if k.endswith(MASK_SUFFIX)}
        assert all(torch.equal(loaded[k], sd[k]) for k in loaded)
        assert pruner.rate == pytest.approx(0.7)
        model.eval()
        assert torch.equal(model(_batch(50)[0]), expected)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        _train(model, optimizer, pruner, 4, start=pruner.step)
        assert all(torch.equal(loaded[k], m) for k, m in _masks(model).items())
        for key, mask in loaded.items():
            assert not model.state_dict()[key[: -len(MASK_SUFFIX)]][mask == 0].any()
    finally:
        pruner.remove()


def test_load_state_dict_binarises_averaged_masks(pruned_checkpoint) -> None:
    """A checkpoint saved from a YOLOX-style EMA holds masks near 0 or 1."""
    sd, expected = pruned_checkpoint
    averaged = {k: (v * 0.999 + 1e-4 if k.endswith(MASK_SUFFIX) else v) for k, v in sd.items()}
    model = digits_cnn()
    pruner = Pruner(model, make_pruning_layer_list(model, input_size=[1, 1, 8, 8]), 0.0)
    try:
        model.load_state_dict(averaged)
        assert all(torch.equal(m, sd[k]) for k, m in _masks(model).items())
        assert torch.equal(model.eval()(_batch(50)[0]), expected)
    finally:
        pruner.remove()


def test_load_pruned_state_dict_and_deepcopy_model_reexported(pruned_checkpoint) -> None:
    sd, expected = pruned_checkpoint
    plain = load_pruned_state_dict(digits_cnn(), sd).eval()
    assert torch.equal(plain(_batch(50)[0]), expected)
    assert not any(k.endswith(MASK_SUFFIX) for k in plain.state_dict())
    copy = deepcopy_model(plain)
    assert torch.equal(copy(_batch(50)[0]), expected)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), "0.7", True, None])
def test_bad_final_pr(bad) -> None:
    model = digits_cnn()
    layers = make_pruning_layer_list(model, input_size=[1, 1, 8, 8])
    with pytest.raises(BadInputError, match="final_pr"):
        Pruner(model, pruning_layer_list=layers, final_pr=bad)


def test_layer_list_must_come_from_make_pruning_layer_list() -> None:
    model = digits_cnn()
    with pytest.raises(BadInputError, match="make_pruning_layer_list"):
        Pruner(model, pruning_layer_list=["conv2"], final_pr=0.5)
    other = make_pruning_layer_list(Keywords(), input_size=[1, 3, 8, 8])
    with pytest.raises(BadInputError, match="another model"):
        Pruner(model, pruning_layer_list=other, final_pr=0.5)


def test_removed_layer_stays_dense() -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    layers = make_pruning_layer_list(model, input_size=[1, 1, 8, 8])
    layers.remove("conv4")
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.5)
    try:
        pruner.update()
        assert not bool(model.conv2.weight_drpopt_mask.all())  # conv4's inputs are pruned
        # ...but none of its output channels
        assert (model.conv4.weight != 0).flatten(1).any(dim=1).all()
        assert bool(model.bn4.weight_drpopt_mask.all())
        assert not any("/conv4/Conv" in g.producers for g in pruner.groups)
        assert not any(x.param == "conv4.weight" for x in pruner.pattern_layers)
    finally:
        pruner.remove()


def test_get_model_info_prints_and_returns(capsys) -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    layers = make_pruning_layer_list(model, input_data=[torch.randn(2, 1, 8, 8)])
    pruner = Pruner(model, pruning_layer_list=layers, final_pr=0.5)
    try:
        pruner.update()
        info = get_model_info(model)  # reuses the pruner's trace
        out = capsys.readouterr().out
        assert "conv2" in out and "pruning rate 0.500" in out
        assert info.current_rate == pytest.approx(0.5)
        assert info.layer("conv2").sparsity == pytest.approx(0.5)
        sized = get_model_info(model, input_size=[(1, 1, 8, 8)])
        assert sized.macs * 2 == info.macs  # batch 1 instead of 2
        assert pruner.info().zeros == info.zeros
    finally:
        pruner.remove()
    with pytest.raises(BadInputError, match="input_data or input_size"):
        get_model_info(digits_cnn())


def test_ddp_wrapped_model(tmp_path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        pytest.skip("a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DDP(digits_cnn())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        layers = make_pruning_layer_list(model, input_data=[_batch(0)[0]])
        pruner = Pruner(model.module, pruning_layer_list=layers, final_pr=0.7)
        ema = ModelEMA(model, decay=0.9)
        try:
            for i in range(3):
                _train(model, optimizer, pruner, 1, start=i)
                ema.update(model)
            masks = _masks(model.module)
            esd = ema.ema.state_dict()
            for key, mask in masks.items():
                weight = key[: -len(MASK_SUFFIX)]
                assert not model.module.state_dict()[weight][mask == 0].any()
                assert not esd[weight][mask == 0].any()
            info = get_model_info(model)
            assert info.current_rate == pytest.approx(0.7)
            saved = {f"module.{k}": v for k, v in model.state_dict().items()}
            plain = load_pruned_state_dict(digits_cnn(), saved)
            assert set(plain.state_dict()) == set(digits_cnn().state_dict())
        finally:
            pruner.remove()
    finally:
        dist.destroy_process_group()
