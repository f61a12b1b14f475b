"""Consumer layers as matrices: Conv (2-D, grouped and depthwise included), Gemm and MatMul
seen as ``y = W x + b`` per conv group, for bias correction and reconstruction.

Rules:
- a layer's *features* are what one output value reads: for a conv, the (input channel,
  kernel row, kernel column) patch of its conv group (im2col order, matching
  ``W[o, c, i, j]``), for Gemm/MatMul the input row;
- ``features`` samples output positions (``positions`` per sample, fixed by ``rng``) and
  returns patches and the target rows at the same positions, so memory stays bounded;
- ``mean_features`` is the exact mean patch over every output position (zero padding
  included), from shifted strided windows;
- a layer without a bias gets one: a Conv or Gemm input, or an ``Add`` after a MatMul (an
  ``Add`` of a per-channel constant right after it is used when there is one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from drpopt.ir.core import Graph, Node

log = logging.getLogger(__name__)


@dataclass
class Linear:
    """One Conv/Gemm/MatMul with a constant weight, as per-group matrices."""

    node: Node
    kind: str  # "conv" | "gemm" | "matmul"
    groups: int = 1

    @property
    def x(self) -> str:
        return self.node.inputs[0].name  # type: ignore[union-attr]

    @property
    def y(self) -> str:
        return self.node.outputs[0].name

    @property
    def weight(self) -> str:
        return self.node.inputs[1].name  # type: ignore[union-attr]

    @property
    def channel_axis(self) -> int:
        return 1 if self.kind in ("conv", "gemm") else -1

    # ---- weights as matrices ----------------------------------------------------------
    def matrices(self, w: np.ndarray) -> list[np.ndarray]:
        """Per conv group, the (outputs of the group, features) matrix of weight ``w``."""
        w = np.asarray(w, np.float64)
        if self.kind == "conv":
            cout = w.shape[0]
            per = cout // self.groups
            return [w[g * per : (g + 1) * per].reshape(per, -1) for g in range(self.groups)]
        if self.kind == "gemm":
            alpha = float(self.node.attr("alpha", 1.0))
            mat = w if int(self.node.attr("transB", 0)) else w.T
            return [alpha * mat]
        return [w.T]

    def from_matrices(self, mats: list[np.ndarray], like: np.ndarray) -> np.ndarray:
        """The weight tensor (shape and dtype of ``like``) holding ``mats``."""
        if self.kind == "conv":
            out = np.concatenate(mats, axis=0).reshape(like.shape)
        elif self.kind == "gemm":
            alpha = float(self.node.attr("alpha", 1.0))
            mat = mats[0] / alpha
            out = mat if int(self.node.attr("transB", 0)) else mat.T
        else:
            out = mats[0].T
        return np.ascontiguousarray(out, dtype=like.dtype)

    def feature_channels(self, in_channels: int) -> list[np.ndarray]:
        """Per conv group, the input channel index of each feature."""
        if self.kind != "conv":
            return [np.arange(in_channels)]
        w = self.node.inputs[1].const  # type: ignore[union-attr]
        per = in_channels // self.groups
        k = math.prod(w.shape[2:])
        return [np.repeat(np.arange(g * per, (g + 1) * per), k) for g in range(self.groups)]

    # ---- bias -------------------------------------------------------------------------
    def bias(self, graph: Graph) -> np.ndarray:
        """The effective per-output bias (zeros when the layer has none)."""
        cout = self.out_channels()
        if self.kind == "conv":
            b = self.node.input(2)
            return np.zeros(cout) if b is None else np.asarray(b.const, np.float64).ravel()
        if self.kind == "gemm":
            c = self.node.input(2)
            if c is None:
                return np.zeros(cout)
            beta = float(self.node.attr("beta", 1.0))
            return beta * np.broadcast_to(np.asarray(c.const, np.float64).ravel(), (cout,))
        add = self._matmul_add()
        if add is None:
            return np.zeros(cout)
        return np.broadcast_to(np.asarray(add[1].const, np.float64).ravel(), (cout,)).copy()

    def set_bias(self, graph: Graph, b: np.ndarray, dense: dict[str, np.ndarray]) -> None:
        """Sets the effective bias to ``b``, adding a bias where the layer has none; the
        dense value (the old bias, or zeros) goes into ``dense`` so later passes can still
        build the dense model."""
        dtype = np.asarray(self.node.inputs[1].const).dtype  # type: ignore[union-attr]
        existing = self.node.input(2) if self.kind != "matmul" else None
        if self.kind == "matmul" and self._matmul_add() is not None:
            existing = self._matmul_add()[1]
        if existing is not None and existing.const is not None:
            dense.setdefault(existing.name, np.asarray(existing.const))  # the dense bias
        if self.kind == "conv":
            old = self.node.input(2)
            v = graph.set_const_input(self.node, 2, b.astype(dtype))
            if old is None:
                dense[v.name] = np.zeros_like(v.const)
        elif self.kind == "gemm":
            beta = float(self.node.attr("beta", 1.0))
            old = self.node.input(2)
            shape = (len(b),) if old is None else np.asarray(old.const).shape
            if old is None and beta == 0.0:
                self.node.attrs["beta"] = beta = 1.0
            v = graph.set_const_input(self.node, 2, (b / beta).reshape(shape).astype(dtype))
            if old is None:
                dense[v.name] = np.zeros_like(v.const)
        else:
            add = self._matmul_add()
            if add is None:
                add = self._insert_add(graph, dtype)
                dense[add[1].name] = np.zeros_like(add[1].const)
            node, const = add
            shape = np.asarray(const.const).shape
            graph.set_const_input(node, node.inputs.index(const), b.reshape(shape).astype(dtype))

    def _matmul_add(self):
        y = self.node.outputs[0]
        if len(y.uses) != 1:
            return None
        node, _ = y.uses[0]
        if node.op_type != "Add":
            return None
        other = [v for v in node.inputs if v is not None and v is not y]
        if len(other) != 1 or other[0].const is None:
            return None
        c = np.asarray(other[0].const)
        if c.size != self.out_channels() or (c.ndim and c.shape[-1] != c.size):
            return None
        return node, other[0]

    def _insert_add(self, graph: Graph, dtype):
        y = self.node.outputs[0]
        mid = graph.value(graph.fresh_name(f"{y.name}_nobias"), shape=y.shape, dtype=y.dtype)
        self.node.outputs[0] = mid
        mid.producer = self.node
        const = graph.value(
            graph.fresh_name(f"{self.node.name}.bias"),
            const=np.zeros(self.out_channels(), dtype=dtype),
            shape=(self.out_channels(),),
            dtype=np.dtype(dtype),
        )
        name = graph.fresh_name(f"{self.node.name}_bias")
        add = graph.add_node("Add", name, [mid, const], [y], after=self.node)
        return add, const

    def out_channels(self) -> int:
        w = np.asarray(self.node.inputs[1].const)  # type: ignore[union-attr]
        if self.kind == "conv":
            return int(w.shape[0])
        if self.kind == "gemm":
            return int(w.shape[0] if int(self.node.attr("transB", 0)) else w.shape[1])
        return int(w.shape[1])

    # ---- data -------------------------------------------------------------------------
    def _conv_geometry(self, x_shape: tuple[int, ...]):
        w = self.node.inputs[1].const  # type: ignore[union-attr]
        k = w.shape[2:]
        s = list(self.node.attr("strides", [1, 1]))
        d = list(self.node.attr("dilations", [1, 1]))
        pads = list(self.node.attr("pads", [0, 0, 0, 0]))
        auto = self.node.attr("auto_pad", "NOTSET")
        size = x_shape[2:]
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for a in range(2):
                out = -(-size[a] // s[a])
                total = max(0, (out - 1) * s[a] + (k[a] - 1) * d[a] + 1 - size[a])
                lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads[a], pads[a + 2] = lo, total - lo
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        out_hw = [
            (size[a] + pads[a] + pads[a + 2] - (k[a] - 1) * d[a] - 1) // s[a] + 1 for a in range(2)
        ]
        return k, s, d, pads, out_hw

    def _padded(self, x: np.ndarray, pads) -> np.ndarray:
        if not any(pads):
            return x
        return np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))

    def features(
        self, x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator, positions: int
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """(per-group patches (S, F_g), target rows (S, C_out) of ``y`` at the same
        positions) for ``positions`` sampled outputs per sample (all when fewer)."""
        if self.kind != "conv":
            x2 = x.reshape(-1, x.shape[-1]) if self.kind == "matmul" else x
            y2 = None if y is None else y.reshape(-1, y.shape[-1])
            limit = positions * (x.shape[0] if x.ndim > 2 else 1)
            if self.kind == "matmul" and x2.shape[0] > limit:
                rows = np.sort(rng.choice(x2.shape[0], limit, replace=False))
                x2, y2 = x2[rows], None if y2 is None else y2[rows]
            return [np.asarray(x2, np.float32)], y2
        k, s, d, pads, (oh_n, ow_n) = self._conv_geometry(x.shape)
        n = x.shape[0]
        total = oh_n * ow_n
        if total <= positions:
            flat = np.tile(np.arange(total), n)
            nidx = np.repeat(np.arange(n), total)
        else:
            flat = np.concatenate([rng.choice(total, positions, replace=False) for _ in range(n)])
            nidx = np.repeat(np.arange(n), positions)
        oh, ow = flat // ow_n, flat % ow_n
        xp = self._padded(x, pads)
        rows = oh[:, None] * s[0] + np.arange(k[0])[None, :] * d[0]
        cols = ow[:, None] * s[1] + np.arange(k[1])[None, :] * d[1]
        patches = xp[nidx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # S,kh,kw,C
        patches = np.ascontiguousarray(np.moveaxis(patches, 3, 1), np.float32)  # S,C,kh,kw
        per = x.shape[1] // self.groups
        feats = [
            patches[:, g * per : (g + 1) * per].reshape(len(flat), -1) for g in range(self.groups)
        ]
        target = None if y is None else y[nidx, :, oh, ow]
        return feats, target

    def mean_features(self, x: np.ndarray) -> list[np.ndarray]:
        """Per conv group, the mean patch over every output position of ``x``."""
        x = np.asarray(x, np.float64)
        if self.kind != "conv":
            return [x.reshape(-1, x.shape[-1]).mean(axis=0)]
        k, s, d, pads, (oh_n, ow_n) = self._conv_geometry(x.shape)
        xp = self._padded(x, pads)
        m = np.zeros((x.shape[1], k[0], k[1]))
        for i in range(k[0]):
            for j in range(k[1]):
                r0, c0 = i * d[0], j * d[1]
                win = xp[
                    :,
                    :,
                    r0 : r0 + s[0] * (oh_n - 1) + 1 : s[0],
                    c0 : c0 + s[1] * (ow_n - 1) + 1 : s[1],
                ]
                m[:, i, j] = win.mean(axis=(0, 2, 3))
        per = x.shape[1] // self.groups
        return [m[g * per : (g + 1) * per].ravel() for g in range(self.groups)]


def as_linear(node: Node) -> Linear | None:
    """The Linear view of ``node``, or None when it is not a supported layer."""
    w = node.input(1)
    x = node.input(0)
    if w is None or w.const is None or x is None or x.const is not None:
        return None
    w_arr = np.asarray(w.const)
    if node.op_type == "Conv" and w_arr.ndim == 4:
        return Linear(node, "conv", int(node.attr("group", 1)))
    if node.op_type == "Gemm" and w_arr.ndim == 2 and not int(node.attr("transA", 0)):
        c = node.input(2)
        if c is not None and (c.const is None or np.asarray(c.const).size != _n(node)):
            return None
        return Linear(node, "gemm")
    if node.op_type == "MatMul" and w_arr.ndim == 2:
        return Linear(node, "matmul")
    return None


def _n(node: Node) -> int:
    w = np.asarray(node.inputs[1].const)  # type: ignore[union-attr]
    return int(w.shape[0] if int(node.attr("transB", 0)) else w.shape[1])
