"""The ``drpopt`` command line: a thin typer layer over the Python API.

Exit codes: 0 success, 1 the model failed a check the user asked for, 2 bad input.
Errors print one line (``error: ...``) on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from drpopt.errors import CheckFailedError, DrpoptError

app = typer.Typer(
    name="drpopt",
    help="Structured pruning for CNNs: coupled channel analysis, DRP-AI-friendly sparsity, "
    "sparse and compact ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> Console:
    # errors stay on one line whatever the terminal width
    return Console(stderr=stderr, soft_wrap=stderr)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns drpopt errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DrpoptError as err:
            text = " / ".join(line.strip() for line in str(err).splitlines() if line.strip())
            if len(text) > 600:
                text = text[:600] + " ..."
            message = Text.assemble(("error:", "bold red"), " ", text)
            _console(stderr=True).print(message, highlight=False)
            raise typer.Exit(err.exit_code) from None

    return wrapper


@app.command()
@handle_errors
def analyze(
    model: Annotated[Path, typer.Argument(help="ONNX model file (.onnx)")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the analysis as JSON on stdout.")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 if any op has no coupling rule.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Show at most this many groups.", min=1)
    ] = None,
) -> None:
    """Find the coupled channel groups of MODEL and what pruning each would save."""
    from drpopt.cli.render import render_analysis
    from drpopt.ir.analysis import analyze as run_analysis

    result = run_analysis(model, where=str(model))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        render_analysis(_console(), result, limit=limit)
    if strict and result.unsupported:
        ops = ", ".join(f"{op} '{name}'" for op, name in result.unsupported[:5])
        more = len(result.unsupported) - 5
        raise CheckFailedError(
            f"{len(result.unsupported)} node(s) have no coupling rule ({ops}"
            + (f", and {more} more" if more > 0 else "")
            + "); their channels are locked. Register a rule with drpopt.ir.register_rule"
        )


def _register_commands() -> None:
    from drpopt.cli import (
        demo_cmd,
        export_cmd,
        pipeline_cmds,
        report_cmd,
        target_cmds,
        verify_cmd,
    )

    pipeline_cmds.register(app)
    verify_cmd.register(app)
    target_cmds.register(app)
    report_cmd.register(app)
    export_cmd.register(app)
    demo_cmd.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
