"""``drpopt demo``: the whole flow on bundled data, nothing downloaded.

Default: scikit-learn's digits; train a small CNN, prune it gradually to the rate while
fine-tuning, fold the masks, export sparse and compact ONNX, verify both in onnxruntime,
compare accuracy, parameters, MACs and latency (``drpopt.retrain.demo``).
``--model NAME``: the ONNX flow on a bundled example model (random weights): analyse,
prune one-shot, verify, time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from drpopt.cli.options import console_for, handle_errors
from drpopt.cli.params import DemoJson, DemoModel, DemoOut, DemoRate, DemoSave
from drpopt.passes.common import human


def _comparison(title: str, rows: list[tuple[str, str, str, str]]):
    """A dense-vs-pruned table: label, dense, pruned, pruned/dense."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("pruned/dense", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _ratio_row(label: str, a: float, b: float, fmt=human) -> tuple[str, str, str, str]:
    return (label, fmt(a), fmt(b), f"{100.0 * b / a:.1f}%")


def register(app: typer.Typer) -> None:
    """Adds ``demo`` to ``app``."""
    app.command("demo")(demo)


@handle_errors
def demo(
    model: DemoModel = None,
    rate: DemoRate = 0.7,
    out: DemoOut = None,
    save: DemoSave = None,
    as_json: DemoJson = False,
) -> None:
    """The whole flow on bundled data: train, prune 70% while fine-tuning, export, verify."""
    import json
    import sys

    from drpopt.errors import BadInputError
    from drpopt.passes.mask import check_rate

    check_rate(rate)
    if save is not None and model is None:
        raise BadInputError("--save keeps the example model of --model; give --model NAME")
    if out is not None and model is not None:
        raise BadInputError("-o keeps the digits flow's ONNX files; with --model use --save")
    if out is not None:
        from drpopt.cli.options import probe_folder

        probe_folder(out, "-o")
    console = console_for(stderr=as_json)
    if model is not None:
        data = _onnx_demo(console, model, rate, save)
    else:
        data = _digits_demo(console, rate, out)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _digits_demo(console, rate: float, out: Path | None) -> dict:
    from dataclasses import asdict, is_dataclass

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from drpopt.retrain.demo import DemoConfig, run_demo

    console.rule("[bold]drpopt demo: scikit-learn digits, a residual CNN, pruned while fine-tuned")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def report(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done)

        with tempfile.TemporaryDirectory() as tmp:
            folder = out if out is not None else Path(tmp)
            r = run_demo(folder, DemoConfig(rate=rate), progress=report)
    console.print(_digits_table(r))
    console.print(
        f"{r.groups} coupled groups, {r.prunable_groups} pruned (first and last layers stay "
        f"dense); {r.pruned_channels} of {r.eligible_channels} channels removed"
    )
    errors = ", ".join(f"{k} {v:.1e}" for k, v in r.max_rel_error.items())
    console.print(f"onnxruntime vs torch, worst relative error: {errors}")
    if out is not None:
        console.print(f"wrote {r.sparse_path} (sparse, for DRP-AI) and {r.compact_path} (compact)")
    console.print(f"[dim]finished in {r.seconds:.1f} s[/]")
    return asdict(r) if is_dataclass(r) else dict(vars(r))


def _digits_table(r):
    """The digits flow's dense-vs-pruned table: accuracy, size, MACs, latency."""
    return _comparison(
        "Dense vs pruned",
        [
            (
                "test accuracy (torch)",
                f"{100 * r.dense_accuracy:.2f}%",
                f"{100 * r.pruned_accuracy:.2f}%",
                f"{100 * (r.pruned_accuracy - r.dense_accuracy):+.2f} pt",
            ),
            (
                "test accuracy (onnxruntime)",
                "",
                f"sparse {100 * r.onnx_sparse_accuracy:.2f}%, "
                f"compact {100 * r.onnx_compact_accuracy:.2f}%",
                "",
            ),
            _ratio_row("parameters", r.dense_params, r.pruned_params),
            _ratio_row("MACs", r.dense_macs, r.pruned_macs),
            _ratio_row(
                "onnxruntime latency (batch 1)",
                r.dense_latency_ms,
                r.compact_latency_ms,
                lambda ms: f"{ms:.3f} ms",
            ),
        ],
    )


def _onnx_demo(console, model: str, rate: float, save: Path | None) -> dict:
    """``demo --model NAME``: analyse, prune, verify and time a bundled example model."""
    from drpopt.errors import BadInputError
    from drpopt.ir.files import save_model
    from drpopt.passes.figures import plan_figures
    from drpopt.zoo import MODELS

    if model not in MODELS:
        raise BadInputError(f"unknown example model {model!r}; choose one of: {', '.join(MODELS)}")
    with console.status(f"building the example model '{model}'"):
        proto = MODELS[model]()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{model}.onnx"
        save_model(proto, path)
        fig_before, fig_after, result = _prune_example(console, model, path, rate)
        report = result.verify
        dense_ms, small_ms = _print_example(console, proto, result, fig_before, fig_after)
        plan = plan_figures(result.plan)
        console.print(
            f"pruned {plan['pruned_channels']} of {plan['eligible_channels']} eligible "
            "channels; first and last layers left dense"
        )
        console.print(f"verified against the masked model: {report.summary()}")
        if save is not None:
            save_model(proto, save)
            console.print(
                f"saved the example model to {save}; try: drpopt prune {save} -r 0.7 -o small.onnx"
            )
    return {
        "model": model,
        "rate": rate,
        "params": [fig_before["params"], fig_after["params"]],
        "macs": [fig_before["macs"], fig_after["macs"]],
        "latency_ms": [dense_ms, small_ms],
        **plan,
        "before": fig_before,
        "after": fig_after,
        "verify": report.to_dict(),
    }


def _prune_example(console, model: str, path: Path, rate: float):
    """Analyses the example at ``path`` and prunes it one-shot (compact, verified), showing
    the equivalent commands; returns the figures before and after, and the run's result."""
    from drpopt import api
    from drpopt.cli.render import render_analysis
    from drpopt.ir.analysis import analyze
    from drpopt.passes import (
        ApplyMasksPass,
        CleanupPass,
        CompactPass,
        MaskPass,
        ScorePass,
        VerifyPass,
    )
    from drpopt.passes.figures import model_figures

    console.rule(f"[bold]1. drpopt analyze {model}.onnx")
    before = analyze(path, where=f"{model}.onnx")
    render_analysis(console, before, limit=15)
    passes = [
        ScorePass(),
        MaskPass(rate=rate),
        ApplyMasksPass(),
        CompactPass(),
        CleanupPass(),
        VerifyPass(),
    ]  # values, not a string built from them; the rule shows the equivalent command
    spec = ",".join(p.spec() for p in passes)
    console.rule(f"[bold]2. drpopt run {model}.onnx -p {spec}")
    with console.status("pruning"):
        result = api.run(path, passes)
    fig_before = model_figures(before.graph, analysis=before)
    fig_after = model_figures(analyze(result.model).graph)
    return fig_before, fig_after, result


def _print_example(console, proto, result, fig_before: dict, fig_after: dict):
    """Times the dense and the pruned example and prints the comparison; returns the two
    latencies (ms)."""
    from drpopt.passes.verify import latency_ms

    with console.status("timing both models in onnxruntime"):
        dense_ms, small_ms = latency_ms(proto), latency_ms(result.model)
    table = _comparison(
        "Dense vs pruned (compact ONNX)",
        [
            _ratio_row("parameters", fig_before["params"], fig_after["params"]),
            _ratio_row("MACs", fig_before["macs"], fig_after["macs"]),
            _ratio_row(
                "onnxruntime latency (2 threads)", dense_ms, small_ms, lambda ms: f"{ms:.2f} ms"
            ),
        ],
    )
    console.print(table)
    return dense_ms, small_ms
