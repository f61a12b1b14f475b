"""`drpopt report` and ``build_report``: a self-contained page, comparison, bad inputs."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import onnx
import pytest
import typer
from typer.testing import CliRunner

from drpopt.cli import report_cmd
from drpopt.ir.analysis import analyze
from drpopt.passes import PassManager, parse_pipeline
from drpopt.passes.report import build_report, charts_page, incomparable, match_layers
from drpopt.zoo import build

app = typer.Typer(add_completion=False)


@app.callback()
def _root() -> None:
    """A fresh app: keeps ``report`` a subcommand."""


report_cmd.register(app)
report_cmd.register(app)  # a second registration is harmless
runner = CliRunner()
PRUNE = "score,mask:rate=0.5,apply-masks"


class _Page(HTMLParser):
    """Collects group-table rows, svg count and text."""

    def __init__(self) -> None:
        super().__init__()
        self.group_rows = 0
        self.svgs = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "tr" and ("class", "group") in attrs:
            self.group_rows += 1
        self.svgs += tag == "svg"

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """resnet18 (dense), pruned compact, and its masked (sparse) counterpart, saved."""
    root = tmp_path_factory.mktemp("report")
    dense = build("resnet18")
    compact = PassManager(parse_pipeline(f"{PRUNE},compact,cleanup"))(dense).to_onnx()
    masked = PassManager(parse_pipeline(f"{PRUNE},cleanup"))(dense).to_onnx()
    paths = {"root": root}
    for key, proto in (("dense", dense), ("compact", compact), ("masked", masked)):
        paths[key] = root / f"{key}.onnx"
        onnx.save(proto, str(paths[key]))
    return paths


def _invoke(*args):
    return runner.invoke(app, ["report", *map(str, args)], env={"COLUMNS": "200"})


def test_registered_once():
    assert [c.name for c in app.registered_commands].count("report") == 1


def test_page_is_self_contained_with_groups_charts_and_layers(models):
    page = build_report(models["dense"])
    parsed = _parse(page)
    assert parsed.group_rows == len(analyze(models["dense"]).groups) > 0
    assert parsed.svgs == 3
    text = "".join(parsed.text)
    for layer in ("stem.conv", "layer1.0.conv1", "layer4.1.conv2", "fc"):
        assert layer in text
    assert not re.search(r"https?://", page)
    assert "<script" not in page
    assert "no drpopt.plan" in text
    assert "Verification" not in text


def test_names_are_escaped():
    proto = build("resnet18")
    proto.graph.node[0].name = "stem<script>x&y"
    page = build_report(proto)
    assert "<script>" not in page
    assert "stem&lt;script&gt;x&amp;y" in page


def test_compare_compact_with_masked_shows_ratios_plan_and_match(models):
    out = models["root"] / "cmp.html"
    result = _invoke(models["compact"], "--compare", models["masked"], "-o", out)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    text = "".join(_parse(page).text)
    ratio = 100.0 * analyze(models["compact"]).params / analyze(models["masked"]).params
    assert f"{ratio:.1f}%" in text
    assert "compact.onnx" in text and "masked.onnx" in text
    assert re.search(r'id="verdict" class="ok">outputs match', page)
    assert (
        "rate" in text and "groups pruned" in text and re.search(r"pruned(\d+) of \1 planned", text)
    )
    assert not re.search(r"https?://", page)


def test_compare_with_dense_reports_drift_not_a_verdict(models):
    """The unpruned original differs by design: the page reports the drift (max, mean
    error, cosine per output), not a failed check."""
    page = build_report(models["compact"], models["dense"])
    assert re.search(r'id="verdict" class="note">drift \(not a check\)', page)
    assert "carries no drpopt plan" in page and 'id="drift"' in page and "cosine" in page


def test_incomparable_models_are_not_compared(models):
    other = build("resnet18")
    other.graph.output[0].name = "logits"
    other.graph.node[-1].output[0] = "logits"
    assert "output names differ" in incomparable(onnx.load(str(models["dense"])), other)
    page = build_report(models["dense"], other)
    assert "not compared: output names differ" in page


def test_layers_match_by_node_then_tensor(models):
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.passes.common import layer_sparsity

    a = layer_sparsity(from_onnx(models["compact"]))
    b = layer_sparsity(from_onnx(models["masked"]))
    assert all(x is not None and y is not None and x.node == y.node for x, y in match_layers(a, b))
    b[0].node = "renamed"
    rows = match_layers(a, b)
    assert rows[0][1] is b[0] and len(rows) == len(a)


def test_bad_inputs_exit_2_with_one_line(models, tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx model")
    out = tmp_path / "r.html"
    cases = [
        ([tmp_path / "missing.onnx", "-o", out], "no such file"),
        ([bogus, "-o", out], "not a readable ONNX model"),
        ([models["dense"], "--compare", tmp_path / "nope.onnx", "-o", out], "no such file"),
        ([models["dense"], "-o", models["dense"]], "is also the input"),
        ([models["compact"], "--compare", models["dense"], "-o", models["dense"]], "input"),
        ([models["dense"], "-o", tmp_path / "no-dir" / "r.html"], "does not exist"),
        ([models["dense"], "-o", out, "--png", out], "same file"),
    ]
    for args, words in cases:
        result = _invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines
        assert "Traceback" not in result.output
    assert not out.exists()


def test_png_without_matplotlib_or_chromium_fails_before_writing(models, tmp_path, monkeypatch):
    monkeypatch.setattr(report_cmd, "has_matplotlib", lambda: False)
    monkeypatch.setattr(report_cmd, "find_chromium", lambda: None)
    out = tmp_path / "r.html"
    result = _invoke(models["dense"], "-o", out, "--png", tmp_path / "c.png")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: writing PNG needs matplotlib (pip install matplotlib)"
    assert not out.exists()


def _is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.skipif(not report_cmd.has_matplotlib(), reason="matplotlib is not installed")
def test_png_with_matplotlib(models, tmp_path):
    png = tmp_path / "c.png"
    result = _invoke(
        models["compact"], "--compare", models["masked"], "-o", tmp_path / "r.html", "--png", png
    )
    assert result.exit_code == 0, result.output
    assert _is_png(png.read_bytes())


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@needs_chromium
def test_page_renders_in_headless_chromium(models, tmp_path):
    page = tmp_path / "r.html"
    page.write_text(build_report(models["compact"], models["masked"]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        *report_cmd.CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert shot.is_file() and _is_png(shot.read_bytes())


@needs_chromium
def test_png_through_chromium(models, tmp_path, monkeypatch):
    monkeypatch.setattr(report_cmd, "has_matplotlib", lambda: False)
    png = tmp_path / "c.png"
    result = _invoke(models["dense"], "-o", tmp_path / "r.html", "--png", png)
    assert result.exit_code == 0, result.output
    assert _is_png(png.read_bytes())


def test_charts_page_size_fits_the_charts(models):
    page, (width, height) = charts_page(models["compact"], models["masked"])
    assert page.count("<svg") == 3 and width > 1000 and height > 300
