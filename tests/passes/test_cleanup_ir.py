"""cleanup on drpopt's IR: dead If branches and their captures, unused initializers, order,
model-local functions and external data; every result run in onnxruntime against the input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import run_model
from onnx import TensorProto, helper, numpy_helper

from drpopt.errors import CheckFailedError
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.cleanup import CleanupPass

X = np.array([[-1.5, 0.5, 2.0, -3.0]], np.float32)


def _model(nodes, inputs, initializers=(), functions=(), opsets=(("", 17),)):
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [y], list(initializers))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
        functions=list(functions),
    )
    model.ir_version = 8
    return model


def _x() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])


def _same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict) -> None:
    ref, got = run_model(before, feeds)[0], run_model(after, feeds)[0]
    assert np.ptp(ref) > 0, "degenerate reference"
    np.testing.assert_array_equal(got, ref)


def _if_model(if_used: bool) -> onnx.ModelProto:
    """An If whose branches read outer values ``h`` (Relu) and ``k`` (Neg of a weight);
    y is the If's output when ``if_used``, else plain Sigmoid(x)."""
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Mul", ["h", "k"], ["b"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["b"])], "else", [], [out])
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="relu"),
        helper.make_node("Neg", ["w"], ["k"], name="neg"),
        helper.make_node("If", ["cond"], ["b_out"], name="if", then_branch=then, else_branch=other),
        helper.make_node("Sigmoid", ["x"], ["s"], name="sigmoid"),
        helper.make_node("Add", ["b_out" if if_used else "s", "s"], ["y"], name="add"),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    w = numpy_helper.from_array(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "w")
    return _model(nodes, [_x(), cond], [w])


def test_an_if_nothing_reads_goes_with_what_only_its_branches_read():
    model = _if_model(if_used=False)
    result = CleanupPass()(from_onnx(model))
    assert result.modified
    assert [n.name for n in result.model.nodes] == ["sigmoid", "add"]
    assert result.model.initializers == []  # w was read only by the dead Neg
    for flag in (True, False):
        _same_outputs(model, to_onnx(result.model), {"x": X, "cond": np.array(flag)})


def test_values_a_used_if_captures_stay():
    model = _if_model(if_used=True)
    result = CleanupPass()(from_onnx(model))
    assert not result.modified
    assert [n.name for n in result.model.nodes] == ["relu", "neg", "if", "sigmoid", "add"]
    for flag in (True, False):
        _same_outputs(model, to_onnx(result.model), {"x": X, "cond": np.array(flag)})


def test_unused_initializers_go_and_used_ones_stay():
    w = numpy_helper.from_array(np.full((1, 4), 2.0, np.float32), "w")
    spare = numpy_helper.from_array(np.ones((3, 3), np.float32), "spare")
    nodes = [helper.make_node("Mul", ["x", "w"], ["y"], name="mul")]
    model = _model(nodes, [_x()], [w, spare])
    result = CleanupPass()(from_onnx(model))
    assert result.modified
    assert [v.name for v in result.model.initializers] == ["w"]
    _same_outputs(model, to_onnx(result.model), {"x": X})


def test_order_is_fixed_stably_and_only_when_needed():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="a"),
        helper.make_node("Neg", ["x"], ["b"], name="b"),
        helper.make_node("Add", ["a", "b"], ["c"], name="c"),
        helper.make_node("Sigmoid", ["c"], ["y"], name="d"),
    ]
    model = _model(nodes, [_x()])
    graph = from_onnx(model)
    assert [n.name for n in CleanupPass()(graph).model.nodes] == ["a", "b", "c", "d"]
    graph.nodes.insert(0, graph.nodes.pop(2))  # c first: before both its producers
    result = CleanupPass()(graph)
    assert [n.name for n in result.model.nodes] == ["a", "b", "c", "d"]  # a, b not swapped
    _same_outputs(model, to_onnx(result.model), {"x": X})


def test_a_cycle_is_a_check_failure():
    graph = from_onnx(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_x()]))
    relu = graph.nodes[0]
    graph.set_input(relu, 0, relu.outputs[0])
    with pytest.raises(CheckFailedError, match="cycle through node 'r'"):
        CleanupPass()(graph)


def _function_model() -> onnx.ModelProto:
    """y = local.AddRelu(x, w), a model-local function, and a dead node beside it."""
    fn = helper.make_function(
        "local",
        "AddRelu",
        ["a", "b"],
        ["o"],
        [helper.make_node("Add", ["a", "b"], ["t"]), helper.make_node("Relu", ["t"], ["o"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    w = numpy_helper.from_array(np.array([[1.0, -2.0, 0.5, 4.0]], np.float32), "w")
    nodes = [
        helper.make_node("AddRelu", ["x", "w"], ["y"], name="fn", domain="local"),
        helper.make_node("Neg", ["x"], ["dead"], name="dead"),
    ]
    return _model(nodes, [_x()], [w], [fn], opsets=(("", 17), ("local", 1)))


def test_model_local_functions_survive():
    model = _function_model()
    result = CleanupPass()(from_onnx(model))
    assert result.modified and [n.name for n in result.model.nodes] == ["fn"]
    out = to_onnx(result.model)
    assert [f.name for f in out.functions] == ["AddRelu"]
    onnx.checker.check_model(out)
    _same_outputs(model, out, {"x": X})


def test_external_data_survives(tmp_path):
    w = numpy_helper.from_array(np.linspace(-1, 1, 4096, dtype=np.float32).reshape(4, 1024), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
        helper.make_node("Neg", ["y"], ["dead"], name="dead"),
    ]
    model = _model(nodes, [_x()], [w])
    path = tmp_path / "ext.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save moves the tensors of what it saves out
    onnx.save(saved, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    graph = from_onnx(path)
    result = CleanupPass()(graph)
    assert result.modified and result.model.meta.get("external_data") is True
    _same_outputs(model, to_onnx(result.model), {"x": X})


def test_a_graph_cleanup_replaced_is_freed_during_the_pipeline():
    """Collections are paused while a pipeline runs (``gc_paused``); the graph ``cleanup``
    replaces is cyclic garbage holding its weights, and is freed when it is replaced, not
    when the pipeline ends."""
    import weakref
    from dataclasses import dataclass
    from typing import ClassVar

    from drpopt.passes import PassManager
    from drpopt.passes.base import Pass, PassResult
    from drpopt.zoo.models import resnet18_like

    seen: dict[str, object] = {}

    @dataclass
    class Remember(Pass):
        name: ClassVar[str] = "remember"

        def call(self, model):
            conv = next(n for n in model.nodes if n.op_type == "Conv")
            seen["old"] = weakref.ref(conv.inputs[1])  # a weight value (nodes point back)
            return PassResult(model, False)

    @dataclass
    class Look(Pass):
        name: ClassVar[str] = "look"

        def call(self, model):
            seen["alive"] = seen["old"]() is not None
            return PassResult(model, False)

    PassManager([Remember(), CleanupPass(), Look()]).run(resnet18_like())
    assert seen["alive"] is False
