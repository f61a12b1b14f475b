"""The digits demo: the whole drpopt flow on a real (small) dataset scikit-learn ships.

Steps: train a small residual CNN on scikit-learn's 8x8 handwritten digits; analyse its
coupled channel groups; fine-tune it while a Pruner takes it gradually (cubic schedule) to
the rate; fold the masks into the weights; export sparse and compact ONNX; check both in
onnxruntime against torch and on the test set; compare accuracy, parameters, MACs and
latency. Nothing is downloaded. Everything is seeded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ProgressFn = Callable[[str, int, int], None]


@dataclass
class DemoConfig:
    """Knobs of the demo (defaults finish in well under two minutes on two cores)."""

    rate: float = 0.7
    dense_epochs: int = 12
    finetune_epochs: int = 14
    prune_until: float = 0.6  # share of fine-tuning over which the cubic schedule runs
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    criterion: str = "l2"
    target: str = "generic"


@dataclass
class DemoResult:
    """What the demo measured."""

    dense_accuracy: float
    pruned_accuracy: float
    onnx_sparse_accuracy: float
    onnx_compact_accuracy: float
    dense_params: int
    pruned_params: int
    dense_macs: int
    pruned_macs: int
    dense_latency_ms: float
    compact_latency_ms: float
    groups: int
    prunable_groups: int
    pruned_channels: int
    eligible_channels: int
    sparse_path: str
    compact_path: str
    max_rel_error: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def load_digits_split(seed: int = 0):
    """Train/test tensors (80/20, stratified by a seeded permutation) of sklearn's digits."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return (x[tr], y[tr]), (x[te], y[te])


def accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _epochs(model, data, epochs, opt, sched, seed, before_iter=None, progress=None, label=""):
    import torch
    import torch.nn.functional as F

    x, y = data
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = epochs * math.ceil(n / 64)
    done = 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 64):
            idx = perm[i : i + 64]
            if before_iter is not None:
                before_iter()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if progress is not None:
                progress(label, done, steps)


def train_dense(seed: int, epochs: int, lr: float = 0.05, progress: ProgressFn | None = None):
    """(model, train split, test split): the digits CNN trained densely from ``seed``."""
    import torch

    from drpopt.zoo.torch_models import digits_cnn

    torch.manual_seed(seed)
    train, test = load_digits_split(seed)
    model = digits_cnn()
    opt, sched = _sgd(model, lr, epochs * math.ceil(len(train[1]) / 64))
    _epochs(model, train, epochs, opt, sched, seed, progress=progress, label="dense training")
    return model, train, test


def _sgd(model, lr, total_steps):
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    return opt, sched


def _onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch = sess.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else len(x)
    logits = np.concatenate(
        [sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)]
    )
    return float((logits.argmax(1) == y).mean())


def run_demo(
    out_dir: str | Path, config: DemoConfig | None = None, progress: ProgressFn | None = None
) -> DemoResult:
    """Runs the whole flow, writing ``dense.onnx``, ``sparse.onnx``, ``compact.onnx``."""
    import torch

    cfg = config or DemoConfig()
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    # one thread: OpenMP's spinning threads collapse when anything else wants the second
    # core (an onnxruntime pool, another process), and this model is too small to gain
    torch.set_num_threads(1)
    try:
        return _flow(out, cfg, progress, start)
    finally:
        torch.set_num_threads(threads)


def _prune_while_finetuning(model, train, example, cfg: DemoConfig, progress: ProgressFn | None):
    """Fine-tunes ``model`` while a cubic-schedule ``Pruner`` masks it up to the rate;
    returns the pruner (not yet finalised)."""
    from drpopt.retrain.pruner import Pruner

    ft_steps = cfg.finetune_epochs * math.ceil(len(train[1]) / cfg.batch_size)
    end = max(1, int(cfg.prune_until * ft_steps))
    pruner = Pruner(
        model,
        example,
        final_rate=cfg.rate,
        schedule="cubic",
        end_step=end,
        frequency=max(1, end // 10),
        target=cfg.target,
        criterion=cfg.criterion,
    )
    opt, sched = _sgd(model, cfg.lr / 2, ft_steps)
    _epochs(
        model,
        train,
        cfg.finetune_epochs,
        opt,
        sched,
        cfg.seed + 1,
        before_iter=pruner.update,
        progress=progress,
        label="pruning + fine-tuning",
    )
    return pruner


def _flow(out: Path, cfg: DemoConfig, progress: ProgressFn | None, start: float) -> DemoResult:
    """Train, prune while fine-tuning, export dense, sparse and compact ONNX, measure."""
    from drpopt.passes.verify import latency_ms
    from drpopt.retrain.export import export_onnx

    model, train, test = train_dense(cfg.seed, cfg.dense_epochs, cfg.lr, progress)
    dense_acc = accuracy(model, *test)
    example = test[0][:1]
    dense_export = export_onnx(model, example, out / "dense.onnx")
    pruner = _prune_while_finetuning(model, train, example, cfg, progress)
    plan = pruner.plan
    eligible = sum(g.size for g in pruner.groups)
    model = pruner.finalize()
    pruned_acc = accuracy(model, *test)

    sparse = export_onnx(model, example, out / "sparse.onnx", compact=False)
    compact = export_onnx(model, example, out / "compact.onnx", compact=True)
    xt, yt = test[0].numpy(), test[1].numpy()
    one = xt[:1]
    return DemoResult(
        dense_accuracy=dense_acc,
        pruned_accuracy=pruned_acc,
        onnx_sparse_accuracy=_onnx_accuracy(out / "sparse.onnx", xt, yt),
        onnx_compact_accuracy=_onnx_accuracy(out / "compact.onnx", xt, yt),
        dense_params=dense_export.params,
        pruned_params=compact.params,
        dense_macs=dense_export.macs,
        pruned_macs=compact.macs,
        dense_latency_ms=latency_ms(out / "dense.onnx", {"input": one}, runs=50),
        compact_latency_ms=latency_ms(out / "compact.onnx", {"input": one}, runs=50),
        groups=len(pruner.analysis.groups),
        prunable_groups=len(pruner.groups),
        pruned_channels=plan.pruned_channels,
        eligible_channels=eligible,
        sparse_path=str(out / "sparse.onnx"),
        compact_path=str(out / "compact.onnx"),
        max_rel_error={
            "dense": dense_export.max_rel_error,
            "sparse": sparse.max_rel_error,
            "compact": compact.max_rel_error,
        },
        seconds=time.perf_counter() - start,
    )
