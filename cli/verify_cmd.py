"""``drpopt verify A.onnx B.onnx``: does B compute what A computes?

Exit codes: 0 the outputs match, 1 they differ, 2 bad input (a missing or non-ONNX file, a
bad inputs file, a model onnxruntime cannot run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.models import CommandInfo

from drpopt.passes.verify import VerifyReport


def register(app: typer.Typer) -> None:
    """Adds the ``verify`` command to ``app`` (a second call on the same app does nothing).

    Call it after ``handle_errors`` exists in ``drpopt.cli.main`` (it is imported here, late,
    so that ``cli/main.py`` may import this module).
    """
    if any(_command_name(c) == "verify" for c in app.registered_commands):
        return
    from drpopt.cli.main import handle_errors

    @app.command("verify")
    @handle_errors
    def verify(
        reference: Annotated[Path, typer.Argument(help="Reference ONNX model (A).")],
        model: Annotated[Path, typer.Argument(help="ONNX model to check against it (B).")],
        inputs: Annotated[
            Path | None,
            typer.Option(
                "--inputs", help="An .npz with one array per model input (default: random)."
            ),
        ] = None,
        rtol: Annotated[
            float, typer.Option("--rtol", help="Tolerance relative to max|reference output|.")
        ] = 1e-4,
        atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-6,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the comparison as JSON on stdout.")
        ] = False,
    ) -> None:
        """Check that MODEL computes the outputs of REFERENCE (onnxruntime, same inputs).

        An output matches when max|B - A| <= atol + rtol * max|A|.
        """
        from drpopt.errors import CheckFailedError
        from drpopt.ir.from_onnx import load_model
        from drpopt.passes.verify import compare_models, load_inputs

        ref_proto = load_model(reference)
        model_proto = load_model(model)
        feeds = None
        if inputs is not None:
            init = {t.name for t in ref_proto.graph.initializer}
            names = [i.name for i in ref_proto.graph.input if i.name not in init]
            feeds = load_inputs(inputs, names)
        report = compare_models(ref_proto, model_proto, feeds, rtol=rtol, atol=atol, seed=seed)
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        else:
            render_report(Console(), report, reference, model)
        if not report.ok:
            raise CheckFailedError(f"{model} vs {reference}: {report.summary()}")


def _command_name(info: CommandInfo) -> str | None:
    if info.name:
        return info.name
    callback = info.callback
    return callback.__name__.replace("_", "-") if callback is not None else None


def _num(x: float) -> str:
    return f"{x:.3g}"


def render_report(console: Console, report: VerifyReport, reference: Path, model: Path) -> None:
    """The per-output table and a verdict line."""
    table = Table(title=escape(f"{model} vs {reference}"), title_justify="left")
    table.add_column("output")
    table.add_column("shape")
    table.add_column("max abs", justify="right")
    table.add_column("max rel", justify="right")
    table.add_column("ok", justify="center")
    for out in report.outputs.values():
        shape = "x".join(str(d) for d in out.shape) if out.shape is not None else "?"
        ok = "[green]yes[/]" if out.ok else "[bold red]no[/]"
        if out.message:
            ok += f" ({escape(out.message)})"
        table.add_row(escape(out.name), shape, _num(out.max_abs), _num(out.max_rel), ok)
    console.print(table)
    for problem in report.problems:
        console.print(f"[bold red]{escape(problem)}[/]", highlight=False)
    verdict = "[green]match[/]" if report.ok else "[bold red]differ[/]"
    console.print(
        f"outputs {verdict} (rtol {report.rtol:g}, atol {report.atol:g}; "
        "an output matches when max abs <= atol + rtol * max|reference|)",
        highlight=False,
    )
