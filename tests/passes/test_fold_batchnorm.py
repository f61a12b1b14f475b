"""fold-batchnorm: its rules, its no-op cases, and numerics checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deadchannels import random_feeds, run_model
from onnx import helper, numpy_helper

from drpopt.ir.analysis import Analysis
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.analyses import ANALYSES, get_analysis
from drpopt.passes.fold_batchnorm import FoldBatchNormPass
from drpopt.zoo import MODELS
from drpopt.zoo.builder import OnnxBuilder
from drpopt.zoo.random_graphs import random_model


# ---- helpers ----------------------------------------------------------------------------
def fold(model: onnx.ModelProto) -> tuple[Graph, bool, onnx.ModelProto]:
    graph = from_onnx(model)
    result = FoldBatchNormPass()(graph)
    out = to_onnx(result.model)
    onnx.checker.check_model(out)
    return result.model, result.modified, out


def assert_same_outputs(ref: onnx.ModelProto, model: onnx.ModelProto, rtol: float = 1e-4):
    feeds = random_feeds(ref)
    before, after = run_model(ref, feeds), run_model(model, feeds)
    assert [o.name for o in ref.graph.output] == [o.name for o in model.graph.output]
    for a, b in zip(after, before, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= rtol * float(np.abs(b).max()) + 1e-6


def ops(graph: Graph) -> list[str]:
    return [n.op_type for n in graph.nodes]


def foldable_bns(model: onnx.ModelProto) -> set[str]:
    """The BNs the rules allow to fold, found independently on the proto."""
    producers = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    outputs = {o.name for o in model.graph.output}
    names = set()
    for n in model.graph.node:
        p = producers.get(n.input[0]) if n.op_type == "BatchNormalization" else None
        if (
            p is not None
            and p.op_type in ("Conv", "ConvTranspose", "Gemm")
            and users[n.input[0]] == 1
            and n.input[0] not in outputs
        ):
            names.add(n.name)
    return names


def conv_bn(groups: int = 1, bias: bool = True, out_ch: int = 8, rank: int = 2):
    b = OnnxBuilder(seed=1)
    shape = (1, 4, 6, 6) if rank == 2 else (1, 4, 6)
    x = b.input("input", shape)
    if rank == 2:
        y = b.conv(x, out_ch, groups=groups, bias=bias, name="conv")
    else:
        w = b.const("conv.weight", b.rng.standard_normal((out_ch, 4 // groups, 3)).astype("f"))
        y = b.op("Conv", [x, w], (1, out_ch, 6), name="conv", pads=[1, 1], group=groups)
    y = b.bn(y, name="bn")
    b.output(b.relu(y, name="relu"))
    return b.build()


def conv_transpose_bn(groups: int, bias: bool = True):
    b = OnnxBuilder(seed=2)
    x = b.input("input", (1, 4, 5, 5))
    w = b.const("deconv.weight", b.rng.standard_normal((4, 6 // groups, 2, 2)).astype("f"))
    ins = [x, w]
    if bias:
        ins.append(b.const("deconv.bias", b.rng.standard_normal(6).astype("f")))
    y = b.op("ConvTranspose", ins, (1, 6, 10, 10), name="deconv", strides=[2, 2], group=groups)
    b.output(b.bn(y, name="bn"))
    return b.build()


def gemm_bn(trans_b: int, bias: str = "vector", alpha: float = 1.0, beta: float = 1.0):
    b = OnnxBuilder(seed=3)
    x = b.input("input", (3, 5))
    shape = (7, 5) if trans_b else (5, 7)
    ins = [x, b.const("fc.weight", b.rng.standard_normal(shape).astype("f"))]
    if bias == "vector":
        ins.append(b.const("fc.bias", b.rng.standard_normal(7).astype("f")))
    elif bias == "matrix":
        ins.append(b.const("fc.bias", b.rng.standard_normal((3, 7)).astype("f")))
    elif bias == "scalar":
        ins.append(b.const("fc.bias", np.array(0.5, np.float32)))
    y = b.op("Gemm", ins, (3, 7), name="fc", transB=trans_b, alpha=alpha, beta=beta)
    b.output(b.bn(y, name="bn"))
    return b.build()


# ---- rules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: conv_bn(), id="conv"),
        pytest.param(lambda: conv_bn(bias=False), id="conv-no-bias"),
        pytest.param(lambda: conv_bn(groups=2), id="grouped"),
        pytest.param(lambda: conv_bn(groups=4, out_ch=4), id="depthwise"),
        pytest.param(lambda: conv_bn(groups=4, out_ch=8), id="depthwise-multiplier-2"),
        pytest.param(lambda: conv_bn(groups=2, rank=1), id="conv1d"),
        pytest.param(lambda: conv_transpose_bn(1), id="convtranspose"),
        pytest.param(lambda: conv_transpose_bn(2), id="convtranspose-groups"),
        pytest.param(lambda: conv_transpose_bn(2, bias=False), id="convtranspose-no-bias"),
        pytest.param(lambda: gemm_bn(1), id="gemm-transB1"),
        pytest.param(lambda: gemm_bn(0), id="gemm-transB0"),
        pytest.param(lambda: gemm_bn(0, bias="none"), id="gemm-no-bias"),
        pytest.param(lambda: gemm_bn(1, bias="matrix", beta=0.5), id="gemm-matrix-C"),
        pytest.param(lambda: gemm_bn(0, bias="scalar", alpha=2.0, beta=3.0), id="gemm-scalar"),
    ],
)
def test_folds_into_the_layer(model):
    model = model()
    graph, modified, out = fold(model)
    assert modified
    assert "BatchNormalization" not in ops(graph)
    before = [n.name for n in model.graph.node if n.op_type != "BatchNormalization"]
    assert [n.name for n in graph.nodes] == before  # node names kept
    layer = graph.nodes[0]
    assert layer.input(2) is not None and layer.input(2).is_const  # a bias, created if needed
    assert_same_outputs(model, out)


def test_keeps_weight_names_and_creates_a_bias():
    graph, _, _ = fold(conv_bn(bias=False))
    conv = graph.nodes[0]
    assert conv.input(1).name == "conv.weight"
    assert conv.input(2).name == "conv.bias"
    assert conv.input(2).shape == (8,) and conv.input(2).dtype == np.float32


def test_bn_output_as_graph_output_keeps_its_name():
    model = conv_transpose_bn(2)
    assert model.graph.output[0].name == "bn"
    graph, modified, out = fold(model)
    assert modified and [v.name for v in graph.outputs] == ["bn"]
    assert graph.nodes[0].outputs[0].name == "bn"
    assert_same_outputs(model, out)


def test_not_folded_when_the_layer_output_has_a_second_user():
    b = OnnxBuilder()
    x = b.input("input", (1, 3, 6, 6))
    y = b.conv(x, 4, name="conv")
    b.output(b.add(b.bn(y, name="bn"), y, name="add"))
    graph, modified, _ = fold(b.build())
    assert not modified and "BatchNormalization" in ops(graph)


def test_not_folded_when_the_layer_output_is_a_graph_output():
    b = OnnxBuilder()
    x = b.input("input", (1, 3, 6, 6))
    y = b.conv(x, 4, name="conv")
    b.output(b.bn(y, name="bn"))
    b.output(y)
    model = b.build()
    graph, modified, out = fold(model)
    assert not modified and "BatchNormalization" in ops(graph)
    assert_same_outputs(model, out)


def test_not_folded_after_other_ops_or_with_variable_params():
    b = OnnxBuilder()
    x = b.input("input", (1, 3, 6, 6))
    y = b.bn(b.relu(b.conv(x, 4, name="conv"), name="relu"), name="bn_after_relu")
    b.output(y)
    graph, modified, _ = fold(b.build())
    assert not modified
    assert ops(graph) == ["Conv", "Relu", "BatchNormalization"]

    # the mean comes from a graph input: not a constant
    b = OnnxBuilder()
    x = b.input("input", (1, 3, 6, 6))
    mean = b.input("mean", (4,))
    y = b.conv(x, 4, name="conv")
    y = b.bn(y, name="bn")
    b.nodes[-1].input[3] = mean
    b.output(y)
    graph, modified, _ = fold(b.build())
    assert not modified

    # the weight comes from a graph input
    b = OnnxBuilder()
    x = b.input("input", (1, 3, 6, 6))
    w = b.input("w", (4, 3, 3, 3))
    y = b.op("Conv", [x, w], (1, 4, 6, 6), name="conv", pads=[1, 1, 1, 1])
    b.output(b.bn(y, name="bn"))
    graph, modified, _ = fold(b.build())
    assert not modified


def test_not_folded_in_training_mode_or_with_used_stat_outputs():
    model = conv_bn()
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    graph = from_onnx(model)
    assert not FoldBatchNormPass()(graph).modified

    model = conv_bn()
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["bn.mean_out", "bn.var_out"])
    model.graph.output.append(helper.make_empty_tensor_value_info("bn.mean_out"))
    graph = from_onnx(model)
    assert not FoldBatchNormPass()(graph).modified

    # opsets 7 to 13: the extra outputs (unused here) are the training mode
    model = conv_bn()
    model.opset_import[0].version = 13
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["bn.mean_out", "bn.var_out", "bn.saved_mean", "bn.saved_var"])
    graph = from_onnx(model)
    assert not FoldBatchNormPass()(graph).modified


def test_params_from_constant_nodes_and_shared_weights():
    """BN params and the conv weight are Constant outputs; a second conv shares the weight."""
    b = OnnxBuilder(seed=4)
    x = b.input("input", (1, 4, 6, 6))
    y = b.conv(x, 4, name="conv")
    y = b.bn(y, name="bn")
    z = b.op("Conv", [x, "conv.weight"], (1, 4, 6, 6), name="conv2", pads=[1, 1, 1, 1])
    b.output(b.add(y, z, name="add"))
    model = b.build()
    as_constants = {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}
    keep, nodes = [], []
    for t in model.graph.initializer:
        if t.name in as_constants:
            nodes.append(helper.make_node("Constant", [], [t.name], name=f"{t.name}.c", value=t))
        else:
            keep.append(t)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.node.insert(0, nodes[0])
    for n in nodes[1:]:
        model.graph.node.insert(0, n)
    onnx.checker.check_model(model)

    graph, modified, out = fold(model)
    assert modified and "BatchNormalization" not in ops(graph)
    conv = next(n for n in graph.nodes if n.name == "conv")
    conv2 = next(n for n in graph.nodes if n.name == "conv2")
    assert conv.input(1).name != "conv.weight" and conv.input(1).producer is None
    # the shared weight is untouched (the frontend gave each use a value of its own)
    assert conv2.input(1).name.startswith("conv.weight")
    weight_node = next(n for n in nodes if n.output[0] == "conv.weight")
    original = numpy_helper.to_array(weight_node.attribute[0].t)
    np.testing.assert_array_equal(conv2.input(1).const, original)
    assert_same_outputs(model, out)


def test_shared_bias_initializer_is_not_mutated():
    b = OnnxBuilder(seed=5)
    x = b.input("input", (1, 4, 6, 6))
    y = b.conv(x, 4, name="conv")
    z = b.op("Conv", [x, "conv.weight", "conv.bias"], (1, 4, 6, 6), name="conv2", pads=[1, 1, 1, 1])
    b.output(b.add(b.bn(y, name="bn"), z, name="add"))
    model = b.build()
    bias = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv.bias"))
    graph, modified, out = fold(model)
    assert modified
    conv, conv2 = graph.nodes[0], graph.nodes[1]
    # each conv reads a value of its own: the fold changes conv's, conv2 keeps the original
    assert conv.input(1) is not conv2.input(1) and conv.input(2) is not conv2.input(2)
    assert not np.array_equal(conv.input(2).const, bias)
    np.testing.assert_array_equal(conv2.input(2).const, bias)
    assert_same_outputs(model, out)


def test_a_chain_of_two_bns_folds_completely():
    b = OnnxBuilder(seed=6)
    x = b.input("input", (1, 3, 6, 6))
    y = b.bn(b.bn(b.conv(x, 4, bias=False, name="conv"), name="bn1"), name="bn2")
    b.output(b.relu(y, name="relu"))
    model = b.build()
    graph, modified, out = fold(model)
    assert modified and ops(graph) == ["Conv", "Relu"]
    assert_same_outputs(model, out)


def test_drops_the_cached_analysis_only_when_it_folds():
    graph = from_onnx(conv_bn())
    get_analysis(graph)
    assert FoldBatchNormPass()(graph).modified
    assert ANALYSES.cached(graph, Analysis) is None
    marker = get_analysis(graph)
    result = FoldBatchNormPass()(graph)
    assert not result.modified and ANALYSES.cached(graph, Analysis) is marker


# ---- no-op and trivial graphs -----------------------------------------------------------
def test_no_bn_is_a_no_op(zoo_models):
    model = zoo_models["flatten_gemm"]
    graph, modified, out = fold(model)
    assert not modified
    assert [n.name for n in graph.nodes] == [n.name for n in model.graph.node]
    assert_same_outputs(model, out)


def test_empty_and_trivial_graphs():
    assert FoldBatchNormPass()(Graph()).modified is False
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    model = helper.make_model(
        helper.make_graph([], "empty", [x], [x]), opset_imports=[helper.make_opsetid("", 17)]
    )
    graph = from_onnx(model)
    result = FoldBatchNormPass()(graph)
    assert result.modified is False and result.model is graph and not graph.nodes


def test_name_and_spec():
    assert FoldBatchNormPass.name == "fold-batchnorm"
    assert FoldBatchNormPass().spec() == "fold-batchnorm"
    assert FoldBatchNormPass.arguments() == []
    assert FoldBatchNormPass.summary().startswith("Fold inference BatchNormalization")


# ---- numerics on the zoo and random graphs ------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_models_fold_and_keep_their_outputs(name, zoo_models):
    model = zoo_models[name]
    expected = foldable_bns(model)
    graph, modified, out = fold(model)
    left = {n.name for n in graph.nodes if n.op_type == "BatchNormalization"}
    assert not left & expected, f"foldable BNs left: {sorted(left & expected)[:5]}"
    assert modified == bool(expected)
    if name in ("resnet18", "resnet50", "mobilenetv2", "yolox_s_like"):
        assert not left  # every BN there follows a conv
    assert_same_outputs(model, out)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 11])
def test_random_graphs_fold_and_keep_their_outputs(seed):
    model = random_model(seed, 12)
    expected = foldable_bns(model)
    graph, modified, out = fold(model)
    left = {n.name for n in graph.nodes if n.op_type == "BatchNormalization"}
    assert not left & expected and modified == bool(expected)
    assert_same_outputs(model, out)
