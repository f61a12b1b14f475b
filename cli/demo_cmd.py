"""``drpopt demo``: the whole ONNX flow on a bundled example model, nothing downloaded.

Builds the example (random weights, in code), analyses its coupled channel groups, prunes it
one-shot to the rate (score, mask, apply-masks, compact, cleanup, verify), and compares
parameters, MACs and onnxruntime latency of the dense and the compact model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from drpopt.cli.render import human


def _latency_ms(model, runs: int = 20) -> float:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def register(app: typer.Typer) -> None:
    """Adds ``demo`` to ``app``."""
    from drpopt.cli.main import _console, handle_errors

    @app.command("demo")
    @handle_errors
    def demo(
        model: Annotated[
            str, typer.Option("--model", help="Bundled example model to run on.")
        ] = "yolox_s_like",
        rate: Annotated[float, typer.Option("--rate", help="Pruning rate for the demo.")] = 0.7,
        save: Annotated[
            Path | None, typer.Option("--save", help="Also keep the example ONNX at this path.")
        ] = None,
    ) -> None:
        """Run the whole flow on a bundled example model (built in code, nothing downloaded)."""
        from rich.table import Table

        from drpopt.cli.files import save_model
        from drpopt.cli.render import render_analysis
        from drpopt.errors import BadInputError
        from drpopt.ir.analysis import analyze
        from drpopt.ir.to_onnx import to_onnx
        from drpopt.passes import PassManager, parse_pipeline
        from drpopt.passes.mask import check_rate
        from drpopt.zoo import MODELS

        if model not in MODELS:
            raise BadInputError(
                f"unknown example model {model!r}; choose one of: {', '.join(MODELS)}"
            )
        check_rate(rate)
        console = _console()
        with console.status(f"building the example model '{model}'"):
            proto = MODELS[model]()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{model}.onnx"
            save_model(proto, path)
            console.rule(f"[bold]1. drpopt analyze {model}.onnx")
            before = analyze(path, where=f"{model}.onnx")
            render_analysis(console, before, limit=15)

            spec = f"score,mask:rate={rate},apply-masks,compact,cleanup,verify"
            console.rule(f"[bold]2. drpopt run {model}.onnx -p {spec}")
            with console.status("pruning"):
                result = PassManager(parse_pipeline(spec))(path)
            small = to_onnx(result.model)
            after = analyze(small)
            report = result.model.meta["verify"]
            with console.status("timing both models in onnxruntime"):
                dense_ms, small_ms = _latency_ms(proto), _latency_ms(small)
            table = Table(title="Dense vs pruned (compact ONNX)", title_justify="left")
            table.add_column("")
            table.add_column("dense", justify="right")
            table.add_column("pruned", justify="right")
            table.add_column("pruned/dense", justify="right")
            for label, a, b in (
                ("parameters", before.params, after.params),
                ("MACs", before.macs, after.macs),
            ):
                table.add_row(label, human(a), human(b), f"{100.0 * b / a:.1f}%")
            table.add_row(
                "onnxruntime latency (2 threads)",
                f"{dense_ms:.2f} ms",
                f"{small_ms:.2f} ms",
                f"{100.0 * small_ms / dense_ms:.1f}%",
            )
            console.print(table)
            plan = result.model.meta["plan"]
            console.print(
                f"pruned {plan.pruned_channels} of {plan.settings['eligible_channels']} eligible "
                f"channels; first and last layers left dense"
            )
            console.print(f"verified against the masked model: {report.summary()}")
            if save is not None:
                save_model(proto, save)
                console.print(
                    f"saved the example model to {save}; "
                    f"try: drpopt prune {save} -r 0.7 -o small.onnx"
                )
