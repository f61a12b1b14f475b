"""Pattern benchmark (run by hand): accuracy at equal weight sparsity, three ways.

    python benchmarks/bench_patterns.py [--quick]

On scikit-learn's digits: the same dense training per seed, then the same fine-tuning
budget (cubic schedule over the first 60% of it) to an overall weight sparsity of 70% and
90% over the prunable Conv/Linear weights (the layers the profile targets: the first layer
and the classifier stay dense) in three modes:

- ``channel``: channel pruning only;
- ``channel+2:4``: channel pruning plus the exact 2:4 pattern inside the kept channels;
- ``unstructured``: magnitude pruning with one global threshold, no channel pruning.

The channel rate of the first two modes is solved numerically (bisection on the sparsity a
one-shot Pruner gives the dense model) so that their sparsity matches the target; every
run's achieved sparsity is measured after fine-tuning. Training uses one thread
(``torch.set_num_threads(1)``), as ``retrain/demo.py`` does.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from drpopt.retrain.demo import _epochs, _sgd, accuracy, train_dense
from drpopt.retrain.pruner import Pruner

MODES = {
    "channel": {"granularity": "channel"},
    "channel+2:4": {"granularity": "nm", "n": 2, "m": 4},
    "unstructured": {"granularity": "unstructured", "scope": "global"},
}


def weight_sparsity(model: Any, names: list[str]) -> float:
    """Share of zero weights over the named parameters (masks applied)."""
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    return zeros / sum(params[n].numel() for n in names)


def prunable(model: Any, example: Any) -> list[str]:
    """The Conv/Linear weights a pattern targets (the generic profile's layers)."""
    p = Pruner(copy.deepcopy(model), example, final_rate=0.0, granularity="unstructured",
               pattern_rate=0.5)  # fmt: skip
    p.remove()
    return [x.param for x in p.pattern_layers]


def mode_args(mode: str, target: float, channel_rate: float) -> dict:
    """Pruner arguments of ``mode`` at ``target`` sparsity (channel modes: ``channel_rate``)."""
    if mode == "unstructured":
        return {"final_rate": 0.0, "pattern_rate": target, **MODES[mode]}
    return {"final_rate": channel_rate, **MODES[mode]}


def oneshot_sparsity(base: Any, example: Any, names: list[str], kwargs: dict) -> float:
    model = copy.deepcopy(base)
    pruner = Pruner(model, example, **kwargs)
    pruner.prune_to(kwargs["final_rate"])
    pruner.remove()
    return weight_sparsity(model, names)


def solve_channel_rate(
    base: Any, example: Any, names: list[str], mode: str, target: float
) -> float:
    """The channel rate whose one-shot sparsity is closest to ``target`` (bisection)."""
    lo, hi = 0.0, 0.95
    best = (math.inf, 0.0)
    for _ in range(14):
        mid = (lo + hi) / 2
        got = oneshot_sparsity(base, example, names, mode_args(mode, target, mid))
        best = min(best, (abs(got - target), mid))
        lo, hi = (mid, hi) if got < target else (lo, mid)
    return best[1]


def run(seeds: list[int], targets: list[float], dense_epochs: int, ft_epochs: int) -> dict:
    """results[(mode, target)] = list of (accuracy, achieved sparsity, channel rate)."""
    results: dict[Any, list[tuple[float, float, float]]] = {"dense": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in seeds:
            base, train, test = train_dense(seed, dense_epochs)
            example = test[0][:1]
            names = prunable(base, example)
            ft_steps = ft_epochs * math.ceil(len(train[1]) / 64)
            end = int(0.6 * ft_steps)
            # the dense baseline gets the same fine-tuning budget
            model = copy.deepcopy(base)
            opt, sched = _sgd(model, 0.025, ft_steps)
            _epochs(model, train, ft_epochs, opt, sched, seed + 1)
            results["dense"].append((accuracy(model, *test), 0.0, 0.0))
            for target in targets:
                for mode in MODES:
                    rate = (
                        0.0
                        if mode == "unstructured"
                        else solve_channel_rate(base, example, names, mode, target)
                    )
                    model = copy.deepcopy(base)
                    pruner = Pruner(
                        model,
                        example,
                        schedule="cubic",
                        end_step=end,
                        frequency=max(1, end // 10),
                        **mode_args(mode, target, rate),
                    )
                    opt, sched = _sgd(model, 0.025, ft_steps)
                    _epochs(
                        model, train, ft_epochs, opt, sched, seed + 1, before_iter=pruner.update
                    )
                    model = pruner.finalize()
                    got = weight_sparsity(model, names)
                    acc = accuracy(model, *test)
                    results.setdefault((mode, target), []).append((acc, got, rate))
    finally:
        torch.set_num_threads(threads)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    dense_epochs, ft_epochs = (6, 5) if args.quick else (12, 10)
    start = time.perf_counter()
    results = run(seeds, [0.7, 0.9], dense_epochs, ft_epochs)
    seconds = time.perf_counter() - start
    dense = statistics.mean(a for a, _, _ in results["dense"])
    table = Table(
        title=f"digits: accuracy at equal weight sparsity ({len(seeds)} seeds, "
        f"{dense_epochs} dense + {ft_epochs} fine-tuning epochs, 1 thread, {seconds:.0f} s)"
    )
    for col in ("mode", "target", "achieved (per seed)", "channel rate", "acc mean", "min",
                "max", "drop vs dense"):  # fmt: skip
        table.add_column(col, justify="left" if col == "mode" else "right")
    accs = [a for a, _, _ in results["dense"]]
    table.add_row("dense", "0%", "0%", "-", f"{100 * dense:.2f}%", f"{100 * min(accs):.2f}%",
                  f"{100 * max(accs):.2f}%", "-")  # fmt: skip
    for key, runs in results.items():
        if key == "dense":
            continue
        mode, target = key
        accs = [a for a, _, _ in runs]
        mean = statistics.mean(accs)
        table.add_row(
            mode,
            f"{100 * target:.0f}%",
            " ".join(f"{100 * s:.1f}%" for _, s, _ in runs),
            "-" if mode == "unstructured" else " ".join(f"{r:.3f}" for _, _, r in runs),
            f"{100 * mean:.2f}%",
            f"{100 * min(accs):.2f}%",
            f"{100 * max(accs):.2f}%",
            f"{100 * (dense - mean):+.2f} pt",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
