"""torch frontend: an ``nn.Module`` and example inputs into the drpopt IR, with every weight
of a group mapped back to the module's own ``nn.Parameter`` or buffer by name.

Path: the module is exported with torch's ONNX exporter (TorchScript tracing) with constant
folding off, so initializers keep their ``state_dict`` names, and the ONNX frontend builds
the IR: the same IR and the same coupled groups as ``drpopt analyze`` on an exported file,
so plans (keyed by tensor names) serve both sides. The export runs on a copy whose
parameters and buffers are filled with distinct random values, because the exporter merges
initializers with equal contents (zero biases, fresh BN statistics) and would lose names.

Inputs: a tensor, a tuple/list of tensors, or a dict of keyword arguments. The module is
traced in its current mode with all inputs first; if that fails (a detector that computes
its loss from targets with ops the exporter cannot trace), it is traced in eval mode with
the first tensor alone, and ``TorchTrace.path`` says so. (A torch.fx frontend is not built
yet: ONNX export covers every model fx covers and the data-dependent ones fx cannot.)
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import onnx

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx

log = logging.getLogger(__name__)


@dataclass
class TorchTrace:
    """The IR of a module, the ONNX it came from, and how it was obtained."""

    graph: Graph
    onnx_model: onnx.ModelProto
    path: str
    tensor_names: set[str] = field(default_factory=set)  # parameters and buffers


def unwrap(model: Any) -> Any:
    """The module inside DataParallel/DistributedDataParallel wrappers."""
    while hasattr(model, "module") and model.__class__.__name__ in (
        "DistributedDataParallel",
        "DataParallel",
    ):
        model = model.module
    return model


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """(args, kwargs) from a tensor, a sequence of tensors or a dict of keyword arguments."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, list | tuple):
        return tuple(example_inputs), {}
    raise BadInputError(
        f"example inputs of type {type(example_inputs).__name__} are not supported; give a "
        "tensor, a tuple of tensors or a dict of keyword arguments"
    )


def _first_tensor(args: tuple, kwargs: dict):
    import torch

    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    raise BadInputError("the example inputs hold no tensor to trace the model with")


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _distinct_copy(model: Any) -> Any:
    """A CPU copy whose floating parameters and buffers hold distinct random values."""
    import torch

    clone = copy.deepcopy(model).cpu()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*clone.parameters(), *clone.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
    return clone


def _export(model: Any, args: tuple, kwargs: dict, opset: int) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            buf,
            kwargs=kwargs or None,
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return onnx.load_from_string(buf.getvalue())


def trace_module(model: Any, example_inputs: Any, opset: int = 17) -> TorchTrace:
    """The IR of ``model`` run on ``example_inputs`` (see the module docstring)."""
    module = unwrap(model)
    args, kwargs = split_inputs(_to_cpu(example_inputs))
    clone = _distinct_copy(module)
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    mode = "train" if module.training else "eval"
    try:
        proto = _export(clone, args, kwargs, opset)
        path = f"torch.onnx.export (TorchScript trace, {mode} mode, all example inputs)"
    except Exception as err:
        log.info("tracing with all inputs failed (%s); tracing in eval mode", err)
        clone.eval()
        try:
            proto = _export(clone, (_first_tensor(args, kwargs),), {}, opset)
        except Exception as err2:
            raise BadInputError(
                f"the model could not be traced by torch.onnx.export ({err2}); give example "
                "inputs the model's forward accepts"
            ) from err2
        path = (
            "torch.onnx.export (TorchScript trace, eval mode, first tensor only: tracing "
            f"with all inputs failed: {str(err).splitlines()[0][:120]})"
        )
    graph = from_onnx(proto, where=type(module).__name__)
    graph.meta["torch_path"] = path
    return TorchTrace(graph, proto, path, names)
