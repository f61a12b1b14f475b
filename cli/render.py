"""Rich rendering of analysis results for people (``--json`` is the machine form)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from drpopt.ir.analysis import Analysis
from drpopt.ir.channels import Group
from drpopt.passes.common import human, pct


def _size(g: Group) -> str:
    blocks = {m.block for m in g.members if m.role == "producer"}
    if blocks and min(blocks) > 1:
        return f"{g.size}x{min(blocks)}"
    return str(g.size)


def _producers(g: Group, limit: int = 3) -> str:
    names = g.producers
    text = ", ".join(names[:limit])
    if len(names) > limit:
        text += f" +{len(names) - limit}"
    return text


GROUP_CAPTION = (
    "params, MACs: what the group owns, the weights of the channels it produces (each "
    "weight once: the shares add up to 100% over all groups and the ungrouped rest); "
    "--json adds removes_params/removes_macs, what pruning the whole group would remove"
)


def group_table(result: Analysis, limit: int | None = None) -> Table:
    """The coupled groups: size, prunable or why not, producers, owned params and MACs."""
    from drpopt.passes.figures import group_shares

    shares = group_shares(result)
    table = Table(
        title="Coupled channel groups",
        title_justify="left",
        expand=False,
        caption=GROUP_CAPTION,
        caption_justify="left",
    )
    table.add_column("id", justify="right")
    table.add_column("size", justify="right")
    table.add_column("prunable")
    table.add_column("producer layers", overflow="fold", max_width=48)
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for g in result.groups[:limit]:
        status = "[green]yes[/]" if g.prunable else f"[red]no[/]: {_short_reason(g)}"
        params, macs = shares.owned_params[g.id], shares.owned_macs[g.id]
        table.add_row(
            str(g.id),
            _size(g),
            status,
            _producers(g),
            f"{human(params)} ({pct(params, result.params)})",
            f"{human(macs)} ({pct(macs, result.macs)})",
        )
    return table


def _short_reason(g: Group) -> str:
    reason = g.reason or ""
    first = reason.split("; ")[0]
    more = reason.count("; ")
    return first + (f" (+{more} more)" if more else "")


def analysis_dict(result: Analysis, zeros: bool = False) -> dict:
    """The ``--json`` form: ``Analysis.to_dict()`` with the shared figures
    (``passes/figures.py``): per group ``params``/``macs`` are what it owns (they add up) and
    ``removes_params``/``removes_macs`` what pruning it whole removes; the totals split the
    model into prunable, locked and ungrouped, plus the input shapes. ``nonzero_params`` and
    ``macs_nonzero`` are None unless ``zeros`` (counting them reads every weight)."""
    from drpopt.passes.figures import group_shares, model_figures

    data = result.to_dict()
    fig = model_figures(result.graph, analysis=result, zeros=zeros)
    shares = group_shares(result)
    for g in data["groups"]:
        g["removes_params"], g["removes_macs"] = g["params"], g["macs"]
        g["params"], g["macs"] = shares.owned_params[g["id"]], shares.owned_macs[g["id"]]
    data["model"]["input_shapes"] = fig["input_shapes"]
    data["totals"].update({k: v for k, v in fig.items() if k != "input_shapes"})
    return data


def figures_line(fig: dict) -> str:
    """Parameters, nonzero weights (total weight sparsity) and MACs dense and with zeros
    skipped, in one line (``passes/figures.py``'s figures)."""
    zero = 1 - fig["nonzero_params"] / fig["params"] if fig["params"] else 0.0
    return (
        f"parameters {human(fig['params'])}, nonzero {human(fig['nonzero_params'])} "
        f"(total weight sparsity {100 * zero:.1f}%); MACs {human(fig['macs'])} dense, "
        f"{human(fig['macs_nonzero'])} with zeros skipped"
    )


def share_line(fig: dict) -> str:
    """Where the model's weights sit (``figures.group_shares``; each weight once)."""
    parts = [("prunable groups", "prunable"), ("locked groups", "locked")]
    if fig.get("ungrouped_params") or fig.get("ungrouped_macs"):
        parts.append(("no group", "ungrouped"))
    text = ", ".join(
        f"{label} {100 * fig[f'{k}_params'] / max(fig['params'], 1):.1f}%"
        f" / {100 * fig[f'{k}_macs'] / max(fig['macs'], 1):.1f}%"
        for label, k in parts
    )
    return f"before, parameters / MACs in {text}"


def pattern_of(passes, figures: dict) -> str | None:
    """The fine-grained pattern a ``sparsify`` pass of ``passes`` applied, in words with the
    total sparsity (``figures.pattern_note``), or None."""
    from drpopt.passes.figures import pattern_note

    notes = [pattern_note(p.profile, figures) for p in passes if p.name == "sparsify"]
    return next((n for n in notes if n), None)


def shapes_line(shapes: dict | None) -> str:
    """``computed for input shapes x: 1x3x640x640``; with symbolic dims, which ones the
    MACs took as 1 (the analysis keeps them as symbols; only the counts need numbers)."""
    from drpopt.ir.input_shapes import describe

    if not shapes:
        return "computed for: no graph inputs"
    line = f"computed for input shapes {describe(shapes)}"
    symbols = [d for dims in shapes.values() for d in dims or () if not isinstance(d, int)]
    if symbols:
        names = ", ".join(dict.fromkeys(map(str, symbols)))
        line += f"; MACs count {names} (and every size computed from them) as 1"
    return line


SHARE_ROWS = (
    ("in prunable groups", "prunable"),
    ("in locked groups", "locked"),
    ("in no group", "ungrouped"),
)
TOTALS_NOTE = "in prunable / locked / no group: each weight counted once (they add up to 100%)"
ZEROS_NOTE = "zeros not counted (the analysis reads no weight; --count-zeros counts them)"


def render_analysis(
    console: Console, result: Analysis, limit: int | None = None, zeros: bool = False
) -> None:
    """The group table, then totals: parameters, MACs, prunable shares, locks; with
    ``zeros`` also the nonzero weights and the MACs with zeros skipped (reads every weight:
    shown where they differ from the totals)."""
    from drpopt.passes.figures import model_figures

    fig = model_figures(result.graph, analysis=result, zeros=zeros)
    console.print(group_table(result, limit))
    if limit is not None and len(result.groups) > limit:
        console.print(f"... {len(result.groups) - limit} more groups (use --json for all)")
    console.print(_totals_table(result, fig, zeros))
    locked_by = result.locked_by()
    if locked_by:
        console.print("[bold]locked by[/]")
        for cause, count in list(locked_by.items())[:10]:
            console.print(f"  {cause}: {count} group{'s' if count != 1 else ''}")
        if len(locked_by) > 10:
            console.print(f"  ... and {len(locked_by) - 10} more causes")
    if result.unproduced:  # weight input axes nothing produces: locked, in no group
        console.print("[bold]weight input axes in no group[/] (no layer produces their channels)")
        for g in result.unproduced[:5]:
            readers = ", ".join(dict.fromkeys(f"'{m.node}'" for m in g.members if m.node))
            console.print(f"  {readers}: {g.reason}", highlight=False)
    if result.ungrouped:  # counted "in no group": why, largest first
        console.print("[bold]weights in no group[/] (not pruned)")
        for tensor, n, why in result.ungrouped[:5]:
            console.print(f"  '{tensor}' ({n:,} elements): {why}", highlight=False)
        if len(result.ungrouped) > 5:
            console.print(f"  ... and {len(result.ungrouped) - 5} more (--json lists them)")
    if result.unsupported:
        ops = sorted({op for op, _ in result.unsupported})
        console.print(
            f"[yellow]{len(result.unsupported)} node(s) without a coupling rule[/] "
            f"({', '.join(ops)}): their channels are locked"
        )
    console.print(f"[dim]{TOTALS_NOTE}[/]", highlight=False)
    if not zeros:
        console.print(f"[dim]{ZEROS_NOTE}[/]", highlight=False)
    console.print(shapes_line(fig["input_shapes"]), highlight=False)
    console.print(f"[dim]analysed {len(result.graph.nodes)} nodes in {result.seconds:.3f} s[/]")


def _totals_table(result: Analysis, fig: dict, zeros: bool) -> Table:
    """Parameters and MACs with their shares (and zeros when counted), groups, channels."""
    totals = Table.grid(padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    totals.add_column()
    prunable = result.prunable_groups
    for what, key, total in (
        ("parameters", "params", fig["params"]),
        ("MACs", "macs", fig["macs"]),
    ):
        totals.add_row(what, human(total), "")
        for label, part in SHARE_ROWS:
            value = fig[f"{part}_{key}"]
            if part != "ungrouped" or value:
                totals.add_row(f"  {label}", human(value), pct(value, total))
        if key == "params" and zeros and fig["nonzero_params"] != total:
            totals.add_row(
                "  nonzero", human(fig["nonzero_params"]), pct(fig["nonzero_params"], total)
            )
        if key == "macs" and zeros and fig["macs_nonzero"] != total:
            totals.add_row(
                "  zeros skipped", human(fig["macs_nonzero"]), pct(fig["macs_nonzero"], total)
            )
    totals.add_row(
        "groups",
        str(len(result.groups)),
        f"{len(prunable)} prunable, {len(result.locked_groups)} locked",
    )
    totals.add_row(
        "channels",
        str(sum(g.size for g in result.groups)),
        f"{sum(g.size for g in prunable)} prunable",
    )
    return totals


def pass_timings(records) -> Table:
    """Wall time per pass (``--time-passes``)."""
    table = Table(title="Pass timings", title_justify="left")
    table.add_column("pass")
    table.add_column("changed")
    table.add_column("seconds", justify="right")
    total = 0.0
    for r in records:
        table.add_row(r.spec, "yes" if r.modified else "no", f"{r.seconds:.3f}")
        total += r.seconds
    table.add_row("[bold]total[/]", "", f"[bold]{total:.3f}[/]")
    return table


def sparsity_table(layers, shapes_before: dict[str, list[int]], limit: int = 40) -> Table:
    """Per weighted layer: weight shape before and after, and the share of zero weights."""
    table = Table(title="Per-layer result", title_justify="left")
    table.add_column("layer", overflow="fold", max_width=40)
    table.add_column("weight before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("zeros", justify="right")
    for s in layers[:limit]:
        before = shapes_before.get(s.node)
        table.add_row(
            s.node,
            "x".join(map(str, before)) if before else "-",
            "x".join(map(str, s.shape)),
            f"{100.0 * s.sparsity:.1f}%",
        )
    if len(layers) > limit:
        table.add_row(f"... {len(layers) - limit} more layers", "", "", "")
    return table


def broken_plugin_line(record) -> Text:
    """One line naming a plugin entry point that was skipped and why."""
    return Text.assemble(
        ("broken plugin", "bold red"),
        f" '{record.name}' ({record.dist}, {record.value}): {record.error}",
    )


def with_source(summary: str, source: str) -> Text:
    """A pass summary, marked with the distribution of a plugin pass."""
    return Text.assemble(summary, (f" (plugin: {source})", "dim")) if source else Text(summary)
