"""Benchmark of the load phase of analysis: ``from_onnx`` against ``onnx.load``.

Run by hand (not a pytest test)::

    python benchmarks/bench_load.py [--corpus DIR] [--only NAME ...] [--runs N]

Per corpus model (default ``$DRPOPT_CORPUS``, else ``../shared/corpus``; skeletons
materialized, saved to a temp file), all in this one process and interleaved run by run so
that a noisy machine slows every column alike (medians of ``--runs``):

- ``load ms``: ``onnx.load(path)``, the baseline every ratio divides by;
- ``from path``: ``from_onnx(path)`` (the graph analysis starts from: weights left in the
  file), ``from proto``: ``from_onnx(model)`` on a loaded ``ModelProto``;
- ``analyze path``: ``drpopt.analyze(path)`` (the issue's goal: at most 3x ``load``);
- per phase of ``from_onnx(path)`` (median ms): read, fold, shape copy, ONNX shape
  inference (or node-by-node typing, ``ir/infer_types.py``, where it replaces it),
  conversion, un-sharing constants, per-node propagation, and the part of the
  propagation spent reading computed shape tensors (``ir/shape_expr.py``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

import drpopt
from drpopt.zoo.corpus import corpus_dir, corpus_models, load_corpus_model

DEFAULT = [
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
    "regnet_x_400mf",
    "densenet121",
    "efficientnet_b0",
    "googlenet",
    "timm_ghostnet_100",
    "timm_mobileone_s0",
    "resnet50",
    "swin_t",
    "yolox_s",
]
# (module, function) of each phase of from_onnx, timed by wrapping it where from_onnx finds it
PHASES = [
    ("read", "drpopt.ir.from_onnx", "read_for_analysis"),
    ("fold", "drpopt.ir.from_onnx", "fold_constants"),
    ("copy", "drpopt.ir.from_onnx", "shape_copy"),  # from a proto
    ("copy", "drpopt.ir.from_onnx", "shape_bytes"),  # from a path
    ("infer", "drpopt.ir.from_onnx", "infer_shapes"),
    ("types", "drpopt.ir.infer_types", "infer_types"),  # node by node, in place of infer
    ("convert", "drpopt.ir.from_onnx", "_convert_graph"),
    ("unshare", "drpopt.ir.fold", "unshare_constants"),
    ("propagate", "drpopt.ir.propagate", "propagate_shapes"),
    ("shapes", "drpopt.ir.shape_expr", "_fill"),  # within propagate: reading shape tensors
]


class PhaseTimer:
    """Wraps each phase function to add up its time (nested calls of one phase counted
    once: ``_convert_graph`` recurses into subgraphs)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._depth: dict[str, int] = {}
        for label, module, name in PHASES:
            mod = importlib.import_module(module)
            if hasattr(mod, name):
                setattr(mod, name, self._wrap(label, getattr(mod, name)))

    def _wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            depth = self._depth.get(label, 0)
            self._depth[label] = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[label] = depth
                if depth == 0:
                    self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - start

        return timed


def _time(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(path: Path, runs: int, timer: PhaseTimer) -> dict[str, float]:
    """Median seconds of each column for the model file ``path``."""
    from_onnx = importlib.import_module("drpopt.ir.from_onnx").from_onnx
    model = onnx.load(str(path))
    samples: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    drpopt.analyze(str(path))  # warm-up: imports, caches
    for _ in range(runs):
        samples.setdefault("load", []).append(_time(lambda: onnx.load(str(path))))
        timer.spent.clear()
        samples.setdefault("path", []).append(_time(lambda: from_onnx(str(path))))
        for label in phases:
            phases[label].append(timer.spent.get(label, 0.0))
        samples.setdefault("proto", []).append(_time(lambda: from_onnx(model)))
        samples.setdefault("analyze", []).append(_time(lambda: drpopt.analyze(str(path))))
    out = {k: statistics.median(v) for k, v in samples.items()}
    out.update({f"phase:{k}": statistics.median(v) for k, v in phases.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="folder of .onnx models (default: the shared corpus)")
    parser.add_argument("--only", nargs="*", default=None, help="model names (file stems)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    folder = corpus_dir(args.corpus)
    if folder is None:
        console.print("no corpus folder (give --corpus or set DRPOPT_CORPUS)")
        return 2
    wanted = args.only or DEFAULT
    paths = [p for p in corpus_models(folder) if p.stem in wanted]
    timer = PhaseTimer()
    table = Table(title=f"from_onnx against onnx.load (median of {args.runs}, ms; x = / load)")
    for col in ("model", "load ms", "from path", "x", "from proto", "x", "analyze path", "x"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, _, _ in PHASES:
        table.add_column(label, justify="right")
    with tempfile.TemporaryDirectory(prefix="drpopt-bench-load-") as tmp:
        for src in paths:
            console.print(f"[dim]{src.stem}...[/dim]")
            file = Path(tmp) / src.name
            onnx.save(load_corpus_model(src), str(file))
            r = measure(file, args.runs, timer)
            load = max(r["load"], 1e-9)
            cells = [src.stem, f"{r['load'] * 1e3:.1f}"]
            for key in ("path", "proto", "analyze"):
                cells += [f"{r[key] * 1e3:.1f}", f"{r[key] / load:.2f}"]
            cells += [f"{r[f'phase:{label}'] * 1e3:.1f}" for label, _, _ in PHASES]
            table.add_row(*cells)
            file.unlink()
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
