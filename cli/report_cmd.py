"""``drpopt report MODEL [--compare OTHER] -o report.html [--png charts.png]``.

The page is one self-contained HTML file (see ``drpopt.passes.report``). ``--png`` writes the
charts alone as a PNG: with matplotlib when it is installed (it is not a dependency), else as a
headless-Chromium screenshot of the charts; with neither it fails with one line before
anything is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import typer

from drpopt.cli.options import console_for, handle_errors, inputs_options, shape_option
from drpopt.cli.params import Compare, Png, ReportJson, ReportModel, ReportOutput, ReportRtol
from drpopt.errors import BadInputError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on the PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(chromium: str, page: str, size: tuple[int, int], timeout: float = 60.0) -> bytes:
    """Renders the HTML ``page`` headless at ``size`` (width, height) and returns the PNG."""
    width, height = size[0], min(size[1], 16000)  # Chromium's largest surface
    with tempfile.TemporaryDirectory(prefix="drpopt-report-") as tmp:
        root = Path(tmp)
        (root / "charts.html").write_text(page, encoding="utf-8")
        shot = root / "shot.png"
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={root / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            (root / "charts.html").as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BadInputError(f"writing PNG: {chromium} did not run ({err})") from err
        if not shot.is_file() or shot.stat().st_size == 0:
            tail = " ".join(proc.stderr.decode(errors="replace").split())[-200:]
            raise BadInputError(
                f"writing PNG: {chromium} wrote no screenshot (exit {proc.returncode}: {tail})"
            )
        return shot.read_bytes()


def matplotlib_png(stats, other) -> bytes:
    """The per-layer charts drawn with matplotlib (Agg, no display), side by side, as PNG."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from drpopt.passes.report import COLORS, chart_data

    labels, names, charts = chart_data(stats, other)
    rows = range(len(labels))
    height = 0.8 / len(names)
    fig = Figure(figsize=(16, max(3.0, 0.25 * len(labels) + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(charts), sharey=True)
    for ax, chart in zip(axes, charts, strict=True):
        for j, (name, values) in enumerate(zip(names, chart.series, strict=True)):
            ys = [r - 0.4 + height * (j + 0.5) for r in rows]
            xs = [float("nan") if v is None else v for v in values]
            ax.barh(ys, xs, height=height, color=COLORS[j % 2], label=name)
        ax.set_title(chart.title, fontsize=9)
        ax.xaxis.set_major_formatter(lambda v, _pos, fmt=chart.fmt: fmt(v))
        if chart.vmax:
            ax.set_xlim(0, chart.vmax)
    axes[0].set_yticks(list(rows), labels, fontsize=7)
    axes[0].invert_yaxis()
    if len(names) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported (it is optional)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def register(app: typer.Typer) -> None:
    """Adds the ``report`` command to ``app`` (a second call on the same app does nothing)."""
    if any(
        (c.name or getattr(c.callback, "__name__", "")) == "report" for c in app.registered_commands
    ):
        return
    app.command("report")(report)


@handle_errors
@shape_option
@inputs_options
def report(
    model: ReportModel,
    output: ReportOutput = None,
    compare: Compare = None,
    png: Png = None,
    rtol: ReportRtol = 1e-4,
    as_json: ReportJson = False,
    input_shapes: dict | None = None,
    inputs=None,
) -> None:
    """Write an HTML report of MODEL: sizes, per-layer charts, groups, plan, verification.

    With --compare, MODEL's outputs are checked against OTHER's when both have the same
    input and output names and shapes (a compact model against its masked original); when
    OTHER carries no drpopt plan and MODEL does, or the two carry different plans, the
    drift is reported instead.
    """
    from drpopt.cli.options import shape_warning, steps, warn
    from drpopt.ir.files import atomic_write_bytes
    from drpopt.passes.report import build_report, charts_page, collect

    chromium, use_mpl = _check_report_args(model, output, compare, png, as_json, inputs)
    console = console_for(stderr=as_json)
    with steps(2, "reading the models"):
        stats = collect(model, input_shapes=input_shapes)
        warning = shape_warning(stats.proto, input_shapes or {})
        if warning:
            warn(warning)
        other = collect(compare, input_shapes=input_shapes) if compare is not None else None
        feeds = inputs.load(other.proto) if inputs is not None and other is not None else None
    if as_json:
        _print_json(model, compare, stats, other, rtol, feeds)
    if output is None:
        return
    with steps(1, "building the report"):
        page = build_report(stats, other, rtol=rtol, inputs=feeds)
        shot = matplotlib_png(stats, other) if use_mpl else None
        if chromium is not None:
            charts, size = charts_page(stats, other)
            shot = screenshot(chromium, charts, size)
    atomic_write_bytes(output, page.encode("utf-8"))
    console.print(f"wrote {output}")
    if png is not None and shot is not None:
        atomic_write_bytes(png, shot)
        console.print(f"wrote {png}")


def _check_report_args(
    model: Path,
    output: Path | None,
    compare: Path | None,
    png: Path | None,
    as_json: bool,
    inputs,
) -> tuple[str | None, bool]:
    """Refuses contradictory options and unwritable outputs before any work; returns how
    the PNG gets drawn: (the Chromium to use or None, whether matplotlib draws it)."""
    from drpopt.ir.files import probe_writable, refuse_overwrite

    if output is None and not as_json:
        raise BadInputError("give -o report.html (or --json for the figures on stdout)")
    if inputs is not None and compare is None:
        raise BadInputError("--inputs feeds the comparison; give --compare OTHER too")
    if png is not None and output is None:
        raise BadInputError("--png writes the charts beside the HTML report; give -o too")
    inputs_list = [model] + ([compare] if compare is not None else [])
    if output is not None:
        refuse_overwrite(output, inputs_list)
        probe_writable(output)
    chromium, use_mpl = None, False
    if png is not None and output is not None:
        refuse_overwrite(png, inputs_list)
        if png.resolve() == output.resolve():
            raise BadInputError(f"{png}: --png and -o name the same file; choose two paths")
        probe_writable(png)
        use_mpl = has_matplotlib()
        chromium = None if use_mpl else find_chromium()
        if not use_mpl and chromium is None:
            raise BadInputError("writing PNG needs matplotlib (pip install matplotlib)")
    return chromium, use_mpl


def _print_json(model: Path, compare: Path | None, stats, other, rtol: float, feeds) -> None:
    """``drpopt report --json``: MODEL's figures and, with --compare, the comparison."""
    from drpopt.passes.report import compare_stats

    data: dict = {"model": str(model), "figures": stats.figures()}
    if other is not None:
        rep, why, drift = compare_stats(stats, other, rtol, 1e-6, feeds)
        data["compare"] = {
            "model": str(compare),
            "figures": other.figures(),
            "mode": "drift" if drift else "check",
            "drift_reason": drift,
            "verify": rep.to_dict() if rep is not None else None,
            "not_compared": why,
        }
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
