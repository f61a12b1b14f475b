"""onnx-caffe2's exports of nine classic CNNs, as the ``onnx`` package ships them in its
backend test data (``onnx/backend/test/data/light``): real exports of another project's
tool (opset 9, IR version 3, every weight also a graph input, ``gpu_0/`` names, BN kept,
the classifier weight reshaped at run time before its Gemm).

The files are "light": each weight is a ``ConstantOfShape`` of its shape. ``caffe2_model``
puts seeded random weights in their place (He-scaled kernels, positive BN scales and
variances) and converts the model to opset 13, which drpopt reads (it refuses opsets
before 11 with one line that says to convert).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]


def available() -> bool:
    return (LIGHT / "light_resnet50.onnx").exists()


@functools.cache
def caffe2_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The runnable opset-13 model of ``light_<name>.onnx``."""
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    positive = {
        n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (1, 4)
    }
    nodes, weights, shape_inputs = [], [], set()
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            nodes.append(node)
            continue
        shape = [int(d) for d in shapes[node.input[0]]]
        shape_inputs.add(node.input[0])
        weights.append(
            numpy_helper.from_array(_weight(rng, shape, node.output[0] in positive), node.output[0])
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [t for t in model.graph.initializer if t.name not in shape_inputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + weights)
    inputs = [i for i in model.graph.input if i.name not in shape_inputs]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)  # IR version 3: every initializer is a graph input
    return version_converter.convert_version(model, 13)


def _weight(rng: np.random.Generator, shape: list[int], positive: bool) -> np.ndarray:
    if positive:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) == 1:
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
