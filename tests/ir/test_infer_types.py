"""Node-by-node typing (``ir/infer_types.py``) in place of whole-model shape inference.

A model with static inputs and no value info of its own is typed node by node: every
value gets the shape and dtype, in the same order of ``graph.values``, that whole-model
inference (still run for any other model, and whenever one output stays unknown) gives.
With symbolic input dims it is typed by symbolic propagation node by node, and analyses
as it does after whole-model inference.
"""

from __future__ import annotations

import importlib

import onnx
import pytest
from onnx import TensorProto, helper
from swin_torch import export as swin_export

from drpopt.ir.analysis import analyze
from drpopt.ir.core import Node, Value
from drpopt.ir.from_onnx import from_onnx
from drpopt.zoo import models

from_onnx_module = importlib.import_module("drpopt.ir.from_onnx")


def _bare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as torch.onnx.export writes it: no value info."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    return model


def _typed(model: onnx.ModelProto, node_by_node: bool, monkeypatch) -> list[tuple]:
    with monkeypatch.context() as patch:
        if not node_by_node:
            patch.setattr(from_onnx_module, "_types_node_by_node", lambda gp: False)
        graph = from_onnx(model)
    return [(v.name, v.shape, str(v.dtype)) for v in graph.values.values()]


MODELS = {
    "resnet18": lambda: models.resnet18_like(),
    "mobilenetv2": lambda: models.mobilenetv2_like(),
    "yolox": lambda: models.yolox_s_like(),
    "densenet": lambda: models.densenet_like(),
    "shuffle": lambda: models.channel_shuffle_model(),
    "flatten_gemm": lambda: models.flatten_gemm_model(),
    "swin": lambda: swin_export(size=36),  # Pad, ConstantOfShape, Where, Mod: shape numbers
}


@pytest.mark.parametrize("name", MODELS)
def test_node_by_node_types_are_those_of_whole_model_inference(name, monkeypatch):
    model = _bare(MODELS[name]())
    calls = []
    real = from_onnx_module.infer_shapes
    monkeypatch.setattr(from_onnx_module, "infer_shapes", lambda m: calls.append(1) or real(m))
    ours = _typed(model, True, monkeypatch)
    assert not calls, "whole-model inference ran for a model typed node by node"
    assert ours == _typed(model, False, monkeypatch)
    assert calls
    assert all(shape is not None and dtype != "None" for _, shape, dtype in ours)


def test_an_output_it_cannot_type_falls_back_to_whole_model_inference(monkeypatch):
    """NonZero's size depends on the data: node by node gives up, and the model gets what
    whole-model inference gives (a symbolic dim after it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("NonZero", ["r"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ours = dict((n, (s, d)) for n, s, d in _typed(model, True, monkeypatch))
    assert ours == dict((n, (s, d)) for n, s, d in _typed(model, False, monkeypatch))
    assert ours["nz"][0][0] == 2 and not isinstance(ours["nz"][0][1], int)


def test_a_model_with_value_info_is_inferred_whole(monkeypatch):
    calls = []
    real = from_onnx_module.infer_shapes
    monkeypatch.setattr(from_onnx_module, "infer_shapes", lambda m: calls.append(1) or real(m))
    from_onnx(models.resnet18_like())  # shape-inferred: it carries value info
    assert len(calls) == 1


def _symbolic(model: onnx.ModelProto, spatial: bool) -> onnx.ModelProto:
    """``model`` exported with a dynamic batch (and height and width with ``spatial``)."""
    model = _bare(model)
    for info in model.graph.input:
        dims = info.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            if k == 0 or (spatial and len(dims) == 4 and k >= 2):
                d.dim_param = f"{info.name}_{k}"
    return model


def _analysed(model: onnx.ModelProto, node_by_node: bool, monkeypatch) -> dict:
    with monkeypatch.context() as patch:
        if not node_by_node:
            patch.setattr(from_onnx_module, "_types_node_by_node", lambda gp: False)
        found = analyze(from_onnx(model)).to_dict()
    return {k: v for k, v in found.items() if k != "seconds"}


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("name", ["resnet18", "shuffle", "yolox", "swin"])
def test_symbolic_inputs_are_typed_node_by_node_with_the_same_analysis(name, spatial, monkeypatch):
    model = _symbolic(MODELS[name](), spatial)
    calls = []
    real = from_onnx_module.infer_shapes
    monkeypatch.setattr(from_onnx_module, "infer_shapes", lambda m: calls.append(1) or real(m))
    ours = _analysed(model, True, monkeypatch)
    assert not calls, "whole-model inference ran for a model typed node by node"
    theirs = _analysed(model, False, monkeypatch)
    assert calls
    assert ours == theirs
    assert any(g["prunable"] for g in ours["groups"])
    graph = from_onnx(model)
    assert all(o.shape is not None and o.dtype is not None for n in graph.nodes for o in n.outputs)


def test_symbolic_pools_and_reductions_are_those_of_onnx_inference(monkeypatch):
    """Global pools and ReduceMean/Max/Min over the ``axes`` attribute get their symbolic
    shapes from ``sym_propagate`` (no one-node ONNX inference): the same shapes and dtypes
    ONNX's inference of each node gives; an axis out of range is left to ONNX's inference."""
    sym = importlib.import_module("drpopt.ir.sym_propagate")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, "h", 5])
    outs = ["g", "m", "r1", "r2", "r3", "r4"]
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("GlobalMaxPool", ["x"], ["m"]),
        helper.make_node("ReduceMean", ["x"], ["r1"], axes=[-1, 2]),
        helper.make_node("ReduceMean", ["x"], ["r2"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["x"], ["r3"]),
        helper.make_node("ReduceMin", ["x"], ["r4"], axes=[0, 3], keepdims=0),
    ]
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], ys), opset_imports=[helper.make_opsetid("", 13)]
    )
    calls = []
    real = sym._RULES["ReduceMean"]
    monkeypatch.setitem(sym._RULES, "ReduceMean", lambda *a: calls.append(1) or real(*a))
    ours = _typed(model, True, monkeypatch)
    assert len(calls) == 2
    for op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceMin"):
        monkeypatch.delitem(sym._RULES, op)
    assert ours == _typed(model, True, monkeypatch)
    shapes = {name: shape for name, shape, _ in ours}
    assert shapes["g"] == ("n", 8, 1, 1) and shapes["r2"] == ("n", "h", 5)
    v = Value("v", ("n", 8))
    node = Node("ReduceMean", "r", [v], [Value("w")], {"axes": [2]})
    assert sym.symbolic_shape(node, [v], {}, lambda: "s") is None
