"""Random small ONNX models over many op kinds, for the property tests of
``test_properties_ops.py``.

A model is a chain of blocks on an NCHW main tensor; each block is drawn as (kind, seed) and
maps the main tensor to a new NCHW tensor, reading earlier tensors of the same spatial size
for its merges (Concat, Add, Max/Min/Where). Kinds (``KINDS``): Conv (grouped, depthwise,
dilated, strided, with or without bias), ConvTranspose, BatchNormalization, Add/Mul/Sub/Div
with broadcast constants ((1,C,1,1), (C,1,1), scalars, (C,) on the last axis of an NHWC
view), Concat and Split/Slice on the channel axis (negative axes, steps, reversals), Gather
of constant channel indices (permutations, selections, repeats), Transpose/Reshape (NHWC
MatMul, Gemm and Einsum with constant weights, channel shuffles, head splits with a Softmax),
Pad (spatial and channel), DepthToSpace/SpaceToDepth, Resize, pools, ReduceMean/ReduceSum
over channels or space (keepdims both), Softmax over channels, LayerNormalization over the
last axis of an NHWC view, Sigmoid/HardSwish gates, Where/Max/Min, Expand, Tile and
Unsqueeze/Squeeze. The head is the main tensor, a 1x1 conv, or GAP + Flatten + Gemm.

Hypothesis shrinks a failing model to fewer and simpler blocks (kinds early in ``KINDS``,
seed 0): ``describe`` names a model's blocks in one line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from hypothesis import strategies as st
from random_ops_more import MoreBlocks

from drpopt.zoo.builder import OnnxBuilder

KINDS: tuple[str, ...] = (
    "conv",
    "bn",
    "act",
    "affine",
    "convT",
    "concat",
    "split",
    "slice",
    "gather",
    "linear",
    "shuffle",
    "heads",
    "pad",
    "d2s",
    "s2d",
    "resize",
    "pool",
    "global",
    "reduce",
    "softmax",
    "layernorm",
    "gate",
    "minmax",
    "expand",
    "tile",
    "squeeze",
    "residual",
    "shared",
    "dynreshape",
    "conv1d",
    "maxout",
    "sum",
    "groupnorm",
    "plainnorm",
    "nhwccat",
    "cast",
    "leftmatmul",
    "tfweight",
    "selfmerge",
    "pick",
    "nhwcsoftmax",
    "samepad",
    "coordcat",
    "posembed",
    "attention",
    "mlp",
)
HEADS = ("plain", "conv", "gemm", "two", "flat")

_CMAX = 24  # channel counts stay at or below this (a few above for concat / tile)
_INT64_MIN = int(np.iinfo(np.int64).min)


class _Gen(MoreBlocks):
    """The state of one model: the builder, the main tensor and earlier 4-D tensors."""

    def __init__(self, b: OnnxBuilder, x: str) -> None:
        self.b = b
        self.x = x
        self.seen: list[str] = [x]
        self.rng = np.random.default_rng(0)
        self.consts: dict[tuple, list[str]] = {}  # constants by shape, to share (dedup)

    # ---- helpers ----------------------------------------------------------------------
    def s(self, x: str) -> tuple[int, ...]:
        return self.b.shapes[x]

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, seq: Sequence):
        return seq[int(self.rng.integers(len(seq)))]

    def chans(self, lo: int = 2, hi: int = 16) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def const(self, shape: Sequence[int], positive: bool = False) -> str:
        """A new constant, or (one time in four) one of the same shape made before: the
        deduplicated initializers onnxsim leaves, shared between unrelated layers."""
        key = (tuple(shape), positive)
        if self.consts.get(key) and self.coin(0.25):
            return self.pick(self.consts[key])
        name = self.b._name("Const", None)
        arr = self.rng.standard_normal(tuple(shape)).astype(np.float32)
        if positive:
            arr = np.abs(arr) + 0.5
        self.consts.setdefault(key, []).append(name)
        return self.b.const(name, arr)

    def ints(self, values: Sequence[int]) -> str:
        return self.b.const(self.b._name("Ints", None), np.array(values, np.int64))

    def partner(self, x: str, same_channels: bool) -> str:
        """An earlier tensor with x's spatial size (and channels), else a conv of x."""
        _n, c, h, w = self.s(x)
        cands = [
            t
            for t in self.seen
            if t != x and self.s(t)[2:] == (h, w) and (self.s(t)[1] == c or not same_channels)
        ]
        if cands and self.coin(0.7):
            return self.pick(cands)
        return self.conv(x, out=c if same_channels else None, stride=1)

    def axes_op(self, op: str, x: str, axes: Sequence[int], shape, **attrs) -> str:
        """``op`` over ``axes``: an input from opset 13 (Squeeze, Unsqueeze, ReduceSum) or
        18 (the other reductions), an attribute before."""
        since = 13 if op in ("Squeeze", "Unsqueeze", "ReduceSum") else 18
        if self.b.opset >= since:
            return self.b.op(op, [x, self.ints(axes)], shape, **attrs)
        return self.b.op(op, [x], shape, axes=list(axes), **attrs)

    def to_nhwc(self, x: str) -> str:
        return self.b.transpose(x, (0, 2, 3, 1))

    def to_nchw(self, x: str) -> str:
        return self.b.transpose(x, (0, 3, 1, 2))

    # ---- blocks -------------------------------------------------------------------------
    def conv(self, x: str, out: int | None = None, stride: int | None = None) -> str:
        n, c, h, w = self.s(x)
        variant = self.pick(("plain", "grouped", "depthwise", "dilated"))
        k = self.pick((1, 3))
        if stride is None:
            stride = 2 if h >= 4 and w >= 4 and self.coin(0.25) else 1
        dil = 2 if variant == "dilated" and k == 3 else 1
        groups = 1
        if variant == "depthwise" and out is None:
            groups, out = c, c * self.pick((1, 1, 2))
        elif variant == "depthwise" and out == c:
            groups = c
        elif variant == "grouped":
            gs = [g for g in (2, 3, 4) if c % g == 0 and (out is None or out % g == 0)]
            if gs:
                groups = self.pick(gs)
                out = out or groups * int(self.rng.integers(1, _CMAX // groups + 1))
        out = out or self.chans()
        node = self.b._name("Conv", None)
        weight = self.b._weight(f"{node}.weight", (out, c // groups, k, k), c // groups * k * k)
        ins = [x, weight]
        if self.coin():
            ins.append(self.bias(node, out))
        pad = dil * (k // 2)
        oh = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
        ow = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
        return self.b.op(
            "Conv",
            ins,
            (n, out, oh, ow),
            name=node,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            dilations=[dil, dil],
            group=groups,
        )

    def bias(self, node: str, out: int) -> str:
        """A conv bias: its own, or a zero bias shared by every conv of that width (read
        through an Identity, as torch exports share it)."""
        if self.coin(0.3):
            key = ((out,), "zero")
            if not self.consts.get(key):
                zero = self.b.const(self.b._name("Zero", None), np.zeros(out, np.float32))
                self.consts[key] = [zero]
            zero = self.consts[key][0]
            return self.b.op("Identity", [zero], (out,)) if self.coin() else zero
        return self.b.const(f"{node}.bias", self.rng.standard_normal(out).astype("f") * 0.1)

    def bn(self, x: str) -> str:
        return self.b.bn(x)

    def act(self, x: str) -> str:
        op = self.pick(
            ("Relu", "Sigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "PRelu", "Clip")
        )
        if op == "PRelu":
            c = self.s(x)[1]
            slope = self.const(self.pick(((c, 1, 1), (1,), (1, c, 1, 1))))
            return self.b.op("PRelu", [x, slope], self.s(x))
        if op == "Clip":
            return self.b.relu6(x)
        if op == "HardSwish" and self.b.opset < 14:
            return self.b.mul(x, self.b.unary("HardSigmoid", x, alpha=1 / 6))
        return self.b.unary(op, x)

    def affine(self, x: str) -> str:
        _n, c, _h, _w = self.s(x)
        op = self.pick(("Add", "Mul", "Sub", "Div"))
        form = self.pick(("chan", "scalar", "chw", "nhwc", "one"))
        nhwc = form == "nhwc"
        y = self.to_nhwc(x) if nhwc else x
        shape = {"chan": (1, c, 1, 1), "scalar": (), "chw": (c, 1, 1), "nhwc": (c,), "one": (1,)}
        k = self.const(shape[form], positive=op == "Div")
        a, b = (k, y) if op in ("Add", "Mul", "Sub") and self.coin() else (y, k)
        y = self.b.binary(op, a, b)
        return self.to_nchw(y) if nhwc else y

    def convT(self, x: str) -> str:
        n, c, h, w = self.s(x)
        depthwise = self.coin(0.3)
        out = c if depthwise else self.chans()
        groups = c if depthwise else 1
        if not depthwise and c % 2 == 0 and self.coin(0.3):
            groups, out = 2, 2 * self.chans(1, 6)
        stride, k, pad = (2, 2, 0) if h <= 8 and self.coin() else (1, 3, 1)
        extra = 1 if stride == 2 and self.coin(0.3) else 0  # output_padding
        node = self.b._name("ConvTranspose", None)
        weight = self.b._weight(f"{node}.weight", (c, out // groups, k, k), c * k * k)
        ins = [x, weight]
        if self.coin():
            ins.append(
                self.b.const(f"{node}.bias", self.rng.standard_normal(out).astype("f") * 0.1)
            )
        shape = (
            n,
            out,
            (h - 1) * stride + k - 2 * pad + extra,
            (w - 1) * stride + k - 2 * pad + extra,
        )
        attrs = {"output_padding": [extra, extra]} if extra else {}
        return self.b.op(
            "ConvTranspose",
            ins,
            shape,
            name=node,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
            **attrs,
        )

    def concat(self, x: str) -> str:
        parts = [x, self.partner(x, same_channels=False)]
        if self.coin(0.3):
            parts.append(self.partner(x, same_channels=False))
        order = self.rng.permutation(len(parts))
        return self.b.concat([parts[i] for i in order], axis=self.pick((1, -3)))

    def split(self, x: str) -> str:
        c = self.s(x)[1]
        if c < 2:
            return self.conv(x)
        k = 3 if c >= 3 and self.coin(0.4) else 2
        cuts = sorted(self.rng.choice(np.arange(1, c), size=k - 1, replace=False).tolist())
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, c], strict=True)]
        parts = self.b.split(x, sizes, axis=self.pick((1, -3)))
        self.seen.extend(parts)
        how = self.pick(("one", "reorder", "add"))
        if how == "reorder":
            return self.b.concat([parts[i] for i in self.rng.permutation(len(parts))])
        same = [(i, j) for i in range(k) for j in range(i + 1, k) if sizes[i] == sizes[j]]
        if how == "add" and same:
            i, j = self.pick(same)
            return self.b.add(parts[i], parts[j])
        return self.pick(parts)

    def slice(self, x: str) -> str:
        _n, c, h, _w = self.s(x)
        form = self.pick(("range", "step", "reverse", "spatial"))
        axis = self.pick((1, -3))
        if form == "spatial" and h >= 4:
            return self.b.slice(x, [1], [-1], [2])
        if form == "reverse":
            return self.b.slice(x, [-1], [_INT64_MIN], [axis], [-1])
        if form == "step" and c >= 3:
            return self.b.slice(x, [int(self.rng.integers(0, 2))], [c], [axis], [2])
        if c < 2:
            return self.conv(x)
        start = int(self.rng.integers(0, c - 1))
        end = int(self.rng.integers(start + 1, c + 1))
        end = end - c if end < c and self.coin() else end  # a negative end
        return self.b.slice(x, [start], [end if end != 0 else c], [axis])

    def gather(self, x: str) -> str:
        n, c, h, w = self.s(x)
        form = self.pick(("perm", "select", "repeat", "negative"))
        if form == "perm":
            idx = self.rng.permutation(c)
        elif form == "select":
            idx = np.sort(self.rng.choice(c, size=int(self.rng.integers(1, c + 1)), replace=False))
        elif form == "repeat":
            idx = self.rng.integers(0, c, size=int(self.rng.integers(1, c + 3)))
        else:
            idx = self.rng.permutation(c) - c
        node = self.b._name("Gather", None)
        ind = self.b.const(f"{node}.indices", idx.astype(np.int64))
        return self.b.op(
            "Gather", [x, ind], (n, len(idx), h, w), name=node, axis=self.pick((1, -3))
        )

    def linear(self, x: str) -> str:
        n, c, h, w = self.s(x)
        out = self.chans()
        form = self.pick(("matmul", "gemm", "einsum") if self.b.opset >= 12 else ("matmul", "gemm"))
        if form == "einsum":
            weight = self.b._weight(self.b._name("Einsum", None) + ".w", (out, c), c)
            return self.b.op("Einsum", [x, weight], (n, out, h, w), equation="nchw,oc->nohw")
        y = self.to_nhwc(x)
        if form == "matmul":
            y = self.b.matmul(y, out)
            if self.coin():
                y = self.b.add(y, self.const((out,)))
            return self.to_nchw(y)
        y = self.b.reshape(y, (n * h * w, c))
        node = self.b._name("Gemm", None)
        trans = self.coin()
        shape = (out, c) if trans else (c, out)
        ins = [y, self.b._weight(f"{node}.weight", shape, c)]
        if self.coin():
            ins.append(self.const((out,)))
        y = self.b.op("Gemm", ins, (n * h * w, out), name=node, transB=int(trans))
        return self.to_nchw(self.b.reshape(y, (n, h, w, out)))

    def shuffle(self, x: str) -> str:
        n, c, h, w = self.s(x)
        gs = [g for g in (2, 3, 4) if c % g == 0 and c > g]
        if not gs:
            return self.conv(x)
        g = self.pick(gs)
        y = self.b.reshape(x, (n, g, c // g, h, w))
        y = self.b.transpose(y, (0, 2, 1, 3, 4))
        return self.b.reshape(y, (n, c, h, w))

    def heads(self, x: str) -> str:
        n, c, h, w = self.s(x)
        gs = [g for g in (2, 3, 4) if c % g == 0 and c > g]
        if not gs:
            return self.conv(x)
        g = self.pick(gs)
        y = self.b.reshape(x, (n, g, c // g, h * w))
        y = self.b.transpose(y, (0, 1, 3, 2))  # (n, heads, hw, d)
        y = self.b.unary("Softmax", y, axis=-1) if self.coin() else self.b.relu(y)
        y = self.b.transpose(y, (0, 1, 3, 2))
        return self.b.reshape(y, (n, c, h, w))

    def pad(self, x: str) -> str:
        n, c, h, w = self.s(x)
        form = self.pick(("spatial", "channel", "reflect", "crop"))
        pads = [0] * 8
        shape = [n, c, h, w]
        mode = "constant"
        if form == "channel":
            pads[1], pads[5] = int(self.rng.integers(0, 3)), int(self.rng.integers(1, 3))
            if self.coin(0.3):
                pads[1], pads[5] = -1 if c > 2 else 0, pads[5]
            mode = "edge" if pads[1] >= 0 and self.coin(0.3) else "constant"
        elif form == "crop" and h >= 4:
            pads[2], pads[7] = -1, -1
        else:
            pads[2], pads[3], pads[6], pads[7] = 1, 0, 1, 1
            mode = "reflect" if form == "reflect" and min(h, w) >= 2 else "constant"
        for a in range(4):
            shape[a] += pads[a] + pads[a + 4]
        ins = [x, self.ints(pads)]
        if mode == "constant" and self.coin():
            ins.append(self.b.const(self.b._name("Pv", None), np.array(0.5, np.float32)))
        return self.b.op("Pad", ins, tuple(shape), mode=mode)

    def d2s(self, x: str) -> str:
        n, c, h, w = self.s(x)
        if c % 4 or h > 8:
            return self.conv(x, out=4 * self.chans(1, 4))
        return self.b.op(
            "DepthToSpace",
            [x],
            (n, c // 4, 2 * h, 2 * w),
            blocksize=2,
            mode=self.pick(("DCR", "CRD")),
        )

    def s2d(self, x: str) -> str:
        n, c, h, w = self.s(x)
        if h % 2 or w % 2 or c > 6:
            return self.b.maxpool(x, 3, 1)
        return self.b.op("SpaceToDepth", [x], (n, 4 * c, h // 2, w // 2), blocksize=2)

    def resize(self, x: str) -> str:
        n, c, h, w = self.s(x)
        if (h <= 8 and self.coin()) or self.b.opset < 13:
            return self.b.resize(x, 2) if h <= 8 else self.b.maxpool(x, 2, 2, pad=0)
        node = self.b._name("Resize", None)
        oh, ow = max(1, h // 2 + 1), max(1, w // 2 + 1)
        sizes = self.ints((n, c, oh, ow))
        mode = self.pick(("nearest", "linear"))
        return self.b.op("Resize", [x, "", "", sizes], (n, c, oh, ow), name=node, mode=mode)

    def pool(self, x: str) -> str:
        _n, _c, h, _w = self.s(x)
        if h >= 4 and self.coin():
            return self.b.avgpool(x, 2, 2) if self.coin() else self.b.maxpool(x, 2, 2, pad=0)
        return self.b.maxpool(x, 3, 1)

    def global_(self, x: str) -> str:
        n, c, h, w = self.s(x)
        op = self.pick(("GlobalAveragePool", "GlobalMaxPool"))
        p = self.b.op(op, [x], (n, c, 1, 1))
        form = self.pick(("se", "expand", "gemm"))
        if form == "se":
            mid = self.b.relu(self.b.conv(p, self.chans(1, 8), k=1))
            gate = self.b.sigmoid(self.b.conv(mid, c, k=1))
            return self.b.mul(x, gate)
        if form == "expand":
            e = self.b.op("Expand", [p, self.ints((n, c, h, w))], (n, c, h, w))
            return self.b.add(x, e)
        v = self.axes_op("Squeeze", p, (2, 3), (n, c))
        v = self.b.sigmoid(self.b.gemm(v, c))
        v = self.axes_op("Unsqueeze", v, (2, 3), (n, c, 1, 1))
        return self.b.mul(x, v)

    # ---- head ---------------------------------------------------------------------------
    def head(self, x: str, form: str) -> list[str]:
        if form == "conv":
            return [self.b.conv(x, self.chans(), k=1)]
        if form == "gemm":
            return [self.b.gemm(self.b.flatten(self.b.gap(x)), self.chans())]
        if form == "two":
            side = self.pick(self.seen)
            return [self.b.conv(x, self.chans(), k=1), self.b.conv(side, self.chans(), k=1)]
        if form == "flat":  # Flatten of a map (channel-major blocks) into a Gemm
            n, c, h, w = self.s(x)
            if h * w > 16:
                x = self.b.op(
                    "MaxPool", [x], (n, c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2]
                )
            return [self.b.gemm(self.b.flatten(x), self.chans())]
        return [x]


def build_model(
    blocks: Sequence[tuple[str, int]],
    head: str = "conv",
    width: int = 8,
    size: int = 8,
    batch: int = 1,
    opset: int = 17,
) -> onnx.ModelProto:
    """The model of a stem conv, ``blocks`` ((kind, seed) each) and a head, checked by
    onnx.checker."""
    b = OnnxBuilder("random_ops", opset=opset, seed=0)
    x = b.input("x", (batch, 3, size, size))
    gen = _Gen(b, x)
    x = gen.b.relu(gen.b.conv(x, width, k=3))
    gen.seen.append(x)
    for kind, seed in blocks:
        gen.rng = np.random.default_rng(seed)
        x = getattr(gen, f"{kind}_" if kind in ("global", "pick") else kind)(x)
        gen.seen.append(x)
    gen.rng = np.random.default_rng(len(blocks))
    for out in gen.head(x, head):  # shapes given: inference cannot see through Shape ops
        b.outputs.append(
            onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, b.shapes[out])
        )
    return b.build()


def describe(
    blocks: Sequence[tuple[str, int]],
    head: str,
    width: int,
    size: int,
    batch: int = 1,
    opset: int = 17,
) -> str:
    """One line naming a model, to paste into ``@example``."""
    return f"build_model({list(blocks)!r}, {head!r}, {width}, {size}, {batch}, {opset})"


@st.composite
def model_specs(draw, max_blocks: int = 6) -> tuple:
    """(blocks, head, width, size, batch, opset) for ``build_model``."""
    blocks = draw(
        st.lists(
            st.tuples(st.sampled_from(KINDS), st.integers(0, 2**16)),
            min_size=1,
            max_size=max_blocks,
        )
    )
    head = draw(st.sampled_from(HEADS))
    width = draw(st.sampled_from((8, 4, 6, 12)))
    size = draw(st.sampled_from((8, 6, 4)))
    batch = draw(st.sampled_from((1, 2)))
    return blocks, head, width, size, batch, draw(st.sampled_from((17, 13, 11, 18)))
