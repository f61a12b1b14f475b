"""``get_model_info``: per weighted layer of a torch model, its zeros and its MACs.

Rules:
- weighted layers are the trace graph's Conv, ConvTranspose, Gemm and MatMul nodes whose
  weight (input 1, else input 0; through a Transpose or Identity) is one of the model's
  parameters; a parameter used by several nodes is one row with their MACs summed;
- shapes, parameters and zeros come from the model's current parameters (the trace only
  supplies the graph and its shapes, from ONNX shape inference);
- MACs are those of the example inputs as given (batch included), as ``node_macs`` counts
  them; where shape inference left a layer's shapes unknown, the shapes of a forward pass
  of a copy of the model are used instead; effective MACs are MACs times the weight's
  nonzero fraction;
- totals sum the rows; ``model_params`` / ``model_zeros`` count every parameter;
- with a Pruner, its current rate, final rate and step are reported too, and its trace is
  reused when no example inputs are given;
- the pruning layers (the drop-in Pruner's list, else the layers the DRP-AI profile prunes,
  ``retrain/share.py``) are named, and ``pruning_sparsity`` is the share of their weights
  that are zero: what ``final_pr`` of the drop-in means.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from drpopt.errors import BadInputError
from drpopt.ir.core import Node, Value
from drpopt.ir.counting import node_macs
from drpopt.ir.from_torch import TorchTrace, _to_cpu, split_inputs, trace_module, unwrap

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PASS_THROUGH = ("Transpose", "Identity")


@dataclass
class LayerInfo:
    """One weighted layer: ``name`` is the module, ``weight`` its parameter."""

    name: str
    op: str
    weight: str
    shape: tuple[int, ...]
    params: int
    zeros: int
    macs: int
    effective_macs: int
    macs_exact: bool = True

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0


@dataclass
class ModelInfo:
    """What :func:`get_model_info` found: layers, totals and the pruning state."""

    layers: list[LayerInfo]
    model_params: int
    model_zeros: int
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    current_rate: float | None = None
    final_rate: float | None = None
    step: int | None = None
    trace_path: str = ""
    pruning_layers: list[str] = field(default_factory=list)

    def _pruning_rows(self) -> list[LayerInfo]:
        names = set(self.pruning_layers)
        return [row for row in self.layers if row.name in names and row.weight.endswith("weight")]

    @property
    def pruning_params(self) -> int:
        """Weights of the pruning layers."""
        return sum(row.params for row in self._pruning_rows())

    @property
    def pruning_zeros(self) -> int:
        """Zero weights of the pruning layers."""
        return sum(row.zeros for row in self._pruning_rows())

    @property
    def pruning_sparsity(self) -> float:
        """The share of the pruning layers' weights that are zero (``final_pr``'s meaning)."""
        return self.pruning_zeros / self.pruning_params if self.pruning_params else 0.0

    @property
    def model_sparsity(self) -> float:
        """The share of all the model's parameters that are zero."""
        return self.model_zeros / self.model_params if self.model_params else 0.0

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def effective_macs(self) -> int:
        return sum(layer.effective_macs for layer in self.layers)

    def layer(self, name: str) -> LayerInfo:
        """The row of module ``name`` (or of parameter ``name``)."""
        for row in self.layers:
            if name in (row.name, row.weight):
                return row
        raise KeyError(f"no weighted layer named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "layers": [
                {**asdict(row), "shape": list(row.shape), "sparsity": row.sparsity}
                for row in self.layers
            ],
            "totals": {
                "params": self.params,
                "zeros": self.zeros,
                "sparsity": self.sparsity,
                "macs": self.macs,
                "effective_macs": self.effective_macs,
                "model_params": self.model_params,
                "model_zeros": self.model_zeros,
                "pruning_params": self.pruning_params,
                "pruning_zeros": self.pruning_zeros,
                "pruning_sparsity": self.pruning_sparsity,
            },
            "pruning_layers": list(self.pruning_layers),
            "input_shapes": [list(s) for s in self.input_shapes],
            "pruning": {
                "current_rate": self.current_rate,
                "final_rate": self.final_rate,
                "step": self.step,
            },
            "trace_path": self.trace_path,
        }

    def table(self) -> Any:
        """A rich Table: a row per layer, then the totals."""
        from rich.table import Table

        from drpopt.passes.common import human

        title = "Model info"
        if self.current_rate is not None:
            title += (
                f" (pruning rate {self.current_rate:.3f} of final {self.final_rate:.3f}, "
                f"step {self.step})"
            )
        shapes = ", ".join("x".join(str(d) for d in s) for s in self.input_shapes)
        lines = [f"MACs for inputs {shapes}"] if shapes else []
        if self.pruning_layers:
            lines.append(
                f"pruning layers: {len(self.pruning_layers)}, {100 * self.pruning_sparsity:.1f}% "
                f"of their weights zero; whole model {100 * self.model_sparsity:.1f}%"
            )
        table = Table(title=title, caption="\n".join(lines) or None, show_footer=True)
        table.add_column("layer", "total", overflow="fold")
        table.add_column("op")
        table.add_column("shape", no_wrap=True)
        table.add_column("params", human(self.params), justify="right")
        table.add_column("zeros", human(self.zeros), justify="right")
        table.add_column("sparsity", f"{100 * self.sparsity:.1f}%", justify="right")
        table.add_column("MACs", human(self.macs), justify="right")
        table.add_column("effective MACs", human(self.effective_macs), justify="right")
        for row in self.layers:
            table.add_row(
                row.name,
                row.op,
                "x".join(str(d) for d in row.shape),
                human(row.params),
                human(row.zeros),
                f"{100 * row.sparsity:.1f}%",
                human(row.macs) + ("" if row.macs_exact else "?"),
                human(row.effective_macs) + ("" if row.macs_exact else "?"),
            )
        return table


def _param_input(node: Node, params: dict[str, Any]) -> str | None:
    """The name of the parameter ``node`` uses as its weight, or None."""
    for i in (1, 0):
        value: Value | None = node.input(i)
        while value is not None and value.name not in params:
            prod = value.producer
            value = prod.input(0) if prod is not None and prod.op_type in _PASS_THROUGH else None
        if value is not None:
            return value.name
    return None


def _static(value: Value | None) -> bool:
    shape = None if value is None else value.shape
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _resolved(node: Node) -> bool:
    """Whether ``node_macs`` sees every shape it reads (not symbolic, not unknown)."""
    if node.op_type == "Conv":
        return _static(node.input(1)) and _static(node.outputs[0])
    if node.op_type == "ConvTranspose":
        return _static(node.input(0)) and _static(node.input(1))
    return _static(node.input(0)) and _static(node.outputs[0])


def _with_shapes(node: Node, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> Node:
    """A stand-in for ``node`` whose data input and output have the given shapes."""
    x, y = node.input(0), node.outputs[0]
    if x is None:
        return node
    inputs = [Value(x.name, shape=x_shape), *node.inputs[1:]]
    return Node(node.op_type, node.name, inputs, [Value(y.name, shape=y_shape)], node.attrs)


def _torch_calls(
    model: Any, example_inputs: Any, owners: dict[str, str]
) -> dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """(input shape, output shape) of every call of the modules ``owners`` names, from a
    forward of a CPU copy of ``model`` without gradients (the model itself is untouched)."""
    import torch

    clone = copy.deepcopy(model).cpu()
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    handles = []
    for name, module in clone.named_modules():
        if name not in owners.values():
            continue

        def hook(_m: Any, args: Any, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                calls.setdefault(name, []).append((tuple(args[0].shape), tuple(out.shape)))

        handles.append(module.register_forward_hook(hook))
    args, kwargs = split_inputs(_to_cpu(example_inputs))
    try:
        with torch.no_grad():
            clone(*args, **kwargs)
    except Exception as err:  # the counts fall back to node_macs, flagged inexact
        log.warning("a forward for layer shapes failed (%s); some MACs are estimates", err)
        return {}
    finally:
        for h in handles:
            h.remove()
    return calls


def _input_shapes(trace: TorchTrace) -> list[tuple[int, ...]]:
    out = []
    for v in trace.graph.inputs:
        if v.shape is not None:
            out.append(tuple(d if isinstance(d, int) else -1 for d in v.shape))
    return out


def _layer_rows(
    trace: TorchTrace, params: dict[str, Any]
) -> tuple[dict[str, LayerInfo], dict[str, list[Node]]]:
    """One row per weight parameter a layer of the trace uses (MACs still 0), and the trace
    nodes that use each."""
    rows: dict[str, LayerInfo] = {}
    nodes: dict[str, list[Node]] = {}
    for node in trace.graph.nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        name = _param_input(node, params)
        if name is None:
            continue
        nodes.setdefault(name, []).append(node)
        if name not in rows:
            p = params[name]
            rows[name] = LayerInfo(
                name.rsplit(".", 1)[0] if "." in name else name,
                node.op_type,
                name,
                tuple(p.shape),
                p.numel(),
                int((p.detach() == 0).sum().item()),
                0,
                0,
            )
    return rows, nodes


def _count_macs(
    module: Any, example_inputs: Any, rows: dict[str, LayerInfo], nodes: dict[str, list[Node]]
) -> None:
    """Fills each row's MACs: from the trace's shapes, or where they are unresolved from a
    forward pass's (when there are example inputs)."""
    unresolved = {name for name, ns in nodes.items() if not all(_resolved(n) for n in ns)}
    owners = {name: rows[name].name for name in unresolved if name.endswith(".weight")}
    calls = (
        _torch_calls(module, example_inputs, owners)
        if owners and example_inputs is not None
        else {}
    )
    for name, row in rows.items():
        recorded = calls.get(row.name) if name in unresolved else None
        if recorded:
            first = nodes[name][0]
            row.macs = sum(node_macs(_with_shapes(first, x, y)) for x, y in recorded)
        else:
            row.macs = sum(node_macs(n) for n in nodes[name])
            row.macs_exact = name not in unresolved
        nonzero = (row.params - row.zeros) / row.params if row.params else 0.0
        row.effective_macs = int(round(row.macs * nonzero))


def get_model_info(model: Any, example_inputs: Any = None, pruner: Any = None) -> ModelInfo:
    """Per-layer parameters, zeros and MACs of ``model`` (see the module docstring).

    ``example_inputs``: a tensor, a sequence of tensors or a dict of forward kwargs; may be
    left out when ``pruner`` is given (its trace, and its ``example_inputs`` if it keeps
    them, are used). Where ONNX shape inference left a layer's shapes unknown (a Slice whose
    bounds are computed, as in YOLOX's Focus stem), the layer's MACs come from the shapes
    of a forward pass of a copy of the model instead; without example inputs they stay as
    ``node_macs`` counts them (unknown dims as 1) and ``macs_exact`` is False.
    """
    module = unwrap(model)
    if example_inputs is not None:
        trace = trace_module(module, example_inputs)
    elif pruner is not None:
        trace = pruner.trace
        example_inputs = getattr(pruner, "example_inputs", None)
    else:
        raise BadInputError(
            "get_model_info needs example inputs (a tensor, a list of tensors or a dict of "
            "forward kwargs) or a pruner whose trace it can reuse"
        )
    params = dict(module.named_parameters())
    rows, nodes = _layer_rows(trace, params)
    _count_macs(module, example_inputs, rows, nodes)
    model_params = sum(p.numel() for p in params.values())
    model_zeros = sum(int((p.detach() == 0).sum().item()) for p in params.values())
    info = ModelInfo(
        list(rows.values()),
        model_params,
        model_zeros,
        _input_shapes(trace),
        trace_path=trace.path,
    )
    layer_list = getattr(pruner, "pruning_layer_list", None)
    if layer_list is not None:
        info.pruning_layers = list(layer_list)
    else:
        from drpopt.retrain.share import listed_layers

        info.pruning_layers = list(listed_layers(trace.graph, params))
    if pruner is not None:
        info.current_rate = float(pruner.rate)
        info.final_rate = float(pruner.schedule.final_rate)
        info.step = int(pruner.step)
    return info


def pruner_info(pruner: Any) -> ModelInfo:
    """:func:`get_model_info` of the pruner's model on the pruner's own trace."""
    return get_model_info(pruner.model, pruner=pruner)
