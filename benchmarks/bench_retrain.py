"""Retraining benchmarks (run by hand): accuracy after pruning, and the Pruner's overhead.

    python benchmarks/bench_retrain.py [--quick]

1. Accuracy on scikit-learn's digits: the same dense training, then the same fine-tuning
   budget three ways: no pruning (the baseline), gradual cubic pruning to 70% of the
   eligible channels, and one-shot pruning to 70% at the first fine-tuning step. Mean and
   spread over seeds; the drop is against the baseline measured in the same run.
2. Overhead: wall time of a training step (SGD, momentum, weight decay) of a ResNet-18-like
   model with a Pruner attached (masks at 70%, enforced every step) against the same step
   without one, interleaved, median of many steps.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from drpopt.retrain.demo import _epochs, _sgd, accuracy, train_dense
from drpopt.retrain.pruner import Pruner
from drpopt.zoo.torch_models import resnet18_like


def change_pt(accuracy: float, baseline: float) -> str:
    """The change of an accuracy against the baseline in percentage points, signed: a drop
    is negative (``-0.28``), a gain positive (``+0.28``)."""
    return f"{100 * (accuracy - baseline):+.2f}"


def accuracy_runs(seeds: list[int], dense_epochs: int, ft_epochs: int, rate: float) -> dict:
    """Accuracy per seed for the baseline, gradual and one-shot fine-tuning."""
    results: dict[str, list[float]] = {"dense": [], "gradual": [], "oneshot": []}
    for seed in seeds:
        base, train, test = train_dense(seed, dense_epochs)
        ft_steps = ft_epochs * math.ceil(len(train[1]) / 64)
        example = test[0][:1]
        for mode in results:
            model = copy.deepcopy(base)
            update = None
            if mode != "dense":
                end = int(0.6 * ft_steps) if mode == "gradual" else 0
                pruner = Pruner(
                    model,
                    example,
                    final_rate=rate,
                    schedule="cubic" if mode == "gradual" else "oneshot",
                    end_step=end,
                    frequency=max(1, end // 10),
                )
                update = pruner.update
            opt, sched = _sgd(model, 0.025, ft_steps)
            _epochs(model, train, ft_epochs, opt, sched, seed + 1, before_iter=update)
            results[mode].append(accuracy(model, *test))
    return results


def step_times(with_pruner: bool, model, opt, x, y, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def overhead(rounds: int, steps: int) -> tuple[float, float]:
    """Median step time (s) without and with a Pruner, interleaved."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x = torch.randn(32, 3, 64, 64)
    y = torch.randint(0, 10, (32,))
    dense = resnet18_like(width=32)
    pruned = copy.deepcopy(dense)
    pruner = Pruner(pruned, x[:1], final_rate=0.7)
    pruner.update()  # one-shot: masks are in force from now on
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_p = torch.optim.SGD(pruned.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    step_times(False, dense, opt_d, x, y, 3)
    step_times(True, pruned, opt_p, x, y, 3)
    td: list[float] = []
    tp: list[float] = []
    for _ in range(rounds):
        td += step_times(False, dense, opt_d, x, y, steps)
        tp += step_times(True, pruned, opt_p, x, y, steps)
    for name in pruner.masked_parameters:
        param = dict(pruned.named_parameters())[name]
        mask = pruned.get_buffer(name + "_drpopt_mask")
        assert not (param.detach() * (1 - mask)).any(), f"{name}: a pruned weight came back"
    return statistics.median(td), statistics.median(tp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and steps")
    args = parser.parse_args(argv)
    console = Console()
    seeds = [0, 1] if args.quick else [0, 1, 2]
    dense_epochs, ft_epochs = (6, 6) if args.quick else (12, 14)
    console.log(
        f"accuracy: {len(seeds)} seeds, {dense_epochs} dense + {ft_epochs} fine-tuning epochs"
    )
    acc = accuracy_runs(seeds, dense_epochs, ft_epochs, 0.7)
    table = Table(title="1. digits accuracy, 70% of eligible channels pruned", title_justify="left")
    for col in ("fine-tuning", "accuracy mean", "min", "max", "change vs baseline (pt)"):
        table.add_column(col, justify="right" if col != "fine-tuning" else "left")
    base = statistics.mean(acc["dense"])
    for mode, label in (
        ("dense", "no pruning (baseline)"),
        ("gradual", "gradual, cubic"),
        ("oneshot", "one-shot"),
    ):
        vals = acc[mode]
        table.add_row(
            label,
            f"{100 * statistics.mean(vals):.2f}%",
            f"{100 * min(vals):.2f}%",
            f"{100 * max(vals):.2f}%",
            change_pt(statistics.mean(vals), base),
        )
    console.print(table)
    rounds, steps = (3, 5) if args.quick else (5, 10)
    console.log("overhead: ResNet-18-like, width 32, batch 32, 64x64, 2 threads")
    d, p = overhead(rounds, steps)
    t2 = Table(title="2. training-step overhead of the Pruner", title_justify="left")
    for col in ("dense step ms", "with Pruner ms", "ratio"):
        t2.add_column(col, justify="right")
    t2.add_row(f"{1000 * d:.1f}", f"{1000 * p:.1f}", f"{p / d:.3f}")
    console.print(t2)


if __name__ == "__main__":
    main()
