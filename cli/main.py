"""The ``drpopt`` command line: a thin typer layer over the Python API.

Exit codes: 0 success, 1 the model failed a check the user asked for, 2 bad input.
Errors print one line (``error: ...``) on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

from drpopt.cli.options import (
    console_for,
    dims_warning,
    handle_errors,
    layout_warning,
    shape_option,
    warn,
)
from drpopt.cli.params import AnalyzeJson, AnalyzeModel, CountZeros, Limit, Quiet, Strict, Verbose
from drpopt.errors import CheckFailedError


class _Group(TyperGroup):
    """Usage errors as one line on stderr (exit 2), like every other failure."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as err:
            if not standalone_mode:
                raise
            ctx = getattr(err, "ctx", None)
            where = f" ({ctx.command_path} -h shows the usage)" if ctx is not None else ""
            sys.stderr.write(f"error: {err.format_message()}{where}\n")
            sys.exit(err.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _plain_flags() -> None:
    """Help reads like the README: an option's value is shown as a name (``--rate RATE``,
    ``--output OUTPUT``), flags show nothing, arguments are upper case without braces
    (typer's defaults are ``<float>``, ``<bool>`` and ``{model}``)."""

    def option_type(self, ctx):  # type: ignore[no-untyped-def]
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        return (self.name or "value").upper().replace("_", "-") + ("..." if self.multiple else "")

    TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    if hasattr(TyperArgument, "display_type_rich"):
        TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

    def display_name(self) -> str:  # type: ignore[no-untyped-def]
        return self.metavar if self.metavar is not None else (self.name or "").upper()

    TyperArgument.display_name_raw = property(display_name)  # type: ignore[assignment]
    if hasattr(TyperArgument, "_usage_display_name"):
        TyperArgument._usage_display_name = lambda self: (
            (  # type: ignore[method-assign]
                self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            )
            + ("..." if self.nargs != 1 else "")
        )


_plain_flags()

app = typer.Typer(
    cls=_Group,
    name="drpopt",
    help="Structured pruning for CNNs: coupled channel analysis, DRP-AI-friendly sparsity, "
    "sparse and compact ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from drpopt import __version__

        sys.stdout.write(f"drpopt {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Structured pruning for CNNs: coupled channel analysis, DRP-AI-friendly sparsity,
    sparse and compact ONNX. Exit codes: 0 success, 1 a check failed, 2 bad input."""
    from drpopt.cli.options import STATE

    STATE["root_quiet"], STATE["root_verbose"] = quiet, verbose  # drpopt -q COMMAND ...


@app.command()
@handle_errors
@shape_option
def analyze(
    model: AnalyzeModel,
    as_json: AnalyzeJson = False,
    strict: Strict = False,
    limit: Limit = None,
    count_zeros: CountZeros = False,
    input_shapes: dict | None = None,
) -> None:
    """Find the coupled channel groups of MODEL, the parameters and MACs each owns, and what
    locks the rest.

    A group owns the weights of the channels it produces (each weight in exactly one group),
    so the shares add up: in prunable + in locked groups + in no group = 100%. --json adds
    removes_params/removes_macs per group: what pruning the whole group would remove. The
    README's "Figures" table gives every figure's meaning. No weight is read (an external
    .data file must be beside the model, but may be truncated or unreadable) unless
    --count-zeros asks for the zeros.
    """
    from drpopt.cli.options import steps
    from drpopt.cli.render import analysis_dict, render_analysis
    from drpopt.ir.analysis import analyze as run_analysis

    with steps(1, "analysing the channel groups"):
        result = run_analysis(model, where=str(model), input_shapes=input_shapes or {})
    for warning in (
        dims_warning(result.graph.meta.get("input_shapes") or {}),
        layout_warning(result.graph),
    ):
        if warning:
            warn(warning)
    if as_json:
        data = analysis_dict(result, zeros=count_zeros)
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        render_analysis(console_for(), result, limit=limit, zeros=count_zeros)
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
