"""Benchmark of drpopt passes inside an ``onnx_ir`` PassManager: what the conversion costs.

Run by hand (not a pytest test)::

    python benchmarks/bench_ir_adapters.py [--model yolox_s_like | --onnx PATH] [--repeat 3]

Times one pruning pipeline (fold-batchnorm, score, mask, apply-masks, compact, cleanup) three
ways on the same model in the same run, median of ``--repeat`` runs:

1. drpopt's own ``PassManager`` on an ``onnx.ModelProto`` (the baseline);
2. ``onnx_ir.passes.PassManager`` with one adapter per pass (``drpopt.passes.Mask()``, ...):
   each converts onnx_ir -> drpopt graph and back (``ir/from_onnx_ir.py``);
3. one ``drpopt.passes.Drpopt(...)`` adapter for the whole pipeline: one conversion.

``--onnx PATH`` times a model file instead of a bundled one (a large one shows what
copying weights would cost).

Prints the seconds and the ratio of each to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import onnx
import onnx_ir
from rich.console import Console
from rich.table import Table

from drpopt import passes
from drpopt.passes import PassManager, parse_pipeline
from drpopt.zoo import build

PIPELINE = "fold-batchnorm,score,mask:rate=0.5,apply-masks,compact,cleanup"


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolox_s_like")
    parser.add_argument("--onnx", default=None, help="an .onnx file instead of --model")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    proto = onnx.load(args.onnx) if args.onnx else build(args.model)
    label = args.onnx or args.model

    def ours() -> object:
        return PassManager(parse_pipeline(PIPELINE))(proto)

    def per_pass() -> object:
        pm = onnx_ir.passes.PassManager(
            [
                passes.FoldBatchNorm(),
                passes.Score(),
                passes.Mask(rate=0.5),
                passes.ApplyMasks(),
                passes.Compact(),
                passes.Cleanup(),
            ]
        )
        return pm(onnx_ir.serde.deserialize_model(proto))

    def one_adapter() -> object:
        pm = onnx_ir.passes.PassManager([passes.Drpopt(PIPELINE)])
        return pm(onnx_ir.serde.deserialize_model(proto))

    base = median_seconds(ours, args.repeat)
    table = Table(title=f"{PIPELINE} on {label} (median of {args.repeat})")
    for column in ("how", "seconds", "ratio to drpopt's PassManager"):
        table.add_column(column)
    table.add_row("drpopt PassManager on a ModelProto", f"{base:.3f}", "1.00")
    for label, fn in (
        ("onnx_ir PassManager, one adapter per pass", per_pass),
        ("onnx_ir PassManager, one Drpopt adapter", one_adapter),
    ):
        seconds = median_seconds(fn, args.repeat)
        table.add_row(label, f"{seconds:.3f}", f"{seconds / base:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
