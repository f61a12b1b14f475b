"""The ONNX frontend: opsets, external data, symbolic dims, Constant weights, bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from deadchannels import assert_groups_complete
from onnx import helper, numpy_helper, version_converter

from drpopt import analyze
from drpopt.errors import BadInputError, UnsupportedModelError
from drpopt.ir import from_onnx
from drpopt.zoo import build
from drpopt.zoo.builder import OnnxBuilder


def group_summary(analysis):
    return [(g.size, g.prunable, tuple(g.producers)) for g in analysis.groups]


def small_model(batch="N", opset: int = 17) -> onnx.ModelProto:
    """Conv/BN/residual plus the ops whose form changed across opsets (Split, Resize,
    Slice, Squeeze-free Flatten)."""
    b = OnnxBuilder(opset=opset)
    x = b.input("input", [batch, 3, 8, 8])
    y = b.relu(b.bn(b.conv(x, 8, name="c1"), name="bn1"))
    z = b.relu(b.conv(y, 8, name="c2"))
    r = b.add(y, z, name="res")
    s1, s2 = b.split(r, [3, 5], name="split")
    u = b.resize(b.conv(s2, 6, name="c3"), 2, name="up")
    v = b.conv(b.maxpool(u, 2, 2, pad=0), 6, name="c4")
    w = b.slice(b.concat([s1, v], name="cat"), [1], [9], [1], name="take")
    b.output(b.conv(w, 4, name="out"))
    return b.build()


def test_ir_keeps_def_use():
    g = from_onnx(small_model())
    conv = next(n for n in g.nodes if n.name == "c1")
    out = conv.outputs[0]
    assert out.producer is conv
    assert [n.op_type for n, _ in out.uses] == ["BatchNormalization"]
    assert g.values["c1.weight"].const.shape == (8, 3, 3, 3)
    assert g.inputs[0].shape == ("N", 3, 8, 8)
    assert g.values["res"].shape == ("N", 8, 8, 8)


def test_replace_all_uses_and_remove_node():
    g = from_onnx(small_model())
    relu = next(n for n in g.nodes if n.op_type == "Relu")
    bn_out = relu.inputs[0]
    g.replace_all_uses_with(relu.outputs[0], bn_out)
    assert not relu.outputs[0].uses
    g.remove_node(relu)
    assert relu not in g.nodes
    assert all(n is not relu for n, _ in bn_out.uses)
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(bn_out.producer)


def test_replace_all_uses_reaches_into_subgraphs():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 8, name="c1"), name="r1")
    cond = b.const("cond", np.array(True))
    body = helper.make_graph(
        [helper.make_node("Sigmoid", [y], ["sub_out"])],
        "body",
        [],
        [helper.make_tensor_value_info("sub_out", 1, None)],
    )
    b.nodes.append(
        helper.make_node("If", [cond], ["branch"], name="iff", then_branch=body, else_branch=body)
    )
    b.output("branch")
    g = from_onnx(b.build(check=False))
    iff = next(n for n in g.nodes if n.op_type == "If")
    relu = next(n for n in g.nodes if n.op_type == "Relu")
    g.replace_all_uses_with(relu.outputs[0], relu.inputs[0])
    assert iff.inputs[0].name == "cond"  # the If's own input is untouched
    assert iff.meta["captured"] == [relu.inputs[0]]
    body_node = iff.subgraphs["then_branch"].nodes[0]
    assert body_node.inputs[0] is relu.inputs[0]


def test_symbolic_batch_gives_the_same_groups_as_static():
    assert group_summary(analyze(small_model("N"))) == group_summary(analyze(small_model(1)))


@pytest.mark.parametrize("opset", [11, 12, 13, 17])
def test_supported_opsets(opset):
    model = small_model(opset=opset)
    assert model.opset_import[0].version == opset
    a = analyze(model)
    assert group_summary(a) == group_summary(analyze(small_model()))
    assert a.unsupported == []
    assert_groups_complete(a, model)


@pytest.mark.parametrize("target", [18, onnx.defs.onnx_opset_version()])
def test_models_upgraded_to_the_newest_opsets(target):
    for model in (small_model(opset=11), build("yolox_s_like")):
        upgraded = version_converter.convert_version(model, target)
        assert upgraded.opset_import[0].version == target
        assert group_summary(analyze(upgraded)) == group_summary(analyze(model))


def test_old_opset_is_refused_with_the_fix():
    model = small_model()
    model.opset_import[0].version = 9
    with pytest.raises(UnsupportedModelError, match="version_converter"):
        analyze(model)


def test_external_data(tmp_path):
    model = build("resnet18")
    path = tmp_path / "ext.onnx"
    external = onnx.ModelProto()
    external.CopyFrom(model)  # saving with external data rewrites the proto it is given
    onnx.save_model(
        external,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.onnx.data").exists()
    a = analyze(path)
    assert group_summary(a) == group_summary(analyze(model))
    assert a.params == analyze(model).params
    # analysing reads no weight: they stay in the .data file until a pass needs them
    weight = a.graph.values["stem.conv.weight"]
    assert weight.is_const and weight.__dict__["_const"] is None
    np.testing.assert_array_equal(
        weight.const,
        next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == weight.name),
    )
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(BadInputError, match="external weight data"):
        analyze(path)


def test_a_model_with_external_data_prunes_and_is_written_with_external_data(tmp_path):
    from drpopt.ir.files import save_model
    from drpopt.ir.to_onnx import to_onnx
    from drpopt.passes import ApplyMasksPass, CompactPass, MaskPass, PassManager, ScorePass

    model = build("resnet18")
    path = tmp_path / "big.onnx"
    external = onnx.ModelProto()
    external.CopyFrom(model)  # saving with external data rewrites the proto it is given
    onnx.save_model(
        external, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=0
    )
    passes = [ScorePass(), MaskPass(rate=0.5), ApplyMasksPass(), CompactPass()]
    pruned = to_onnx(PassManager(passes)(str(path)).model)
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    save_model(pruned, out, external=True)
    assert (out.parent / "small.onnx.data").stat().st_size > 1000
    assert out.stat().st_size < 100_000  # the graph alone
    reference = PassManager(passes)(model).model
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 64, 64), np.float32)}
    import onnxruntime as ort

    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = ort.InferenceSession(
        to_onnx(reference).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert not list(out.parent.glob(".*"))  # no temporary left behind


def test_constant_node_weights_are_members():
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    b.nodes.append(
        helper.make_node(
            "Constant", [], ["wc"], name="wconst", value=onnx.numpy_helper.from_array(w)
        )
    )
    b.shapes["wc"] = w.shape
    y = b.op("Conv", [x, "wc"], (1, 8, 8, 8), name="c1", pads=[1, 1, 1, 1])
    b.output(b.conv(b.relu(y), 4, name="out"))
    a = analyze(b.build())
    g = a.group("c1")
    assert g.prunable and ("wc", 0) in {(m.tensor, m.axis) for m in g.members}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b"this is not a model\n" * 20, "not a readable ONNX model"),
        ("truncate", "not a readable ONNX model"),
        ("dir", "is a directory"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    if content == "truncate":
        data = build("resnet18").SerializeToString()
        path.write_bytes(data[: len(data) // 3])
    elif content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        analyze(path)


def test_analysis_does_not_import_torch(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_model(), str(path))
    code = (
        "import sys, drpopt; from drpopt.cli import main; drpopt.analyze(sys.argv[1]); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_node_names_are_made_unique_on_load():
    """ONNX allows repeated (or empty) node names; plans and locks name nodes, so the IR's
    are unique: a repeated name gets a suffix, an empty one its op and position."""
    from drpopt.zoo.builder import OnnxBuilder

    b = OnnxBuilder(seed=0)
    x = b.input("input", (1, 3, 8, 8))
    y = b.relu(b.conv(x, 8, name="conv"), name="act")
    y = b.relu(b.conv(y, 8, name="conv2"), name="act2")
    model = b.build()
    for node in model.graph.node:
        node.name = {"Conv": "same", "Relu": ""}.get(node.op_type, node.name)
    names = [n.name for n in from_onnx(model).nodes]
    assert len(set(names)) == len(names)
    assert names[:2] == ["same", "Relu_1"] and "same_2" in names
