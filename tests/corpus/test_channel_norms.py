"""Normalisations whose statistics read across the channels prune, each in the form its
exporter writes: GroupNorm(1, C) (torch's Reshape / InstanceNormalization / Reshape, with
the TorchScript exporter's ``Shape`` or the dynamo exporter's constant shapes, and the
``GroupNormalization`` op), ConvNeXt's channels-first LayerNorm written out (``x.mean(1)``)
and ConvNeXt V2's GRN. Per form: the channels are in a prunable group (not locked by the
norm); the sparse model (masked form: ``drpopt.MaskedLayerNormalization`` or
``MaskedReduceMean``) equals the compact one; the compact model has the plain form back and
no masked function; the dead-channel check holds. Without the masked forms the norm locks
its channels (or sparse differs from compact: ``test_the_mask_is_what_makes_sparse_equal``).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from corpus_checks import PruneConfig, compare_outputs, prune
from deadchannels import assert_groups_complete, random_feeds, run_model
from onnx import TensorProto, helper, numpy_helper

from drpopt import analyze
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.input_shapes import fix_input_shapes
from drpopt.ir.norm_forms import DOMAIN, MEAN_OP, OP, function_proto, mean_function_proto
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import ApplyMasksPass, CompactPass, MaskPass

torch = pytest.importorskip("torch")
nn = torch.nn


def _export(model, shape=(1, 3, 8, 8), opset: int = 17) -> onnx.ModelProto:
    """TorchScript export with a symbolic batch, fixed to 1 (as ``--input-shape`` does)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # norms' weights away from 1 and 0
            p.add_(torch.rand_like(p) * 0.5)
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    torch.onnx.export(
        model.eval(),
        (torch.randn(*shape),),
        buf,
        opset_version=opset,
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes=axes,
    )
    return fix_input_shapes(onnx.load_from_string(buf.getvalue()), {None: list(shape)})


class _GroupNormNet(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(groups, 8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


class _ChannelsFirstLayerNormNet(nn.Module):
    """ConvNeXt's ``LayerNorm(data_format="channels_first")``, written out (over ``dims``:
    (1, 2, 3) is GroupNorm(1, C) written out)."""

    def __init__(self, dims=(1,)) -> None:
        super().__init__()
        self.dims = dims
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.ones(8))
        self.bias = nn.Parameter(torch.zeros(8))
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        u = x.mean(self.dims, keepdim=True)
        s = (x - u).pow(2).mean(self.dims, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.b(self.weight[:, None, None] * x + self.bias[:, None, None])


class _GRNNet(nn.Module):
    """ConvNeXt V2's pointwise MLP with GRN on its hidden channels (channels last)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.gamma = nn.Parameter(torch.randn(1, 1, 1, 16) * 0.3)
        self.beta = nn.Parameter(torch.randn(1, 1, 1, 16) * 0.1)
        self.fc2 = nn.Linear(16, 8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = nn.functional.gelu(self.fc1(self.a(x).permute(0, 2, 3, 1)))
        gx = torch.norm(y, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        y = self.fc2(self.gamma * (y * nx) + self.beta + y)
        return self.b(y.permute(0, 3, 1, 2))


def _group_normalization(groups: int, opset: int) -> onnx.ModelProto:
    """Conv -> GroupNormalization(num_groups) -> Relu -> Conv, as the dynamo exporter writes
    GroupNorm at opset 21 (per-channel scale and bias; per group at opset 18)."""
    rng = np.random.default_rng(0)
    n = 8 if opset >= 21 else groups
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "s": (rng.random(n) + 0.5).astype(np.float32),
        "t": rng.standard_normal(n).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("GroupNormalization", ["a", "s", "t"], ["g"], num_groups=groups),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(a, k) for k, a in inits.items()],
        # the exporter's value_info: ONNX's inference leaves a function op's output unknown
        value_info=[
            helper.make_tensor_value_info(v, TensorProto.FLOAT, [1, 8, 8, 8]) for v in "agr"
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _prune(model: onnx.ModelProto, shapes: bool):
    """``corpus_checks.prune`` at rate 0.5, or, for a model with ``GroupNormalization``
    (``shapes``; ONNX's shape inference leaves a function op's output unknown, as strict
    inference of the compact model would find), the same passes with the shapes written."""
    if not shapes:
        pruned = prune(model, PruneConfig("rate0.5", 0.5, keep_first=False))
        return pruned.masked, pruned.compact
    graph = from_onnx(model)
    MaskPass(rate=0.5, keep_first=False, keep_last=False).call(graph)
    graph = ApplyMasksPass().call(graph).model
    masked = to_onnx(graph, with_shapes=True)
    compact = to_onnx(CompactPass().call(graph).model, with_shapes=True)
    if compact.opset_import[0].version >= 21:  # the checker refuses the op deprecated in 18
        onnx.checker.check_model(compact, full_check=True)
    return masked, compact


# name -> (model builder, op of the masked form in the sparse model, op the compact model
# must have back)
FORMS = {
    "groupnorm1_instance_norm": (lambda: _export(_GroupNormNet()), OP, "InstanceNormalization"),
    "groupnorm1_opset21_op": (lambda: _group_normalization(1, 21), OP, "GroupNormalization"),
    "channels_first_layernorm": (lambda: _export(_ChannelsFirstLayerNormNet()), OP, "ReduceMean"),
    "groupnorm1_written_out": (
        lambda: _export(_ChannelsFirstLayerNormNet((1, 2, 3))),
        OP,
        "ReduceMean",
    ),
    "grn": (lambda: _export(_GRNNet()), MEAN_OP, "ReduceMean"),
}


@pytest.mark.parametrize("name", list(FORMS))
def test_channel_norm_prunes_and_sparse_equals_compact(name):
    build, masked_op, plain_op = FORMS[name]
    model = build()
    a = analyze(model)
    assert all("output" in g.reason for g in a.locked_groups), [g.reason for g in a.locked_groups]
    assert a.prunable_params / a.params > 0.9
    feeds = random_feeds(model)
    masked, compact_model = _prune(model, shapes=plain_op == "GroupNormalization")
    assert (DOMAIN, masked_op) in {(n.domain, n.op_type) for n in masked.graph.node}
    sparse, compact = run_model(masked, feeds), run_model(compact_model, feeds)
    err = compare_outputs(sparse, compact, f"{name}: compact vs sparse")
    assert err < 1e-4, f"{name}: compact differs from sparse by {err:.3g}"
    ops = {n.op_type for n in compact_model.graph.node}
    assert plain_op in ops and not ops & {OP, MEAN_OP} and not compact_model.functions
    assert sum(np.prod(t.dims) for t in compact_model.graph.initializer) < a.params
    assert_groups_complete(a, model)


def test_a_norm_not_matched_as_a_whole_prunes_through_its_means():
    """Statistics over the channels and one spatial axis only (no norm form drpopt knows):
    each ReduceMean over the channels becomes ``MaskedReduceMean`` on its own (statistics
    over the kept channels, ``ir/rules_reduce.py``), so sparse still equals compact."""
    model = _export(_ChannelsFirstLayerNormNet((1, 2)))
    a = analyze(model)
    assert all("output" in g.reason for g in a.locked_groups), [g.reason for g in a.locked_groups]
    masked, compact_model = _prune(model, shapes=False)
    assert sum(n.op_type == MEAN_OP for n in masked.graph.node) == 2  # the mean, the variance
    feeds = random_feeds(model)
    err = compare_outputs(run_model(masked, feeds), run_model(compact_model, feeds), "(1, 2)")
    assert err < 1e-4 and not compact_model.functions
    assert_groups_complete(a, model)


def test_the_mask_is_what_makes_sparse_equal():
    """The sparse model with its masked forms' masks set to all ones (the statistics count
    the pruned channels again) no longer equals the compact one: the masks do the work."""
    model = _export(_GroupNormNet())
    feeds = random_feeds(model)
    masked, compact_model = _prune(model, shapes=False)
    unmasked = onnx.ModelProto()
    unmasked.CopyFrom(masked)
    masks = {n.input[3] for n in unmasked.graph.node if n.op_type == OP}
    for t in unmasked.graph.initializer:
        if t.name in masks:
            t.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(t)), t.name))
    compact = run_model(compact_model, feeds)
    assert compare_outputs(run_model(masked, feeds), compact, "masked") < 1e-4
    assert compare_outputs(run_model(unmasked, feeds), compact, "unmasked") > 1e-3


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_with_groups_prunes_whole_groups(opset):
    """GroupNormalization with 2 groups of 4: each group's statistics read only its own
    channels, so whole groups prune (num_groups follows) and zeros alone keep sparse equal
    to compact; channels inside a group stay together."""
    model = _group_normalization(2, opset)
    a = analyze(model)
    (group,) = [g for g in a.prunable_groups if g.size == 2]
    feeds = random_feeds(model)
    masked, compact_model = _prune(model, shapes=True)
    sparse, compact = run_model(masked, feeds), run_model(compact_model, feeds)
    assert compare_outputs(sparse, compact, "groups") < 1e-4
    (norm,) = [n for n in compact_model.graph.node if n.op_type == "GroupNormalization"]
    assert helper.get_attribute_value(norm.attribute[0]) == 1  # one group of 4 kept
    assert compact[0].shape == (1, 4, 8, 8) and group.size == 2


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
def test_masked_forms_count_only_kept_channels(opset):
    """Against numpy, in every opset the functions are written for: the masked LayerNorm
    over axis 1 ([C, 1, 1] mask) and over axes 1-3 (GroupNorm(1, C)), and the masked mean
    over the last axis, equal the plain computation on the kept channels alone."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    keep = np.array([1, 0, 1, 1, 0, 1], np.float32)
    m4 = keep.reshape(6, 1, 1)
    eps = numpy_helper.from_array(np.array(1e-5, np.float32)) if opset < 12 else 1e-5
    nodes = [
        helper.make_node(
            OP, ["x", "one", "zero", "m"], ["ln"], domain=DOMAIN, axes=[1], epsilon=eps
        ),
        helper.make_node(
            OP, ["x", "one", "zero", "m"], ["gn"], domain=DOMAIN, axes=[1, 2, 3], epsilon=eps
        ),
        helper.make_node(MEAN_OP, ["xt", "m1"], ["mean"], domain=DOMAIN, axes=[3]),
    ]
    inits = {"one": np.ones(1, np.float32), "zero": np.zeros(1, np.float32), "m": m4, "m1": keep}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "xt")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ln", "gn", "mean")],
        [numpy_helper.from_array(a, k) for k, a in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
        functions=[function_proto(opset), mean_function_proto(opset)],
    )
    model.ir_version = 8  # local functions (and a default attribute, read from 9)
    xt = x.transpose(0, 2, 3, 1).copy()
    ln, gn, mean = run_model(model, {"x": x, "xt": xt})
    k = keep.astype(bool)
    xs = x[:, k]

    def norm(a, axes):
        return (a - a.mean(axes, keepdims=True)) / np.sqrt(a.var(axes, keepdims=True) + 1e-5)

    np.testing.assert_allclose(ln[:, k], norm(xs, (1,)), atol=1e-5)
    np.testing.assert_allclose(gn[:, k], norm(xs, (1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(mean[..., 0], xt[..., k].mean(-1), atol=1e-6)
    assert np.all(ln[:, ~k] == 0) and np.all(gn[:, ~k] == 0)
