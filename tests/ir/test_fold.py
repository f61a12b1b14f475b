"""ir/fold.py is drpopt's one numeric constant folder: ``evaluate`` with its size limit,
``fold_constants`` on a model, and from_onnx's Cast (through ``evaluate``, no limit) and
Identity (shared storage, not computed) of constants."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from drpopt.ir.fold import MAX_ELEMENTS, evaluate, fold_constants
from drpopt.ir.from_onnx import from_onnx


def test_evaluate_computes_shape_arithmetic():
    (out,) = evaluate("Concat", {"axis": 0}, [np.array([1, 2]), np.array([3])])
    np.testing.assert_array_equal(out, [1, 2, 3])
    (out,) = evaluate("Cast", {"to": TensorProto.FLOAT}, [np.array([1, 2])])
    assert out.dtype == np.float32
    assert evaluate("Conv", {}, [np.ones(1)]) is None  # not a foldable op


def test_evaluate_keeps_to_its_size_limit():
    big = np.array([MAX_ELEMENTS + 1])
    assert evaluate("ConstantOfShape", {}, [big]) is None
    assert evaluate("Range", {}, [np.array(0), big[0], np.array(1)]) is None
    (out,) = evaluate("Range", {}, [np.array(0), big[0], np.array(1)], max_elements=None)
    assert out.size == MAX_ELEMENTS + 1


def _model(nodes, initializers) -> onnx.ModelProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph(nodes, "g", [x], [y], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_constants_folds_small_shape_arithmetic_only():
    shape = numpy_helper.from_array(np.array([2, 4], np.int64), "shape")
    big = numpy_helper.from_array(np.array([MAX_ELEMENTS, 2], np.int64), "big")
    nodes = [
        helper.make_node("Mul", ["shape", "shape"], ["sq"]),
        helper.make_node("ConstantOfShape", ["big"], ["zeros"]),
        helper.make_node("Reshape", ["x", "sq"], ["y"]),
    ]
    folded = fold_constants(_model(nodes, [shape, big]))
    np.testing.assert_array_equal(folded["sq"], [4, 16])
    assert "zeros" not in folded  # over the limit: never a real tensor


def test_cast_of_a_weight_folds_without_the_limit_and_identity_shares_storage():
    w = np.linspace(-1, 1, 2 * MAX_ELEMENTS, dtype=np.float16).reshape(8, -1)
    nodes = [
        helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["w"], ["w_again"]),
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("MatMul", ["x", "w_again"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    graph = from_onnx(_model(nodes, [numpy_helper.from_array(w, "w16")]))
    cast = graph.values["w"]
    assert cast.const.dtype == np.float32 and cast.const.size == w.size
    np.testing.assert_array_equal(cast.const, w.astype(np.float32))
    again = graph.values["w_again"]
    assert again.storage == cast.storage and again.const is cast.const  # one tensor, no copy
