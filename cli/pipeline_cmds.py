"""``drpopt passes``, ``drpopt run`` and ``drpopt prune``: pass pipelines from the command line.

Outputs are written only after every pass (verification included) succeeded, atomically;
an output path equal to the input is refused unless ``--force``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from drpopt.cli.options import console_for, handle_errors, inputs_options, shape_option
from drpopt.cli.params import (
    Allocation,
    Calib,
    CalibOpts,
    CompactFlag,
    Criterion,
    DumpDir,
    Exclude,
    Force,
    JsonSummary,
    Model,
    PassesJson,
    Pipeline,
    Plan,
    PlanOut,
    Post,
    PruneOutput,
    PruneRtol,
    PruneTarget,
    Rate,
    RunJson,
    RunOutput,
    SparseFlag,
    TimePasses,
)
from drpopt.cli.render import (
    broken_plugin_line,
    figures_line,
    human,
    pass_timings,
    pattern_of,
    shapes_line,
    share_line,
    sparsity_table,
    with_source,
)
from drpopt.errors import BadInputError
from drpopt.ir.files import (
    atomic_write_bytes,
    probe_writable,
    refuse_overwrite,
    save_model,
    stores_external_data,
)


def load_for_pipeline(
    model: Path, input_shapes: dict | None, inputs, steps=None, verifies: bool = False
):
    """``api.load`` with progress, and a warning naming the symbolic input dims left."""
    from drpopt import api
    from drpopt.cli.options import layout_warning, shape_warning, warn
    from drpopt.passes.manager import reference_model

    if steps is not None:
        steps.update("loading the model")
    graph = api.load(model, input_shapes or {}, inputs, verifies=verifies)
    for warning in (
        shape_warning(reference_model(graph), input_shapes or {}),
        layout_warning(graph),
    ):
        if warning:
            warn(warning)
    if steps is not None:
        steps.update("loaded", advance=1)
    return graph


def _on_step(steps):
    """An ``api`` progress callback that moves ``steps``."""
    return lambda description, advance: steps.update(description, advance=advance)


def register(app: typer.Typer) -> None:
    """Adds the pipeline commands to ``app``."""
    app.command("passes")(passes_cmd)
    app.command("run")(run_cmd)
    app.command("prune")(prune_cmd)


# ---- passes ------------------------------------------------------------------------------
@handle_errors
def passes_cmd(as_json: PassesJson = False) -> None:
    """List the passes a pipeline can use (built-in and plugin), with their arguments."""
    from drpopt.passes.pipeline import registry
    from drpopt.plugins import PASS_GROUP, pass_source, records

    if as_json:
        sys.stdout.write(json.dumps(_passes_data(), indent=2) + "\n")
        return
    table = Table(title="Passes", title_justify="left")
    table.add_column("pass", style="bold")
    table.add_column("what it does")
    table.add_column("arguments (default)")
    for p in registry().values():
        args = ", ".join(f"{n}={d}" for n, _, d in p.arguments()) or "-"
        table.add_row(p.name, with_source(p.summary(), pass_source(p.name)), args)
    console_for().print(table)
    for r in records(PASS_GROUP):
        if r.broken:
            console_for().print(broken_plugin_line(r), highlight=False)
    console_for().print(
        "pipeline: passes separated by ',', arguments as name:key=value:key=value, "
        "lists with '|', a value holding , : or | quoted (\"...\" or '...'); e.g. "
        "fold-batchnorm,score:criterion=l2,mask:rate=0.7,apply-masks or "
        "mask:plan='runs/1:p.json',apply-masks"
    )


def _passes_data() -> list[dict]:
    """``drpopt passes --json``: name, summary, source and arguments of every pass."""
    from drpopt.passes.pipeline import registry
    from drpopt.plugins import pass_source

    return [
        {
            "name": p.name,
            "summary": p.summary(),
            "source": pass_source(p.name) or "drpopt",
            "arguments": [{"name": n, "default": _jsonable(d)} for n, _, d in p.arguments()],
        }
        for p in registry().values()
    ]


# ---- run ---------------------------------------------------------------------------------
@handle_errors
@shape_option
@inputs_options
def run_cmd(
    model: Model,
    pipeline: Pipeline,
    output: RunOutput = None,
    time_passes: TimePasses = False,
    dump_dir: DumpDir = None,
    force: Force = False,
    as_json: RunJson = False,
    input_shapes: dict | None = None,
    inputs=None,
) -> None:
    """Run a pass pipeline on MODEL (e.g. -p fold-batchnorm,cleanup,verify)."""
    from drpopt import api
    from drpopt.cli.options import steps as progress
    from drpopt.ir.to_onnx import to_onnx

    passes = api.passes_of(pipeline)  # the user's pipeline string: parsed once, here
    names = [p.name for p in passes]
    _check_run(model, pipeline, names, output, dump_dir, time_passes, force, inputs)
    console = console_for(stderr=as_json)
    with progress(len(passes) + 1, "loading") as steps:
        graph = load_for_pipeline(model, input_shapes, inputs, steps, "verify" in names)
        options = api.RunOptions(time_passes=time_passes, dump_dir=dump_dir)
        result = api.run(graph, passes, options, on_step=_on_step(steps))
        steps.update("done", advance=1)
        if output is not None:
            proto = to_onnx(result.graph)
            save_model(proto, output, external=stores_external_data(model) or None)
    summary = _run_summary(model, output, passes, result)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    _print_run(console, summary, result, time_passes)


def _check_run(
    model: Path,
    pipeline: str,
    names: list[str],
    output: Path | None,
    dump_dir: Path | None,
    time_passes: bool,
    force: bool,
    inputs,
) -> None:
    """Refuses a run whose result nobody sees, ``--inputs`` without verify, and outputs
    that cannot be written, before any work."""
    from drpopt.plugins import pass_source

    observable = "verify" in names or any(pass_source(n) for n in names)  # plugins: effects
    if output is None and dump_dir is None and not observable and not time_passes:
        raise BadInputError(
            f"-p {pipeline}: without -o the result is discarded and nothing is checked; "
            "give -o OUT.onnx (or add verify, --dump-dir or --time-passes)"
        )
    if inputs is not None and "verify" not in names:
        raise BadInputError("--inputs feeds the verify pass; add verify to the pipeline")
    if output is not None:
        refuse_overwrite(output, [model], force)
        probe_writable(output)
    if dump_dir is not None:
        from drpopt.cli.options import probe_folder

        probe_folder(dump_dir, "--dump-dir")


def _run_summary(model: Path, output: Path | None, passes: list, result) -> dict:
    """What ``drpopt run --json`` prints: the passes, the figures, verification."""
    from drpopt.passes.figures import model_figures

    verify = result.verify if any(p.name == "verify" for p in passes) else None
    summary = {
        "input": str(model),
        "output": str(output) if output is not None else None,
        "passes": [
            {"pass": r.spec, "modified": r.modified, "seconds": round(r.seconds, 4)}
            for r in result.records
        ],
        "figures": model_figures(result.graph),
        "verify": verify.to_dict() if verify is not None else None,
    }
    summary["pattern"] = pattern_of(passes, summary["figures"])
    return summary


def _print_run(console: Console, summary: dict, result, time_passes: bool) -> None:
    """``drpopt run``'s lines for people."""
    if time_passes:  # the table says which passes changed the model
        console.print(pass_timings(result.records))
    else:
        for r in result.records:
            console.print(f"{r.spec}: {'modified' if r.modified else 'unchanged'}")
    if summary["verify"] is not None:
        console.print(f"verify: {result.verify.summary()}", highlight=False)
    console.print(figures_line(summary["figures"]), highlight=False)
    if summary["pattern"]:
        console.print(summary["pattern"], highlight=False)
    console.print(shapes_line(summary["figures"]["input_shapes"]), highlight=False)
    if summary["output"] is not None:
        console.print(f"wrote {summary['output']}")


# ---- prune -------------------------------------------------------------------------------
@handle_errors
@shape_option
@inputs_options
def prune_cmd(
    model: Model,
    output: PruneOutput,
    rate: Rate = None,
    target: PruneTarget = "generic",
    compact_flag: CompactFlag = False,
    sparse_flag: SparseFlag = False,
    criterion: Criterion = None,
    allocation: Allocation = "uniform",
    exclude: Exclude = None,
    plan: Plan = None,
    plan_out: PlanOut = None,
    rtol: PruneRtol = 1e-4,
    time_passes: TimePasses = False,
    force: Force = False,
    as_json: JsonSummary = False,
    input_shapes: dict | None = None,
    inputs=None,
    calib: Calib = None,
    calib_opts: CalibOpts = "",
    post: Post = None,
) -> None:
    """Prune MODEL one-shot: score, mask, zero, optionally compact, clean up, verify."""
    from drpopt import api
    from drpopt.cli.calib_opts import calibrate_pass

    if compact_flag and sparse_flag:
        raise BadInputError("--compact and --sparse exclude each other; give one")
    options = api.PruneOptions(  # every value checked here, once, before any work
        rate=rate,
        target=target,
        form="compact" if compact_flag else "sparse" if sparse_flag else None,
        criterion=criterion,
        allocation=allocation,
        exclude=[p.strip() for e in exclude or [] for p in e.split(",") if p.strip()],
        plan=plan,
        rtol=rtol,
        calibrate=calibrate_pass(calib, calib_opts),
        post=post,
    )
    refuse_overwrite(output, [model], force)
    probe_writable(output)
    if plan_out is not None:
        refuse_overwrite(plan_out, [model], force)
        if output is not None and plan_out.resolve() == output.resolve():
            raise BadInputError(
                f"{plan_out}: --plan-out and -o name the same file; choose two paths"
            )
        probe_writable(plan_out)
    result = _prune(model, output, plan_out, options, input_shapes, inputs)
    summary = _summary(model, output, result.before, result.graph, result, options)
    summary["layers_before"] = result.layers_before
    console = console_for(stderr=as_json)
    _report_prune(console, model, summary, result, calib, as_json, time_passes)


def _prune(model: Path, output: Path, plan_out: Path | None, options, input_shapes, inputs):
    """``api.prune`` with progress; writes the model (and the plan) when it succeeded."""
    from drpopt import api
    from drpopt.cli.options import steps as progress

    with progress(api.prune_steps(options), "loading") as steps:
        graph = load_for_pipeline(model, input_shapes, inputs, steps, verifies=True)
        result = api.prune(graph, options, on_step=_on_step(steps))
        steps.update("writing")
        save_model(result.proto, output, external=stores_external_data(model) or None)
        if plan_out is not None:
            atomic_write_bytes(plan_out, result.plan.to_json().encode())
        steps.update("written", advance=1)
    return result


def _report_prune(
    console: Console,
    model: Path,
    summary: dict,
    result,
    calib: Path | None,
    as_json: bool,
    timed: bool,
) -> None:
    """Prints the summary (JSON or for people) and, with ``--calib``, the drift."""
    from drpopt.cli import calib_opts
    from drpopt.passes.common import layer_sparsity

    if calib is not None:
        summary["drift"] = calib_opts.drift_summary(model, result.proto, result.context)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        if calib is not None:
            calib_opts.warn_drift(summary["drift"])
        return
    if timed:
        console.print(pass_timings(result.records))
    console.print(sparsity_table(layer_sparsity(result.graph), result.layers_before))
    _print_summary(console, summary)
    if calib is not None:
        calib_opts.print_drift(console, summary["drift"])


def _jsonable(value):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def _summary(model, output, before: dict, pruned, result, options) -> dict:
    from drpopt.passes.figures import model_figures, pattern_note, plan_figures

    after = model_figures(pruned)
    plan, verify = result.plan, result.verify
    return {
        "input": str(model),
        "output": str(output),
        "form": "compact" if options.compact else "sparse",
        "rate": plan.rate,
        "target": plan.target,
        **plan_figures(plan),
        "input_shapes": after["input_shapes"],
        "before": {k: v for k, v in before.items() if k != "input_shapes"},
        "after": {k: v for k, v in after.items() if k != "input_shapes"},
        "pattern": pattern_note(options.profile, after),
        "verify": verify.to_dict() if verify is not None else None,
        "verify_summary": verify.summary() if verify is not None else None,
        "target_check": _target_check(result),
    }


def _target_check(result) -> dict | None:
    """Whether a sparse result meets its target as ``drpopt check`` measures it, and if not,
    why (groups the alignment leaves whole, layers it leaves dense)."""
    report = result.target_check
    if report is None:
        return None
    return {"ok": report.ok, "summary": report.summary()}


FIGURE_ROWS = (
    ("parameters", "params"),
    ("nonzero weights", "nonzero_params"),
    ("MACs (dense)", "macs"),
    ("MACs (zeros skipped)", "macs_nonzero"),
)


def _print_summary(console: Console, s: dict) -> None:
    def ratio(a, b):
        return f"{100.0 * a / b:.1f}%" if b else "-"

    console.print(
        f"pruned {s['pruned_channels']} of {s['eligible_channels']} eligible channels in "
        f"{s['pruned_groups']} of {s['eligible_groups']} groups "
        f"(rate {s['rate']}, target {s['target']}, {s['form']} ONNX)"
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column(justify="right")
    grid.add_column(justify="right")
    grid.add_row("", "before", "after", "after/before")
    b, a = s["before"], s["after"]
    for label, key in FIGURE_ROWS:
        grid.add_row(label, human(b[key]), human(a[key]), ratio(a[key], b[key]))
    console.print(grid)
    console.print(share_line(b), highlight=False)
    if s.get("pattern"):
        console.print(s["pattern"], highlight=False)
    console.print(shapes_line(s["input_shapes"]), highlight=False)
    if s.get("verify_summary"):
        if s["form"] == "compact":
            console.print(f"verified against the masked model: {s['verify_summary']}")
        else:
            console.print(
                f"verified against the masked model: {s['verify_summary']}; and the sparse "
                "model computes what its compact form computes"
            )
    console.print(f"wrote {s['output']}")
    check = s.get("target_check")
    if check is not None and not check["ok"]:
        from drpopt.cli.options import warn

        warn(
            f"{check['summary']}; `drpopt check --target {s['target']}` exits 1 on it "
            f"(pruned {s['pruned_groups']} of {s['eligible_groups']} eligible groups: the "
            "others keep every channel under the target's channel alignment and minimum)"
            if s["pruned_groups"] < s["eligible_groups"]
            else f"{check['summary']}; `drpopt check --target {s['target']}` exits 1 on it"
        )
