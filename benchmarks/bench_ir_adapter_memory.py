"""Memory of one drpopt adapter on an ``onnx_ir`` model: what converting in and out costs.

Run by hand (not a pytest test), one model per process (peak RSS only grows)::

    python benchmarks/bench_ir_adapter_memory.py MODEL.onnx [--pipeline fold-batchnorm]

Loads ``MODEL.onnx`` with ``onnx_ir.load``, then runs ``drpopt.passes.Drpopt(pipeline)`` on
it once and prints the peak resident memory it added beyond the loaded model and its
seconds. Weights copied on the way in or out show up here (a copy of every weight is the
size of the model).
"""

from __future__ import annotations

import argparse
import resource
import time

import onnx_ir

from drpopt import passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--pipeline", default="fold-batchnorm")
    args = parser.parse_args()
    model = onnx_ir.load(args.model)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    passes.Drpopt(args.pipeline)(model)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{args.model} {args.pipeline!r}: {(peak - loaded) / 1024:.0f} MiB peak RSS beyond "
        f"the loaded model, {seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
