"""The drop-in Pruner's cost per training step (run by hand).

    python benchmarks/bench_drpai_step.py [--quick] [--threads N]

A training step (``pruner.update()`` as the recipes call it, forward, backward, SGD with
momentum and weight decay) of a model with ``drpopt.retrain.drpai.Pruner`` attached at
``final_pr=0.7`` (masks in force), against the same step of a dense copy, on a ResNet-50-size
model (torchvision's layout, 25.6M parameters) and a YOLOX-s-size one (9.0M). Dense and
masked steps are interleaved round by round in the same process; the ratio is of the medians.
A second optimizer on an unrelated model steps too, to show that it is not taxed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from drpopt.retrain.drpai import Pruner, make_pruning_layer_list
from drpopt.zoo.torch_models import resnet50_like, yolox_s


def _loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.float().pow(2).mean() if isinstance(out, torch.Tensor) else out


def _step(model, opt, x, pruner=None) -> float:
    start = time.perf_counter()
    if pruner is not None:
        pruner.update()
    loss = _loss(model, x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def measure(name: str, build, shape: tuple[int, ...], rounds: int, steps: int) -> dict:
    """Median dense and masked step times (s) of ``build()`` on random inputs of ``shape``."""
    torch.manual_seed(0)
    dense = build().train()
    masked = copy.deepcopy(dense)
    x = torch.randn(*shape)
    layers = make_pruning_layer_list(masked, input_size=[(1, *shape[1:])])
    pruner = Pruner(masked, pruning_layer_list=layers, final_pr=0.7)
    opts = {
        key: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        for key, m in (("dense", dense), ("masked", masked))
    }
    _step(masked, opts["masked"], x, pruner)  # prunes (one-shot), then warm-up
    _step(dense, opts["dense"], x)
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    ratios = []
    for i in range(rounds * steps):
        order = ("dense", "masked") if i % 2 == 0 else ("masked", "dense")
        pair = {}
        for key in order:
            model = dense if key == "dense" else masked
            pair[key] = _step(model, opts[key], x, pruner if key == "masked" else None)
            times[key].append(pair[key])
        ratios.append(pair["masked"] / pair["dense"])
    params = sum(p.numel() for p in dense.parameters())
    d, m = statistics.median(times["dense"]), statistics.median(times["masked"])
    work = _mask_work(pruner, rounds * steps)
    share = pruner.info().pruning_sparsity
    pruner.remove()
    return {
        "model": name,
        "params": params,
        "dense": d,
        "masked": m,
        "ratio": statistics.median(ratios),
        "work": work / d,
        "share": share,
    }


def _mask_work(pruner, n: int) -> float:
    """Median time (s) of what the Pruner adds to a step: gradient and weight multiplies."""
    entries = list(pruner._masked.values())
    grads = [torch.randn_like(e.param) for e in entries]
    times = []
    for _ in range(n):
        start = time.perf_counter()
        for e, g in zip(entries, grads, strict=True):
            g * e.fresh_factor()  # the gradient hook
        pruner.apply_masks()  # the post-step hook
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller inputs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, steps = (3, 2) if args.quick else (5, 4)
    side = 64 if args.quick else 128
    cases = [
        ("ResNet-50", lambda: resnet50_like(width=64, num_classes=1000), (8, 3, side, side)),
        ("YOLOX-s", lambda: yolox_s(num_classes=80), (4, 3, 2 * side, 2 * side)),
    ]
    table = Table(title="drop-in Pruner: training step, masked / dense (same run, paired)")
    cols = ("model", "params", "input", "pruning-layer zeros", "dense s", "masked s", "ratio")
    for col in (*cols, "mask work"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, build, shape in cases:
        r = measure(name, build, shape, rounds, steps)
        table.add_row(
            name,
            f"{r['params'] / 1e6:.1f}M",
            "x".join(map(str, shape)),
            f"{100 * r['share']:.1f}%",
            f"{r['dense']:.3f}",
            f"{r['masked']:.3f}",
            f"{r['ratio']:.3f}x",
            f"{100 * r['work']:.1f}%",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
