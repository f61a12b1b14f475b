"""``drpopt export BUILDER --checkpoint ckpt.pt --input-shape 1,3,224,224 -o out.onnx``:
a pruned torch checkpoint to sparse or compact ONNX, verified against torch.

BUILDER is ``module:function`` or ``path/to/file.py:function`` returning the model
(``--builder-arg key=value`` are its keyword arguments, values read as Python literals
where they parse, else as strings). The checkpoint is read with ``torch.load(...,
weights_only=True)`` unless ``--trust-checkpoint``; ``{"model": sd}``-style wrappers, DDP
``module.`` prefixes, Pruner mask buffers and ``torch.nn.utils.prune`` pairs
(``weight_orig``/``weight_mask``) are accepted.

Exit codes: 0 written, 1 onnxruntime's outputs differ from torch's, 2 bad input.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drpopt.cli.options import console_for, handle_errors
from drpopt.cli.params import (
    Builder,
    BuilderArg,
    Checkpoint,
    CompactOrSparse,
    ExportInputShape,
    ExportOutput,
    ExportRtol,
    ExportTarget,
    FoldBatchNorm,
    InputNames,
    JsonSummary,
    Opset,
    OutputNames,
    TrustCheckpoint,
)
from drpopt.errors import BadInputError

_ORIG, _MASK = "_orig", "_mask"


def register(app: typer.Typer) -> None:
    """Adds the ``export`` command to ``app`` (a second call on the same app does nothing)."""
    if any(c.name == "export" for c in app.registered_commands):
        return
    app.command("export")(export_cmd)


@handle_errors
def export_cmd(
    builder: Builder,
    input_shape: ExportInputShape,
    output: ExportOutput,
    checkpoint: Checkpoint = None,
    compact: CompactOrSparse = None,
    opset: Opset = None,
    target: ExportTarget = None,
    builder_arg: BuilderArg = None,
    rtol: ExportRtol = 1e-4,
    trust_checkpoint: TrustCheckpoint = False,
    as_json: JsonSummary = False,
    input_names: InputNames = None,
    output_names: OutputNames = None,
    fold_bn: FoldBatchNorm = None,
) -> None:
    """Export BUILDER's model with CHECKPOINT's weights as sparse or compact ONNX."""
    from drpopt import api
    from drpopt.ir.files import refuse_overwrite

    options = api.ExportOptions(  # the target's form, opset and folding, resolved once
        form=None if compact is None else "compact" if compact else "sparse",
        opset=opset,
        target=target,
        fold_batchnorm=fold_bn,
        rtol=rtol,
        input_names=input_names,
        output_names=output_names,
    )
    shapes = [parse_shape(s) for s in input_shape]
    kwargs = parse_builder_args(builder_arg or [])
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise BadInputError(
                f"{checkpoint}: no such checkpoint; give a file written by torch.save"
            )
        refuse_overwrite(output, [checkpoint])
    model = build_model(builder, kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, trust_checkpoint)
    inputs = example_inputs(shapes)
    console = console_for(stderr=as_json)
    with console.status("exporting"):
        result = api.export(model, inputs, output, options)
    summary = _summary(result, builder, checkpoint)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_summary(console, summary)


# ---- arguments ---------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; every dimension a positive integer."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise BadInputError(
            f"--input-shape {text!r}: give positive integers separated by commas, e.g. 1,3,224,224"
        )
    return dims


def parse_builder_args(items: list[str]) -> dict[str, Any]:
    """``["width=16", "name=small"]`` -> ``{"width": 16, "name": "small"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise BadInputError(
                f"--builder-arg {item!r}: give key=value with a Python identifier as key, "
                "e.g. --builder-arg num_classes=10"
            )
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def build_model(spec: str, kwargs: dict[str, Any]) -> Any:
    """The module the builder returns (``BadInputError`` if it fails or is no module)."""
    import os
    import sys

    import torch

    from drpopt.retrain.builders import load_builder

    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # like `python -m`: modules in the current directory are found
        sys.path.insert(0, cwd)
    try:
        fn = load_builder(spec)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    try:
        model = fn(**kwargs)
    except Exception as err:  # the user's code
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        message = " ".join(str(err).split())[:200]
        raise BadInputError(
            f"builder {spec}({args}) raised {type(err).__name__}: {message}; check --builder-arg"
        ) from err
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(
            f"builder {spec} returned {type(model).__name__} {_short(model)}, not a "
            "torch.nn.Module; make it return the model"
        )
    return model


def example_inputs(shapes: list[tuple[int, ...]]) -> Any:
    """Seeded standard-normal inputs: one tensor, or a tuple for several shapes."""
    import torch

    gen = torch.Generator().manual_seed(0)
    tensors = tuple(torch.randn(s, generator=gen) for s in shapes)
    return tensors[0] if len(tensors) == 1 else tensors


# ---- checkpoints -------------------------------------------------------------------------
def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """``torch.load`` on CPU: weights only unless ``trust``; a pickled module gives its
    state dict."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if not _looks_like_torch_save(path):
            raise BadInputError(
                f"{path}: not a checkpoint torch.load can read ({_first_line(err)}); give a "
                "file written by torch.save"
            ) from err
        if trust:
            raise BadInputError(f"{path}: cannot be unpickled ({_first_line(err)})") from err
        raise BadInputError(
            f"{path}: holds Python objects besides tensors, which a weights-only load refuses; "
            "save model.state_dict() instead, or pass --trust-checkpoint if you trust its "
            "source (full pickle runs code from the file)"
        ) from err
    except Exception as err:  # torch.load raises many types on a file that is not its own
        raise BadInputError(
            f"{path}: not a checkpoint torch.load can read ({type(err).__name__}: "
            f"{_first_line(err)}); give a file written by torch.save"
        ) from err
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return obj


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle (the legacy format)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:160]


def fold_torch_prune_pairs(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``X_orig`` and ``X_mask`` (``torch.nn.utils.prune``) become ``X = X_orig * X_mask``."""
    out = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(_ORIG)]:
        base = key[: -len(_ORIG)]
        mask_key = base + _MASK
        if mask_key in out and base not in out:
            out[base] = out.pop(key) * out.pop(mask_key)
    return out


def load_checkpoint(model: Any, path: Path, trust: bool = False) -> None:
    """Loads the checkpoint at ``path`` into ``model`` (see the module rules)."""
    from drpopt.retrain.checkpoint import load_pruned_state_dict, unwrap_state_dict

    raw = read_checkpoint(path, trust)
    try:
        state = unwrap_state_dict(raw, set(model.state_dict()))
        load_pruned_state_dict(model, fold_torch_prune_pairs(state))
    except BadInputError as err:
        raise BadInputError(f"{path}: {_one_line(str(err))}") from err


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def _one_line(message: str) -> str:
    """torch's multi-line ``load_state_dict`` report as one line: its size mismatches listed
    as ``name (checkpoint AxB, model CxD)``, at most four of them."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    found = [_SIZE_MISMATCH.search(line) for line in lines]
    mismatches = [
        f"{m[1]} (checkpoint {m[2].replace(', ', 'x')}, model {m[3].replace(', ', 'x')})"
        for m in found
        if m is not None
    ]
    if not mismatches:
        return " ".join(message.split())
    head = re.sub(r":?\s*Error\(s\) in loading state_dict for \w+:?", "", lines[0]).rstrip(":")
    more = f" and {len(mismatches) - 4} more" if len(mismatches) > 4 else ""
    return (
        f"{head}: size mismatch for {', '.join(mismatches[:4])}{more}; build the model with the "
        "configuration the checkpoint was saved from (see --builder-arg)"
    )


# ---- output ------------------------------------------------------------------------------
def _summary(result: Any, builder: str, checkpoint: Path | None) -> dict[str, Any]:
    return {
        "builder": builder,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "output": str(result.path),
        "form": result.form,
        "plan_source": result.plan_source,
        "trace_path": result.trace_path,
        "pruned_channels": result.plan.pruned_channels,
        "pruned_groups": len(result.plan.groups),
        "params_dense": result.dense_params,
        "params": result.params,
        "nonzero_weights": result.nonzero_weights,
        "macs_dense": result.dense_macs,
        "macs": result.macs,
        "max_abs_error": result.max_abs_error,
        "max_rel_error": result.max_rel_error,
        "rtol": result.rtol,
    }


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    from drpopt.passes.common import human

    def ratio(a: float, b: float) -> str:
        return f"{100.0 * a / b:.1f}%" if b else "-"

    console.print(
        f"{s['form']} ONNX: {s['pruned_channels']} channels pruned in {s['pruned_groups']} "
        f"groups (plan from {escape(s['plan_source'])})",
        highlight=False,
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    for _ in range(3):
        grid.add_column(justify="right")
    grid.add_row("", "dense", "exported", "exported/dense")
    grid.add_row(
        "parameters",
        human(s["params_dense"]),
        human(s["params"]),
        ratio(s["params"], s["params_dense"]),
    )
    grid.add_row("nonzero weights", "-", human(s["nonzero_weights"]), "-")
    grid.add_row(
        "MACs", human(s["macs_dense"]), human(s["macs"]), ratio(s["macs"], s["macs_dense"])
    )
    console.print(grid)
    console.print(
        f"verified against torch: outputs [green]match[/] (max abs error "
        f"{s['max_abs_error']:.3g}, max rel error {s['max_rel_error']:.3g}, rtol {s['rtol']:g})",
        highlight=False,
    )
    console.print(f"wrote {escape(s['output'])}", highlight=False)


def _short(value: object) -> str:
    """``value`` as one short parenthesised line, for a message."""
    text = " ".join(repr(value).split())
    return f"({text[:40]}{'...' if len(text) > 40 else ''})"
