"""torch frontend: an ``nn.Module`` and example inputs into the drpopt IR, with every weight
of a group mapped back to the module's own ``nn.Parameter`` or buffer by name.

Paths, first that works:
1. torch.fx (``ir/from_fx.py``): ``symbolic_trace`` of the module in its current mode with
   all example inputs, ``ShapeProp`` for shapes, each fx node written as the ONNX ops the
   exporter would emit. Constants are named by their ``state_dict`` keys. The graph is
   accepted when every Conv/Linear/BatchNorm module the forward calls (found by one forward
   of a copy with hooks) reads its weight in the fx graph under its own name.
2. ONNX export: the module is exported with torch's ONNX exporter (TorchScript tracing)
   with constant folding off, so initializers keep their ``state_dict`` names, and the ONNX
   frontend builds the IR. The export runs on a copy whose parameters and buffers are
   filled with distinct random values, because the exporter merges initializers with equal
   contents (zero biases, fresh BN statistics) and would lose names. The module is traced in
   its current mode with all inputs first; if that fails (a detector that computes its loss
   from targets with ops the exporter cannot trace), it is traced in eval mode with the
   first tensor alone. ``TorchTrace.path`` says which path ran and why fx was not used.

Both paths give the same IR op types, so the groups are those of ``drpopt analyze`` on an
exported file and plans (keyed by tensor names) serve both sides. On the fx path
``TorchTrace.onnx_model`` is exported on first access, from the module as it is then.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Callable
from typing import Any

import onnx

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.torch_attention import exportable_attention

log = logging.getLogger(__name__)


class TorchTrace:
    """The IR of a module, the ONNX it came from (exported lazily on the fx path), how it
    was obtained, and the module's parameter and buffer names."""

    def __init__(
        self,
        graph: Graph,
        onnx_model: onnx.ModelProto | None,
        path: str,
        tensor_names: set[str] | None = None,
        export: Callable[[], onnx.ModelProto] | None = None,
    ) -> None:
        self.graph = graph
        self._onnx_model = onnx_model
        self._export = export
        self.path = path
        self.tensor_names: set[str] = set(tensor_names or ())

    @property
    def onnx_model(self) -> onnx.ModelProto | None:
        """The ONNX export (on the fx path made on first access; None if that fails)."""
        if self._onnx_model is None and self._export is not None:
            export, self._export = self._export, None
            try:
                self._onnx_model = export()
            except Exception as err:
                log.warning("exporting the module to ONNX failed: %s", err)
        return self._onnx_model

    @onnx_model.setter
    def onnx_model(self, value: onnx.ModelProto | None) -> None:
        self._onnx_model, self._export = value, None

    def __repr__(self) -> str:
        return f"TorchTrace(path={self.path!r}, nodes={len(self.graph.nodes)})"


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


def _export(
    model: Any,
    args: tuple,
    kwargs: dict,
    opset: int,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> onnx.ModelProto:
    """torch.onnx.export (TorchScript) with constant folding off, so initializers keep
    their ``state_dict`` names; the mode (train/eval) is the model's own;
    ``nn.MultiheadAttention`` self-attention exports with its heads visible
    (``ir/torch_attention.py``)."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), exportable_attention():
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
            input_names=input_names,
            output_names=output_names,
        )
    return onnx.load_from_string(buf.getvalue())


FX_PATH = "torch.fx (symbolic_trace + ShapeProp)"
_WEIGHTED = ("Conv", "ConvTranspose", "Linear", "BatchNorm")


def _called_weights(module: Any, args: tuple, kwargs: dict) -> set[str]:
    """Weight names of the Conv/Linear/BatchNorm modules one forward of a copy calls."""
    import torch

    work = copy.deepcopy(module)
    called: set[str] = set()
    handles = []
    for name, sub in work.named_modules():
        kind = type(sub).__name__
        if isinstance(getattr(sub, "weight", None), torch.nn.Parameter) and any(
            kind.startswith(k) for k in _WEIGHTED
        ):

            def hook(_m: Any, _i: Any, _name: str = name) -> None:
                called.add(f"{_name}.weight")

            handles.append(sub.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            work(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return called


def _trace_fx(module: Any, args: tuple, kwargs: dict, names: set[str]) -> Graph:
    """The fx IR of ``module``, checked against the weights its forward really reads."""
    from drpopt.ir.from_fx import FxTraceError, from_fx

    graph = from_fx(module, kwargs or args)
    consts = {v.name for v in graph.values.values() if v.is_const}
    stray = sorted(
        v.name for v in graph.values.values() if v.meta.get("parameter") and v.name not in names
    )
    missing = sorted(_called_weights(module, args, kwargs) - consts)
    if missing:
        raise FxTraceError(f"the fx graph lacks weights the forward uses: {missing[:3]}")
    if stray:
        raise FxTraceError(f"the fx graph reads tensors that are no parameters: {stray[:3]}")
    return graph


def trace_module(
    model: Any, example_inputs: Any, opset: int = 17, masked_norms: set[str] | None = None
) -> TorchTrace:
    """The IR of ``model`` run on ``example_inputs`` (see the module docstring).

    ``masked_norms``: weight names of LayerNorms whose statistics the caller restricts to
    the kept channels (the Pruner's ``masked_layernorm``); with those of modules that
    already do (``drpopt_masked_norm``) they go into ``graph.meta["masked_norms"]``, and the
    analysis lets those LayerNorms' channels be pruned (a torch LayerNorm otherwise counts
    every channel, and its channels stay whole)."""
    module = unwrap(model)
    args, kwargs = split_inputs(_to_cpu(example_inputs))
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    norms = set(masked_norms or ()) | {
        f"{n}.weight" for n, m in module.named_modules() if getattr(m, "drpopt_masked_norm", False)
    }
    try:
        graph = _trace_fx(module, args, kwargs, names)
    except Exception as err:
        fx_why = " ".join(str(err).split())[:120] or type(err).__name__
        log.info("torch.fx path failed (%s); exporting to ONNX", fx_why)
    else:
        mode = "train" if module.training else "eval"
        path = f"{FX_PATH}, {mode} mode, all example inputs"
        graph.meta["torch_path"] = path
        graph.meta["masked_norms"] = norms
        return TorchTrace(
            graph, None, path, names, lambda: _export_onnx(module, args, kwargs, opset)[0]
        )
    proto, path = _export_onnx(module, args, kwargs, opset)
    path = f"{path}; torch.fx failed: {fx_why}"
    graph = from_onnx(proto, where=type(module).__name__)
    graph.meta["torch_path"] = path
    graph.meta["masked_norms"] = norms
    return TorchTrace(graph, proto, path, names)


def _export_onnx(module: Any, args: tuple, kwargs: dict, opset: int) -> tuple[onnx.ModelProto, str]:
    """The ONNX export of a distinct-valued copy of ``module`` and the path text."""
    clone = _distinct_copy(module)
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
                f"the model could not be traced by torch.fx nor torch.onnx.export ({err2}); "
                "give example inputs the model's forward accepts"
            ) from err2
        path = (
            "torch.onnx.export (TorchScript trace, eval mode, first tensor only: tracing "
            f"with all inputs failed: {str(err).splitlines()[0][:120]})"
        )
    return proto, path
