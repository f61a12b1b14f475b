"""Reading a model file without its weights (``ir/onnx_scan.py``): what is left in the
file, what is parsed, and that analysis reads no weight while the passes still get them."""

from __future__ import annotations

import importlib
import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from drpopt import analyze
from drpopt.errors import BadInputError
from drpopt.ir import from_onnx
from drpopt.ir.fold import MAX_ELEMENTS
from drpopt.ir.onnx_scan import FileWeights, read_light, tensor_array
from drpopt.zoo import build


def _saved(tmp_path, model: onnx.ModelProto, name: str = "m.onnx"):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def test_large_weights_stay_in_the_file_and_everything_else_is_parsed(tmp_path):
    model = build("resnet18")
    path = _saved(tmp_path, model)
    light, weights = read_light(path, keep=MAX_ELEMENTS)
    full = onnx.load(str(path))
    assert len(light.graph.initializer) == len(full.graph.initializer)
    left = 0
    pairs = zip(light.graph.initializer, full.graph.initializer, strict=True)
    for index, (got, want) in enumerate(pairs):
        if index in weights.spans:
            left += 1
            assert np.prod(want.dims) > MAX_ELEMENTS and not got.raw_data
            stripped = onnx.TensorProto()
            stripped.CopyFrom(want)
            stripped.ClearField("raw_data")
            assert got == stripped
            array = weights.loader(index, got)()
            expected = numpy_helper.to_array(want)
            assert array.dtype == expected.dtype and array.shape == expected.shape
            assert array.flags.writeable == expected.flags.writeable
            np.testing.assert_array_equal(array, expected)
        else:
            assert got == want  # small tensors (shape arguments) parsed whole
    assert left > 10
    assert list(light.graph.node) == list(full.graph.node)
    assert light.opset_import == full.opset_import


def test_analysing_a_path_reads_no_weight_and_gives_what_the_proto_gives(tmp_path, monkeypatch):
    model = build("resnet18")
    path = _saved(tmp_path, model)
    want = analyze(model).to_dict()

    def refuse(self, offset, length, name):
        raise AssertionError(f"analysis read the weight {name}")

    monkeypatch.setattr(FileWeights, "_read", refuse)
    got = analyze(path).to_dict()
    got["model"]["source"] = want["model"]["source"]
    assert got == want


def test_weights_are_read_from_the_file_the_model_came_from(tmp_path):
    model = build("resnet18")
    path = _saved(tmp_path, model)
    graph = from_onnx(path)
    other = _saved(tmp_path, _scaled(model), "other.onnx")
    os.replace(other, path)  # an atomic write over the input (prune --force)
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for value in graph.initializers:
        np.testing.assert_array_equal(value.const, expected[value.name])


@pytest.mark.parametrize("how", ["cut short", "same size"])
def test_a_file_written_in_place_after_reading_is_an_error_naming_it(tmp_path, how):
    path = _saved(tmp_path, build("resnet18"))
    graph = from_onnx(path)
    with open(path, "r+b") as fh:
        if how == "cut short":
            fh.truncate(1000)
        else:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(size // 2)
            fh.write(b"\x00" * 64)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(BadInputError, match=f"{path.name}: the file changed while it was in use"):
        for value in graph.initializers:
            value.const  # noqa: B018


def test_text_format_and_garbage_are_left_to_onnx_load(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("not a model")
    assert read_light(path, keep=MAX_ELEMENTS) is None
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\xff" * 64)
    assert read_light(garbage, keep=MAX_ELEMENTS) is None
    with pytest.raises(BadInputError, match="not a readable ONNX model"):
        from_onnx(garbage)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(5, dtype=np.int64),
        np.zeros((0, 3), np.int32),
        np.array([True, False]),
        np.arange(6, dtype=np.float16).reshape(2, 3),
    ],
)
def test_tensor_array_is_numpy_helpers_array(array):
    for tensor in (
        numpy_helper.from_array(array, "x"),
        helper.make_tensor("y", helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array),
    ):
        got, want = tensor_array(tensor), numpy_helper.to_array(tensor)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.flags.writeable == want.flags.writeable
        np.testing.assert_array_equal(got, want)


def _scaled(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2 + 1, t.name))
    return out


def test_analysing_a_model_with_external_data_reads_none_of_it(tmp_path):
    model = build("resnet18")
    path = tmp_path / "ext.onnx"
    external = onnx.ModelProto()
    external.CopyFrom(model)  # saving with external data rewrites the proto it is given
    onnx.save_model(
        external, str(path), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    with open(tmp_path / "ext.data", "r+b") as fh:
        fh.truncate(0)  # any read of a weight would now fail
    want = analyze(model).to_dict()
    got = analyze(path).to_dict()
    got["model"]["source"] = want["model"]["source"]
    assert got == want
    weight = from_onnx(path).values["stem.conv.weight"]
    with pytest.raises(BadInputError, match=r"ext\.data: the external data of 'stem\.conv\.w"):
        weight.const  # noqa: B018  (onnx refuses the short read)


def test_records_that_cross_read_windows_are_read_whole(tmp_path):
    """Names longer than a read window, and runs of small tensors between large ones: the
    walk refills its window mid-record and still gives what ``onnx.load`` parses."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    previous = "x"
    for i in range(40):
        name = f"w{i}_" + "n" * (3000 if i % 3 == 0 else 10)
        size = (100, 100) if i % 2 == 0 else (3, 3)  # large ones left out, small ones kept
        inits.append(numpy_helper.from_array(rng.standard_normal(size).astype(np.float32), name))
        nodes.append(
            helper.make_node("Add", [previous, name], [f"y{i}"], name=f"add{i}_" + "a" * 700)
        )
        previous = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [100, 100])],
        [helper.make_tensor_value_info(previous, onnx.TensorProto.FLOAT, [100, 100])],
        inits,
    )
    path = _saved(tmp_path, helper.make_model(graph))
    light, weights = read_light(path, keep=MAX_ELEMENTS)
    full = onnx.load(str(path))
    assert sorted(weights.spans) == [i for i in range(40) if i % 2 == 0]
    for index, (got, want) in enumerate(
        zip(light.graph.initializer, full.graph.initializer, strict=True)
    ):
        if index in weights.spans:
            np.testing.assert_array_equal(weights.loader(index, got)(), numpy_helper.to_array(want))
            want.ClearField("raw_data")
        assert got == want
    assert list(light.graph.node) == list(full.graph.node)


def test_shape_inference_input_cut_from_the_file_is_the_proto_copy(tmp_path):
    """From a path the model for shape inference is cut from the bytes read
    (``ir/shape_model.shape_bytes``); it must type every value as the proto copy does: folded
    nodes out and their values in, weights over the size limit typed (one of them also a
    graph input, one small in bytes but over the limit in elements), small constants kept."""
    frontend = importlib.import_module("drpopt.ir.from_onnx")  # the module, not the function
    from drpopt.ir.shape_model import shape_bytes, shape_copy

    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((16, 3, 30, 30)).astype(np.float32), "w")
    many = numpy_helper.from_array(np.ones((5000,), np.int8), "many")  # 5000 B, 5000 elements
    shape = numpy_helper.from_array(np.array([16, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0))),
        helper.make_node("Unsqueeze", ["k", "axes"], ["k1"]),  # folded
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Cast", ["many"], ["m"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["m", "k1"], ["s"], keepdims=0),
        helper.make_node("Add", ["r", "s"], ["y"]),
    ]
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 32, 32]),
            helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [16, 3, 30, 30]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [big, many, shape, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = _saved(tmp_path, model)
    light, weights = read_light(path, keep=MAX_ELEMENTS)
    folded_nodes: list[int] = []
    folded = frontend.fold_constants(light, folded_nodes)
    assert folded_nodes == [2] and list(folded) == ["k1"]
    copy = shape_copy(light, folded, folded_nodes)
    cut = shape_bytes(light, weights.layout, folded, folded_nodes)
    parsed, copied = onnx.load_from_string(cut), onnx.load_from_string(copy)
    for field in ("node", "initializer", "input", "output", "value_info"):
        assert list(getattr(parsed.graph, field)) == list(getattr(copied.graph, field)), field
    assert [i.name for i in parsed.graph.initializer] == ["shape", "axes", "k1"]
    assert [i.name for i in parsed.graph.input] == ["x", "w", "many"]
    assert parsed.graph.input[2] == helper.make_tensor_value_info(
        "many", onnx.TensorProto.INT8, [5000]
    )
    assert [n.output[0] for n in parsed.graph.node] == ["c", "k", "r", "m", "s", "y"]
    want = frontend.infer_shapes(copy).graph
    got = frontend.infer_shapes(cut).graph
    assert list(got.value_info) == list(want.value_info) and list(got.output) == list(want.output)
    assert {v.name for v in want.value_info} >= {"c", "r", "m", "s"}
    shapes = {v.name: v.shape for v in from_onnx(model).values.values()}
    assert {v.name: v.shape for v in from_onnx(path).values.values()} == shapes


def test_large_constant_nodes_reach_shape_inference_as_typed_inputs(monkeypatch):
    """paddle2onnx writes every weight as a Constant node: with a dynamic input, shape
    inference gets the large ones as typed inputs (``shape_model.large_constants``), not
    their data, and the graph has the same values, in the same order, with the same shapes
    and dtypes as when it got them whole."""
    frontend = importlib.import_module("drpopt.ir.from_onnx")
    from drpopt.ir import shape_model

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 8, 3, 3)).astype(np.float32))
    b = numpy_helper.from_array(np.zeros(64, np.float32))
    nodes = [
        helper.make_node("Constant", [], ["b"], value=b),  # small: kept as data
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Constant", [], ["w"], value=w),  # 4608 elements: typed input
        helper.make_node("Conv", ["r", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8, "h", "w"])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    consts = shape_model.large_constants(model.graph)
    assert [(i, name) for i, name, _ in consts] == [(2, "w")]
    light = onnx.load_from_string(shape_model.shape_copy(model, {}, [], consts))
    assert [n.output[0] for n in light.graph.node] == ["b", "r", "c", "y"]
    assert light.graph.input[-1] == helper.make_tensor_value_info(
        "w", onnx.TensorProto.FLOAT, [64, 8, 3, 3]
    )

    def seen(m):
        return [(v.name, v.shape, v.dtype) for v in from_onnx(m).values.values()]

    got = seen(model)
    monkeypatch.setattr(frontend, "large_constants", lambda gp: [])
    assert got == seen(model)
    assert ("w", (64, 8, 3, 3), np.dtype(np.float32)) in got


@pytest.mark.parametrize("dims", [[], [1], [7], [4, 3, 1, 2]])
def test_float_data_tensors_read_as_numpy_helper_reads_them(dims):
    """Older paddle2onnx exports keep weights in ``float_data``: ``tensor_array`` reads the
    packed record and gives ``numpy_helper.to_array``'s array, bit for bit, writable."""
    size = int(np.prod(dims))
    vals = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    vals[:2] = [np.nan, -0.0][: min(size, 2)]
    tensor = helper.make_tensor("t", onnx.TensorProto.FLOAT, dims, vals.tolist())
    tensor.doc_string = "after the data"  # a record after float_data is skipped
    assert not tensor.HasField("raw_data") and len(tensor.float_data) == size
    from drpopt.ir.onnx_scan import _packed_floats

    assert _packed_floats(tensor) is not None  # the fast path, not to_array's
    got, want = tensor_array(tensor), numpy_helper.to_array(tensor)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.writeable
    assert got.tobytes() == want.tobytes()
