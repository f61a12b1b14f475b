"""``drpopt targets`` and ``drpopt check``: target profiles, and whether a model meets one."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from drpopt.cli.options import console_for, handle_errors, shape_option
from drpopt.cli.params import CheckJson, CheckTarget, MinSparsity, Model, TargetsJson


def _purpose(description: str) -> str:
    """The profile's purpose: its description up to the first ': ' (a '2:4' stays whole)."""
    return description.split(": ")[0]


def register(app: typer.Typer) -> None:
    """Adds ``targets`` and ``check`` to ``app``."""
    app.command("targets")(targets_cmd)
    app.command("check")(check_cmd)


@handle_errors
def targets_cmd(as_json: TargetsJson = False) -> None:
    """List the target profiles (shipped and plugin; a .toml path works wherever a name
    does)."""
    from drpopt.cli.render import broken_plugin_line
    from drpopt.passes.targets import all_targets
    from drpopt.plugins import TARGET_GROUP, records

    if as_json:
        data = [
            {k: v for k, v in vars(p).items() if isinstance(v, str | int | float | bool | list)}
            for p in all_targets().values()
        ]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return

    table = Table(title="Target profiles", title_justify="left")
    cols = ("target", "channels", "pattern", "rate", "output", "what it is for", "from")
    for col in cols:
        table.add_column(col, overflow="fold")
    for p in all_targets().values():
        pattern = {
            "channel": "-",
            "nm": f"{p.n}:{p.m}",
            "block": f"blocks of {p.block}, {p.sparsity_rate:.0%}",
            "unstructured": f"weights, {p.sparsity_rate:.0%} ({p.sparsity_scope})",
        }[p.granularity]
        table.add_row(
            p.name,
            f"align {p.align}, min {p.min_channels}",
            pattern,
            f"{p.default_rate} (max {p.max_rate}/group)",
            p.output,
            _purpose(p.description),
            "drpopt" if p.source.startswith("drpopt profile") else p.source,
        )
    console_for().print(table)
    for r in records(TARGET_GROUP):
        if r.broken:
            console_for().print(broken_plugin_line(r), highlight=False)


@handle_errors
@shape_option
def check_cmd(
    model: Model,
    target: CheckTarget = "drpai",
    min_sparsity: MinSparsity = None,
    as_json: CheckJson = False,
    input_shapes: dict | None = None,
) -> None:
    """Measure MODEL's sparsity per layer against a target; exit 1 if it falls short."""
    from drpopt.cli.options import shape_warning, steps, warn
    from drpopt.errors import BadInputError, CheckFailedError
    from drpopt.passes.check import check_model
    from drpopt.passes.common import get_analysis
    from drpopt.passes.context import PipelineContext
    from drpopt.passes.figures import model_figures
    from drpopt.passes.manager import load_graph
    from drpopt.passes.targets import get_target

    if min_sparsity is not None and not 0 <= min_sparsity <= 1:
        raise BadInputError(f"--min-sparsity {min_sparsity} is outside [0, 1]")
    profile = get_target(target)
    loaded = PipelineContext()
    graph = load_graph(model, input_shapes or {}, loaded)
    warning = shape_warning(loaded.reference, input_shapes or {})
    if warning:
        warn(warning)
    with steps(1, "checking the layers"):
        report = check_model(graph, profile, min_sparsity)
        if min_sparsity is None:
            _refuse_compact_result(graph, profile, report, model)
        figures = model_figures(graph, analysis=get_analysis(graph))
    if as_json:
        data = report.to_dict()
        data["figures"] = figures
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        _print_check(console_for(), report, profile, figures)
    if not report.ok:
        raise CheckFailedError(report.summary())


def _refuse_compact_result(graph, profile, report, model) -> None:
    """A model drpopt pruned (it carries its plan) for a target that exports compact models
    (``cpu``), with no zero channel in any checked layer, is that compact result: its
    pruned channels are gone, so there are no zeros for ``check`` to measure and a verdict
    on them would be wrong. Bad input, naming what to check instead."""
    from drpopt.errors import BadInputError

    if profile.output != "compact" or "drpopt.plan" not in graph.metadata:
        return
    if any(layer.zero_channels for layer in report.layers):
        return  # a sparse form (prune --sparse): its zeros are measured as for any target
    raise BadInputError(
        f"{model} is a compact model (pruned channels removed, it carries its drpopt plan) "
        f"and target '{profile.name}' exports compact models: check measures the zeros of "
        f"sparse models; check the sparse form (drpopt prune ORIGINAL --target "
        f"{profile.name} --sparse), or give --min-sparsity to measure this model anyway"
    )


def _check_table(report, profile) -> Table:
    """One row per checked layer: shape, zeros, zero channels, whether its pattern fits."""
    table = Table(title=f"Sparsity against target '{profile.name}'", title_justify="left")
    for col in ("layer", "weight", "zeros", "zero channels", "pattern"):
        table.add_column(col, justify="left" if col == "layer" else "right", overflow="fold")
    for layer in report.layers:
        pattern = (
            "-"
            if not layer.groups
            else ("ok" if layer.conforms else f"[red]{layer.violations}/{layer.groups} bad[/]")
        )
        table.add_row(
            layer.node,
            "x".join(map(str, layer.shape)),
            f"{100 * layer.sparsity:.1f}%",
            f"{layer.zero_channels}/{layer.channels}",
            pattern,
        )
    return table


def _print_check(console: Console, report, profile, figures: dict) -> None:
    """``drpopt check``'s table and lines for people."""
    from drpopt.cli.render import figures_line, shapes_line
    from drpopt.passes.common import human
    from drpopt.passes.figures import pattern_note

    console.print(_check_table(report, profile))
    total = sum(layer.total for layer in report.layers)
    console.print(
        f"{len(report.layers)} layers checked ({human(total)} weights), "
        f"{len(report.skipped)} left dense by the profile"
    )
    console.print(figures_line(figures), highlight=False)
    note = pattern_note(profile)
    if note:
        console.print(note.replace("adds", "asks for"), highlight=False)
    console.print(shapes_line(figures["input_shapes"]), highlight=False)
    if report.ok:
        console.print(report.summary())
