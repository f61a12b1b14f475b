"""Export helper shared by the model definitions of the unseen-architecture battery.

``export_as`` calibrates a seeded model's BatchNorm statistics (``bn_calibrate``) and exports
it with the TorchScript exporter the way a project's own export script does: its opset, its
``do_constant_folding``, and a symbolic batch axis (``dynamic_batch``; the batch is then
fixed to 1 by ``fix_input_shapes`` as a user gives ``--input-shape``). ``half``: the model and
its input cast to float16 before the export (``model.half()``, as fp16 deployments do).
"""

from __future__ import annotations

import io

import onnx
import torch
from bn_calibrate import calibrate
from torch import nn

from drpopt.ir.input_shapes import fix_input_shapes


def export_as(
    model: nn.Module,
    shape: tuple[int, ...],
    opset: int = 17,
    dynamic_batch: bool = False,
    fold: bool = True,
    seed: int = 0,
    half: bool = False,
) -> onnx.ModelProto:
    torch.manual_seed(seed)
    calibrate(model, shape)
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    x = torch.randn(*shape)
    if half:
        model, x = model.half(), x.half()
    with torch.no_grad():
        out = model(x)
        n_out = len(out) if isinstance(out, list | tuple) else 1
        names = ["output"] + [f"output{i}" for i in range(1, n_out)]
        if dynamic_batch:
            axes.update({n: {0: "batch"} for n in names})
        torch.onnx.export(
            model,
            (x,),
            buf,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=fold,
            input_names=["input"],
            output_names=names,
            dynamic_axes=axes,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if dynamic_batch:
        proto = fix_input_shapes(proto, {None: list(shape)})
    return proto
