"""A small ONNX graph builder for models made in code: it keeps track of shapes so layers
only need their output widths, names every node predictably, and fills weights from a
seeded generator (so tests are repeatable and nothing is downloaded)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = tuple[int, ...]


class OnnxBuilder:
    """Builds an ONNX graph layer by layer.

    Every method takes value names and returns the output value name. Node names are
    ``<name>`` when given, else ``<op>_<n>``; weights are ``<node>.weight``, ``<node>.bias``
    and so on, which is what tests assert against.
    """

    def __init__(self, name: str = "model", opset: int = 17, seed: int = 0) -> None:
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.shapes: dict[str, Shape] = {}
        self._counter: dict[str, int] = {}

    # ---- plumbing -------------------------------------------------------------------
    def _name(self, op: str, name: str | None) -> str:
        if name:
            return name
        n = self._counter.get(op, 0)
        self._counter[op] = n + 1
        return f"{op.lower()}_{n}"

    def const(self, name: str, array: np.ndarray) -> str:
        """Adds an initializer and returns its name."""
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        self.shapes[name] = tuple(np.asarray(array).shape)
        return name

    def _weight(self, name: str, shape: Sequence[int], fan_in: int) -> str:
        std = math.sqrt(2.0 / max(fan_in, 1))
        return self.const(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def input(self, name: str, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        self.shapes[name] = tuple(1 if isinstance(d, str) else d for d in shape)
        return name

    def output(self, value: str) -> None:
        self.outputs.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        shape: Shape | None,
        name: str | None = None,
        n_out: int = 1,
        out_shapes: Sequence[Shape] | None = None,
        **attrs,
    ) -> str:
        """Adds any node; ``shape`` is its (first) output's shape, when known."""
        node_name = self._name(op_type, name)
        outs = [node_name if i == 0 else f"{node_name}:{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        if out_shapes is not None:
            for o, s in zip(outs, out_shapes, strict=True):
                self.shapes[o] = tuple(s)
        elif shape is not None:
            self.shapes[outs[0]] = tuple(shape)
        return outs[0] if n_out == 1 else outs  # type: ignore[return-value]

    # ---- layers ---------------------------------------------------------------------
    def conv(
        self,
        x: str,
        out_ch: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad: int | None = None,
        name: str | None = None,
    ) -> str:
        n, c, h, w = self.shapes[x]
        pad = k // 2 if pad is None else pad
        node = self._name("Conv", name)
        ins = [x, self._weight(f"{node}.weight", (out_ch, c // groups, k, k), c // groups * k * k)]
        if bias:
            ins.append(
                self.const(
                    f"{node}.bias", self.rng.standard_normal(out_ch).astype(np.float32) * 0.1
                )
            )
        oh = (h + 2 * pad - k) // stride + 1
        ow = (w + 2 * pad - k) // stride + 1
        return self.op(
            "Conv",
            ins,
            (n, out_ch, oh, ow),
            name=node,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
        )

    def conv_transpose(
        self, x: str, out_ch: int, k: int = 2, stride: int = 2, name: str | None = None
    ) -> str:
        n, c, h, w = self.shapes[x]
        node = self._name("ConvTranspose", name)
        wgt = self._weight(f"{node}.weight", (c, out_ch, k, k), c * k * k)
        b = self.const(f"{node}.bias", self.rng.standard_normal(out_ch).astype(np.float32) * 0.1)
        shape = (n, out_ch, (h - 1) * stride + k, (w - 1) * stride + k)
        return self.op(
            "ConvTranspose",
            [x, wgt, b],
            shape,
            name=node,
            kernel_shape=[k, k],
            strides=[stride, stride],
        )

    def bn(self, x: str, name: str | None = None) -> str:
        c = self.shapes[x][1]
        node = self._name("BatchNormalization", name)
        r = self.rng
        ins = [
            x,
            self.const(f"{node}.weight", (1.0 + 0.1 * r.standard_normal(c)).astype(np.float32)),
            self.const(f"{node}.bias", (0.1 * r.standard_normal(c)).astype(np.float32)),
            self.const(f"{node}.running_mean", (0.1 * r.standard_normal(c)).astype(np.float32)),
            self.const(f"{node}.running_var", (1.0 + 0.1 * r.random(c)).astype(np.float32)),
        ]
        return self.op("BatchNormalization", ins, self.shapes[x], name=node, epsilon=1e-5)

    def unary(self, op_type: str, x: str, name: str | None = None, **attrs) -> str:
        return self.op(op_type, [x], self.shapes[x], name=name, **attrs)

    def relu(self, x: str, name: str | None = None) -> str:
        return self.unary("Relu", x, name)

    def sigmoid(self, x: str, name: str | None = None) -> str:
        return self.unary("Sigmoid", x, name)

    def silu(self, x: str, name: str | None = None) -> str:
        """SiLU in the Sigmoid*Mul form torch exports."""
        s = self.sigmoid(x, name=f"{name}.sigmoid" if name else None)
        return self.binary("Mul", x, s, name=name)

    def relu6(self, x: str, name: str | None = None) -> str:
        node = self._name("Clip", name)
        lo = self.const(f"{node}.min", np.array(0.0, np.float32))
        hi = self.const(f"{node}.max", np.array(6.0, np.float32))
        return self.op("Clip", [x, lo, hi], self.shapes[x], name=node)

    def binary(self, op_type: str, a: str, b: str, name: str | None = None) -> str:
        shape = tuple(np.broadcast_shapes(self.shapes[a], self.shapes[b]))
        return self.op(op_type, [a, b], shape, name=name)

    def add(self, a: str, b: str, name: str | None = None) -> str:
        return self.binary("Add", a, b, name)

    def mul(self, a: str, b: str, name: str | None = None) -> str:
        return self.binary("Mul", a, b, name)

    def concat(self, xs: Sequence[str], axis: int = 1, name: str | None = None) -> str:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        return self.op("Concat", list(xs), tuple(shape), name=name, axis=axis)

    def split(
        self, x: str, sizes: Sequence[int], axis: int = 1, name: str | None = None
    ) -> list[str]:
        node = self._name("Split", name)
        shapes = []
        for s in sizes:
            shape = list(self.shapes[x])
            shape[axis] = s
            shapes.append(tuple(shape))
        if self.opset < 13:  # split sizes were an attribute before opset 13
            ins, attrs = [x], {"split": list(sizes)}
        else:
            ins, attrs = [x, self.const(f"{node}.split", np.array(sizes, np.int64))], {}
        outs = self.op(
            "Split", ins, None, name=node, n_out=len(sizes), out_shapes=shapes, axis=axis, **attrs
        )
        return outs if isinstance(outs, list) else [outs]

    def slice(
        self,
        x: str,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        steps: Sequence[int] | None = None,
        name: str | None = None,
    ) -> str:
        node = self._name("Slice", name)
        steps = list(steps) if steps is not None else [1] * len(axes)
        shape = list(self.shapes[x])
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            shape[a] = len(range(*slice(s, e, st).indices(shape[a])))
        ins = [
            x,
            self.const(f"{node}.starts", np.array(starts, np.int64)),
            self.const(f"{node}.ends", np.array(ends, np.int64)),
            self.const(f"{node}.axes", np.array(axes, np.int64)),
            self.const(f"{node}.steps", np.array(steps, np.int64)),
        ]
        return self.op("Slice", ins, tuple(shape), name=node)

    def maxpool(
        self, x: str, k: int, stride: int = 1, pad: int | None = None, name: str | None = None
    ) -> str:
        n, c, h, w = self.shapes[x]
        pad = k // 2 if pad is None else pad
        shape = (n, c, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        return self.op(
            "MaxPool",
            [x],
            shape,
            name=name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
        )

    def avgpool(self, x: str, k: int, stride: int, name: str | None = None) -> str:
        n, c, h, w = self.shapes[x]
        shape = (n, c, (h - k) // stride + 1, (w - k) // stride + 1)
        return self.op(
            "AveragePool", [x], shape, name=name, kernel_shape=[k, k], strides=[stride, stride]
        )

    def gap(self, x: str, name: str | None = None) -> str:
        n, c = self.shapes[x][:2]
        return self.op("GlobalAveragePool", [x], (n, c, 1, 1), name=name)

    def resize(self, x: str, scale: int = 2, name: str | None = None) -> str:
        n, c, h, w = self.shapes[x]
        node = self._name("Resize", name)
        scales = self.const(f"{node}.scales", np.array([1, 1, scale, scale], np.float32))
        roi = "" if self.opset >= 13 else self.const(f"{node}.roi", np.zeros(0, np.float32))
        return self.op(
            "Resize", [x, roi, scales], (n, c, h * scale, w * scale), name=node, mode="nearest"
        )

    def flatten(self, x: str, axis: int = 1, name: str | None = None) -> str:
        shape = self.shapes[x]
        return self.op(
            "Flatten", [x], (math.prod(shape[:axis]), math.prod(shape[axis:])), name=name, axis=axis
        )

    def reshape(self, x: str, shape: Sequence[int], name: str | None = None) -> str:
        node = self._name("Reshape", name)
        target = self.const(f"{node}.shape", np.array(shape, np.int64))
        # ONNX Reshape (allowzero=0): a 0 copies the input's dimension at that index.
        out = [self.shapes[x][i] if d == 0 else d for i, d in enumerate(shape)]
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = math.prod(self.shapes[x]) // known
        return self.op("Reshape", [x, target], tuple(out), name=node)

    def transpose(self, x: str, perm: Sequence[int], name: str | None = None) -> str:
        shape = tuple(self.shapes[x][p] for p in perm)
        return self.op("Transpose", [x], shape, name=name, perm=list(perm))

    def gemm(self, x: str, out_features: int, name: str | None = None) -> str:
        n, k = self.shapes[x]
        node = self._name("Gemm", name)
        w = self._weight(f"{node}.weight", (out_features, k), k)
        b = self.const(
            f"{node}.bias", self.rng.standard_normal(out_features).astype(np.float32) * 0.1
        )
        return self.op("Gemm", [x, w, b], (n, out_features), name=node, transB=1)

    def matmul(self, x: str, out_features: int, name: str | None = None) -> str:
        shape = self.shapes[x]
        node = self._name("MatMul", name)
        w = self._weight(f"{node}.weight", (shape[-1], out_features), shape[-1])
        return self.op("MatMul", [x, w], (*shape[:-1], out_features), name=node)

    # ---- finish ---------------------------------------------------------------------
    def build(self, check: bool = True, infer_shapes: bool = True) -> onnx.ModelProto:
        """Returns the model, checked by onnx.checker and shape-inferred."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="drpopt.zoo"
        )
        model.ir_version = min(model.ir_version, 8)
        if infer_shapes:
            model = onnx.shape_inference.infer_shapes(model)
        if check:
            onnx.checker.check_model(model)
        return model
