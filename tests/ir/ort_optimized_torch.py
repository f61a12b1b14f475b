"""Small models as onnxruntime's own graph optimizer saves them (a common user flow: "I
optimized my model with onnxruntime, then I prune it"):

    so = ort.SessionOptions()
    so.graph_optimization_level = ORT_ENABLE_BASIC | ORT_ENABLE_EXTENDED | ORT_ENABLE_ALL
    so.optimized_model_filepath = path
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

``optimized(name, level)`` exports the torch model ``name`` (of ``BUILDERS``: a ResNet with
BatchNormalization, a MobileNetV2 with ReLU6, YOLOv8 with SiLU, a timm ViT and a ConvNeXt
with LayerNorm and GELU, a CNN with a ReLU MLP head) and returns what onnxruntime saves at
``level`` ("basic", "extended", "all"). ``fused_matmul`` is a hand-written graph of
com.microsoft ``FusedMatMul`` with constant weights read transposed (``transA``/``transB``).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from deploy_torch import _float_cnn, _torch_export
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from vit_blocks_torch import ConvNeXtNet, TimmViT

LEVELS = ("basic", "extended", "all")


def _vit() -> onnx.ModelProto:
    torch.manual_seed(0)
    return _torch_export(TimmViT().eval(), torch.randn(1, 3, 32, 32), ["output"], 17)


def _convnext() -> onnx.ModelProto:
    torch.manual_seed(0)
    return _torch_export(ConvNeXtNet().eval(), torch.randn(1, 3, 32, 32), ["output"], 17)


def _yolov8() -> onnx.ModelProto:
    import yolov8_torch

    return yolov8_torch.export()


def _mlp_head() -> onnx.ModelProto:
    """Conv-ReLU, Flatten, Linear-ReLU, Linear-LeakyReLU, Linear: onnxruntime fuses the first
    two Linears with their activations into FusedGemm."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 32),
        nn.ReLU(), nn.Linear(32, 16), nn.LeakyReLU(0.1), nn.Linear(16, 4),
    ).eval()  # fmt: skip
    return _torch_export(model, torch.randn(1, 3, 8, 8), ["output"], 17)


BUILDERS = {
    "resnet": lambda: _float_cnn("resnet"),
    "mobilenetv2": lambda: _float_cnn("mobilenetv2"),
    "yolov8": _yolov8,
    "vit": _vit,
    "convnext": _convnext,
    "mlp_head": _mlp_head,
}


def save_optimized(model: onnx.ModelProto, level: str) -> onnx.ModelProto:
    """What ``onnxruntime.InferenceSession`` saves of ``model`` at ``level``."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # the NCHWc "hardware specific" warning
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


@functools.cache
def _exported(name: str) -> bytes:
    return BUILDERS[name]().SerializeToString()


def optimized(name: str, level: str) -> onnx.ModelProto:
    return save_optimized(onnx.load_from_string(_exported(name)), level)


def _model(nodes, name: str, x: list, out: tuple, inits) -> onnx.ModelProto:
    """A model of ``nodes`` reading ``x`` (its dims) and writing ``out`` (name, dims), with
    opset 17 and com.microsoft 1."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def fused_matmul(trans_batch: bool = False) -> onnx.ModelProto:
    """Two com.microsoft FusedMatMul layers with constant weights: ``0.5 * x @ W1^T``
    (``transB=1``, W1 ``(24, 12)``), Relu, a Transpose to ``(1, 24, 6)``, and
    ``2 * t^T @ W2`` (``transA=1``, W2 ``(24, 5)``): the 24 hidden channels are W1's rows
    and W2's rows. ``trans_batch``: the first also sets ``transBatchB`` (not mapped: it
    locks)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((24, 12)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((24, 5)).astype(np.float32), "w2")
    batch = {"transBatchB": 1} if trans_batch else {}
    nodes = [
        helper.make_node(
            "FusedMatMul",
            ["x", "w1"],
            ["h"],
            "fm1",
            domain="com.microsoft",
            transB=1,
            alpha=0.5,
            **batch,
        ),
        helper.make_node("Relu", ["h"], ["r"], "relu"),
        helper.make_node("Transpose", ["r"], ["t"], "t", perm=[0, 2, 1]),
        helper.make_node(
            "FusedMatMul", ["t", "w2"], ["y"], "fm2", domain="com.microsoft", transA=1, alpha=2.0
        ),
    ]
    return _model(nodes, "fused_matmul", [1, 6, 12], ("y", [1, 6, 5]), [w1, w2])


def skip_layer_norm(broadcast_skip: bool = False) -> onnx.ModelProto:
    """com.microsoft SkipLayerNormalization with every input and its sum output read:
    ``h1 = x @ W1``, ``h2 = x @ W2`` (16 channels each), ``SkipLayerNormalization(h1, h2,
    gamma, beta, bias)`` writing ``Y`` and ``S`` (output 3), ``Y @ W3 + S @ W4``.
    ``broadcast_skip``: the skip is a constant ``(4, 16)`` read by every batch (it locks)."""
    rng = np.random.default_rng(0)

    def const(name, *shape, scale=1.0):
        arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(arr, name)

    inits = [const("w1", 8, 16), const("w3", 16, 5), const("w4", 16, 5, scale=0.2)]
    inits += [const("gamma", 16), const("beta", 16), const("bias", 16)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], "mm1")]
    if broadcast_skip:
        inits.append(const("h2", 4, 16))
    else:
        inits.append(const("w2", 8, 16))
        nodes.append(helper.make_node("MatMul", ["x", "w2"], ["h2"], "mm2"))
    nodes += [
        helper.make_node(
            "SkipLayerNormalization",
            ["h1", "h2", "gamma", "beta", "bias"],
            ["y", "", "", "s"],
            "skip_ln",
            domain="com.microsoft",
            epsilon=1e-5,
        ),
        helper.make_node("MatMul", ["y", "w3"], ["o1"], "mm3"),
        helper.make_node("MatMul", ["s", "w4"], ["o2"], "mm4"),
        helper.make_node("Add", ["o1", "o2"], ["out"], "add"),
    ]
    return _model(nodes, "skip_layer_norm", [2, 4, 8], ("out", [2, 4, 5]), inits)


def fused_conv_sum() -> onnx.ModelProto:
    """com.microsoft FusedConv with its fourth input ``Z`` (``Relu(Conv(x) + Z)``, as
    onnxruntime fuses a Conv, an Add and a Relu): ``Z`` is another conv's output, so both
    convs' 8 output channels form one group with the 1x1 conv reading them."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w0", (8, 3, 3, 3)), ("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 1, 1)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["z"], "conv0", pads=[1, 1, 1, 1]),
        helper.make_node(
            "FusedConv",
            ["x", "w1", "b1", "z"],
            ["y"],
            "fused",
            domain="com.microsoft",
            activation="Relu",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Conv", ["y", "w2"], ["out"], "conv2"),
    ]
    return _model(nodes, "fused_conv_sum", [1, 3, 8, 8], ("out", [1, 4, 8, 8]), inits)
