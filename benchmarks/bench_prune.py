"""Benchmark of structured pruning: real CPU speed-up of compact models, and pass times.

Run by hand (not a pytest test)::

    python benchmarks/bench_prune.py [--quick]

Prints two rich tables:

1. onnxruntime CPU latency (CPUExecutionProvider, ``intra_op_num_threads=2``, all graph
   optimizations) of the dense model and of the compact model at rates 0.3, 0.5 and 0.7, for
   a ResNet-50 (``resnet50_like(width=64, image=224, num_classes=1000)``: the real ResNet-50
   widths and classifier) and the full-size YOLOX-s (``yolox_s()``, 640x640). The compact
   model comes from ``fold-batchnorm, score, mask:rate=R, apply-masks, compact, cleanup,
   verify``; the dense baseline is the same model after ``fold-batchnorm, cleanup`` only (so
   BN folding is not counted as pruning speed-up), timed in the same run. Each latency is the
   median of N timed runs on one fixed random input after warm-up, N chosen so that a
   configuration takes a few seconds. The four sessions of a model are timed interleaved, in
   rounds, so that a slow spell of this shared machine hits dense and compact alike; the IQR
   column (interquartile range / median) shows how noisy each one was. Params and MACs
   ratios are compact / dense from ``drpopt.analyze``; "speed-up / MAC reduction" is
   speed-up x MACs ratio (1.00: the real speed-up equals 1 / MACs ratio).
2. seconds each pass takes (``PassManager(time_passes=True)`` records) per model at rate
   0.7, the median of a few pipeline runs, with their total; loading the input model (parse,
   shape inference, IR, the reference snapshot for ``verify``) is not a pass and is shown
   apart.

``--quick`` uses 112x112 / 320x320 inputs, less time per configuration and one pipeline run
for table 2.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import drpopt
from drpopt.passes import (
    ApplyMasksPass,
    CleanupPass,
    CompactPass,
    FoldBatchNormPass,
    MaskPass,
    Pass,
    PassManager,
    PipelineResult,
    ScorePass,
    VerifyPass,
)
from drpopt.zoo.models import resnet50_like, yolox_s

RATES = (0.3, 0.5, 0.7)
# (rate, target): the generic profile at each rate, then the cpu profile (kept channel
# counts a multiple of 16, the block size of onnxruntime's fast NCHWc convolutions)
CONFIGS = [*((r, "generic") for r in RATES), (0.3, "cpu"), (0.7, "cpu")]
THREADS = 2  # this machine has 2 cores
ROUNDS = 5  # interleaved rounds per model; each session runs about N / ROUNDS times a round
SETTLE_S = 0.05  # pause between blocks: lets the last session's spinning workers park


@dataclass
class Settings:
    """How long to measure: seconds per configuration, warm-up and run-count bounds."""

    target_s: float
    warmup_s: float
    min_runs: int
    max_runs: int
    pass_repeats: int


FULL = Settings(target_s=5.0, warmup_s=1.0, min_runs=10, max_runs=500, pass_repeats=3)
QUICK = Settings(target_s=1.5, warmup_s=0.3, min_runs=5, max_runs=200, pass_repeats=1)


def dense_passes() -> list[Pass]:
    """The dense baseline's pipeline: BN folded, nothing pruned."""
    return [FoldBatchNormPass(), CleanupPass()]


def prune_passes(rate: float, target: str = "generic") -> list[Pass]:
    """The pruning pipeline at ``rate`` (``keep_first`` / ``keep_last`` left at defaults)."""
    return [
        FoldBatchNormPass(),
        ScorePass(),
        MaskPass(rate=rate, target=target),
        ApplyMasksPass(),
        CompactPass(),
        CleanupPass(),
        VerifyPass(),
    ]


@dataclass
class Timed:
    """An onnxruntime session, its fixed input, and the seconds of its timed runs."""

    session: ort.InferenceSession
    feeds: dict[str, np.ndarray]
    times: list[float] = field(default_factory=list)
    runs: int = 0

    def run_once(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feeds)
        return time.perf_counter() - start

    @property
    def ms(self) -> float:
        return statistics.median(self.times) * 1e3

    @property
    def iqr(self) -> float:
        """Interquartile range over the median (0.05 = 5%)."""
        if len(self.times) < 4:
            return math.nan
        q1, _, q3 = statistics.quantiles(self.times, n=4)
        return (q3 - q1) / statistics.median(self.times)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """One fixed random input per graph input (seed 0)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def measure(models: list[onnx.ModelProto], settings: Settings) -> list[Timed]:
    """Median latencies of ``models``, timed interleaved in ``ROUNDS`` rounds.

    Each session is warmed up (at least 3 runs and ``warmup_s`` seconds), then gets
    N = ``target_s`` / (its fastest warm-up run) timed runs, bounded by ``min_runs`` and
    ``max_runs``, spread evenly over the rounds. A block starts after a short pause and one
    untimed run, so a session never pays for the previous one's threads.
    """
    timed = []
    for model in models:
        sess = _session(model)
        timed.append(Timed(sess, _feeds(sess)))
    for t in timed:
        warm: list[float] = []
        while len(warm) < 3 or sum(warm) < settings.warmup_s:
            warm.append(t.run_once())
        want = math.ceil(settings.target_s / min(warm))
        t.runs = min(settings.max_runs, max(settings.min_runs, want))
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(ROUNDS):
            for t in timed:
                block = t.runs * (r + 1) // ROUNDS - t.runs * r // ROUNDS
                time.sleep(SETTLE_S)
                t.run_once()
                t.times += [t.run_once() for _ in range(block)]
    finally:
        if gc_was_enabled:
            gc.enable()
    return timed


def _totals(model: onnx.ModelProto) -> tuple[int, int]:
    result = drpopt.analyze(model)
    return result.params, result.macs


@dataclass
class Run:
    """One pruning pipeline run: its result and the wall time of the whole PassManager call."""

    result: PipelineResult
    wall_s: float


def prune(source: onnx.ModelProto, rate: float, target: str = "generic") -> Run:
    """Runs the pruning pipeline at ``rate`` with pass timing on."""
    gc.collect()
    start = time.perf_counter()
    result = PassManager(prune_passes(rate, target), time_passes=True)(source)
    return Run(result, time.perf_counter() - start)


def latency_table(
    cases: list[tuple[str, Callable[[], onnx.ModelProto]]],
    settings: Settings,
    console: Console,
) -> tuple[Table, dict[str, list[Run]]]:
    """Table 1, and the rate-0.7 pipeline runs per model (for table 2)."""
    table = Table(title=f"1. onnxruntime CPU latency, {THREADS} threads, dense vs compact")
    for col in (
        "model",
        "rate",
        "params ratio",
        "MACs ratio",
        "latency dense ms",
        "latency compact ms",
        "runs d/c",
        "IQR % d/c",
        "speed-up",
        "speed-up / MAC reduction",
    ):
        if col == "model":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, justify="right")
    at_07: dict[str, list[Run]] = {}
    for name, make in cases:
        source = make()
        console.log(f"{name}: pipelines")
        dense = PassManager(dense_passes())(source).to_onnx()
        compacts = []
        for rate, target in CONFIGS:
            first = rate == 0.7 and target == "generic"
            runs = [
                prune(source, rate, target) for _ in range(settings.pass_repeats if first else 1)
            ]
            if first:
                at_07[name] = runs
            compacts.append(runs[0].result.to_onnx())
        d_params, d_macs = _totals(dense)
        totals = [_totals(c) for c in compacts]
        console.log(f"{name}: timing dense and {len(CONFIGS)} compact models, interleaved")
        d_lat, *c_lats = measure([dense, *compacts], settings)
        for (rate, target), (c_params, c_macs), c_lat in zip(CONFIGS, totals, c_lats, strict=True):
            macs_ratio = c_macs / d_macs
            speedup = d_lat.ms / c_lat.ms
            table.add_row(
                name,
                f"{rate:.1f} {target}",
                f"{c_params / d_params:.3f}",
                f"{macs_ratio:.3f}",
                f"{d_lat.ms:.1f}",
                f"{c_lat.ms:.1f}",
                f"{len(d_lat.times)}/{len(c_lat.times)}",
                f"{d_lat.iqr * 100:.0f}/{c_lat.iqr * 100:.0f}",
                f"{speedup:.2f}x",
                f"{speedup * macs_ratio:.2f}",
            )
        table.add_section()
    table.caption = (
        "dense = fold-batchnorm, cleanup; compact = fold-batchnorm, score, mask:rate=R, "
        "apply-masks, compact, cleanup, verify.\nratios are compact / dense (drpopt.analyze); "
        "latencies: median of the timed runs after warm-up, one fixed random input, a model's "
        "sessions interleaved;\nIQR = interquartile range / median; speed-up = dense / compact "
        "ms; speed-up / MAC reduction = speed-up x MACs ratio (1.00: all of it realised)"
    )
    return table, at_07


def pass_table(at_07: dict[str, list[Run]]) -> Table:
    """Table 2: median seconds per pass at rate 0.7, per model, with the total."""
    names = list(at_07)
    repeats = max(len(runs) for runs in at_07.values())
    table = Table(title=f"2. seconds per pass at rate 0.7 (median of {repeats} pipeline runs)")
    table.add_column("pass")
    for name in names:
        table.add_column(f"{name} s", justify="right")
    specs = [rec.spec for rec in at_07[names[0]][0].result.records]
    for i, spec in enumerate(specs):
        cells = [statistics.median(r.result.records[i].seconds for r in at_07[n]) for n in names]
        table.add_row(spec, *(f"{c:.3f}" for c in cells))
    passes = {
        n: statistics.median(sum(rec.seconds for rec in r.result.records) for r in at_07[n])
        for n in names
    }
    walls = {n: statistics.median(r.wall_s for r in at_07[n]) for n in names}
    table.add_section()
    table.add_row("total (passes)", *(f"{passes[n]:.3f}" for n in names))
    table.add_row("load input (not a pass)", *(f"{walls[n] - passes[n]:.3f}" for n in names))
    table.add_row("PassManager call", *(f"{walls[n]:.3f}" for n in names))
    table.caption = (
        "load input = PassManager call wall time minus the passes' total: parse, shape "
        "inference, IR,\nand the reference snapshot verify compares against"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    """Builds the models, runs both benchmarks and prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="112x112 / 320x320 inputs and fewer runs"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    r_img, y_img = (112, 320) if args.quick else (224, 640)
    console = Console(width=max(Console().width, 140))
    cases: list[tuple[str, Callable[[], onnx.ModelProto]]] = [
        (f"resnet50 {r_img}", lambda: resnet50_like(width=64, image=r_img, num_classes=1000)),
        (f"yolox_s {y_img}", lambda: yolox_s(image=y_img)),
    ]
    start = time.perf_counter()
    table, at_07 = latency_table(cases, settings, console)
    console.print(table)
    console.print(pass_table(at_07))
    console.print(
        f"onnxruntime {ort.__version__}, {THREADS} intra-op threads; "
        f"benchmark wall time {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
