"""The bundled zoo models: valid ONNX, runnable in onnxruntime, right output shapes, and
structurally what their docstrings say (names, Focus slicing, channel shuffle, parameters)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from drpopt.zoo import models
from drpopt.zoo.models import MODELS, build

EXPECTED_OUT: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 10),
    "resnet50": (1, 10),
    "mobilenetv2": (1, 10),
    "yolox_s_like": (1, (128 // 8) ** 2 + (128 // 16) ** 2 + (128 // 32) ** 2, 5 + 20),
    "se": (1, 10),
    "densenet": (1, 10),
    "flatten_gemm": (1, 10),
    "grouped_conv": (1, 10),
    "channel_shuffle": (1, 10),
}

KEY_NODES: dict[str, list[str]] = {
    "resnet18": [
        "stem.conv",
        "stem.maxpool",
        "layer1.0.conv1",
        "layer1.0.add",
        "layer2.0.downsample.conv",
        "layer4.1.relu2",
        "fc",
    ],
    "resnet50": [
        "stem.conv",
        "layer1.0.downsample.conv",
        "layer1.0.conv3",
        "layer3.5.add",
        "layer4.0.downsample.conv",
        "fc",
    ],
    "mobilenetv2": [
        "stem.conv",
        "blocks.0.dw.conv",
        "blocks.1.expand.conv",
        "blocks.2.add",
        "blocks.16.project.bn",
        "last.conv",
        "fc",
    ],
    "yolox_s_like": [
        "backbone.stem.slice_tl",
        "backbone.stem.cat",
        "backbone.stem.conv.conv",
        "backbone.dark2.0.conv",
        "backbone.dark3.1.m.2.add",
        "backbone.dark5.1.m.2",
        "neck.upsample0",
        "neck.C3_n4.conv3.conv",
        "head.cls_preds.0",
        "head.reg_preds.0",
        "head.obj_preds.2",
        "head.concat",
        "head.transpose",
    ],
    "se": ["se.pool", "se.fc1", "se.fc2", "se.sigmoid", "se.scale", "fc"],
    "densenet": ["block1.layer1.conv1", "block2.layer4.concat", "transition1.pool", "fc"],
    "flatten_gemm": ["conv", "flatten", "fc1", "fc2"],
    "grouped_conv": ["gconv", "dwconv", "dwconv_mult", "pwconv", "fc"],
    "channel_shuffle": [
        "shuffle.reshape1",
        "shuffle.transpose",
        "shuffle.reshape2",
        "unit.split",
        "unit.concat",
        "unit.shuffle.transpose",
        "fc",
    ],
}


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: build(name) for name in MODELS}


def _session(model: onnx.ModelProto, extra_outputs: list[str] = ()) -> ort.InferenceSession:
    if extra_outputs:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for name in extra_outputs:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        model = m
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _random_input(sess: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    (inp,) = sess.get_inputs()
    x = np.random.default_rng(seed).standard_normal(inp.shape).astype(np.float32)
    return {inp.name: x}


def test_registry_keys() -> None:
    assert set(MODELS) == set(EXPECTED_OUT)
    assert "yolox_s" not in MODELS
    assert callable(models.yolox_s)


def test_build_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as err:
        build("no_such_model")
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_checks_and_runs(name: str, built: dict[str, onnx.ModelProto]) -> None:
    model = built[name]
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    assert inp.type.tensor_type.shape.dim[0].dim_value == 1
    sess = _session(model)
    (out,) = sess.run(None, _random_input(sess))
    assert out.shape == EXPECTED_OUT[name]
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_key_node_names(name: str, built: dict[str, onnx.ModelProto]) -> None:
    names = [n.name for n in built[name].graph.node]
    assert len(names) == len(set(names)), "node names must be unique"
    missing = [k for k in KEY_NODES[name] if k not in names]
    assert not missing


def test_builds_are_deterministic() -> None:
    a, b = build("se"), build("se")
    assert a.SerializeToString() == b.SerializeToString()


def test_resnet_structure(built: dict[str, onnx.ModelProto]) -> None:
    nodes = {n.name: n for n in built["resnet18"].graph.node}
    assert sum(n.op_type == "Add" for n in nodes.values()) == 8
    assert [k for k in nodes if k.endswith("downsample.conv")] == [
        "layer2.0.downsample.conv",
        "layer3.0.downsample.conv",
        "layer4.0.downsample.conv",
    ]
    assert nodes["layer1.0.add"].input[1] == "stem.maxpool"  # identity shortcut
    nodes50 = {n.name: n for n in built["resnet50"].graph.node}
    assert sum(n.op_type == "Add" for n in nodes50.values()) == 16
    inits = {t.name: t for t in built["resnet50"].graph.initializer}
    assert list(inits["layer1.0.conv3.weight"].dims) == [64, 16, 1, 1]  # expansion 4


def test_mobilenetv2_structure(built: dict[str, onnx.ModelProto]) -> None:
    graph = built["mobilenetv2"].graph
    assert sum(n.op_type == "Add" for n in graph.node) == 10  # standard MobileNetV2
    dw = [n for n in graph.node if n.name.endswith(".dw.conv")]
    assert len(dw) == 17
    inits = {t.name: t for t in graph.initializer}
    for n in dw:
        group = next(a.i for a in n.attribute if a.name == "group")
        assert list(inits[f"{n.name}.weight"].dims)[:2] == [group, 1]


def test_yolox_focus_and_head(built: dict[str, onnx.ModelProto]) -> None:
    model = built["yolox_s_like"]
    head = [f"head.cat.{k}" for k in range(3)]
    sess = _session(model, ["backbone.stem.cat", *head])
    feeds = _random_input(sess, seed=1)
    x = next(iter(feeds.values()))
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    ref = np.concatenate(
        [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], axis=1
    )
    np.testing.assert_array_equal(outs["backbone.stem.cat"], ref)
    flat = np.concatenate([outs[h].reshape(1, 25, -1) for h in head], axis=2)
    np.testing.assert_array_equal(outs["head.transpose"], flat.transpose(0, 2, 1))
    # obj and cls columns went through a sigmoid, reg did not
    assert ((outs["head.transpose"][..., 4:] >= 0) & (outs["head.transpose"][..., 4:] <= 1)).all()
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    assert len(slices) == 4
    silu_muls = [n for n in model.graph.node if n.name.endswith(".act") and n.op_type == "Mul"]
    assert len(silu_muls) == sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_channel_shuffle_semantics() -> None:
    model = models.channel_shuffle_model(groups=4)
    names = ["relu1", "shuffle.reshape2", "unit.concat", "unit.shuffle.reshape2"]
    sess = _session(model, names)
    outs = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, _random_input(sess)), strict=True)
    )

    def shuffle(a: np.ndarray, g: int) -> np.ndarray:
        n, c, h, w = a.shape
        return a.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)

    np.testing.assert_array_equal(outs["shuffle.reshape2"], shuffle(outs["relu1"], 4))
    np.testing.assert_array_equal(outs["unit.shuffle.reshape2"], shuffle(outs["unit.concat"], 2))


def test_flatten_gemm_layout(built: dict[str, onnx.ModelProto]) -> None:
    graph = built["flatten_gemm"].graph
    inits = {t.name: t for t in graph.initializer}
    assert inits["conv.weight"].dims[0] == 8
    assert list(inits["fc1.weight"].dims) == [32, 8 * 4 * 4]
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    assert shapes["relu"] == [1, 8, 4, 4]
    assert shapes["flatten"] == [1, 128]


def test_grouped_conv_weights(built: dict[str, onnx.ModelProto]) -> None:
    inits = {t.name: list(t.dims) for t in built["grouped_conv"].graph.initializer}
    assert inits["gconv.weight"] == [32, 4, 3, 3]
    assert inits["dwconv.weight"] == [32, 1, 3, 3]
    assert inits["dwconv_mult.weight"] == [64, 1, 3, 3]


def test_densenet_concat_chain(built: dict[str, onnx.ModelProto]) -> None:
    nodes = {n.name: n for n in built["densenet"].graph.node}
    assert list(nodes["block1.layer2.concat"].input) == [
        "block1.layer1.concat",
        "block1.layer2.conv2",
    ]
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in built["densenet"].graph.value_info
    }
    assert shapes["block1.layer4.concat"][1] == 16 + 4 * 8
    assert shapes["transition1.pool"][1] == (16 + 4 * 8) // 2


def test_yolox_s_full_size_parameters() -> None:
    model = models.yolox_s()
    (out,) = model.graph.output
    anchors = sum((640 // s) ** 2 for s in (8, 16, 32))
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, anchors, 85]
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert abs(total - 8.97e6) / 8.97e6 < 0.05
    trainable = sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT
        and not t.name.endswith(("running_mean", "running_var", ".scales"))
    )
    assert trainable == 8_968_255  # the YOLOX-s count from the reference implementation
