"""Coverage and analysis time of drpopt on a corpus of real models.

Run by hand (not a pytest test)::

    python benchmarks/corpus.py [--corpus DIR] [--only NAME ...] [--timeout S] [--out FILE]

Per model of the corpus folder (default ``$DRPOPT_CORPUS``, else ``../shared/corpus``;
skeletons materialized with the folder's ``materialize.py``), in a child process of its own
so that a hang or a crash becomes a ``timeout`` / ``crash`` row instead of stopping the run:

- ``load s``: ``onnx.load`` of the materialized model saved to a temp file, and ``analyze s``:
  ``drpopt.analyze(path)`` in process on the same file (medians of ``--runs``, the two
  alternated after one untimed analysis that also imports what the analysis needs), with
  their ratio (the goal: at most 3);
- ``prunable ch``: the share of channels in prunable groups;
- ``params`` / ``MACs``: compact over dense at rate 0.5 (``mask:rate=0.5`` then ``compact``,
  counted by ``drpopt.analyze`` on the compact model), with the default mask settings and
  with ``keep_first=false:keep_last=false`` (``all``);
- ``params 0.5 per layer``: the default ``params 0.5`` with both models counted per
  layer, a weight shared by several layers (an exporter's deduplicated constants, or the
  cut copies compaction shares again when they stay equal) once per layer that reads it,
  as the torch model that was exported counts it (and as Torch-Pruning's figures do).
  Empty where no weight is shared;
- ``largest lock``: the locked group with the largest parameter share, its reason and node,
  leaving out the prediction outputs (which stay whole by design) unless nothing else is
  locked.

Prints a rich table (progress on stderr); ``--out FILE`` also writes it, as JSON when FILE
ends in ``.json``, else as markdown (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

COLUMNS = [
    ("model", "model"),
    ("nodes", "nodes"),
    ("load s", "load_s"),
    ("analyze s", "analyze_s"),
    ("x load", "ratio"),
    ("prunable ch", "prunable_channels"),
    ("params 0.5", "params_default"),
    ("MACs 0.5", "macs_default"),
    ("params 0.5 all", "params_all"),
    ("params 0.5 per layer", "params_per_layer"),
    ("MACs 0.5 all", "macs_all"),
    ("largest lock", "largest_lock"),
]


def _emit(**fields: Any) -> None:
    """One JSON line to the parent (flushed, so a timeout keeps what was measured)."""
    print(json.dumps(fields), flush=True)


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _compact_ratios(model, dense, keep: bool | None) -> tuple[float, float, float]:
    """(params, MACs, params per layer) of the compact model at rate 0.5 over those of
    ``dense`` (the input model's analysis); per layer, both models count a weight several
    layers share once per layer (compaction may share equal cut copies again)."""
    import drpopt
    from drpopt.ir.to_onnx import to_onnx
    from drpopt.passes import CompactPass, MaskPass, PassManager

    flags = {} if keep is None else {"keep_first": keep, "keep_last": keep}
    result = PassManager([MaskPass(rate=0.5, **flags), CompactPass()])(model)
    small = drpopt.analyze(to_onnx(result.model))
    per_layer = _per_layer_params(small) / max(_per_layer_params(dense), 1)
    return small.params / max(dense.params, 1), small.macs / max(dense.macs, 1), per_layer


def _per_layer_params(analysis) -> int:
    """Parameters with a shared weight counted once per layer that reads it (the analysis
    un-shares constants per use on load, so each use is a value of its own)."""
    from drpopt.ir.counting import _is_param

    return sum(v.numel or 0 for v in analysis.graph.values.values() if _is_param(v))


def _largest_lock(analysis) -> str:
    """One line: the locked group with the largest parameter share, its first lock and the
    node that lock names, and how many other locks it has; a group locked only because it
    is a graph output (the prediction layer) is named only when nothing else is locked."""
    locked = analysis.locked_groups
    if not locked:
        return "none"
    inner = [g for g in locked if any(lk.kind != "graph-output" for lk in g.locks)]
    if inner:
        locked = inner
    g = max(locked, key=lambda g: (g.params, g.size))
    share = f"{g.params / max(analysis.params, 1):.1%} ({g.size} ch)"
    if not g.locks:
        return f"{share}: {(g.reason or 'no reason given').splitlines()[0]}"
    lock = g.locks[0]
    text = f"{share}: {lock.kind}: {lock.message.splitlines()[0]}"
    if lock.node and lock.node not in text:
        text += f" [{lock.node}]"
    return text + (f" (+{len(g.locks) - 1} more)" if len(g.locks) > 1 else "")


def measure_one(path: Path, runs: int) -> None:
    """Child process: measures one model, one JSON line per finished stage."""
    import onnx

    import drpopt
    from drpopt.zoo.corpus import load_corpus_model

    model = load_corpus_model(path)
    with tempfile.TemporaryDirectory(prefix="drpopt-corpus-") as tmp:
        file = Path(tmp) / path.name
        onnx.save(model, str(file))
        load_s = _median_time(lambda: onnx.load(str(file)), 1)
        _emit(stage="load", load_s=load_s, nodes=len(model.graph.node))
        start = time.perf_counter()
        analysis = drpopt.analyze(str(file))  # the first run also imports what it needs
        first = time.perf_counter() - start
        loads, analyses = [load_s], [first]
        if first < 10:  # one run is enough for a slow analysis
            # alternated, so that both see the same machine (page cache, other load)
            loads, analyses = [], []
            for _ in range(runs):
                loads.append(_median_time(lambda: onnx.load(str(file)), 1))
                analyses.append(_median_time(lambda: drpopt.analyze(str(file)), 1))
        load_s, analyze_s = statistics.median(loads), statistics.median(analyses)
    totals = analysis.to_dict()["totals"]
    _emit(
        stage="analyze",
        load_s=load_s,
        analyze_s=analyze_s,
        ratio=analyze_s / max(load_s, 1e-9),
        prunable_channels=totals["prunable_channels"] / max(totals["channels"], 1),
        largest_lock=_largest_lock(analysis),
    )
    for label, keep in (("default", None), ("all", False)):
        try:
            params, macs, per_layer = _compact_ratios(model, analysis, keep)
        except Exception as err:  # a row says what failed; the run goes on
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
            _emit(stage=f"compact-{label}", **{f"params_{label}": "error", f"error_{label}": msg})
            continue
        _emit(stage=f"compact-{label}", **{f"params_{label}": params, f"macs_{label}": macs})
        if label == "default" and _per_layer_params(analysis) != analysis.params:
            _emit(stage="per-layer", params_per_layer=per_layer)


def run_model(path: Path, timeout: float, runs: int) -> dict[str, Any]:
    """Measures ``path`` in a child process; the row has ``status`` ok|timeout|crash."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--one", str(path), "--runs", str(runs)]
    row: dict[str, Any] = {"model": path.stem, "status": "ok"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err, code = "", None
        row["status"] = "timeout"
    stages = []
    for line in out.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            stages.append(data.pop("stage"))
            row.update(data)
    if code not in (0, None):
        lines = err.strip().splitlines()
        row["status"] = "crash"
        row["error"] = lines[-1][:160] if lines else f"exit status {code}"
    if row["status"] == "timeout":
        row["error"] = f"timeout after {timeout:g} s (finished: {', '.join(stages) or 'nothing'})"
    return row


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if key in ("load_s", "analyze_s"):
        return f"{value:.3f}"
    if key == "ratio":
        return f"{value:.2f}"
    if key in (
        "prunable_channels",
        "params_default",
        "macs_default",
        "params_all",
        "macs_all",
        "params_per_layer",
    ):
        return value if isinstance(value, str) else f"{value:.3f}"
    return str(value)


def _rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        cells = [_cell(row, key) for _, key in COLUMNS]
        if row["status"] != "ok" or row.get("error_default") or row.get("error_all"):
            why = row.get("error") or row.get("error_default") or row.get("error_all")
            cells[-1] = f"{row['status'].upper()}: {why}" if row["status"] != "ok" else why
        out.append(cells)
    return out


def table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for header, _ in COLUMNS:
        t.add_column(header, justify="left" if header in ("model", "largest lock") else "right")
    for cells in _rows(rows):
        t.add_row(*cells)
    t.caption = (
        "load s: onnx.load; analyze s: drpopt.analyze(path) in process (medians); "
        "params/MACs: compact/dense at rate 0.5, default mask settings and keep_first/keep_last "
        "off (all)"
    )
    return t


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"## {title}", "", "| " + " | ".join(h for h, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for cells in _rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="folder of .onnx models (default: $DRPOPT_CORPUS, ...)")
    parser.add_argument("--only", nargs="*", default=None, help="model names (file stems)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--out", type=Path, help="also write the table (.json, else markdown)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.one is not None:
        measure_one(args.one, args.runs)
        return 0

    from drpopt.zoo.corpus import corpus_dir, corpus_models

    folder = corpus_dir(args.corpus)
    if folder is None:
        print(f"no corpus folder ({args.corpus or '$DRPOPT_CORPUS / ../shared/corpus'})")
        return 2
    paths = [p for p in corpus_models(folder) if not args.only or p.stem in args.only]
    rows = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("models", total=len(paths))
        for path in paths:
            progress.update(task, description=path.stem)
            rows.append(run_model(path, args.timeout, args.runs))
            progress.advance(task)
    title = f"drpopt on {folder} ({len(rows)} models)"
    Console(width=max(Console().width, 200)).print(table(rows, title))
    if args.out is not None:
        text = json.dumps(rows, indent=1) if args.out.suffix == ".json" else markdown(rows, title)
        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
