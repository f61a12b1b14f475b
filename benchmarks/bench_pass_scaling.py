"""Benchmark of pass scaling: time per node of each pass from 1k to 50k nodes.

Run by hand (not a pytest test)::

    python benchmarks/bench_pass_scaling.py [--sizes 1000,10000,50000] [--runs 3]

For ``zoo.random_graphs.large_model`` of each size (a random DAG CNN with BatchNorms,
Concats, Adds, grouped and depthwise convs), runs ``fold-batchnorm, score, mask:rate=0.5,
apply-masks, compact, cleanup`` through one ``PassManager(time_passes=True)`` and prints,
per pass, microseconds per node (the median of ``--runs`` pipeline runs) and its ratio to
the smallest model's figure measured in the same run: about 1 (or below: fixed costs
spread thinner) means linear, a ratio growing with the size means a superlinear path.
Loading (``from_onnx``) is timed apart as the reference column.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console
from rich.table import Table

from drpopt.ir.from_onnx import from_onnx
from drpopt.passes import PassManager
from drpopt.passes.pipeline import parse_pipeline
from drpopt.zoo.random_graphs import large_model

PIPELINE = "fold-batchnorm,score,mask:rate=0.5,apply-masks,compact,cleanup"


def per_node(size: int, runs: int) -> tuple[int, dict[str, float]]:
    """Nodes of the model and microseconds per node of loading and of each pass."""
    model = large_model(size)
    samples: dict[str, list[float]] = {}
    nodes = 0
    for _ in range(runs):
        start = time.perf_counter()
        graph = from_onnx(model)
        samples.setdefault("load", []).append(time.perf_counter() - start)
        nodes = len(graph.nodes)
        result = PassManager(parse_pipeline(PIPELINE), time_passes=True).run(graph)
        for record in result.records:
            samples.setdefault(record.spec.split(":")[0], []).append(record.seconds)
    return nodes, {k: statistics.median(v) / nodes * 1e6 for k, v in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console(stderr=True)
    rows = []
    with console.status("warm-up"):
        per_node(sizes[0], 1)  # imports and first-call costs out of the smallest figure
    for size in sizes:
        with console.status(f"large_model({size})"):
            rows.append(per_node(size, args.runs))
    columns = list(rows[0][1])
    table = Table(title="µs per node (ratio to the smallest model, same run)")
    table.add_column("nodes", justify="right")
    for c in columns:
        table.add_column(c, justify="right")
    base = rows[0][1]
    for nodes, figures in rows:
        table.add_row(
            str(nodes), *(f"{figures[c]:.1f} ({figures[c] / base[c]:.2f})" for c in columns)
        )
    Console().print(table)


if __name__ == "__main__":
    main()
