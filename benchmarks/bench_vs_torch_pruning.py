"""drpopt's analysis against Torch-Pruning's dependency graph, same process, same models.

Run by hand (not a pytest test); needs ``pip install torch-pruning`` (not a drpopt
dependency)::

    python benchmarks/bench_vs_torch_pruning.py [--repeat 5]

For each architecture (full-width ResNet-50, MobileNetV2 1.0 and YOLOX-s, defined in
``drpopt.zoo.torch_models``) it exports the torch model once to an in-memory
``onnx.ModelProto`` and times, median of ``--repeat`` runs each:

- ``drpopt.analyze(model_proto)`` (the whole analysis: load into the IR, shape inference,
  channel groups, parameter and MAC shares);
- ``torch_pruning.DependencyGraph().build_dependency(module, example_inputs)``;

and prints the ratio drpopt / Torch-Pruning (below 1: drpopt is faster).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnx
import torch
from rich.console import Console
from rich.table import Table

import drpopt
from drpopt.zoo.torch_models import mobilenetv2_like, resnet50_like, yolox_s

MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "ResNet-50": (lambda: resnet50_like(width=64, num_classes=1000), (1, 3, 224, 224)),
    "MobileNetV2": (lambda: mobilenetv2_like(width_mult=1.0, num_classes=1000), (1, 3, 224, 224)),
    "YOLOX-s": (lambda: yolox_s(num_classes=80), (1, 3, 640, 640)),
}


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export(module: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    try:
        import torch_pruning as tp
    except ImportError:
        console.print("torch-pruning is not installed: pip install torch-pruning")
        return
    torch.set_num_threads(1)
    table = Table(title=f"analysis time, median of {args.repeat} (ms)")
    for col in ("model", "nodes", "drpopt.analyze", "TP build_dependency", "ratio"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, (build, shape) in MODELS.items():
        module = build().eval()
        x = torch.randn(*shape)
        proto = export(module, x)
        ours = median_time(lambda proto=proto: drpopt.analyze(proto), args.repeat)

        def reference(module=module, x=x) -> None:
            tp.DependencyGraph().build_dependency(module, example_inputs=x)

        theirs = median_time(reference, args.repeat)
        table.add_row(
            name,
            str(len(proto.graph.node)),
            f"{ours * 1e3:.1f}",
            f"{theirs * 1e3:.1f}",
            f"{ours / theirs:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
