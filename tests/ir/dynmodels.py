"""Small ONNX models with dynamic input shapes (like PP-OCR's: symbolic height and width,
weights in Constant nodes), built in code for the input-shape, verification and fuzz tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def dynamic_cnn(
    dims=("N", 3, "H", "W"), constants: bool = True, seed: int = 0, sigmoid: bool = False
) -> onnx.ModelProto:
    """x[N,3,H,W] -> Conv 3x3 (16) -> Relu -> Conv 3x3 (16) -> Relu -> Conv 1x1 (8) -> y.

    ``constants``: the weights are Constant nodes (as paddle2onnx writes them), else
    initializers. ``sigmoid``: y goes through a Sigmoid after a large negative bias, so its
    output is near zero on any input (a degenerate reference)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w0": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
        "b0": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w1": rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2,
        "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((8, 16, 1, 1)).astype(np.float32) * 0.3,
        "b2": (np.full(8, -40.0) if sigmoid else rng.standard_normal(8) * 0.1).astype(np.float32),
    }
    nodes = []
    inits = []
    for name, arr in weights.items():
        if constants:
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [name],
                    name=f"const_{name}",
                    value=numpy_helper.from_array(arr, name),
                )
            )
        else:
            inits.append(numpy_helper.from_array(arr, name))
    last = "y_pre" if sigmoid else "y"
    nodes += [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], [last], name="conv2"),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["y_pre"], ["y"], name="sigmoid"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 8, dims[2], dims[3]])
    graph = helper.make_graph(nodes, "dynamic_cnn", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def ppocr_models() -> dict[str, str]:
    """Paths of the PP-OCR models ``rapidocr-onnxruntime`` ships ({} when not installed)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        return {}
    folder = os.path.join(os.path.dirname(spec.origin), "models")
    out = {}
    for key, name in (
        ("det", "ch_PP-OCRv4_det_infer.onnx"),
        ("rec", "ch_PP-OCRv4_rec_infer.onnx"),
        ("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    ):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            out[key] = path
    return out
