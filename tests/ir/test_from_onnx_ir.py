"""``ir/from_onnx_ir.py``: onnx_ir models in and out of drpopt's IR without copying weights.

Judged by what the graphs give (the same analysis as the proto path), by running the
models in onnxruntime, and by tensor identity (an unchanged weight is the same object).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from drpopt import api, passes
from drpopt.ir.analysis import analyze
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.from_onnx_ir import from_onnx_ir
from drpopt.ir.to_onnx_ir import to_onnx_ir
from drpopt.passes.verify import compare_models
from drpopt.zoo import build
from drpopt.zoo.corpus import corpus_dir, load_corpus_model

CORPUS = ("mobilenet_v3_small", "shufflenet_v2_x1_0", "yolox_s", "regnet_y_400mf", "swin_t")


def _signature(graph) -> tuple:
    """What the analysis finds (group dicts and segments) and what the graph holds."""
    analysis = analyze(graph)
    found = analysis.to_dict()
    found["model"].pop("source")
    values = {n: (v.shape, v.dtype, v.is_const) for n, v in graph.values.items()}
    nodes = [(n.op_type, n.name, [v and v.name for v in n.inputs]) for n in graph.nodes]
    return found, [list(g.segments) for g in analysis.groups], values, nodes, graph.opsets


def _same_as_the_proto_path(model: onnx_ir.Model) -> None:
    by_proto = from_onnx(onnx_ir.to_proto(model), where="m")
    direct = from_onnx_ir(model, where="m")
    assert _signature(direct) == _signature(by_proto)
    for name, value in by_proto.values.items():  # the lazy weights read the right data
        if value.is_const:
            np.testing.assert_array_equal(direct.values[name].peek_const(), value.peek_const())


@pytest.mark.parametrize("name", ["yolox_s_like", "densenet", "grouped_conv"])
def test_the_graph_equals_the_proto_paths_on_bundled_models(name):
    _same_as_the_proto_path(onnx_ir.serde.deserialize_model(build(name)))


@pytest.mark.parametrize("name", CORPUS)
def test_the_graph_equals_the_proto_paths_on_corpus_models(name):
    folder = corpus_dir()
    if folder is None or not (folder / f"{name}.onnx").is_file():
        pytest.skip("no corpus folder (../shared/corpus or $DRPOPT_CORPUS)")
    proto = load_corpus_model(folder / f"{name}.onnx")
    _same_as_the_proto_path(onnx_ir.serde.deserialize_model(proto))


def _feeds(model: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in model.graph.input:
        shape = i.type.tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in shape]
        feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def _conv_model(functions: bool = False) -> onnx.ModelProto:
    """(conv -> Relu) x 2 -> conv -> activation, input ``["batch", 3, "h", "w"]``; with
    ``functions`` the last activation is a model-local function (custom.DoubleRelu)."""
    rng = np.random.default_rng(1)
    weights = {
        "w1": rng.standard_normal((16, 3, 3, 3)),
        "b1": rng.standard_normal(16),
        "w2": rng.standard_normal((16, 16, 1, 1)),
        "w3": rng.standard_normal((8, 16, 1, 1)),
    }
    last = (
        helper.make_node("DoubleRelu", ["g"], ["y"], domain="custom", name="act3")
        if functions
        else helper.make_node("Relu", ["g"], ["y"], name="act3")
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["d"], name="act1"),
        helper.make_node("Conv", ["d", "w2"], ["e"], name="conv2"),
        helper.make_node("Relu", ["e"], ["f"], name="act2"),
        helper.make_node("Conv", ["f", "w3"], ["g"], name="conv3"),
        last,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, "h", "w"])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in weights.items()],
    )
    opsets = [helper.make_opsetid("", 17)]
    fns = []
    if functions:
        opsets.append(helper.make_opsetid("custom", 1))
        body = [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Add", ["r", "r"], ["y"]),
        ]
        fns = [helper.make_function("custom", "DoubleRelu", ["x"], ["y"], body, opsets[:1])]
    model = helper.make_model(graph, opset_imports=opsets, functions=fns)
    onnx.checker.check_model(model)
    return model


def test_symbolic_dims_stay_strings_and_come_back():
    model = onnx_ir.serde.deserialize_model(_conv_model())
    _same_as_the_proto_path(model)
    graph = from_onnx_ir(model)
    batch, channels, *spatial = graph.values["c"].shape
    assert (batch, channels) == ("batch", 16) and all(isinstance(d, str) for d in spatial)
    back = onnx_ir.to_proto(to_onnx_ir(graph))
    dims = [d.dim_param or d.dim_value for d in back.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "h", "w"]


def test_a_model_local_function_survives_a_pruning_round_trip():
    proto = _conv_model(functions=True)
    out = api.run(onnx_ir.serde.deserialize_model(proto), "score,mask:rate=0.5,apply-masks")
    assert isinstance(out.model, onnx_ir.Model)
    written = onnx_ir.to_proto(out.model)
    assert [f.name for f in written.functions] == ["DoubleRelu"]
    feeds = _feeds(written)
    # apply-masks zeroes channels: the output is what drpopt's own pipeline computes
    ours = api.run(proto, "score,mask:rate=0.5,apply-masks").model
    np.testing.assert_allclose(_run(written, feeds)[0], _run(ours, feeds)[0], rtol=1e-5)
    assert out.plan.pruned_channels > 0


def test_external_data_stays_in_its_file_and_round_trips(tmp_path):
    onnx.save(
        _conv_model(),
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        location="m.data",
        size_threshold=0,
    )
    model = onnx_ir.load(tmp_path / "m.onnx")
    w1 = model.graph.initializers["w1"].const_value
    assert isinstance(w1, onnx_ir.ExternalTensor)
    graph = from_onnx_ir(model)
    assert graph.meta["external_data"] is True
    assert graph.values["w1"].origin is w1  # lazy: nothing read on load
    folded = api.run(model, "fold-batchnorm,cleanup").model
    onnx_ir.save(folded, tmp_path / "out.onnx", external_data="out.data")
    feeds = _feeds(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False))
    np.testing.assert_allclose(
        _run(str(tmp_path / "out.onnx"), feeds)[0], _run(str(tmp_path / "m.onnx"), feeds)[0]
    )
    back = to_onnx_ir(graph)  # no pass read it: the same external tensor goes back
    assert back.graph.initializers["w1"].const_value is w1


def test_an_unchanged_weight_goes_back_as_the_same_tensor_object():
    proto = build("resnet18")
    model = onnx_ir.serde.deserialize_model(proto)
    before = {n: v.const_value for n, v in model.graph.initializers.items()}
    # score and mask read every weight; nothing changes them
    result = passes.Drpopt("score,mask:rate=0.5")(model)
    after = result.model.graph.initializers
    assert after and all(v.const_value is before[n] for n, v in after.items())
    assert compare_models(proto, onnx_ir.to_proto(result.model)).ok


def test_a_weight_is_read_without_a_copy_and_not_writable():
    array = np.arange(4096 * 2, dtype=np.float32).reshape(64, 128)
    weight = onnx_ir.Value(name="w", const_value=onnx_ir.tensor(array))
    x = onnx_ir.val("x", onnx_ir.DataType.FLOAT, onnx_ir.Shape([2, 64]))
    node = onnx_ir.node("MatMul", [x, weight], name="mm")
    node.outputs[0].name = "y"
    graph = onnx_ir.Graph(
        [x], node.outputs, nodes=[node], initializers=[weight], opset_imports={"": 17}
    )
    read = from_onnx_ir(onnx_ir.Model(graph, ir_version=9)).values["w"].const
    assert np.shares_memory(read, array) and not read.flags.writeable


def test_no_pipeline_without_verify_serialises_the_weights(monkeypatch):
    model = onnx_ir.serde.deserialize_model(build("resnet18"))

    def refuse(*args, **kwargs):
        raise AssertionError("the model was serialised with its weights")

    monkeypatch.setattr(onnx_ir.serde, "serialize_model", refuse)
    out = api.run(model, "fold-batchnorm,score,mask:rate=0.5,apply-masks,compact").model
    assert isinstance(out, onnx_ir.Model)
    monkeypatch.undo()
    assert len(list(out.graph)) > 0 and api.analyze(model).groups


def _shared_bias_model() -> onnx.ModelProto:
    """Three convs; the first two share one bias, through an Identity and directly (as
    torch's exporter writes equal biases). Pruning changes the second's bias: the first's,
    un-shared on load under another name, is the only holder of the original tensor left."""
    rng = np.random.default_rng(2)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [init("w1", 16, 3, 3, 3), init("b", 16), init("w2", 16, 16, 3, 3)]
    inits.append(init("w3", 8, 16, 1, 1))
    nodes = [  # the Identity reads the bias first: conv1 (kept whole) gets the copy
        helper.make_node("Identity", ["b"], ["b2"], name="same_bias"),
        helper.make_node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_a_pass_per_adapter_leaves_the_callers_proto_as_it_was():
    proto = _shared_bias_model()
    before = proto.SerializeToString()
    steps = [passes.FoldBatchNorm(), passes.Score(), passes.Mask(rate=0.5)]
    steps += [passes.ApplyMasks(), passes.Compact(), passes.Cleanup()]
    pm = onnx_ir.passes.PassManager(steps)
    out = onnx_ir.to_proto(pm(onnx_ir.serde.deserialize_model(proto)).model)
    assert proto.SerializeToString() == before  # its tensors are shared, never renamed
    feeds = _feeds(proto)
    ours = api.run(proto, "fold-batchnorm,score,mask:rate=0.5,apply-masks,compact,cleanup")
    np.testing.assert_allclose(_run(out, feeds)[0], _run(ours.model, feeds)[0], rtol=1e-5)


def _without_weights(model: onnx_ir.Model) -> bytes:
    proto = onnx_ir.to_proto(model)
    for t in proto.graph.initializer:
        t.ClearField("raw_data")
    return proto.SerializeToString()


@pytest.mark.parametrize("pipeline", ["", "fold-batchnorm,score,mask:rate=0.5,apply-masks,compact"])
def test_the_model_built_directly_is_the_one_the_proto_path_gives(pipeline):
    from drpopt.ir.to_onnx import to_onnx

    model = onnx_ir.serde.deserialize_model(build("yolox_s_like"))
    graph = api.run(model, pipeline).graph if pipeline else from_onnx_ir(model)
    direct = to_onnx_ir(graph)
    assert _without_weights(direct) == _without_weights(
        onnx_ir.serde.deserialize_model(to_onnx(graph))
    )


def test_a_model_with_a_subgraph_goes_back_through_a_proto_and_runs():
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 8])],
    )
    other = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 8])],
    )
    w = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0), "zero")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    model = onnx_ir.serde.deserialize_model(proto)
    back = to_onnx_ir(from_onnx_ir(model))
    written = onnx_ir.to_proto(back)
    onnx.checker.check_model(written)
    for sign in (1, -1):
        feeds = {"x": sign * np.abs(np.random.default_rng(4).standard_normal((2, 8)))}
        feeds = {"x": feeds["x"].astype(np.float32)}
        np.testing.assert_allclose(_run(written, feeds)[0], _run(proto, feeds)[0], rtol=1e-6)
