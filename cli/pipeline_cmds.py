"""``drpopt passes``, ``drpopt run`` and ``drpopt prune``: pass pipelines from the command line.

Outputs are written only after every pass (verification included) succeeded, atomically;
an output path equal to the input is refused unless ``--force``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from drpopt.cli.files import atomic_write_bytes, refuse_overwrite, save_model
from drpopt.cli.main import _console, handle_errors
from drpopt.cli.render import (
    broken_plugin_line,
    human,
    pass_timings,
    sparsity_table,
    with_source,
)


def _run_pipeline(
    console: Console,
    model: Path,
    passes,
    time_passes: bool,
    dump_dir: Path | None,
    stats: bool = False,
):
    from drpopt.passes import PassManager
    from drpopt.passes.manager import load_graph

    with console.status("loading the model") as status:
        graph = load_graph(model)
        if stats:
            graph.meta["input_stats"] = _stats(graph)

        def on_pass(i: int, p) -> None:
            status.update(f"pass {i + 1}/{len(passes)}: {p.spec()}")

        result = PassManager(passes, time_passes=time_passes, dump_dir=dump_dir, on_pass=on_pass)(
            graph
        )
    return graph, result


def register(app: typer.Typer) -> None:
    """Adds the pipeline commands to ``app``."""

    @app.command("passes")
    @handle_errors
    def passes_cmd() -> None:
        """List the passes a pipeline can use (built-in and plugin), with their arguments."""
        from drpopt.passes.pipeline import registry
        from drpopt.passes.plugins import PASS_GROUP, pass_source, records

        table = Table(title="Passes", title_justify="left")
        table.add_column("pass", style="bold")
        table.add_column("what it does")
        table.add_column("arguments (default)")
        for p in registry().values():
            args = ", ".join(f"{n}={d}" for n, _, d in p.arguments()) or "-"
            table.add_row(p.name, with_source(p.summary(), pass_source(p.name)), args)
        _console().print(table)
        for r in records(PASS_GROUP):
            if r.broken:
                _console().print(broken_plugin_line(r), highlight=False)
        _console().print(
            "pipeline: passes separated by ',', arguments as name:key=value:key=value, "
            "lists with '|'; e.g. fold-batchnorm,score:criterion=l2,mask:rate=0.7,apply-masks"
        )

    @app.command("run")
    @handle_errors
    def run_cmd(
        model: Annotated[Path, typer.Argument(help="ONNX model file")],
        pipeline: Annotated[
            str, typer.Option("--pipeline", "-p", help="Pass list or a .toml pipeline file.")
        ],
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="Write the result here.")
        ] = None,
        time_passes: Annotated[bool, typer.Option("--time-passes", help="Time each pass.")] = False,
        dump_dir: Annotated[
            Path | None, typer.Option("--dump-dir", help="Write the model after each pass here.")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Allow -o to equal MODEL.")] = False,
    ) -> None:
        """Run a pass pipeline on MODEL (e.g. -p fold-batchnorm,cleanup,verify)."""
        from drpopt.ir.to_onnx import to_onnx
        from drpopt.passes import parse_pipeline

        passes = parse_pipeline(pipeline)
        if output is not None:
            refuse_overwrite(output, [model], force)
        console = _console()
        _, result = _run_pipeline(console, model, passes, time_passes, dump_dir)
        if time_passes:
            console.print(pass_timings(result.records))
        for r in result.records:
            console.print(f"{r.spec}: {'modified' if r.modified else 'unchanged'}")
        if output is not None:
            save_model(to_onnx(result.model), output)
            console.print(f"wrote {output}")

    @app.command("prune")
    @handle_errors
    def prune_cmd(
        model: Annotated[Path, typer.Argument(help="ONNX model file")],
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Write the pruned model here.")
        ],
        rate: Annotated[
            float | None,
            typer.Option(
                "--rate", "-r", help="Fraction of prunable channels to remove, in [0, 1)."
            ),
        ] = None,
        target: Annotated[str, typer.Option("--target", help="Target profile.")] = "generic",
        compact: Annotated[
            bool | None,
            typer.Option(
                "--compact/--sparse",
                help="Remove pruned channels, or keep dense shapes with zeros "
                "(default: the target's choice: generic compact, drpai sparse).",
            ),
        ] = None,
        criterion: Annotated[
            str | None,
            typer.Option(
                "--criterion",
                help="l1, l2, bn-gamma, random, activation, reconstruction "
                "(default: l2; reconstruction with --calib).",
            ),
        ] = None,
        allocation: Annotated[
            str, typer.Option("--allocation", help="uniform or global.")
        ] = "uniform",
        exclude: Annotated[
            list[str] | None, typer.Option("--exclude", help="Layer name pattern to leave dense.")
        ] = None,
        plan: Annotated[
            Path | None, typer.Option("--plan", help="Apply this saved plan instead.")
        ] = None,
        plan_out: Annotated[
            Path | None, typer.Option("--plan-out", help="Save the plan as JSON here.")
        ] = None,
        rtol: Annotated[float, typer.Option("--rtol", help="Verification tolerance.")] = 1e-4,
        time_passes: Annotated[bool, typer.Option("--time-passes", help="Time each pass.")] = False,
        force: Annotated[bool, typer.Option("--force", help="Allow -o to equal MODEL.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
        calib: Annotated[
            Path | None,
            typer.Option(
                "--calib",
                help="Calibration inputs (an .npz of input batches or a folder of images): "
                "data-aware scores, reconstruction, and a drift report on held-out batches.",
            ),
        ] = None,
        calib_opts: Annotated[
            str,
            typer.Option(
                "--calib-opts",
                help="calibrate arguments, e.g. 'size=224|224:mean=0.485|0.456|0.406:"
                "std=0.229|0.224|0.225:order=rgb:layout=nchw:batch=16:holdout=0.2'.",
            ),
        ] = "",
        post: Annotated[
            str | None,
            typer.Option(
                "--post",
                help="reconstruct, bias-correct or none after masking "
                "(default: reconstruct with --calib, none without).",
            ),
        ] = None,
    ) -> None:
        """Prune MODEL one-shot: score, mask, zero, optionally compact, clean up, verify."""
        from drpopt.ir.to_onnx import to_onnx
        from drpopt.passes import parse_pipeline
        from drpopt.passes.common import layer_sparsity
        from drpopt.passes.mask import check_rate
        from drpopt.passes.targets import get_target

        profile = get_target(target)
        if plan is None:
            rate = profile.default_rate if rate is None else rate
            check_rate(rate)
        refuse_overwrite(output, [model], force)
        if plan_out is not None:
            refuse_overwrite(plan_out, [model], force)
        compact = profile.output == "compact" if compact is None else compact
        mask = (
            f"mask:plan={plan}"
            if plan is not None
            else (
                f"mask:rate={rate}:target={target}:allocation={allocation}"
                + (f":exclude={'|'.join(exclude)}" if exclude else "")
            )
        )
        from drpopt.cli.calib_opts import calib_passes

        pre, criterion, after_masks = calib_passes(calib, calib_opts, criterion, post)
        steps = [f"score:criterion={criterion}", mask, "apply-masks", *after_masks]
        if profile.pattern_rate > 0:  # the target's fine-grained pattern inside kept channels
            steps.append(f"sparsify:target={target}")
        steps += ["compact"] if compact else []
        steps += ["cleanup", f"verify:rtol={rtol}"]
        passes = pre + parse_pipeline(",".join(steps))
        console = _console(stderr=as_json)
        graph, result = _run_pipeline(console, model, passes, time_passes, None, stats=True)
        pruned = result.model
        final_plan = pruned.meta["plan"]
        proto = to_onnx(pruned)
        if not compact:
            _check_sparse_matches_compact(proto, final_plan, rtol)
        save_model(proto, output)
        if plan_out is not None:
            atomic_write_bytes(plan_out, final_plan.to_json().encode())
        summary = _summary(model, output, graph.meta["input_stats"], pruned, final_plan, compact)
        if calib is not None:
            from drpopt.cli.calib_opts import drift_summary

            summary["drift"] = drift_summary(model, proto, pruned)
        if as_json:
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            if calib is not None:
                from drpopt.cli.calib_opts import warn_drift

                warn_drift(summary["drift"])
            return
        if time_passes:
            console.print(pass_timings(result.records))
        console.print(sparsity_table(layer_sparsity(pruned), summary["layers_before"]))
        _print_summary(console, summary)
        if calib is not None:
            from drpopt.cli.calib_opts import print_drift

            print_drift(console, summary["drift"])


def _check_sparse_matches_compact(sparse, plan, rtol: float) -> None:
    """The sparse model must compute what its channel-removed form computes: proof that
    its zeros are whole channels a runtime (or DRP-AI) may skip."""
    from drpopt.errors import CheckFailedError
    from drpopt.ir.to_onnx import to_onnx
    from drpopt.passes import CleanupPass, CompactPass, PassManager, compare_models
    from drpopt.passes.manager import load_graph

    graph = load_graph(sparse)
    graph.meta["plan"] = plan
    compact = to_onnx(PassManager([CompactPass(), CleanupPass()])(graph).model)
    report = compare_models(sparse, compact, rtol=rtol)
    if not report.ok:
        raise CheckFailedError(f"the sparse model and its compact form differ: {report.summary()}")


def _stats(graph) -> dict:
    from drpopt.passes.common import get_analysis, layer_sparsity

    a = get_analysis(graph)
    return {
        "params": a.params,
        "macs": a.macs,
        "layers": {s.node: list(s.shape) for s in layer_sparsity(graph)},
    }


def _summary(model, output, stats0, pruned, plan, compact) -> dict:
    from drpopt.passes.common import get_analysis, layer_sparsity

    after = get_analysis(pruned)
    layers = layer_sparsity(pruned)
    nonzero = sum(s.total - s.zeros for s in layers)
    verify = pruned.meta.get("verify")
    return {
        "input": str(model),
        "output": str(output),
        "form": "compact" if compact else "sparse",
        "rate": plan.rate,
        "target": plan.target,
        "pruned_channels": plan.pruned_channels,
        "eligible_channels": plan.settings.get("eligible_channels"),
        "params_before": stats0["params"],
        "params_after": after.params,
        "nonzero_weights_after": nonzero,
        "macs_before": stats0["macs"],
        "macs_after": after.macs,
        "effective_macs_after": _effective_macs(pruned),
        "layers_before": stats0["layers"],
        "verify": verify.to_dict() if verify is not None else None,
        "verify_summary": verify.summary() if verify is not None else None,
    }


def _effective_macs(graph) -> int:
    """MACs with zero weights skipped (what a sparse accelerator can save)."""
    import numpy as np

    from drpopt.ir.analysis import node_macs
    from drpopt.passes.common import weight_of

    total = 0.0
    for node in graph.nodes:
        macs = node_macs(node)
        w = weight_of(node)
        if w is not None and macs:
            arr = np.asarray(w.const)
            total += macs * (np.count_nonzero(arr) / max(arr.size, 1))
        else:
            total += macs
    return int(round(total))


def _print_summary(console: Console, s: dict) -> None:
    def ratio(a, b):
        return f"{100.0 * a / b:.1f}%" if b else "-"

    console.print(
        f"pruned {s['pruned_channels']} of {s['eligible_channels']} eligible channels "
        f"(rate {s['rate']}, target {s['target']}, {s['form']} ONNX)"
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column(justify="right")
    grid.add_column(justify="right")
    grid.add_row("", "before", "after", "after/before")
    if s["form"] == "compact":
        rows = [
            ("parameters", "params_after", "params_before"),
            ("MACs", "macs_after", "macs_before"),
        ]
    else:
        rows = [
            ("nonzero weights", "nonzero_weights_after", "params_before"),
            ("MACs (zeros skipped)", "effective_macs_after", "macs_before"),
        ]
    for label, after, before in rows:
        grid.add_row(label, human(s[before]), human(s[after]), ratio(s[after], s[before]))
    console.print(grid)
    if s.get("verify_summary"):
        if s["form"] == "compact":
            console.print(f"verified against the masked model: {s['verify_summary']}")
        else:
            console.print("verified: the sparse model computes what its compact form computes")
    console.print(f"wrote {s['output']}")
