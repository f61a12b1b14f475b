"""torch.fx frontend: an ``nn.Module`` into the drpopt IR with ONNX op types, no export.

The module (a copy of it) is traced by ``torch.fx.symbolic_trace``; forward arguments the
example inputs do not give are specialised to their defaults. ``ShapeProp`` runs the traced
module on the example inputs and gives every value its shape and dtype. Each fx node then
becomes the IR nodes torch's ONNX exporter (opset 17) would write, so ``ir/rules.py`` serves
both frontends and the groups match the ``torch.onnx.export`` path. The op table lives in
``ir/fx_ops.py``; node names follow the exporter's scopes (``/layer1/layer1.0/conv1/Conv``).

Mapping rules:
- placeholder -> graph input; output -> graph outputs (every tensor in the returned tuple,
  list or dict, in order);
- parameters and buffers (of leaf modules and ``get_attr``) -> constant values named by their
  ``state_dict`` key (``layer1.0.conv1.weight``, ``bn1.running_mean``) holding numpy copies;
- a node whose result holds no tensor (``x.size()``, ``x.shape``, arithmetic on them) is a
  Python value and emits nothing; a tensor computed from no tensor (``torch.arange(h)``)
  becomes a constant;
- modules: Conv1d/2d/3d -> Conv (x, W[, B]; group, kernel_shape, strides, pads, dilations;
  ``padding="same"`` resolved), ConvTranspose1d/2d -> ConvTranspose, Linear -> Gemm
  (transB=1) on 2-D inputs else Transpose + MatMul (+ Add), BatchNorm1d/2d/3d ->
  BatchNormalization (x, scale, B, mean, var; inference semantics), ReLU -> Relu,
  ReLU6/Hardtanh -> Clip (constant min and max), SiLU -> Sigmoid + Mul, Sigmoid, Tanh,
  Hardswish -> HardSwish, Hardsigmoid -> HardSigmoid, LeakyReLU -> LeakyRelu, GELU -> Gelu,
  ELU -> Elu, Mish, Softmax, Identity and Dropout -> no node (the output is the input),
  MaxPool2d -> MaxPool, AvgPool2d -> AveragePool, AdaptiveAvgPool2d(1) ->
  GlobalAveragePool (other sizes that divide the input -> AveragePool),
  AdaptiveMaxPool2d(1) -> GlobalMaxPool, Flatten, Upsample -> Resize (scales);
- functions and methods: ``+ - * /`` (operator and torch.add/sub/mul/div) -> Add/Sub/Mul/
  Div with a scalar constant for a Python number, torch.cat/concat -> Concat, flatten ->
  Flatten (start 1, end -1) else Reshape, view/reshape/squeeze/unsqueeze -> Reshape whose
  constant target is ShapeProp's output shape, permute/transpose -> Transpose, chunk/split
  -> Split, getitem with slices (steps included) -> Slice, with ints -> Gather, with None ->
  Reshape; mean/sum -> ReduceMean/ReduceSum, the activations above by their functional and
  method names (relu, sigmoid, silu, clamp, ...), max_pool2d, avg_pool2d,
  adaptive_avg_pool2d, interpolate (nearest or linear) -> Resize, softmax; contiguous,
  clone, detach, and ``to``/``float`` keeping the dtype -> no node, changing it -> Cast;
- transformer layers (``ir/fx_attention.py``): LayerNorm -> LayerNormalization, ``@``/
  matmul/bmm -> MatMul, expand -> Expand, ``F.scaled_dot_product_attention`` and
  ``nn.MultiheadAttention`` self-attention -> the plain ops of attention with the heads
  split by Reshape/Transpose/Split; a module whose class names the module it stands for
  (``drpopt_fx_as``) is one call mapped by that module's rule; torch's
  ``TransformerEncoderLayer``/``DecoderLayer``/``Encoder``/``Decoder``/``Transformer`` are
  refused (``FxTraceError``: their forward branches on the inputs), so the torch frontend
  exports them;
- anything else (a module, function or method not listed, a ``torch.fx.wrap``-ed function)
  -> a node of op type ``fx::<name>`` in domain ``fx`` reading every tensor argument: it has
  no coupling rule, so the analysis locks the channels it touches and lists it as
  unsupported. Nothing is mapped by guess.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from drpopt.errors import UnsupportedModelError
from drpopt.ir.core import Graph, Value

INT64_MAX = 9223372036854775807
OPSET = 17


class FxTraceError(UnsupportedModelError):
    """torch.fx could not trace or run the module (data-dependent control flow, ...)."""


def from_fx(model: Any, example_inputs: Any, copy_model: bool = True) -> Graph:
    """The IR of ``model`` (an ``nn.Module``, traced in its current mode) on
    ``example_inputs`` (a tensor, a tuple of tensors or a dict of keyword arguments).

    ``copy_model``: trace and run a deep copy, so buffers the forward updates (BN statistics
    in training mode) stay as they were in ``model``. Raises :class:`FxTraceError` naming
    the cause when torch.fx cannot trace or run the module.
    """
    import torch

    from drpopt.ir.from_torch import _to_cpu, split_inputs, unwrap

    module = unwrap(model)
    args, kwargs = split_inputs(_to_cpu(example_inputs))
    work = copy.deepcopy(module).cpu() if copy_model else module
    gm, ordered = _trace(work, args, kwargs)
    try:
        with torch.no_grad():
            _shape_prop(gm).propagate(*ordered)
    except Exception as err:
        raise FxTraceError(
            f"the fx graph did not run on the example inputs: {_short(err)}"
        ) from err
    graph = _Converter(gm, type(module).__name__).convert()
    return graph


# ---- tracing ----------------------------------------------------------------------------
def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:160]


def _trace(module: Any, args: tuple, kwargs: dict) -> tuple[Any, list[Any]]:
    """(GraphModule, placeholder values in order); unused forward arguments are fixed to
    their defaults."""
    import inspect

    import torch.fx as fx

    for name, sub in module.named_modules():
        if sub._forward_hooks or sub._forward_pre_hooks:
            where = name or type(module).__name__
            raise FxTraceError(f"module {where!r} has forward hooks, which torch.fx does not trace")
    try:
        sig = inspect.signature(module.forward)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise FxTraceError(f"the example inputs do not fit forward(): {_short(err)}") from err
    concrete: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if name in bound.arguments:
                raise FxTraceError("forward() takes *args or **kwargs, which fx cannot trace")
            continue
        if name not in bound.arguments:
            if p.default is p.empty:
                raise FxTraceError(f"the example inputs give no value for {name!r}")
            concrete[name] = p.default
    try:
        tracer = _tracer_class()()
        graph = tracer.trace(module, concrete_args=concrete or None)
        gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    except Exception as err:
        raise FxTraceError(f"symbolic_trace failed: {_short(err)}") from err
    ordered: list[Any] = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        name = node.target.lstrip("*")
        ordered.append(bound.arguments.get(name, concrete.get(name)))
    return gm, ordered


def _tracer_class() -> type:
    """``fx.Tracer`` that also keeps a module whose class names the torch module it stands
    for (``drpopt_fx_as``, e.g. drpopt's MaskedLayerNorm) as one call, mapped by that
    module's rule, and refuses torch's transformer layers (their forward branches on the
    inputs; as one opaque call they would lock every channel they touch), so the torch
    frontend takes the export path for them."""
    import torch.fx as fx
    import torch.nn as nn

    composite = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer)
    composite += (nn.TransformerEncoder, nn.TransformerDecoder)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            if getattr(type(m), "drpopt_fx_as", None) is not None:
                return True
            if isinstance(m, composite):
                raise FxTraceError(
                    f"{type(m).__name__} {qualname!r} branches on its inputs (fast-path "
                    "checks), which fx cannot trace; the ONNX export traces it"
                )
            return super().is_leaf_module(m, qualname)

    return Tracer


def _has_tensor(obj: Any) -> bool:
    import torch
    from torch.utils._pytree import tree_leaves

    return any(isinstance(v, torch.Tensor) for v in tree_leaves(obj))


def _shape_prop_class() -> type:
    from torch.fx.passes.shape_prop import ShapeProp

    class RecordingShapeProp(ShapeProp):
        """ShapeProp that also keeps results with no tensor (sizes, ints) and tensors made
        from no tensor, as ``node.meta["fx_value"]``."""

        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if not _has_tensor(result):
                n.meta["fx_value"] = result
            elif n.op in ("call_function", "call_method"):
                a, kw = self.fetch_args_kwargs_from_env(n)
                if not _has_tensor((a, kw)):
                    n.meta["fx_value"] = result
            return result

    return RecordingShapeProp


def _shape_prop(gm: Any) -> Any:
    """A RecordingShapeProp over ``gm`` (the class is made on first use: torch is lazy)."""
    return _shape_prop_class()(gm)


# ---- conversion -------------------------------------------------------------------------
def _np_dtype(dtype: Any) -> np.dtype | None:
    import torch

    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except Exception:
        return None


def _numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def _metas(meta: Any) -> list[Any]:
    """TensorMetadata entries of a node's result, flattened in order."""
    from torch.fx.passes.shape_prop import TensorMetadata

    if isinstance(meta, TensorMetadata):
        return [meta]
    if isinstance(meta, dict):
        return [m for v in meta.values() for m in _metas(v)]
    if isinstance(meta, list | tuple):
        return [m for v in meta for m in _metas(v)]
    return []


class _Converter:
    """Walks the fx graph once and writes the IR (see the module docstring)."""

    def __init__(self, gm: Any, where: str) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.graph = Graph(where)
        self.graph.opsets = {"": OPSET}
        self.graph.meta["source"] = where
        self.graph.meta["producer"] = "torch.fx"
        self.env: dict[Any, Any] = {}
        self.node_names: set[str] = set()
        self.fx_node: Any = None

    # ---- helpers ------------------------------------------------------------------------
    def convert(self) -> Graph:
        for n in self.gm.graph.nodes:
            self.fx_node = n
            try:
                self.env[n] = self._node(n)
            except FxTraceError:
                raise
            except Exception as err:
                raise FxTraceError(
                    f"fx node {n.name!r} ({n.op} {n.target}): {_short(err)}"
                ) from err
        return self.graph

    def arg(self, a: Any) -> Any:
        import torch.fx as fx

        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, list | tuple):
            return type(a)(self.arg(v) for v in a) if not hasattr(a, "_fields") else a
        if isinstance(a, dict):
            return {k: self.arg(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.arg(a.start), self.arg(a.stop), self.arg(a.step))
        return a

    def out(self, n: Any, index: int | None = None) -> Value:
        metas = _metas(n.meta.get("tensor_meta"))
        meta = metas[index or 0] if metas else None
        name = n.name if index is None else f"{n.name}.{index}"
        return self.graph.value(
            self.graph.fresh_name(name),
            shape=None if meta is None else tuple(int(d) for d in meta.shape),
            dtype=None if meta is None else _np_dtype(meta.dtype),
        )

    def tmp(self, base: str, shape: tuple[int, ...] | None, dtype: Any) -> Value:
        return self.graph.value(self.graph.fresh_name(base), shape=shape, dtype=dtype)

    def const(self, base: str, array: np.ndarray) -> Value:
        array = np.asarray(array)
        return self.graph.value(
            self.graph.fresh_name(base), const=array, shape=tuple(array.shape), dtype=array.dtype
        )

    def ints(self, base: str, values: list[int]) -> Value:
        return self.const(base, np.asarray(values, dtype=np.int64))

    def tensor_const(self, name: str, tensor: Any) -> Value:
        """A parameter or buffer as a constant named by its state_dict key (shared)."""
        import torch

        v = self.graph.values.get(name)
        if v is None:
            arr = _numpy(tensor)
            v = self.graph.value(name, const=arr, shape=tuple(arr.shape), dtype=arr.dtype)
            v.meta["parameter"] = isinstance(tensor, torch.nn.Parameter)
        return v

    def node_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.node_names:
            name, i = f"{base}_{i}", i + 1
        self.node_names.add(name)
        return name

    def emit(self, op: str, n: Any, inputs: list, outputs: list[Value], **attrs: Any) -> None:
        self.graph.add_node(op, self.node_name(f"{_scope(n)}/{op}"), inputs, outputs, attrs)

    def unsupported(self, n: Any, what: str) -> Any:
        from torch.utils._pytree import tree_leaves

        ins = [
            v for v in tree_leaves((self.arg(n.args), self.arg(n.kwargs))) if isinstance(v, Value)
        ]
        if n.op == "call_module":
            ins += [
                self.tensor_const(f"{n.target}.{k}", t)
                for k, t in self.modules[n.target].state_dict().items()
                if t.is_floating_point()
            ]
        metas = _metas(n.meta.get("tensor_meta"))
        outs = [self.out(n, i if len(metas) > 1 else None) for i in range(max(len(metas), 1))]
        self.graph.add_node(
            f"fx::{what}",
            self.node_name(f"{_scope(n)}/{what}"),
            ins,
            outs,
            {"target": str(n.target)},
            "fx",
        )
        return _regroup(n.meta.get("tensor_meta"), iter(outs)) if len(metas) > 1 else outs[0]

    # ---- dispatch -----------------------------------------------------------------------
    def _node(self, n: Any) -> Any:
        if n.op == "placeholder":
            if "fx_value" in n.meta:
                return n.meta["fx_value"]
            v = self.out(n)
            self.graph.inputs.append(v)
            return v
        if n.op == "output":
            from torch.utils._pytree import tree_leaves

            for v in tree_leaves(self.arg(n.args[0])):
                if isinstance(v, Value) and v not in self.graph.outputs:
                    self.graph.outputs.append(v)
            return None
        if n.op == "get_attr":
            obj = _fetch_attr(self.gm, n.target)
            if _has_tensor(obj) and hasattr(obj, "shape"):
                return self.tensor_const(n.target, obj)
            return obj
        if "fx_value" in n.meta:
            value = n.meta["fx_value"]
            if _has_tensor(value):
                return self.const(n.name, _numpy(value))
            return value
        import drpopt.ir.fx_attention  # registers the transformer rules
        import drpopt.ir.fx_functions  # noqa: F401 (registers the function rules)
        from drpopt.ir.fx_ops import FUNCTION_RULES, MODULE_RULES, _target_key, _target_name

        if n.op == "call_module":
            mod = self.modules[n.target]
            fn = MODULE_RULES.get(type(mod)) or MODULE_RULES.get(getattr(mod, "drpopt_fx_as", None))
            if fn is None:
                return self.unsupported(n, type(mod).__name__)
            return fn(self, n, mod)
        key = _target_key(n)
        fn = FUNCTION_RULES.get(key) if key else None
        if fn is None:
            return self.unsupported(n, key or _target_name(n))
        args, kwargs = self.arg(n.args), self.arg(n.kwargs)
        return fn(self, n, key, args, kwargs)


def _scope(n: Any) -> str:
    """The exporter's scope of a node: ``/features/features.0/features.0.0`` (a numbered
    child takes its parent's name as prefix), so node names match ``torch.onnx.export``'s."""
    segments: list[str] = []
    for qualname in n.meta.get("nn_module_stack") or {}:
        attr = str(qualname).rsplit(".", 1)[-1]
        if attr.isdigit() and segments:
            attr = f"{segments[-1]}.{attr}"
        segments.append(attr)
    return "".join(f"/{s}" for s in segments)


def _regroup(meta: Any, outs: Any) -> Any:
    from torch.fx.passes.shape_prop import TensorMetadata

    if isinstance(meta, TensorMetadata):
        return next(outs)
    if isinstance(meta, dict):
        return {k: _regroup(v, outs) for k, v in meta.items()}
    if isinstance(meta, list | tuple):
        return type(meta)(_regroup(v, outs) for v in meta)
    return meta


def _fetch_attr(gm: Any, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
