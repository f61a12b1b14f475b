"""Benchmark of ``drpopt analyze``: start-up cost and scaling in the number of nodes.

Run by hand (not a pytest test)::

    python benchmarks/bench_analyze.py [--quick]

Prints two rich tables:

1. whole-process wall time of ``drpopt analyze yolox_s.onnx`` (median of 5 subprocess runs)
   against ``python -c "import onnx; onnx.load(path)"`` measured in the same run, with the
   ratio; whether torch ends up in ``sys.modules`` after ``import drpopt; drpopt.analyze``
   (it must not). When the ``drpopt analyze`` console command is not usable yet it times
   ``python -c "import drpopt, sys; drpopt.analyze(sys.argv[1])"`` instead and says so.
2. in-process ``drpopt.analyze(path)`` on yolox_s_like, yolox_s and ``large_model`` of 1k,
   10k and 50k nodes (``--quick`` skips 50k), split into load + shape inference
   (``drpopt.ir.from_onnx.from_onnx``) and the rest (``drpopt.analyze(graph)``), with time
   per node and its ratio to the 1k model's (a linearity check: about 1 means linear); the
   same for ``chain_model`` of 1k, 10k and 50k nodes: a long elementwise chain (SiLUs) and a
   deep shape-arithmetic chain, each feeding ``x.view(x.shape[0], -1)``.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console
from rich.table import Table

import drpopt
from drpopt.ir.from_onnx import from_onnx
from drpopt.zoo.models import yolox_s, yolox_s_like
from drpopt.zoo.random_graphs import chain_model, large_model

TORCH_CHECK = (
    "import sys, drpopt; drpopt.analyze(sys.argv[1]); "
    "print('torch' in sys.modules, 'torch' in sys.modules and sys.modules['torch'].__file__)"
)
FALLBACK = "import drpopt, sys; drpopt.analyze(sys.argv[1])"


def _wall(cmd: list[str]) -> float:
    """Seconds one subprocess takes; raises CalledProcessError when it fails."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def _median_wall(cmd: list[str], runs: int) -> float:
    return statistics.median(_wall(cmd) for _ in range(runs))


def _analyze_command(path: Path) -> tuple[list[str], str | None]:
    """The ``drpopt analyze`` command, or the python -c fallback with the reason."""
    exe = shutil.which("drpopt")
    if exe is None:
        return [sys.executable, "-c", FALLBACK, str(path)], "no 'drpopt' console script on PATH"
    cmd = [exe, "analyze", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return cmd, None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    why = lines[-1] if lines else f"exit status {proc.returncode}"
    return [sys.executable, "-c", FALLBACK, str(path)], f"'drpopt analyze' failed: {why[:120]}"


def process_table(path: Path, runs: int = 5) -> Table:
    """Whole-process timings of the CLI against a bare ``onnx.load``, and the torch check."""
    cmd, why = _analyze_command(path)
    load_cmd = [sys.executable, "-c", "import onnx, sys; onnx.load(sys.argv[1])", str(path)]
    _wall(load_cmd)  # warm the page cache and the interpreter's .pyc files
    _wall(cmd)
    t_load = _median_wall(load_cmd, runs)
    t_cli = _median_wall(cmd, runs)
    torch_out = subprocess.run(
        [sys.executable, "-c", TORCH_CHECK, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    label = "drpopt analyze yolox_s.onnx" if why is None else "python -c drpopt.analyze (fallback)"

    table = Table(title=f"1. whole process, yolox_s.onnx ({path.stat().st_size / 2**20:.1f} MiB)")
    table.add_column("command")
    table.add_column(f"median of {runs} (s)", justify="right")
    table.add_column("ratio to onnx.load", justify="right")
    table.add_row("python -c 'import onnx; onnx.load(p)'", f"{t_load:.3f}", "1.00")
    table.add_row(label, f"{t_cli:.3f}", f"{t_cli / t_load:.2f}")
    table.caption = (
        ("" if why is None else f"FALLBACK used: {why}\n")
        + f"'torch' in sys.modules after import drpopt; drpopt.analyze(path): {torch_out[0]}"
        + ("" if torch_out[0] == "False" else f" ({torch_out[1]})  <-- must be False")
    )
    return table


def _median(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def scaling_table(tmp: Path, cases: list[tuple[str, Callable[[], onnx.ModelProto], int]]) -> Table:
    """In-process ``drpopt.analyze`` per model, split into frontend and analysis."""
    table = Table(title="2. in-process drpopt.analyze(path)")
    for col in (
        "model",
        "nodes",
        "runs",
        "total s",
        "load s",
        "rest s",
        "µs/node",
        "x1k",
        "load µs/node",
        "x1k",
        "rest µs/node",
        "x1k",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    refs: dict[str, tuple[float, float, float]] = {}  # each family's 1k-node figures
    for name, make, runs in cases:
        path = tmp / f"{name}.onnx"
        onnx.save(make(), str(path))
        total, result = _median(lambda p=path: drpopt.analyze(p), runs)
        t_load, _ = _median(lambda p=path: from_onnx(p), runs)
        rests = []
        for _ in range(runs):
            graph = from_onnx(path)
            gc.collect()
            start = time.perf_counter()
            drpopt.analyze(graph)
            rests.append(time.perf_counter() - start)
        t_rest = statistics.median(rests)
        nodes = len(result.graph.nodes)
        per = (total / nodes * 1e6, t_load / nodes * 1e6, t_rest / nodes * 1e6)
        family = name.rsplit("_", 1)[0]
        if name.endswith("_1k"):
            refs[family] = per
        ref = refs.get(family)
        ratios = [f"{p / r:.2f}" if ref else "" for p, r in zip(per, ref or per, strict=True)]
        table.add_row(
            name,
            str(nodes),
            str(runs),
            f"{total:.3f}",
            f"{t_load:.3f}",
            f"{t_rest:.3f}",
            f"{per[0]:.0f}",
            ratios[0],
            f"{per[1]:.0f}",
            ratios[1],
            f"{per[2]:.0f}",
            ratios[2],
        )
    table.caption = (
        "median times; total = drpopt.analyze(path); load = from_onnx(path) (parse + shape "
        "inference + IR);\nrest = drpopt.analyze(graph); x1k = time per node over "
        "the same family's 1k-node model's (1.00 = linear)"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    """Builds the models in a temp dir, runs both benchmarks and prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 50k-node model")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    cases: list[tuple[str, Callable[[], onnx.ModelProto], int]] = [
        ("yolox_s_like", yolox_s_like, 3),
        ("yolox_s", yolox_s, 3),
        ("large_1k", lambda: large_model(1000), 3),
        ("large_10k", lambda: large_model(10000), 3),
    ]
    if not args.quick:
        cases.append(("large_50k", lambda: large_model(50000), 1))
    for kind in ("elementwise", "shape"):  # deep chains: SiLUs, or shape arithmetic
        cases.append((f"{kind}_1k", lambda k=kind: chain_model(1000, k), 3))
        cases.append((f"{kind}_10k", lambda k=kind: chain_model(10000, k), 3))
        if not args.quick:
            cases.append((f"{kind}_50k", lambda k=kind: chain_model(50000, k), 1))
    with tempfile.TemporaryDirectory(prefix="drpopt-bench-") as d:
        tmp = Path(d)
        path = tmp / "yolox_s.onnx"
        onnx.save(yolox_s(), str(path))
        console.print(process_table(path))
        console.print(scaling_table(tmp, cases))


if __name__ == "__main__":
    main()
