"""The standard ops of newer opsets that onnxruntime 1.32 runs, each between convolutions or
linear layers that are prunable on their own (round 4a of the unseen-architecture battery,
with ``deploy_torch.py``), written with ``onnx.helper``: ``group_norm21``
(GroupNormalization-21), ``deform_conv19`` (DCNv2 with DeformConv-19), ``rms_norm23``
(RMSNormalization-23), ``attention23`` and ``rotary23`` (Attention-23, RotaryEmbedding-23).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _const(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 1.0
) -> onnx.TensorProto:
    arr = rng.standard_normal(shape).astype(np.float32) * scale
    return numpy_helper.from_array(arr, name)


def _model(nodes, inits, x_shape, opset, name) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def _conv_stem(rng, c: int) -> tuple[list, list]:
    """``x (1, 3, 8, 8)`` -> Conv 3x3 (c) -> Relu -> ``h``."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["h"]),
    ]
    return nodes, [_const(rng, "w1", (c, 3, 3, 3), 0.5), _const(rng, "b1", (c,), 0.1)]


def group_norm21(groups: int = 4) -> onnx.ModelProto:
    """Conv(16) -> GroupNormalization(opset 21, ``groups``) -> Relu -> Conv(5)."""
    rng = np.random.default_rng(0)
    nodes, inits = _conv_stem(rng, 16)
    nodes += [
        helper.make_node(
            "GroupNormalization", ["h", "gs", "gb"], ["n"], num_groups=groups, epsilon=1e-5
        ),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    inits += [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "gs"),
        _const(rng, "gb", (16,), 0.2),
        _const(rng, "w2", (5, 16, 1, 1), 0.5),
    ]
    return _model(nodes, inits, (1, 3, 8, 8), 21, "group_norm21")


def deform_conv19() -> onnx.ModelProto:
    """DCNv2 as mmcv/mmdeploy export it with the standard op: Conv(16) -> Relu -> an offset
    conv (18 channels) and a mask conv (9, Sigmoid) -> DeformConv(16 -> 12) -> Relu -> Conv(5)."""
    rng = np.random.default_rng(0)
    nodes, inits = _conv_stem(rng, 16)
    nodes += [
        helper.make_node("Conv", ["h", "wo", "bo"], ["off"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h", "wm"], ["ml"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["ml"], ["mask"]),
        helper.make_node(
            "DeformConv",
            ["h", "wd", "off", "bd", "mask"],
            ["d"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    inits += [
        _const(rng, "wo", (18, 16, 3, 3), 0.05),
        _const(rng, "bo", (18,), 0.1),
        _const(rng, "wm", (9, 16, 3, 3), 0.1),
        _const(rng, "wd", (12, 16, 3, 3), 0.2),
        _const(rng, "bd", (12,), 0.1),
        _const(rng, "w2", (5, 12, 1, 1), 0.5),
    ]
    return _model(nodes, inits, (1, 3, 8, 8), 19, "deform_conv19")


def _tokens(rng, d: int) -> tuple[list, list]:
    """``x (1, 6, 12)`` -> MatMul (12 -> d) + bias -> ``t``."""
    nodes = [
        helper.make_node("MatMul", ["x", "we"], ["e"]),
        helper.make_node("Add", ["e", "be"], ["t"]),
    ]
    return nodes, [_const(rng, "we", (12, d), 0.3), _const(rng, "be", (d,), 0.1)]


def rms_norm23() -> onnx.ModelProto:
    """MatMul (16) -> RMSNormalization (opset 23, last axis) -> MatMul (32) -> Relu ->
    MatMul (5)."""
    rng = np.random.default_rng(0)
    nodes, inits = _tokens(rng, 16)
    nodes += [
        helper.make_node("RMSNormalization", ["t", "rs"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    inits += [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "rs"),
        _const(rng, "w1", (16, 32), 0.3),
        _const(rng, "w2", (32, 5), 0.3),
    ]
    return _model(nodes, inits, (1, 6, 12), 23, "rms_norm23")


def attention23(rotary: bool = False, heads: int = 4, mask: bool = False) -> onnx.ModelProto:
    """Q, K, V projections (12 -> 16, 3-D, ``heads`` heads) -> Attention (opset 23,
    ``q_num_heads``) -> output projection (16 -> 5); with ``rotary``, RotaryEmbedding (opset
    23, ``num_heads``) on Q and K first; with ``mask``, an additive causal ``attn_mask``."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for p in "qkv":
        nodes.append(helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"]))
        inits.append(_const(rng, f"w{p}", (12, 16), 0.3))
    q, k = "q0", "k0"
    if rotary:
        half = 16 // heads // 2
        pos = np.arange(6, dtype=np.float32)[:, None] / (10.0 ** (np.arange(half) / half))
        inits += [
            numpy_helper.from_array(np.cos(pos).astype(np.float32), "cos"),
            numpy_helper.from_array(np.sin(pos).astype(np.float32), "sin"),
            numpy_helper.from_array(np.arange(6, dtype=np.int64)[None], "pos"),
        ]
        for p in "qk":
            nodes.append(
                helper.make_node(
                    "RotaryEmbedding", [f"{p}0", "cos", "sin", "pos"], [f"{p}r"], num_heads=heads
                )
            )
        q, k = "qr", "kr"
    nodes += [
        helper.make_node(
            "Attention",
            [q, k, "v0", *(["causal"] if mask else [])],
            ["a"],
            q_num_heads=heads,
            kv_num_heads=heads,
        ),
        helper.make_node("MatMul", ["a", "wo"], ["y"]),
    ]
    inits.append(_const(rng, "wo", (16, 5), 0.3))
    if mask:
        causal = np.triu(np.full((6, 6), -1e4, np.float32), 1)
        inits.append(numpy_helper.from_array(causal, "causal"))
    return _model(nodes, inits, (1, 6, 12), 23, "rotary23" if rotary else "attention23")


def rotary23() -> onnx.ModelProto:
    return attention23(rotary=True)
