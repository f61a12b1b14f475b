"""cleanup: dead nodes and unused initializers go, inputs and model fields stay, the model is
checked; numerics checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import random_feeds, run_model
from onnx import TensorProto, helper, numpy_helper

from drpopt.errors import CheckFailedError
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.cleanup import CleanupPass
from drpopt.passes.fold_batchnorm import FoldBatchNormPass


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def model_with_dead_parts() -> onnx.ModelProto:
    """y = relu(x + c); a dead Mul -> Neg branch, an unused initializer and an unused input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    unused = helper.make_tensor_value_info("unused_in", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Constant", [], ["c"], name="c", value=const("c", np.ones((1, 4)))),
        helper.make_node("Constant", [], ["dead_c"], name="dead_c", value=const("d", [2.0])),
        helper.make_node("Add", ["x", "c"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
        helper.make_node("Mul", ["a", "w_dead"], ["dead1"], name="dead1"),
        helper.make_node("Neg", ["dead1"], ["dead2"], name="dead2"),
        helper.make_node("Add", ["dead2", "dead_c"], ["dead3"], name="dead3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [x, unused],
        [y],
        [const("w_dead", np.ones(4)), const("w_unused", np.ones(3))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)]
    )
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "drpopt tests"
    return model


def test_removes_dead_nodes_and_unused_initializers():
    model = model_with_dead_parts()
    graph = from_onnx(model)
    result = CleanupPass()(graph)
    new = result.model
    assert result.modified and new is not graph
    assert [n.name for n in new.nodes] == ["c", "add", "relu"]
    assert new.initializers == []
    assert [v.name for v in new.inputs] == ["x", "unused_in"]  # unused inputs stay
    out = to_onnx(new)
    onnx.checker.check_model(out)
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 4) - 2, "unused_in": np.zeros(2, "f")}
    np.testing.assert_array_equal(run_model(out, feeds)[0], run_model(model, feeds)[0])


def test_second_run_is_a_no_op():
    first = CleanupPass()(from_onnx(model_with_dead_parts())).model
    again = CleanupPass()(first)
    assert again.modified is False
    assert [n.name for n in again.model.nodes] == [n.name for n in first.nodes]


def test_keeps_metadata_opsets_and_graph_owned_meta():
    graph = from_onnx(model_with_dead_parts())
    graph.meta["analysis"] = object()
    graph.meta["masks"] = {"conv": [0, 1]}  # not the graph's own: not carried (nothing stale)
    graph.meta["source"] = "where it came from"
    graph.metadata["extra"] = "added by a pass"
    new = CleanupPass()(graph).model
    assert "analysis" not in new.meta and "masks" not in new.meta
    assert new.meta["source"] == "where it came from"
    assert new.metadata == {"author": "drpopt tests", "extra": "added by a pass"}
    assert new.opsets == {"": 17, "acme": 1}
    out = to_onnx(new)
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 17), ("acme", 1)}
    assert {p.key: p.value for p in out.metadata_props} == new.metadata
    assert out.ir_version == 8
    assert new.name == "g"


def test_shapes_are_inferred():
    graph = from_onnx(model_with_dead_parts())
    for v in graph.values.values():
        if v.producer is not None:  # what a pass that changes shapes leaves behind
            v.shape = None
    new = CleanupPass()(graph).model
    assert new.values["a"].shape == (1, 4)
    assert new.values["y"].shape == (1, 4)


def test_restores_topological_order():
    model = model_with_dead_parts()
    graph = from_onnx(model)
    add = next(n for n in graph.nodes if n.name == "add")
    graph.nodes.remove(add)
    graph.nodes.append(add)  # now after its users: the checker would reject this order
    new = CleanupPass()(graph).model
    names = [n.name for n in new.nodes]
    assert names.index("add") < names.index("relu")
    onnx.checker.check_model(to_onnx(new))


def test_checker_failure_raises_a_check_failed_error():
    model = model_with_dead_parts()
    graph = from_onnx(model)
    relu = next(n for n in graph.nodes if n.name == "relu")
    relu.op_type = "NoSuchOp"
    with pytest.raises(CheckFailedError, match=r"fails onnx\.checker.*NoSuchOp") as info:
        CleanupPass()(graph)
    assert info.value.exit_code == 1


def test_keeps_values_read_inside_subgraphs():
    """A value used only inside an If branch (by name) is not dead."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Neg", ["h"], ["b"])], "then", [], [branch_out])
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["b"])], "else", [], [branch_out]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="outer"),
        helper.make_node("Sigmoid", ["x"], ["dead"], name="dead"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "sub", [x, cond], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    result = CleanupPass()(from_onnx(model))
    assert result.modified
    assert [n.name for n in result.model.nodes] == ["outer", "if"]
    out = to_onnx(result.model)
    for flag in (True, False):
        feeds = {"x": np.array([-1.0, 2.0], np.float32), "cond": np.array(flag)}
        np.testing.assert_array_equal(run_model(out, feeds)[0], run_model(model, feeds)[0])


def test_after_fold_batchnorm_the_bn_parameters_go(zoo_models):
    model = zoo_models["resnet18"]
    graph = FoldBatchNormPass()(from_onnx(model)).model
    # removing the BN nodes already dropped the parameters nothing reads any more
    assert not any(".running_mean" in v.name for v in graph.initializers)
    result = CleanupPass()(graph)
    assert not result.modified
    assert not any(".running_mean" in v.name for v in result.model.initializers)
    out = to_onnx(result.model)
    feeds = random_feeds(model)
    for a, b in zip(run_model(out, feeds), run_model(model, feeds), strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.parametrize("name", ["resnet18", "yolox_s_like", "channel_shuffle"])
def test_clean_models_are_unchanged(name, zoo_models):
    model = zoo_models[name]
    graph = from_onnx(model)
    result = CleanupPass()(graph)
    assert result.modified is False
    assert [n.name for n in result.model.nodes] == [n.name for n in graph.nodes]
    out = to_onnx(result.model)
    feeds = random_feeds(model)
    for a, b in zip(run_model(out, feeds), run_model(model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_trivial_graph_without_nodes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    model = helper.make_model(
        helper.make_graph([], "empty", [x], [x]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    result = CleanupPass()(from_onnx(model))
    assert result.modified is False and result.model.nodes == []
    assert [v.name for v in result.model.outputs] == ["x"]


def test_empty_ir_graph_is_checked():
    graph = Graph("nothing")
    graph.opsets = {"": 17}
    graph.meta["ir_version"] = 8
    result = CleanupPass()(graph)
    assert result.modified is False and result.model.nodes == []


def test_name_and_spec():
    assert CleanupPass.name == "cleanup" and CleanupPass().spec() == "cleanup"
    assert CleanupPass.arguments() == []
