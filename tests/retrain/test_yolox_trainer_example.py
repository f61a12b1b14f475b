"""examples/yolox_trainer.py end to end: prune and train, save, resume, load for export.

Rules checked:
- a run of a few iterations prunes one-shot to 0.7 at the first iteration, keeps pruned
  weights of the model and of its EMA exactly zero, and saves a checkpoint;
- resuming from that checkpoint (``Pruner(final_pr=0.0)`` then ``load_state_dict``)
  continues at the saved iteration with the saved masks, which never change;
- the final checkpoint loads into a plain YOLOX-s-like model with ``load_pruned_state_dict``
  and reproduces the saved EMA model's outputs exactly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from drpopt.retrain.drpai import load_pruned_state_dict
from drpopt.retrain.pruner import MASK_SUFFIX

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "yolox_trainer.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("yolox_trainer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(MASK_SUFFIX)}


def _zero_where_masked(sd: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> bool:
    return all(not sd[k[: -len(MASK_SUFFIX)]][m == 0].any() for k, m in masks.items())


def test_train_save_resume_and_load(example, tmp_path) -> None:
    out = tmp_path / "run"
    common = ["--output-dir", str(out), "--print-interval", "1", "--img-size", "32"]
    common += ["--width", "0.125", "--num-classes", "3"]
    first = example.main(["--iters", "3", *common])
    try:
        ckpt_path = out / "last_ckpt.pth"
        assert ckpt_path.is_file()
        assert first.pruner.rate == pytest.approx(0.7)
        assert first.pruner.step == 3
        assert len(first.losses) == 3
        assert all(torch.isfinite(torch.tensor(first.losses)))
        masks = _masks(first.model)
        assert masks and any(not bool(m.all()) for m in masks.values())
        assert _zero_where_masked(first.model.state_dict(), masks)
        assert _zero_where_masked(first.ema_model.ema.state_dict(), masks)
        assert first.info is not None and first.info.sparsity > 0.5
        ckpt = torch.load(ckpt_path)
        assert ckpt["iter"] == 3
    finally:
        first.pruner.remove()

    resumed = example.main(["--iters", "5", "--resume", str(ckpt_path), *common])
    try:
        assert resumed.start_iter == 3
        assert len(resumed.losses) == 2
        assert resumed.pruner.final_pr == 0.0
        got = _masks(resumed.model)
        assert got.keys() == masks.keys()
        assert all(torch.equal(got[k], masks[k]) for k in masks)
        assert _zero_where_masked(resumed.model.state_dict(), masks)
        assert torch.load(ckpt_path)["iter"] == 5
    finally:
        resumed.pruner.remove()

    # export/eval: the final checkpoint into a plain model
    final = torch.load(ckpt_path)["model"]
    plain = example.yolox_s_like(width=0.125, num_classes=3)
    load_pruned_state_dict(plain, final)
    plain.eval()
    saved = resumed.saved_model().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x), saved(x))
    assert not any(k.endswith(MASK_SUFFIX) for k in plain.state_dict())
