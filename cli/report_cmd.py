"""``drpopt report MODEL [--compare OTHER] -o report.html [--png charts.png]``.

The page is one self-contained HTML file (see ``drpopt.passes.report``). ``--png`` writes the
charts alone as a PNG: with matplotlib when it is installed (it is not a dependency), else as a
headless-Chromium screenshot of the charts; with neither it fails with one line before
anything is written.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

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
    from drpopt.cli.main import _console, handle_errors

    @app.command("report")
    @handle_errors
    def report(
        model: Annotated[Path, typer.Argument(help="ONNX model file to describe.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Write the HTML report here.")],
        compare: Annotated[
            Path | None,
            typer.Option(
                "--compare", help="A second model (e.g. the original) to show beside MODEL."
            ),
        ] = None,
        png: Annotated[
            Path | None, typer.Option("--png", help="Also write the charts alone as a PNG.")
        ] = None,
    ) -> None:
        """Write an HTML report of MODEL: sizes, per-layer charts, groups, plan, verification.

        With --compare, MODEL's outputs are checked against OTHER's when both have the same
        input and output names and shapes (a compact model against its masked original).
        """
        from drpopt.cli.files import atomic_write_bytes, refuse_overwrite
        from drpopt.passes.report import build_report, charts_page, collect

        inputs = [model] + ([compare] if compare is not None else [])
        refuse_overwrite(output, inputs)
        chromium, use_mpl = None, False
        if png is not None:
            refuse_overwrite(png, inputs)
            if png.resolve() == output.resolve():
                raise BadInputError(f"{png}: --png and -o name the same file; choose two paths")
            use_mpl = has_matplotlib()
            chromium = None if use_mpl else find_chromium()
            if not use_mpl and chromium is None:
                raise BadInputError("writing PNG needs matplotlib (pip install matplotlib)")
        console = _console()
        with console.status("reading the models"):
            stats = collect(model)
            other = collect(compare) if compare is not None else None
        with console.status("building the report"):
            page = build_report(stats, other)
            shot = matplotlib_png(stats, other) if use_mpl else None
            if chromium is not None:
                charts, size = charts_page(stats, other)
                shot = screenshot(chromium, charts, size)
        atomic_write_bytes(output, page.encode("utf-8"))
        console.print(f"wrote {output}")
        if png is not None and shot is not None:
            atomic_write_bytes(png, shot)
            console.print(f"wrote {png}")
