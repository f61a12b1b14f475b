"""``fold-batchnorm``: BatchNormalization folded into the Conv, ConvTranspose or Gemm before it.

Inference BatchNorm is a per-channel affine map ``y = x * s + (beta - mean * s)`` with
``s = gamma / sqrt(var + eps)``; when ``x`` is the output of a layer with a constant weight
the map moves into the layer's weight and bias, and the BatchNorm disappears.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.rules import batch_statistics
from drpopt.passes.base import Pass, PassResult

log = logging.getLogger(__name__)

FOLDABLE_OPS = ("Conv", "ConvTranspose", "Gemm")


@dataclass
class FoldBatchNormPass(Pass):
    """Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

    Rules:
    - the BatchNorm is in inference form (``training_mode`` 0, only output 0 used) and its
      scale, bias, mean and variance are constants (initializers or Constant outputs) of
      one value per output channel of the layer;
    - its input is output 0 of a Conv, ConvTranspose or Gemm whose weight (and bias, if
      any) is a floating-point constant, and that output has no other user and is not a
      graph output;
    - with ``s = gamma / sqrt(var + eps)`` the weight is scaled along its output-channel
      axis (Conv: 0; ConvTranspose: 1, per group of ``[Cin, Cout/group, k...]``; Gemm: 0
      with ``transB=1``, else 1) and the bias becomes ``(bias - mean) * s + beta`` (created
      when the layer has none; a Gemm's ``beta`` attribute is folded in and set to 1);
    - a constant only this layer uses gets the new data under its own name; a shared one
      is left alone and the layer reads a new constant with a unique name;
    - the BatchNorm's users read the layer output; when the BatchNorm output is a graph
      output, the layer output takes its name so the model's interface does not change;
    - node names are kept; BatchNorms inside If/Loop/Scan bodies are not touched;
    - chains (layer, BN, BN) fold completely; ``modified`` is False when nothing folded.
    """

    name: ClassVar[str] = "fold-batchnorm"

    def call(self, model: Graph) -> PassResult:
        folded = 0
        for node in list(model.nodes):
            if node.op_type == "BatchNormalization" and _fold(model, node):
                folded += 1
        if folded:  # the graph is touched; no analysis survives (nothing is preserved)
            log.info("folded %d BatchNormalization node(s)", folded)
        return PassResult(model, folded > 0)


# ---- matching ---------------------------------------------------------------------------
def _float_const(v: Value | None) -> np.ndarray | None:
    if v is None or not v.is_const:
        return None
    arr = np.asarray(v.const)
    return arr if arr.dtype.kind == "f" else None


def _only_output0_used(graph: Graph, node: Node) -> bool:
    return all(not v.uses and v not in graph.outputs for v in node.outputs[1:])


def _out_channels(layer: Node, weight: np.ndarray) -> int | None:
    """The layer's output-channel count read from its weight (None when malformed)."""
    if layer.op_type == "Conv":
        return int(weight.shape[0]) if weight.ndim >= 3 else None
    if layer.op_type == "ConvTranspose":
        group = int(layer.attr("group", 1))
        if weight.ndim < 3 or group < 1 or weight.shape[0] % group:
            return None
        return int(weight.shape[1]) * group
    if weight.ndim != 2:
        return None
    return int(weight.shape[0] if layer.attr("transB", 0) else weight.shape[1])


def _bn_params(bn: Node, channels: int) -> list[np.ndarray] | None:
    """gamma, beta, mean, var as float64 vectors of ``channels`` values, or None."""
    params = []
    for i in range(1, 5):
        arr = _float_const(bn.input(i))
        if arr is None or arr.size != channels:
            return None
        params.append(arr.astype(np.float64).reshape(channels))
    return params


def _bias_fits(layer: Node, bias: np.ndarray, channels: int) -> bool:
    if layer.op_type != "Gemm":
        return bias.size == channels
    # C is unidirectionally broadcast to [M, N]: its last dim is 1 or N
    return bias.ndim <= 2 and (bias.ndim == 0 or bias.shape[-1] in (1, channels))


def _fold(graph: Graph, bn: Node) -> bool:
    """Folds ``bn`` into its producer when the rules allow; True when it did."""
    x = bn.input(0)
    if x is None or batch_statistics(bn, graph) or not _only_output0_used(graph, bn):
        return False
    layer = x.producer
    if layer is None or layer.op_type not in FOLDABLE_OPS or layer.outputs[0] is not x:
        return False
    if len(x.uses) != 1 or x in graph.outputs:
        return False
    if any(i < 0 for _, i in bn.outputs[0].uses):  # read inside an If/Loop/Scan body by name
        return False
    weight = _float_const(layer.input(1))
    if weight is None:
        return False
    bias_value = layer.input(2)
    bias = _float_const(bias_value)
    if bias_value is not None and bias is None:
        return False
    channels = _out_channels(layer, weight)
    if channels is None:
        return False
    params = _bn_params(bn, channels)
    if params is None or (bias is not None and not _bias_fits(layer, bias, channels)):
        return False
    gamma, beta, mean, var = params
    scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))

    new_weight = _scaled_weight(layer, weight, scale)
    if bias is None:
        old_bias = np.zeros(channels)
    elif layer.op_type == "Gemm":  # C may be any shape broadcastable to [M, N]
        old_bias = bias.astype(np.float64) * float(layer.attr("beta", 1.0))
        if "beta" in layer.attrs:
            layer.attrs["beta"] = 1.0
    else:
        old_bias = bias.astype(np.float64).reshape(channels)
    new_bias = (old_bias - mean) * scale + beta

    _set_const(graph, layer, 1, new_weight.astype(weight.dtype), "weight")
    _set_const(graph, layer, 2, new_bias.astype(weight.dtype), "bias")

    out = bn.outputs[0]
    graph.replace_all_uses_with(out, x)
    graph.remove_node(bn)
    if x in graph.outputs:  # the BN output was a graph output: keep its name
        _rename(graph, x, out.name)
    log.debug("folded %s into %s %s", bn.name, layer.op_type, layer.name)
    return True


def _scaled_weight(layer: Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    w = weight.astype(np.float64)
    if layer.op_type == "Conv":
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if layer.op_type == "ConvTranspose":
        # [Cin, Cout/g, k...]: output channel o = group * (Cout/g) + j lives in the rows of
        # its group, column j
        group = int(layer.attr("group", 1))
        cin, cout_g = w.shape[:2]
        grouped = w.reshape((group, cin // group, cout_g, *w.shape[2:]))
        s = scale.reshape((group, 1, cout_g) + (1,) * (w.ndim - 2))
        return (grouped * s).reshape(w.shape)
    if layer.attr("transB", 0):
        return w * scale[:, None]
    return w * scale[None, :]


# ---- IR edits ---------------------------------------------------------------------------
def _unique_name(graph: Graph, base: str) -> str:
    if base not in graph.values:
        return base
    i = 1
    while f"{base}_{i}" in graph.values:
        i += 1
    return f"{base}_{i}"


def _set_const(graph: Graph, node: Node, index: int, data: np.ndarray, role: str) -> None:
    """Gives input ``index`` of ``node`` the constant ``data``: in place when the old value
    is an initializer only this input reads, else through a new initializer."""
    old = node.input(index)
    if (
        old is not None
        and old.producer is None
        and old not in graph.outputs
        and all(user is node and i == index for user, i in old.uses)
    ):
        old.const = data  # a new array: nothing else holds this value
        old.shape, old.dtype = tuple(data.shape), data.dtype
        return
    base = f"{old.name}.folded" if old is not None else f"{node.name}.{role}"
    new = graph.value(
        _unique_name(graph, base), const=data, shape=tuple(data.shape), dtype=data.dtype
    )
    while len(node.inputs) <= index:
        node.inputs.append(None)
    node.inputs[index] = new
    new.uses.append((node, index))
    if old is not None:
        old.uses = [(n, i) for n, i in old.uses if not (n is node and i == index)]
        if not old.uses and old.producer is None and old not in graph.outputs:
            graph.values.pop(old.name, None)  # an initializer nobody reads any more


def _rename(graph: Graph, value: Value, name: str) -> None:
    if graph.values.get(value.name) is value:
        del graph.values[value.name]
    value.name = name
    graph.values[name] = value
