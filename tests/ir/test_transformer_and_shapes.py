"""LayerNorm over channels, torch's computed pads, and shape code that stays linear:
checked by running the models (sparse == compact) and by counting evaluation steps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from deadchannels import random_feeds, run_model
from onnx import TensorProto, helper

from drpopt import analyze
from drpopt.ir import shape_expr
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.rules import apply_rules
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import ApplyMasksPass, CompactPass, MaskPass, PassManager, ScorePass
from drpopt.zoo.builder import OnnxBuilder

FREE = {"keep_first": False, "keep_last": False}


def sparse_and_compact(model: onnx.ModelProto, rate: float = 0.5):
    masked = PassManager([ScorePass(), MaskPass(rate=rate, **FREE), ApplyMasksPass()])(model)
    sparse = to_onnx(masked.model)
    compact = to_onnx(PassManager([CompactPass()])(masked.model).model)
    onnx.checker.check_model(compact, full_check=True)
    return sparse, compact


def assert_same(a, b, feeds) -> None:
    for x, y in zip(run_model(a, feeds), run_model(b, feeds), strict=True):
        spread = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        assert spread > 1e-6, "degenerate reference output"
        assert float(np.abs(x - y).max()) / spread < 1e-4


def convnext_block(with_bias: bool = True) -> onnx.ModelProto:
    """ConvNeXt's block as torchvision exports it: depthwise conv, NHWC LayerNorm, MLP as
    MatMul + Add, GELU, layer scale, residual add; a conv head."""
    b = OnnxBuilder(seed=11)
    x = b.input("input", (1, 3, 8, 8))
    stem = b.conv(x, 16, name="stem")
    y = b.conv(stem, 16, k=3, groups=16, name="dw")
    y = b.transpose(y, (0, 2, 3, 1))
    scale = b.const("ln.weight", b.rng.standard_normal(16).astype(np.float32))
    ln_in = [y, scale] + ([b.const("ln.bias", np.full(16, 0.1, np.float32))] if with_bias else [])
    y = b.op("LayerNormalization", ln_in, (1, 8, 8, 16), name="ln", axis=-1, epsilon=1e-6)
    y = b.matmul(y, 64, name="fc1")
    y = b.unary("Gelu", y) if b.opset >= 20 else b.unary("Sigmoid", y)
    y = b.matmul(y, 16, name="fc2")
    y = b.transpose(y, (0, 3, 1, 2))
    layer_scale = b.const("gamma", np.full((16, 1, 1), 0.5, np.float32))
    y = b.add(b.mul(y, layer_scale), stem, name="residual")
    b.output(b.conv(y, 5, name="head"))
    return b.build()


@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_over_channels_prunes_exactly(with_bias):
    model = convnext_block(with_bias)
    a = analyze(model)
    stream = a.group("stem")
    assert stream.prunable, stream.reason
    assert any(m.tensor == "ln.weight" and m.role == "follower" for m in stream.members)
    assert a.group("fc1").prunable  # the MLP's hidden channels
    sparse, compact = sparse_and_compact(model)
    ops = {n.op_type for n in sparse.graph.node}
    assert "MaskedLayerNormalization" in ops and "LayerNormalization" not in ops
    assert "LayerNormalization" in {n.op_type for n in compact.graph.node}
    assert not compact.functions or "MaskedLayerNormalization" not in {
        n.op_type for n in compact.graph.node
    }
    assert_same(sparse, compact, random_feeds(model))
    assert analyze(compact).params < a.params


def test_masked_layernorm_is_a_layernorm_over_kept_channels():
    """Against numpy: the sparse node equals LayerNorm over the kept channels alone."""
    from drpopt.ir.norm_forms import DOMAIN, OP, function_proto

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    keep = np.array([1, 0, 1, 1, 0, 1, 0, 1], np.float32)
    scale = rng.standard_normal(8).astype(np.float32) * keep
    bias = rng.standard_normal(8).astype(np.float32) * keep
    node = helper.make_node(OP, ["x", "s", "b", "m"], ["y"], domain=DOMAIN, epsilon=1e-5)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(a, n) for a, n in ((scale, "s"), (bias, "b"), (keep, "m"))],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
        functions=[function_proto(17)],
    )
    (y,) = run_model(model, {"x": x})
    kept = keep.astype(bool)
    xs = x[..., kept]
    ref = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y[..., kept], ref * scale[kept] + bias[kept], atol=1e-5)
    assert np.all(y[..., ~kept] == 0)


def test_torch_pad_with_computed_pads_leaves_channels_prunable():
    """torch.nn.functional.pad with pads computed from the input size, as exported by
    torch's own exporter (ConstantOfShape, Reshape(-1, 2), reversing Slice, Transpose)."""
    torch = pytest.importorskip("torch")
    import io

    class Padded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3)
            self.b = torch.nn.Conv2d(8, 4, 3)

        def forward(self, x):
            y = torch.relu(self.a(x))
            pad_w = (7 - y.shape[3] % 7) % 7
            pad_h = (7 - y.shape[2] % 7) % 7
            return self.b(torch.nn.functional.pad(y, (0, pad_w, 0, pad_h)))

    buf = io.BytesIO()
    torch.onnx.export(
        Padded().eval(), (torch.randn(1, 3, 12, 12),), buf, opset_version=17, dynamo=False
    )
    model = onnx.load_from_string(buf.getvalue())
    assert "ConstantOfShape" in {n.op_type for n in model.graph.node}
    a = analyze(model)
    group = next(g for g in a.groups if any(p.endswith("a/Conv") for p in g.producers))
    assert group.prunable, group.reason
    sparse, compact = sparse_and_compact(model)
    assert_same(sparse, compact, random_feeds(model))


def _counting(monkeypatch) -> list[int]:
    calls = [0]
    real = shape_expr._evaluate

    def counted(value, memo):
        calls[0] += 1
        return real(value, memo)

    monkeypatch.setattr(shape_expr, "_evaluate", counted)
    return calls


def silu_chain(depth: int) -> onnx.ModelProto:
    """A conv, ``depth`` SiLUs (x * sigmoid(x)), then ``x.view(x.shape[0], -1)``: the
    pattern that made the recursive shape code take 2^depth steps."""
    b = OnnxBuilder(seed=0)
    y = b.conv(b.input("input", (1, 3, 4, 4)), 4, name="conv")
    for _ in range(depth):
        y = b.silu(y)
    shape = b.op("Shape", [y], (4,), name="shape")
    batch = b.op("Gather", [shape, b.const("zero", np.array(0))], (), name="batch", axis=0)
    batch = b.op("Unsqueeze", [batch, b.const("ax0", np.array([0]))], (1,), name="unsq")
    target = b.op("Concat", [batch, b.const("minus1", np.array([-1]))], (2,), name="cat", axis=0)
    b.output(b.op("Reshape", [y, target], (1, 64), name="flat"))
    return b.build(check=False, infer_shapes=False)


@pytest.mark.parametrize("depth", [10, 40, 160])
def test_shape_code_is_linear_in_an_elementwise_chain(depth, monkeypatch):
    calls = _counting(monkeypatch)
    apply_rules(from_onnx(silu_chain(depth)))
    assert calls[0] <= 3 * depth + 20


def test_deep_shape_arithmetic_needs_no_recursion(monkeypatch):
    """5000 chained Adds on a shape entry: evaluated iteratively, each value once."""
    depth = 5000
    nodes = [
        helper.make_node("Shape", ["x"], ["s0"]),
    ]
    one = onnx.numpy_helper.from_array(np.array([0, 0], np.int64), "zeros")
    for i in range(depth):
        nodes.append(helper.make_node("Add", [f"s{i}", "zeros"], [f"s{i + 1}"]))
    nodes.append(helper.make_node("Reshape", ["x", f"s{depth}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(model)
    calls = _counting(monkeypatch)
    reshape = g.nodes[-1]
    entries = shape_expr.shape_entries(reshape.input(1), {})
    assert entries is not None and len(entries) == 2
    assert calls[0] <= 2 * depth + 10  # each Add and its (un-shared) constant once


@pytest.mark.parametrize("size", [32, 40])
def test_swin_window_attention_prunes_heads_and_streams(size):
    """torchvision's Swin: window padding from ``x.shape``, shifted-window masks built by
    slice assignment and ``C // heads`` read from the stream. Every shape is static after
    loading (per-node propagation past Mod/ConstantOfShape/Where), streams and heads are
    prunable, and compact (with the recomputed Reshape targets) equals sparse."""
    from deadchannels import assert_groups_complete
    from swin_torch import export

    model = export(size)
    a = analyze(model)
    unknown = [v.name for n in a.graph.nodes for v in n.outputs if v.static_shape is None]
    assert not unknown, unknown[:5]
    heads = sorted(g.size for g in a.prunable_groups if "qkv" in g.producers[0])
    assert heads == [2, 2, 4]  # whole heads of each block: q, k, v and proj together
    streams = sorted(g.size for g in a.prunable_groups if "embed" in g.producers[0])
    assert streams == [32]
    assert a.prunable_params / a.params > 0.9
    assert_groups_complete(a, model)
    sparse, compact = sparse_and_compact(model)
    assert_same(sparse, compact, random_feeds(model))


def test_a_constant_read_by_thousands_of_nodes_is_unshared_in_one_pass(monkeypatch):
    """A constant read by every node of a 4000-deep shape-arithmetic chain (onnxsim-style
    deduplication): each use gets its own value; use lists are rebuilt once per constant
    (``Graph.set_input`` per use rescanned them: quadratic, minutes at 50k nodes)."""
    from drpopt.ir.core import Graph
    from drpopt.zoo.random_graphs import chain_model

    calls = [0]
    real = Graph.set_input

    def counted(self, node, index, value):
        calls[0] += 1
        return real(self, node, index, value)

    monkeypatch.setattr(Graph, "set_input", counted)
    g = from_onnx(chain_model(4000, "shape"))
    assert calls[0] == 0
    adds = [n for n in g.nodes if n.op_type == "Add"]
    assert len(adds) > 1900
    zeros = {id(n.input(1)) for n in adds}
    assert len(zeros) == len(adds)  # one value per use
    assert all(n.input(1).uses == [(n, 1)] for n in adds)
    assert len({n.input(1).storage for n in adds}) == 1  # the same array, no copies
    a = analyze(g)
    assert [grp.size for grp in a.prunable_groups] == [4]


class _Block(torch.nn.Module):
    """A pre-norm transformer MLP block with a residual stream."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)
        self.head_norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))
        return self.head(self.head_norm(x))


def _export(module, opset: int) -> onnx.ModelProto:
    import io

    torch.manual_seed(0)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module.eval(), (torch.randn(2, 7, 8),), buf, opset_version=opset, dynamo=False
        )
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("opset", [11, 12, 14])
def test_layernorm_written_out_in_plain_ops_prunes_like_a_layernorm(opset):
    """Before opset 17 exporters write LayerNorm as ReduceMean, Sub, Pow, ReduceMean, Add,
    Sqrt, Div (torch; paddle2onnx in PP-OCR). Matched whole, the residual stream it
    normalises is prunable; the sparse model gets the masked form (a model-local function
    in the model's own opset), the compact one plain ops again (no LayerNormalization op
    before 17), and the two compute the same thing. Opset 11 (mmseg's and mmdet's export
    default) has no ``Constant(value_float=)``: the epsilon is a tensor attribute there."""
    from deadchannels import assert_groups_complete

    from drpopt.ir.patterns import decomposed_layernorms

    torch.manual_seed(0)
    model = _export(_Block(), opset)
    a = analyze(model)
    assert len(decomposed_layernorms(a.graph)) == 2
    stream = [g for g in a.prunable_groups if "embed" in " ".join(g.producers)]
    assert [g.size for g in stream] == [16]  # the stream both LayerNorms read
    assert_groups_complete(a, model)
    sparse, compact = sparse_and_compact(model)
    ops = {n.op_type for n in compact.graph.node}
    assert "LayerNormalization" not in ops and not compact.functions
    assert any(n.op_type == "MaskedLayerNormalization" for n in sparse.graph.node)
    assert_same(sparse, compact, random_feeds(model))


def test_a_partial_layernorm_pattern_prunes_through_its_mean():
    """A ReduceMean over the channels that is not a whole LayerNorm is a mean over the kept
    channels on its own (``MaskedReduceMean`` in the sparse model, ``ir/rules_reduce.py``)."""
    b = OnnxBuilder(seed=3)
    x = b.matmul(b.input("input", (1, 4, 8)), 16, name="fc")
    mean = b.op("ReduceMean", [x], (1, 4, 1), name="mean", axes=[-1], keepdims=1)
    b.output(b.matmul(b.op("Sub", [x, mean], (1, 4, 16), name="centre"), 3, name="out"))
    model = b.build()
    a = analyze(model)
    assert next(g for g in a.groups if "fc" in g.producers).prunable
    sparse, compact = sparse_and_compact(model)
    assert any(n.op_type == "MaskedReduceMean" for n in sparse.graph.node)
    assert_same(sparse, compact, random_feeds(model))


def test_pp_ocr_rec_stream_under_written_out_layernorms_prunes():
    """PP-OCR's recogniser (paddle2onnx, opset 12): the SVTR blocks' LayerNorms are plain
    ops; with a fixed input shape their stream is prunable and sparse equals compact."""
    from dynmodels import ppocr_models

    from drpopt.ir.input_shapes import fix_input_shapes

    path = ppocr_models().get("rec")
    if path is None:
        pytest.skip("rapidocr-onnxruntime (PP-OCR models) not installed")
    model = fix_input_shapes(onnx.load(path), {None: [1, 3, 48, 320]})
    a = analyze(model)
    assert not [g for g in a.locked_groups if "ReduceMean" in (g.reason or "")]
    sparse, compact = sparse_and_compact(model)
    feeds = random_feeds(model)
    (x,), (y,) = run_model(sparse, feeds), run_model(compact, feeds)
    spread = float(np.ptp(x))  # a softmax over 6625 classes: its RMS is float noise
    assert spread > 0.01 and float(np.abs(x - y).max()) / spread < 1e-4
