"""Shape arithmetic read statically equals what onnxruntime computes.

Random graphs of the ops exporters write for shapes (Shape, Gather, Slice, Concat,
Unsqueeze/Squeeze, Reshape, Transpose, Cast, ConstantOfShape, Where and the arithmetic
ops, with numpy broadcasting between scalars and 1-D tensors), run in onnxruntime: every
tensor ``shape_values`` reads must hold the numbers onnxruntime gives, and every entry
``shape_entries`` reads symbolically must be that number too (a literal, or a ``Dim`` of
the input whose size it is). All these ops are readable, so nothing may come back None
(but a ConstantOfShape of a size known only at run time, symbolically).
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.shape_expr import DERIVED, NumericMemo, shape_entries, shape_values
from drpopt.ir.shape_resolve import entry_dim

X_SHAPE = (2, 3, 5, 7)


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = [helper.make_node("Shape", ["x"], ["s0"])]
        self.inits: list[onnx.TensorProto] = []
        # name -> (rank, length (1 for rank 0), positive, non-negative)
        self.pool: dict[str, tuple[int, int, bool, bool]] = {"s0": (1, 4, True, True)}

    def const(self, arr: np.ndarray) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.int64), name))
        return name

    def add(self, op: str, inputs: list[str], meta, **attrs) -> str:
        name = f"v{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [name], **attrs))
        if meta is not None:
            self.pool[name] = meta
        return name

    def pick(self, rank: int | None = None, positive: bool = False, nonneg: bool = False):
        names = [
            n
            for n, (r, _, pos, nn) in self.pool.items()
            if (rank is None or r == rank) and (pos or not positive) and (nn or not nonneg)
        ]
        return self.rng.choice(names) if names else None

    def step(self) -> None:
        rng, pool = self.rng, self.pool
        op = rng.choice(
            [
                "gather",
                "slice",
                "concat",
                "binary",
                "divmod",
                "where",
                "unsqueeze",
                "squeeze",
                "reshape",
                "transpose",
                "cast",
                "cos",
                "const",
            ]
        )
        a = self.pick()
        r, n, pos, nn = pool[a]
        if op == "gather" and r == 1:
            idx = rng.randrange(-n, n)
            shaped = np.array(idx) if rng.random() < 0.5 else np.array([idx, rng.randrange(n)])
            rank, length = (0, 1) if shaped.ndim == 0 else (1, 2)
            self.add("Gather", [a, self.const(shaped)], (rank, length, pos, nn), axis=0)
        elif op == "slice" and r == 1:
            start, end = rng.randrange(-n - 2, n + 2), rng.choice([rng.randrange(-n, n + 2), 2**62])
            step = rng.choice([1, 1, 2, -1, -2])
            if step < 0:
                start, end = rng.randrange(-1, n + 1), rng.choice([-(2**62), rng.randrange(-n, n)])
            length = len(range(*slice(start, end, step).indices(n)))
            if length:
                bounds = [self.const([start]), self.const([end]), self.const([rng.choice([0, -1])])]
                bounds.append(self.const([step]))
                self.add("Slice", [a, *bounds], (1, length, pos, nn))
        elif op == "concat" and r == 1:
            b = self.pick(rank=1)
            _, m, pos_b, nn_b = pool[b]
            self.add("Concat", [a, b], (1, n + m, pos and pos_b, nn and nn_b), axis=0)
        elif op in ("binary", "divmod", "where"):
            b = self._broadcastable(a) if op != "divmod" else self.pick(positive=True)
            if b is None or (op == "divmod" and (not nn or not self._fits(a, b))):
                return
            rb, m, pos_b, nn_b = pool[b]
            meta = (max(r, rb), max(n, m) if r and rb else (n if r else m))
            if op == "where":
                cmp = self.add(rng.choice(["Equal", "Less", "Greater"]), [a, b], None)
                self.add("Where", [cmp, a, b], (*meta, pos and pos_b, nn and nn_b))
            elif op == "divmod":
                self.add(rng.choice(["Div", "Mod"]), [a, b], (*meta, False, True))
            else:
                kind = rng.choice(["Add", "Mul", "Sub", "Max", "Min"])
                keeps = kind != "Sub"
                self.add(kind, [a, b], (*meta, pos and pos_b and keeps, nn and nn_b and keeps))
        elif op == "unsqueeze" and r == 0:
            self.add("Unsqueeze", [a, self.const([rng.choice([0, -1])])], (1, 1, pos, nn))
        elif op == "squeeze" and r == 1 and n == 1:
            axes = [self.const([rng.choice([0, -1])])] if rng.random() < 0.5 else []
            self.add("Squeeze", [a, *axes], (0, 1, pos, nn))
        elif op == "reshape" and r == 1:
            self.add("Reshape", [a, self.const([rng.choice([-1, n])])], (1, n, pos, nn))
        elif op == "transpose" and r == 1:
            self.add(
                "Transpose", [a], (1, n, pos, nn), **({"perm": [0]} if rng.random() < 0.5 else {})
            )
        elif op == "cast":
            self.add("Cast", [a], (r, n, pos, nn), to=TensorProto.INT64)
        elif op == "cos" and r == 1 and nn and n <= 3:
            small = self.add("Min", [a, self.const([3])], None)
            fill = helper.make_tensor("fill", TensorProto.INT64, [1], [rng.randrange(1, 9)])
            self.add("ConstantOfShape", [small], None, value=fill)
        elif op == "const":
            scalar = rng.random() < 0.5
            arr = np.array(rng.randrange(1, 7)) if scalar else np.array([2, 3])
            pool[self.const(arr)] = (0, 1, True, True) if scalar else (1, 2, True, True)

    def _broadcastable(self, a: str) -> str:
        return self.rng.choice([b for b in self.pool if self._fits(a, b)])

    def _fits(self, a: str, b: str) -> bool:
        (r, n, _, _), (rb, m, _, _) = self.pool[a], self.pool[b]
        return r == 0 or rb == 0 or n == m or n == 1 or m == 1

    def model(self) -> onnx.ModelProto:
        outputs = [helper.make_empty_tensor_value_info(n.output[0]) for n in self.nodes[1:]]
        graph = helper.make_graph(
            self.nodes,
            "shapes",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE))],
            outputs,
            self.inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _random_model(seed: int) -> onnx.ModelProto:
    b = _Builder(random.Random(seed))
    b.add("Gather", ["s0", b.const(np.array(seed % 4))], (0, 1, True, True), axis=0)
    for _ in range(18):
        b.step()
    return b.model()


@pytest.mark.parametrize("seed", range(60))
def test_shape_arithmetic_matches_onnxruntime(seed):
    model = _random_model(seed)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(None, {"x": np.zeros(X_SHAPE, np.float32)})
    graph = from_onnx(model)
    numeric, symbolic = NumericMemo(), {}
    sized = set()  # ConstantOfShape needs its size as a number: symbolically it is unread
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" or sized.intersection(node.input):
            sized.update(node.output)
    checked = 0
    for name, want in zip(names, results, strict=True):
        value = graph.values[name]
        if want.ndim > 1 or want.dtype == np.bool_:
            continue
        expected = [int(w) for w in want.reshape(-1)]
        assert shape_values(value, numeric) == expected, name
        entries = shape_entries(value, symbolic)
        if entries is None and name in sized:
            continue
        assert entries is not None and len(entries) == len(expected), name
        for e, w in zip(entries, expected, strict=True):
            assert e is DERIVED or entry_dim(e) == w  # an Expr evaluates on the shapes
        checked += 1
    assert checked >= 3
