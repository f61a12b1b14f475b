"""``drpopt prune --calib``: the data-aware passes it adds and the drift report it prints."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from drpopt.errors import BadInputError


def calibrate_pass(calib: Path | None, opts: str):
    """The ``calibrate`` pass of ``--calib DATA`` and ``--calib-opts`` (the calibrate
    arguments in pipeline syntax, e.g. ``batch=8:size=224|224``; quote a value holding
    ``:``), or None without ``--calib``."""
    from drpopt.passes.calibrate import CalibratePass
    from drpopt.passes.pipeline import build_pass, parse_args
    from drpopt.passes.pipeline_syntax import split_top

    if calib is None:
        if opts:
            raise BadInputError("--calib-opts needs --calib DATA")
        return None
    args = parse_args([p for p in split_top(opts, ":") if p.strip()], "--calib-opts")
    if "data" in args:
        raise BadInputError("--calib-opts: give the data with --calib, not data=")
    return build_pass(CalibratePass, {"holdout": "0.2", **args, "data": str(calib)})


def drift_summary(model_path: Path, pruned_proto, context) -> dict:
    """Per output drift of the pruned model from the dense one on the held-out batches
    (the calibration data of the pipeline ``context``)."""
    from drpopt.ir.from_onnx import load_model
    from drpopt.passes.drift import output_drift

    held = context.calibration_holdout
    data = held if held is not None else context.calibration
    drift = output_drift(load_model(model_path), pruned_proto, data)
    return {
        "samples": len(data),
        "held_out": held is not None,
        "outputs": [d.to_dict() for d in drift],
        "large": [d.name for d in drift if d.large],
    }


def print_drift(console: Console, drift: dict) -> None:
    """The drift table, and a warning on stderr when an output drifts far."""
    where = "held-out" if drift["held_out"] else "calibration (no batch held out)"
    table = Table(title=f"drift on {drift['samples']} {where} samples", title_justify="left")
    table.add_column("output")
    table.add_column("cosine", justify="right")
    table.add_column("rel. error", justify="right")
    for d in drift["outputs"]:
        cos, rel = d["cosine"], d["rel_error"]
        table.add_row(
            d["name"],
            f"{cos:.4f}" if isinstance(cos, float) else cos,
            f"{rel:.4f}" if isinstance(rel, float) else rel,
        )
    console.print(table)
    warn_drift(drift)


def warn_drift(drift: dict) -> None:
    if drift["large"]:
        Console(stderr=True, soft_wrap=True).print(
            f"warning: large drift from the dense model on {', '.join(drift['large'])} "
            "(cosine < 0.9 or relative error > 0.5): try a lower --rate, more calibration "
            "data, or fine-tuning",
            highlight=False,
        )
