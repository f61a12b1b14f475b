"""``drpopt verify A.onnx B.onnx``: does B compute what A computes?

Exit codes: 0 the outputs match, 1 they differ, 2 bad input (a missing or non-ONNX file, a
bad inputs file, a model onnxruntime cannot run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.models import CommandInfo

from drpopt.cli.options import console_for, handle_errors, inputs_options, shape_option
from drpopt.cli.params import (
    Atol,
    CheckedModel,
    Reference,
    ReportOnly,
    Samples,
    Seed,
    VerifyJson,
    VerifyRtol,
)
from drpopt.passes.verify import VerifyReport


def register(app: typer.Typer) -> None:
    """Adds the ``verify`` command to ``app`` (a second call on the same app does nothing)."""
    if any(_command_name(c) == "verify" for c in app.registered_commands):
        return
    app.command("verify")(verify)


@handle_errors
@shape_option
@inputs_options
def verify(
    reference: Reference,
    model: CheckedModel,
    rtol: VerifyRtol = 1e-4,
    atol: Atol = 1e-6,
    seed: Seed = 0,
    samples: Samples = 2,
    report_only: ReportOnly = False,
    as_json: VerifyJson = False,
    input_shapes: dict | None = None,
    inputs=None,
) -> None:
    """Check that MODEL computes the outputs of REFERENCE (onnxruntime, same inputs).

    An output matches when max|B - A| <= atol + rtol * spread(A) (its range, max - min); a
    reference output that is constant or near zero over the inputs, or a reference whose
    outputs are the same for every input sample, proves nothing, and the check refuses
    (exit 1).
    """
    from drpopt import api
    from drpopt.cli.options import shape_warning, steps, warn
    from drpopt.ir.from_onnx import load_model
    from drpopt.ir.input_shapes import fix_input_shapes

    options = api.CheckOptions(  # checked once, here
        rtol=rtol, atol=atol, seed=seed, samples=samples, inputs=inputs
    )
    ref_proto = fix_input_shapes(load_model(reference), input_shapes or {})
    model_proto = fix_input_shapes(load_model(model), input_shapes or {})
    warning = shape_warning(ref_proto, input_shapes or {})
    if warning and inputs is None:
        warn(warning)
    with steps(1, "running both models in onnxruntime"):
        report = api.check(ref_proto, model_proto, options)
    if as_json:
        data = report.to_dict()
        data["mode"] = "drift" if report_only else "check"
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        render_report(console_for(), report, reference, model, report_only)
    if not report.ok and not report_only:
        _fail(report, reference, model, ref_proto, model_proto)


def _fail(report: VerifyReport, reference: Path, model: Path, ref_proto, model_proto) -> None:
    """The failed check as a ``CheckFailedError``, with a hint when MODEL looks pruned
    from REFERENCE (it carries a plan, the reference none)."""
    from drpopt.errors import CheckFailedError

    hint = ""
    if _has_plan(model_proto) and not _has_plan(ref_proto):
        hint = (
            "MODEL carries a drpopt plan and REFERENCE none: a pruned model drifts from "
            "its original, --report-only reports the drift; "
        )
    raise CheckFailedError(f"{model} vs {reference}: {hint}{report.summary()}")


def _has_plan(proto) -> bool:
    return any(p.key == "drpopt.plan" for p in proto.metadata_props)


def _command_name(info: CommandInfo) -> str | None:
    if info.name:
        return info.name
    callback = info.callback
    return callback.__name__.replace("_", "-") if callback is not None else None


def _num(x: float) -> str:
    return f"{x:.3g}"


def render_report(
    console: Console,
    report: VerifyReport,
    reference: Path,
    model: Path,
    report_only: bool = False,
) -> None:
    """The per-output table, then (when it passed or only reports) a verdict line; a
    failure's verdict is the error line on stderr, printed once."""
    title = f"{model} vs {reference}" + (" (drift, not a check)" if report_only else "")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("output")
    table.add_column("shape")
    table.add_column("max abs", justify="right")
    table.add_column("mean abs", justify="right")
    table.add_column("max / spread", justify="right")
    table.add_column("cosine", justify="right")
    if not report_only:
        table.add_column("ok", justify="center")
    for out in report.outputs.values():
        shape = "x".join(str(d) for d in out.shape) if out.shape is not None else "?"
        row = [
            escape(out.name),
            shape,
            _num(out.max_abs),
            _num(out.mean_abs),
            _num(out.max_rel),
            f"{out.cosine:.6f}",
        ]
        if not report_only:
            ok = "[green]yes[/]" if out.ok else "[bold red]no[/]"
            note = out.degenerate or out.message
            if note:
                ok += f" ({escape(note)})"
            row.append(ok)
        elif out.degenerate:
            row[0] += f" [yellow]({escape(out.degenerate)}: proves little)[/]"
        table.add_row(*row)
    console.print(table)
    console.print(f"inputs: {escape(report.inputs)}", highlight=False)
    if report_only:
        for problem in report.problems:
            console.print(f"[bold red]{escape(problem)}[/]", highlight=False)
        console.print(
            "drift reported, not checked: max / spread is the largest error over the "
            "reference output's spread (its range, max - min)",
            highlight=False,
        )
    elif report.ok:
        console.print(
            f"[green]outputs match[/] (rtol {report.rtol:g}, atol {report.atol:g}; an output "
            "matches when max abs <= atol + rtol * spread of the reference)",
            highlight=False,
        )
