"""``build_report``: one self-contained HTML page describing a model (and a comparison).

Rules:
- the page uses no external resource: inline CSS, charts as inline SVG made here, no script;
  every name taken from a model is HTML-escaped;
- per weighted layer (Conv, ConvTranspose, Gemm, MatMul) it charts the share of zero weights,
  the weight parameters and the MACs; with ``compare`` the layers of both models are matched
  by node name, else by weight tensor name, and drawn side by side;
- the coupled-group table and the ``drpopt.plan`` metadata are those of ``model``;
- with ``compare`` the outputs are checked (``compare_models(compare, model)``) only when both
  models have the same input and output names and shapes, and reported as drift when the two
  differ by design (``passes/report_compare.py``); otherwise the page says why not.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from drpopt.ir.analysis import Analysis, analyze
from drpopt.ir.core import Graph
from drpopt.ir.counting import node_macs
from drpopt.passes.common import LayerSparsity, human, layer_sparsity, pct
from drpopt.passes.report_compare import compare_stats
from drpopt.passes.report_compare import drift_reason as drift_reason  # re-exported
from drpopt.passes.report_compare import incomparable as incomparable  # re-exported

log = logging.getLogger(__name__)

COLORS = ("#3b6fb6", "#c8873a")  # model, compared model
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1180px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
.yes{color:#1a7f37}.no{color:#b42318}.ok{color:#1a7f37;font-weight:600}
.bad{color:#b42318;font-weight:600}.note{color:#666}svg text{font:11px sans-serif}
"""
CHART_WIDTH = 1120
LABEL_WIDTH = 280
VALUE_WIDTH = 70
_SVG_HEIGHT = re.compile(r'<svg width="\d+" height="(\d+)"')


@dataclass
class ModelStats:
    """One model read for the report: its IR, analysis, weighted layers and MACs per node."""

    name: str
    proto: onnx.ModelProto
    graph: Graph
    analysis: Analysis
    layers: list[LayerSparsity]
    macs: dict[str, int] = field(default_factory=dict)

    @property
    def nonzero(self) -> int:
        return int(self.figures()["nonzero_params"])

    def figures(self) -> dict[str, Any]:
        """The shared figures (``passes/figures.py``): the same numbers as ``prune``."""
        from drpopt.passes.figures import model_figures

        cached = getattr(self, "_figures", None)
        if cached is None:
            cached = self._figures = model_figures(self.graph, analysis=self.analysis)
        return cached

    def plan(self) -> dict[str, Any] | None:
        """The ``drpopt.plan`` metadata as data; ``{"error": ...}`` when unreadable."""
        text = self.graph.metadata.get("drpopt.plan")
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            return {"error": f"not valid JSON ({err})"}
        return data if isinstance(data, dict) else {"error": "not a JSON object"}


def collect(model: Any, name: str | None = None, input_shapes: Any = None) -> ModelStats:
    """Reads ``model`` (a path or an ``onnx.ModelProto``) at ``input_shapes`` ({input name or
    None: dims}, fixing symbolic dims); ``BadInputError`` if unreadable."""
    from drpopt.ir.from_onnx import from_onnx, load_model
    from drpopt.ir.input_shapes import fix_input_shapes

    if isinstance(model, ModelStats):
        return model
    if name is None:
        is_path = isinstance(model, str | os.PathLike)
        name = os.path.basename(os.fspath(model)) if is_path else model.graph.name or "model"
    proto = fix_input_shapes(load_model(model), input_shapes or {})
    graph = from_onnx(proto, where=name)
    return ModelStats(
        name,
        proto,
        graph,
        analyze(graph),
        layer_sparsity(graph),
        {n.name: node_macs(n) for n in graph.nodes},
    )


# ---- numbers ----------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ---- layers and charts ------------------------------------------------------------------
Row = tuple[LayerSparsity | None, LayerSparsity | None]


def match_layers(a: list[LayerSparsity], b: list[LayerSparsity]) -> list[Row]:
    """Pairs the layers of two models by node name, else by weight tensor name; layers of
    ``b`` without a partner come last."""
    by_node = {s.node: s for s in b}
    by_tensor = {s.tensor: s for s in b}
    used: set[int] = set()
    rows: list[Row] = []
    for s in a:
        other = by_node.get(s.node)
        if other is None or id(other) in used:
            other = by_tensor.get(s.tensor)
        if other is not None and id(other) in used:
            other = None
        if other is not None:
            used.add(id(other))
        rows.append((s, other))
    rows.extend((None, s) for s in b if id(s) not in used)
    return rows


def bar_chart(
    title: str,
    labels: list[str],
    series: list[list[float | None]],
    fmt: Any,
    vmax: float | None = None,
) -> str:
    """A horizontal bar chart as inline SVG: one row per label, one bar per series."""
    nser = len(series)
    bar_h = 10 if nser == 1 else 8
    row_h = bar_h * nser + 6
    top = 24
    height = top + row_h * len(labels) + 6
    values = [v for s in series for v in s if v is not None]
    vmax = vmax or max([*values, 0.0]) or 1.0
    span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH - 10
    parts = [
        f'<svg width="{CHART_WIDTH}" height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="14" style="font-weight:600;font-size:13px">{_e(title)}</text>',
    ]
    for i, label in enumerate(labels):
        y = top + i * row_h
        short = label if len(label) <= 44 else label[:20] + "…" + label[-22:]
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + row_h / 2 + 1:.0f}" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(short)}</text>"
        )
        for j, s in enumerate(series):
            v = s[i]
            by = y + 3 + j * bar_h
            if v is None:
                parts.append(
                    f'<text x="{LABEL_WIDTH}" y="{by + bar_h - 1}" fill="#999">absent</text>'
                )
                continue
            w = max(span * v / vmax, 0.5 if v else 0.0)
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{by}" width="{w:.1f}" height="{bar_h - 1}" '
                f'fill="{COLORS[j % 2]}"><title>{_e(fmt(v))}</title></rect>'
                f'<text x="{LABEL_WIDTH + w + 4:.1f}" y="{by + bar_h - 1}">{_e(fmt(v))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class Chart:
    """One per-layer chart: a value per layer (None where a model lacks it) per model."""

    title: str
    series: list[list[float | None]]
    fmt: Callable[[float], str]
    vmax: float | None = None


def chart_data(m: ModelStats, c: ModelStats | None) -> tuple[list[str], list[str], list[Chart]]:
    """(layer labels, model names, charts): what the SVG and PNG charts draw."""
    rows: list[Row] = match_layers(m.layers, c.layers) if c else [(s, None) for s in m.layers]
    labels = [(a or b).node for a, b in rows]  # type: ignore[union-attr]
    sides = [(m, 0)] + ([(c, 1)] if c else [])

    def series(get: Callable[[ModelStats, LayerSparsity], float]) -> list[list[float | None]]:
        return [[get(st, r[i]) if r[i] is not None else None for r in rows] for st, i in sides]

    charts = [
        Chart(
            "Weight sparsity (share of zero weights) per layer",
            series(lambda st, s: s.zeros / s.total if s.total else 0.0),
            lambda v: f"{100 * v:.1f}%",
            1.0,
        ),
        Chart("Weight parameters per layer", series(lambda st, s: float(s.total)), human),
        Chart("MACs per layer", series(lambda st, s: float(st.macs.get(s.node, 0))), human),
    ]
    return labels, [st.name for st, _ in sides], charts


def _charts(m: ModelStats, c: ModelStats | None) -> str:
    labels, names, charts = chart_data(m, c)
    legend = ""
    if c:
        keys = [f'<span style="color:{COLORS[i]}">■</span> {_e(n)}' for i, n in enumerate(names)]
        legend = "<p>" + " ".join(keys) + "</p>"
    svgs = [bar_chart(ch.title, labels, ch.series, ch.fmt, ch.vmax) for ch in charts]
    return legend + "\n".join(svgs)


# ---- sections ---------------------------------------------------------------------------
def _header(m: ModelStats, c: ModelStats | None) -> str:
    mf, cf = m.figures(), (c.figures() if c else {})
    rows = [("nodes", len(m.graph.nodes), len(c.graph.nodes) if c else 0, str)]
    for label, key in (
        ("parameters", "params"),
        ("nonzero weights", "nonzero_params"),
        ("MACs (dense)", "macs"),
        ("MACs (zeros skipped)", "macs_nonzero"),
    ):
        rows.append((label, mf[key], cf.get(key, 0), human))
    head = f"<th></th><th>{_e(m.name)}</th>"
    if c:
        head += f"<th>{_e(c.name)}</th><th>ratio {_e(m.name)} / {_e(c.name)}</th>"
    body = []
    for label, a, b, fmt in rows:
        cells = f'<td class="n" title="{a}">{_e(fmt(a))}</td>'
        if c:
            cells += f'<td class="n" title="{b}">{_e(fmt(b))}</td>'
            cells += f'<td class="n ratio">{pct(a, b)}</td>'
        body.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    title = _e(m.name) + (f" vs {_e(c.name)}" if c else "")
    from drpopt.ir.input_shapes import describe

    shown = _e(describe(mf["input_shapes"] or {}))
    shapes = f'<p class="note" id="shapes">computed for input shapes {shown}</p>'
    return (
        f'<h1>drpopt report: {title}</h1><table id="summary"><tr>{head}</tr>{"".join(body)}</table>'
        + shapes
    )


def _size(g) -> str:
    blocks = {mb.block for mb in g.members if mb.role == "producer"}
    return f"{g.size}x{min(blocks)}" if blocks and min(blocks) > 1 else str(g.size)


def _groups(m: ModelStats) -> str:
    from drpopt.passes.figures import group_shares

    a = m.analysis
    shares = group_shares(a)
    fig = m.figures()
    rows = []
    for g in a.groups:
        if g.prunable:
            status = '<span class="yes">yes</span>'
        else:
            reason = g.reason or ""
            first = reason.split("; ")[0]
            more = reason.count("; ")
            short = first + (f" (+{more} more)" if more else "")
            status = f'<span class="no" title="{_e(reason)}">no</span>: {_e(short)}'
        prods = ", ".join(g.producers[:3]) + (
            f" +{len(g.producers) - 3}" if len(g.producers) > 3 else ""
        )
        params, macs = shares.owned_params[g.id], shares.owned_macs[g.id]
        rows.append(
            f'<tr class="group"><td class="n">{g.id}</td><td class="n">{_size(g)}</td>'
            f'<td>{status}</td><td title="{_e(", ".join(g.producers))}">{_e(prods)}</td>'
            f'<td class="n">{human(params)} ({pct(params, a.params)})</td>'
            f'<td class="n">{human(macs)} ({pct(macs, a.macs)})</td>'
            f'<td class="n">{pct(g.macs, a.macs)}</td></tr>'
        )
    split = "; ".join(
        f"{label} {pct(fig[f'{part}_params'], a.params)} of the parameters and "
        f"{pct(fig[f'{part}_macs'], a.macs)} of the MACs"
        for label, part in (
            ("prunable groups own", "prunable"),
            ("locked groups", "locked"),
            ("no group", "ungrouped"),
        )
        if part != "ungrouped" or fig["ungrouped_params"] or fig["ungrouped_macs"]
    )
    return (
        f"<h2>Coupled channel groups of {_e(m.name)}</h2>"
        f'<p class="note">{len(a.groups)} groups, {len(a.prunable_groups)} prunable; '
        f"{split}. A group owns the weights of the channels it produces (each weight once, "
        "so the shares add up to 100%); <i>removes</i> is the share of the MACs that pruning "
        "the whole group would remove (its own and the next layers' input columns: these "
        "overlap).</p>"
        '<table id="groups"><tr><th>id</th><th>size</th><th>prunable</th><th>producers</th>'
        f"<th>params</th><th>MACs</th><th>removes</th></tr>{''.join(rows)}</table>"
    )


def _plan(m: ModelStats) -> str:
    plan = m.plan()
    out = "<h2>Pruning plan</h2>"
    if plan is None:
        return out + '<p class="note">no drpopt.plan in the model\'s metadata</p>'
    if "error" in plan:
        return out + f'<p class="bad">drpopt.plan metadata unreadable: {_e(plan["error"])}</p>'
    groups = [g for g in plan.get("groups", []) if isinstance(g, dict)]
    pruned = [g for g in groups if len(g.get("keep", [])) < int(g.get("size", 0))]
    channels = sum(int(g.get("size", 0)) - len(g.get("keep", [])) for g in pruned)
    total = sum(int(g.get("size", 0)) for g in groups)
    rows = [
        ("rate", plan.get("rate")),
        ("target", plan.get("target")),
        ("criterion", plan.get("criterion")),
        ("allocation", plan.get("allocation")),
        ("groups pruned", f"{len(pruned)} of {len(groups)} planned groups"),
        ("channels pruned", f"{channels} of {total}"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return out + f'<table id="plan">{body}</table>'


def _verify(m: ModelStats, c: ModelStats, rtol: float, atol: float, inputs: Any = None) -> str:
    out = f"<h2>Verification: {_e(m.name)} against {_e(c.name)}</h2>"
    report, why, drift = compare_stats(m, c, rtol, atol, inputs)
    if report is None:
        return out + f'<p id="verdict" class="note">not compared: {_e(why)}</p>'
    if drift:
        rows = "".join(
            f'<tr><td>{_e(o.name)}</td><td class="n">{o.max_abs:.3g}</td>'
            f'<td class="n">{o.mean_abs:.3g}</td><td class="n">{o.max_rel:.3g}</td>'
            f'<td class="n">{o.cosine:.6f}</td></tr>'
            for o in report.outputs.values()
        )
        return out + (
            f'<p id="verdict" class="note">drift (not a check): {_e(drift)}; '
            f'inputs: {_e(report.inputs)}</p><table id="drift"><tr><th>output</th>'
            "<th>max abs</th><th>mean abs</th><th>max / spread</th><th>cosine</th></tr>"
            f"{rows}</table>"
        )
    cls = "ok" if report.ok else "bad"
    return out + f'<p id="verdict" class="{cls}">{_e(report.summary())}</p>'


def charts_page(model: Any, compare: Any = None) -> tuple[str, tuple[int, int]]:
    """The charts alone as an HTML page, with the pixel size (width, height) they need."""
    m = collect(model)
    c = collect(compare) if compare is not None else None
    charts = _charts(m, c)
    heights = [int(h) for h in _SVG_HEIGHT.findall(charts)]
    size = (CHART_WIDTH + 40, sum(heights) + 20 * len(heights) + (60 if c else 30))
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
        f"{CSS}body{{margin:10px}}svg{{display:block;margin-bottom:16px}}</style></head>"
        f"<body>{charts}</body></html>"
    )
    return page, size


def build_report(
    model: Any,
    compare: Any = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    inputs: Any = None,
) -> str:
    """The HTML report of ``model`` (a path, an ``onnx.ModelProto`` or ``ModelStats``), with
    ``compare`` (e.g. the dense or masked original) beside it when given; ``inputs``
    (``(samples, description)``) feed the verification instead of random inputs."""
    m = collect(model)
    c = collect(compare) if compare is not None else None
    sections = [
        _header(m, c),
        "<h2>Per-layer charts</h2>" + _charts(m, c),
        _groups(m),
        _plan(m),
    ]
    if c is not None:
        sections.append(_verify(m, c, rtol, atol, inputs))
    from drpopt import __version__

    title = _e(m.name) + (f" vs {_e(c.name)}" if c else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>drpopt report: {title}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(sections)
        + f'\n<p class="note">made by drpopt {_e(__version__)}</p></body></html>\n'
    )
