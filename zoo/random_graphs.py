"""Random DAG CNNs built with :class:`~drpopt.zoo.builder.OnnxBuilder`, for property tests and
scaling benchmarks.

``random_model(seed, n_blocks)`` draws a stem conv and ``n_blocks`` blocks among conv + BN +
ReLU/SiLU, depthwise conv (channel multiplier 1 or 2), grouped conv, residual Add (with a
1x1 projection when channels differ), Concat, unequal channel Split whose parts feed different
later layers, an SE block, MaxPool 3x3/1, nearest x2 Resize, channel Slice, BatchNorm and
PRelu. Besides the main chain it keeps up to three open branches (split parts and side
paths) that later blocks grow or merge; the rest are merged before the head (Concat when the
spatial sizes agree, else GlobalAveragePool + 1x1 conv + broadcast Add). The head is either
GAP, Flatten, Gemm or a 1x1 conv output ``[1, C, H, W]`` plus Flatten + Gemm on a map with
spatial size above 1. Every model passes ``onnx.checker`` and runs in onnxruntime.

``hypothesis_models()`` is a hypothesis strategy over such models; ``large_model(n_nodes)``
builds a graph of about ``n_nodes`` nodes (tiny tensors, unchecked) in linear time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from drpopt.zoo.builder import OnnxBuilder

__all__ = ["BLOCKS", "hypothesis_models", "large_model", "random_model"]

BLOCKS: tuple[str, ...] = (
    "conv",
    "depthwise",
    "grouped",
    "residual",
    "concat",
    "split",
    "se",
    "maxpool",
    "resize",
    "slice",
    "bn",
    "prelu",
)
"""The block kinds ``random_model`` draws from (pass a subset as ``blocks=``)."""

_INT64_MAX = int(np.iinfo(np.int64).max)
_MAX_OPEN = 3  # open branches besides the main chain
_WINDOW = 24  # how far back partners for Add / Concat are searched (keeps building linear)


class _Gen:
    """The state of one random model: the builder, open branches and recent tensors."""

    def __init__(
        self,
        b: OnnxBuilder,
        rng: np.random.Generator,
        width: int,
        image: int,
        blocks: Sequence[str],
    ) -> None:
        self.b = b
        self.rng = rng
        self.cmax = 3 * width  # channel counts chosen by convs lie in [2, cmax]
        self.cat_max = 4 * width  # concat results stay at or below this when they can
        self.hmax = 2 * image
        self.blocks = tuple(blocks)
        self.open: list[str] = []  # open[0] is the main chain
        self.recent: list[str] = []
        self.n_prelu = 0

    # ---- helpers --------------------------------------------------------------------
    def shape(self, x: str) -> tuple[int, ...]:
        return self.b.shapes[x]

    def chans(self) -> int:
        return int(self.rng.integers(2, self.cmax + 1))

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def remember(self, x: str) -> str:
        self.recent.append(x)
        if len(self.recent) > 4 * _WINDOW:
            del self.recent[: len(self.recent) - _WINDOW]
        return x

    def window(self) -> list[str]:
        return list(dict.fromkeys(self.recent[-_WINDOW:] + self.open))

    def consume(self, partner: str, target: str) -> None:
        """An open branch other than the target, merged into the target, is closed."""
        if partner != target and partner in self.open:
            self.open.remove(partner)

    def act(self, x: str) -> str:
        kind = self.rng.integers(3)
        if kind == 0:
            return self.b.relu(x)
        if kind == 1:
            return self.b.silu(x)
        return x

    # ---- blocks (each maps the target tensor to a new tensor) -----------------------
    def conv(self, x: str, stride: int | None = None) -> str:
        h = self.shape(x)[2]
        if stride is None:
            stride = 2 if (h >= 4 and self.coin(0.2)) else 1
        k = 3 if (stride == 2 or self.coin(0.6)) else 1
        y = self.b.conv(x, self.chans(), k=k, stride=stride, bias=self.coin(0.3))
        return self.act(self.b.bn(y))

    def depthwise(self, x: str) -> str:
        c = self.shape(x)[1]
        mult = 2 if (2 * c <= self.cat_max and self.coin(0.3)) else 1
        y = self.b.conv(x, c * mult, k=3, groups=c, bias=self.coin(0.3))
        return self.act(self.b.bn(y))

    def grouped(self, x: str) -> str:
        c = self.shape(x)[1]
        gs = [g for g in (2, 4) if c % g == 0]
        if not gs:
            return self.conv(x)
        g = self.pick(gs)
        out = g * int(self.rng.integers(max(1, 2 // g), max(1, self.cmax // g) + 1))
        y = self.b.conv(x, out, k=self.pick((1, 3)), groups=g, bias=self.coin(0.3))
        return self.act(self.b.bn(y))

    def residual(self, x: str) -> str:
        shape = self.shape(x)
        cands = [t for t in self.window() if t != x]
        same = [t for t in cands if self.shape(t) == shape]
        spatial = [t for t in cands if self.shape(t)[2:] == shape[2:]]
        if same and (not spatial or self.coin(0.7)):
            other = self.pick(same)
            self.consume(other, x)
        elif spatial:
            other = self.pick(spatial)
            self.consume(other, x)
            other = self.b.bn(self.b.conv(other, shape[1], k=1, bias=False))
        else:  # a plain residual block on x itself
            other = self.b.bn(self.b.conv(x, shape[1], k=3, bias=False))
        y = self.b.add(x, other) if self.coin() else self.b.add(other, x)
        return self.b.relu(y) if self.coin() else y

    def concat(self, x: str) -> str:
        shape = self.shape(x)
        cands = [t for t in self.window() if self.shape(t)[2:] == shape[2:]]
        parts = [x]
        for _ in range(int(self.rng.integers(1, 3))):
            fits = [
                t
                for t in cands
                if sum(self.shape(p)[1] for p in parts) + self.shape(t)[1] <= self.cat_max
            ]
            if not fits:
                break
            parts.append(self.pick(fits))
        if len(parts) == 1:
            return self.conv(x)
        self.rng.shuffle(parts)
        for p in parts:
            self.consume(p, x)
        return self.b.concat(parts)

    def split(self, x: str) -> str:
        c = self.shape(x)[1]
        if c < 2 or len(self.open) > _MAX_OPEN:
            return self.conv(x)
        a = int(self.rng.integers(1, c))
        first, second = self.b.split(x, [a, c - a])
        if self.coin():
            first, second = second, first
        self.open.append(self.remember(second))
        return first

    def se(self, x: str) -> str:
        c = self.shape(x)[1]
        r = int(self.rng.integers(1, max(1, c // 2) + 1))
        s = self.b.gap(x)
        s = self.b.relu(self.b.conv(s, r, k=1))
        s = self.b.sigmoid(self.b.conv(s, c, k=1))
        return self.b.mul(x, s) if self.coin() else self.b.mul(s, x)

    def resize(self, x: str) -> str:
        if 2 * self.shape(x)[2] > self.hmax:
            return self.conv(x, stride=2)
        return self.b.resize(x, 2)

    def slice(self, x: str) -> str:
        c = self.shape(x)[1]
        if c < 3:
            return self.conv(x)
        start = int(self.rng.integers(0, c - 1))
        end = int(self.rng.integers(start + 2, c + 1))
        if start == 0 and end == c:
            end = c - 1
        hi = _INT64_MAX if (end == c and self.coin()) else end
        return self.b.slice(x, [start], [hi], [1])

    def prelu(self, x: str) -> str:
        c = self.shape(x)[1]
        slope = (0.25 + 0.05 * self.rng.standard_normal((c, 1, 1))).astype(np.float32)
        node = f"prelu_{self.n_prelu}"
        self.n_prelu += 1
        return self.b.op(
            "PRelu", [x, self.b.const(f"{node}.slope", slope)], self.shape(x), name=node
        )

    def block(self, kind: str) -> None:
        slot = (
            0
            if (len(self.open) == 1 or self.coin(0.6))
            else int(self.rng.integers(1, len(self.open)))
        )
        x = self.open[slot]
        if kind == "conv":
            y = self.conv(x)
        elif kind == "depthwise":
            y = self.depthwise(x)
        elif kind == "grouped":
            y = self.grouped(x)
        elif kind == "residual":
            y = self.residual(x)
        elif kind == "concat":
            y = self.concat(x)
        elif kind == "split":
            y = self.split(x)
        elif kind == "se":
            y = self.se(x)
        elif kind == "maxpool":
            y = self.b.maxpool(x, 3, stride=1, pad=1)
        elif kind == "resize":
            y = self.resize(x)
        elif kind == "slice":
            y = self.slice(x)
        elif kind == "bn":
            y = self.b.bn(x)
        elif kind == "prelu":
            y = self.prelu(x)
        else:
            raise ValueError(f"unknown block kind {kind!r}; choose among {BLOCKS}")
        # a partner merged into x may have shifted the target's index
        self.open[self.open.index(x)] = self.remember(y)

    # ---- whole model ----------------------------------------------------------------
    def stem(self, x: str) -> None:
        y = self.b.conv(x, self.chans(), k=3, bias=False)
        self.open = [self.remember(self.b.relu(self.b.bn(y)))]

    def merge_open(self) -> str:
        main = self.open[0]
        for p in self.open[1:]:
            if self.shape(p)[2:] == self.shape(main)[2:] and self.coin(0.7):
                main = self.b.concat([main, p] if self.coin() else [p, main])
            else:
                s = self.b.conv(self.b.gap(p), self.shape(main)[1], k=1)
                main = self.b.add(main, s)
            self.remember(main)
        self.open = [main]
        return main

    def head(self, x: str, kind: str, num_classes: int) -> None:
        if kind == "gap":
            self.b.output(self.b.gemm(self.b.flatten(self.b.gap(x)), num_classes))
            return
        if kind != "conv":
            raise ValueError(f"unknown head {kind!r}; choose 'gap' or 'conv'")
        self.b.output(self.b.conv(x, self.chans(), k=1))
        maps = [t for t in self.window() if self.shape(t)[2] * self.shape(t)[3] > 1] or [x]
        self.b.output(self.b.gemm(self.b.flatten(self.pick(maps)), num_classes))


def random_model(
    seed: int,
    n_blocks: int,
    width: int = 8,
    image: int = 16,
    *,
    head: str | None = None,
    blocks: Sequence[str] = BLOCKS,
    num_classes: int = 10,
) -> onnx.ModelProto:
    """A random DAG CNN (opset 17, input ``[1, 3, image, image]``), fixed by ``seed``.

    ``n_blocks`` blocks are drawn uniformly from ``blocks`` (see :data:`BLOCKS`); conv widths
    are drawn from ``[2, 3 * width]``; spatial sizes stay within ``[2, 2 * image]``. ``head``
    is ``"gap"`` (GAP, Flatten, Gemm: one output ``[1, num_classes]``), ``"conv"`` (a 1x1
    conv output ``[1, C, H, W]`` and a Flatten + Gemm output on a map larger than 1x1) or
    None for a random choice. The result is checked and shape-inferred.
    """
    if image < 4:
        raise ValueError(f"image must be at least 4, got {image}")
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    rng = np.random.default_rng([seed, 1])
    b = OnnxBuilder(f"random_{seed}", seed=seed)
    g = _Gen(b, rng, width, image, blocks)
    g.stem(b.input("input", (1, 3, image, image)))
    for _ in range(n_blocks):
        g.block(g.pick(g.blocks))
    x = g.merge_open()
    g.head(x, head or g.pick(("gap", "conv")), num_classes)
    return b.build()


def hypothesis_models(max_blocks: int = 10) -> Any:
    """A hypothesis strategy of ``random_model(seed, n_blocks)`` with
    ``1 <= n_blocks <= max_blocks`` (hypothesis is imported only here)."""
    from hypothesis import strategies as st

    return st.builds(
        random_model,
        seed=st.integers(min_value=0, max_value=2**32 - 1),
        n_blocks=st.integers(min_value=1, max_value=max_blocks),
    )


def large_model(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A random DAG CNN of about ``n_nodes`` nodes (within 10% for ``n_nodes >= 200``).

    Built like :func:`random_model` with widths in ``[2, 12]`` and a 4x4 input, in time linear
    in ``n_nodes`` (partners for Add / Concat come from a window of recent tensors). For
    scaling benchmarks: neither checked nor shape-inferred (``drpopt.analyze`` infers shapes
    itself); the head is GAP, Flatten, Gemm.
    """
    rng = np.random.default_rng([seed, 2])
    b = OnnxBuilder(f"large_{n_nodes}", seed=seed)
    g = _Gen(b, rng, width=4, image=4, blocks=BLOCKS)
    g.stem(b.input("input", (1, 3, 4, 4)))
    # merging up to _MAX_OPEN + 1 branches and the head add at most about 16 nodes
    while len(b.nodes) < n_nodes - 16:
        g.block(g.pick(g.blocks))
    g.head(g.merge_open(), "gap", 10)
    return b.build(check=False, infer_shapes=False)


def chain_model(n_nodes: int, kind: str = "elementwise") -> onnx.ModelProto:
    """A conv then a chain of about ``n_nodes`` nodes, then ``x.view(x.shape[0], -1)`` and
    a Gemm: the graphs that made recursive shape code exponential or quadratic.

    ``kind="elementwise"``: SiLUs (``x * sigmoid(x)``) on the feature map, its ``Shape``
    read after the chain. ``kind="shape"``: the chain is shape arithmetic instead, the batch
    entry of ``Shape(x)`` through alternating ``Add 0`` / ``Mul 1`` before the Reshape.
    Neither checked nor shape-inferred (the analysis infers shapes itself).
    """
    if kind not in ("elementwise", "shape"):
        raise ValueError(f"kind must be 'elementwise' or 'shape', not {kind!r}")
    b = OnnxBuilder(f"{kind}_chain_{n_nodes}", seed=0)
    y = b.conv(b.input("input", (1, 3, 4, 4)), 4, name="conv")
    steps = max(1, (n_nodes - 10) // 2)
    if kind == "elementwise":
        for _ in range(steps):
            y = b.silu(y)
    shape = b.op("Shape", [y], (4,), name="shape")
    batch = b.op("Gather", [shape, b.const("zero", np.array(0))], (), name="batch", axis=0)
    if kind == "shape":
        zero, one = b.const("add0", np.array(0)), b.const("mul1", np.array(1))
        for _ in range(steps):
            batch = b.op("Mul", [b.op("Add", [batch, zero], ()), one], ())
    batch = b.op("Unsqueeze", [batch, b.const("ax0", np.array([0]))], (1,), name="unsq")
    target = b.op("Concat", [batch, b.const("minus1", np.array([-1]))], (2,), name="cat", axis=0)
    flat = b.op("Reshape", [y, target], (1, 64), name="flat")
    b.output(b.gemm(flat, 10, name="fc"))
    return b.build(check=False, infer_shapes=False)
