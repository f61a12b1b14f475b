"""``Graph.value``: a name is one value; asking for it again with other fields is an error,
not a silent answer with the old value (issue 10, "names used as identity")."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from drpopt.errors import BadInputError
from drpopt.ir import from_onnx
from drpopt.ir.core import Graph


def test_a_contradicting_shape_or_dtype_raises():
    g = Graph()
    x = g.value("x", shape=(1, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'x' already exists with shape \(1, 3\).*\(1, 4\)"):
        g.value("x", shape=(1, 4))
    with pytest.raises(ValueError, match="'x' already exists with dtype"):
        g.value("x", dtype=np.int64)
    assert x.shape == (1, 3) and x.dtype == np.float32  # unchanged by the refused asks


def test_agreeing_fields_give_the_same_value():
    g = Graph()
    x = g.value("x", shape=(1, 3), dtype=np.dtype(np.float32))
    version = g.version
    assert g.value("x", shape=[1, 3], dtype=np.float32) is x  # a list or a type is the same
    assert g.value("x", shape=None) is x  # None claims nothing
    assert g.value("x") is x
    assert g.version == version


def test_unknown_shape_and_dtype_are_filled_in():
    g = Graph()
    y = g.value("y")
    version = g.version
    assert g.value("y", shape=(2, 5), dtype=np.float32) is y
    assert y.shape == (2, 5) and y.dtype == np.float32
    assert g.version > version  # analyses made before no longer describe the graph


def test_a_constant_is_only_given_to_a_new_value():
    g = Graph()
    w = np.ones(3, np.float32)
    v = g.value("w", const=w, shape=(3,), dtype=w.dtype)
    assert g.value("w", const=w) is v  # the very same array: the same statement
    with pytest.raises(ValueError, match="'w' already exists with const a constant"):
        g.value("w", const=np.ones(3, np.float32))  # equal data, but another array
    g.value("t", shape=(3,))
    with pytest.raises(ValueError, match="'t' already exists with const no constant"):
        g.value("t", const=w)
    with pytest.raises(ValueError, match="'w' already exists with const a constant"):
        g.value("w", const=None)


def test_a_lazy_constant_is_not_read_to_compare():
    g = Graph()
    v = g.value("w", shape=(2,), dtype=np.float32)
    reads = []
    v.set_lazy(lambda: reads.append(1) or np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="'w' already exists with const a constant"):
        g.value("w", const=np.zeros(2, np.float32))
    assert not reads


def test_other_fields_must_agree_too():
    g = Graph()
    g.value("m", meta={"parameter": True})
    assert g.value("m", meta={"parameter": True}).meta == {"parameter": True}
    with pytest.raises(ValueError, match="'m' already exists with meta"):
        g.value("m", meta={})


def test_an_initializer_defined_twice_with_two_shapes_is_refused():
    """Two initializers named ``w``: the IR used to keep the first's shape with the second's
    data (and analyse a 4-channel conv whose weight has 8), now it refuses the model."""
    w4 = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    w8 = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w4, w8],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(BadInputError, match=r"initializer 'w' is defined twice.*re-export"):
        from_onnx(model)
