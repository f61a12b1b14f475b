"""The unseen-architecture checks (``unseen_battery.py``) on round 4b's transformer and MLP
families (``tests/ir/transformers4_torch.py``, ``attention4_torch.py``,
``mixers4_torch.py``): DINOv2 (also with its position embedding interpolated in the graph),
EVA-02 (timm's and its own repo's form), SAM's image encoder, BEiT, CaiT, MLP-Mixer,
ResMLP, gMLP, FocalNet and CoAtNet, each exported at opset 17 by the TorchScript exporter;
``-m slow`` adds the dynamo exports.

Per model: the analysis names every lock (and only the expected reasons); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones (1e-4
of the spread) with the parameters and MACs the plan says; the dead-channel check holds on
every prunable group; and the coverage is what the architecture allows.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, _batch_share, compact_counts, prune
from unseen_battery import OUTPUT, battery, by_module, check_another_export, check_exact

from drpopt import analyze
from drpopt.ir.analysis import Analysis
from drpopt.passes.plan import keep_masks

T4, A4, M4 = "transformers4_torch", "attention4_torch", "mixers4_torch"
# the token axis of an MLP model: the stem conv's positions (the image fixes how many)
TOKENS = "its rule does not say how axis 2 of '/stem/proj/Conv_output_0' maps"
# name -> (module, builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # register tokens inserted after the class token, LayerScale, SwiGLU (chunk halves of
    # w12 pair up: one group), the classifier on cat(cls, patch mean)
    "dinov2": (T4, "dinov2", 0.99, 0.3, {OUTPUT}),
    # exported below its training size: the position embedding (a parameter of the
    # residual width) resized bicubically in the graph, by scales from the input's size
    "dinov2_interpolated": (T4, "dinov2_interpolated", 0.99, 0.3, {OUTPUT}),
    # rotary q/k (pairs 2i, 2i + 1 of a head mix with a fixed frequency): whole heads prune,
    # the q/k/v biases around a zero k bias are folded into one constant that follows them
    "eva02": (T4, "eva02", 0.97, 0.32, {OUTPUT}),
    # the EVA-02 repo's own form: separate q/k/v, rotate_half by reshape into pairs,
    # inner_attn_ln over all heads (its scale and bias follow the heads)
    "eva02_subln": (T4, "eva02_subln", 0.97, 0.32, {OUTPUT}),
    # windowed attention (padded 6 -> 8), decomposed relative positions, LayerNorm2d neck;
    # the windowed blocks' heads prune too (``reshape(3, B * heads, HW, -1)`` merges the
    # windows with them): 0.312 kept at 0.5, 0.323 through dynamo, whose int64 position
    # indices count as tensors (0.345 and 0.356 with those heads locked)
    "sam_vit": (A4, "sam_vit", 0.99, 0.33, {OUTPUT}),
    # the relative position bias table gathered per head (folded: a heads x N x N constant)
    "beit": (A4, "beit", 0.99, 0.3, {OUTPUT}),
    # talking heads: q/k/v heads, proj_l's input and proj_w's output are one group, the
    # heads between proj_l and proj_w another; class-attention blocks
    "cait": (A4, "cait", 0.99, 0.3, {OUTPUT}),
    # token-mixing MLP over the transposed tokens: its hidden width prunes
    "mixer": (M4, "mixer", 0.99, 0.33, {TOKENS, OUTPUT}),
    # the Linear over the patches has no hidden width: tokens in and out (about 0.31 of
    # the parameters) stay
    "resmlp": (M4, "resmlp", 0.68, 0.52, {TOKENS, OUTPUT}),
    # the spatial gating unit: u and v halves pair up with v's LayerNorm; its token Linear
    # stays as ResMLP's does
    "gmlp": (M4, "gmlp", 0.62, 0.56, {TOKENS, OUTPUT}),
    # focal modulation: q pairs with h's output, the context with the depthwise convs and
    # h's input; each of the focal_level + 1 gates is one channel broadcast over the context
    "focalnet": (M4, "focalnet", 0.99, 0.3, {"a single channel", OUTPUT}),
    # MBConv stages, then TransformerBlock2d on NCHW: heads first in the qkv conv (each head
    # a block of 3 x dim_head output channels), the bias table gathered per head
    "coatnet": (M4, "coatnet", 0.99, 0.3, {OUTPUT}),
}
# the default run keeps seven (about 20 s on a quiet machine); -m slow adds the others
SLOW = {"beit", "resmlp", "focalnet", "eva02", "dinov2"}
DYNAMO = ["dinov2", "eva02", "eva02_subln", "sam_vit", "cait", "gmlp", "focalnet", "coatnet"]


# the model battery runs with the corpus (``-m corpus``); the small graphs below stay in
# plain pytest
corpus = pytest.mark.corpus
BATTERY = battery(MODELS, by_module(MODELS), slow=SLOW, marks=[corpus])
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests


def _heads(a: Analysis, node: str) -> list:
    """The groups cutting the weights of the MatMuls whose node names start with ``node``."""
    return [g for g in a.groups if any(m.node.startswith(node) for m in g.members)]


@corpus
def test_talking_heads_prune_on_both_sides_of_the_softmax():
    """CaiT's ``proj_l``/``proj_w`` mix the heads of the attention map: the heads of q, k, v
    are one group with proj_l's input and proj_w's output, and the mixed heads between
    them another, both prunable (not locked as a heads axis read by a Linear)."""
    a = analysis("cait")
    groups = _heads(a, "/blocks.0/attn/proj_")
    assert len(groups) == 2 and all(g.prunable and g.size == 4 for g in groups), groups
    qkv_heads = [g for g in groups if any(m.block == 12 for m in g.members)]
    assert len(qkv_heads) == 1  # q/k/v head blocks of 12 channels with proj_w's outputs


@corpus
def test_sam_window_size_casts_lock_only_the_axis_they_read():
    """SAM's ``get_rel_pos`` casts ``arange(H)`` of a window's height to float: the lock
    used to cover every axis of the windows, the embedding width included (0.74 of the
    parameters prunable, 0.63 kept at rate 0.5); now only the window's height."""
    a = analysis("sam_vit")
    assert not [g for g in a.locked_groups if "as a number" in (g.reason or "")]
    assert a.prunable_params / a.params > 0.98


@corpus
def test_expected_macs_count_a_channel_axis_passed_as_a_batch_axis():
    """MLP-Mixer's token MLP reads ``(B, C, N)``: pruning C shrinks its MACs, though no
    weight of it is cut along C (the harness's count used to keep its full width and
    differ from the compact model's)."""
    pruned = prune(case("mixer").model, CONFIGS["rate0.5"])
    masks = keep_masks(pruned.plan.resolve(pruned.before))
    (token_fc1,) = [
        n for n in pruned.before.graph.nodes if n.name.endswith("0/mlp_tokens/fc1/MatMul")
    ]
    assert 0 < _batch_share(token_fc1, masks) < 1
    assert compact_counts(pruned.compact)[1] == pruned.expected_macs < pruned.before.macs


@corpus
@pytest.mark.slow
@pytest.mark.parametrize("name", DYNAMO)
def test_dynamo_exports_prune_like_torchscript_ones(name):
    """torch's default (dynamo) exporter on the same models: the coverage of the TorchScript
    export, exact compaction at every config, no incomplete group."""
    module, builder = MODELS[name][:2]
    model = getattr(importlib.import_module(module), builder)(dynamo=True)
    # the same prunable parameters (dynamo keeps SAM's int64 relative-position indices as
    # tensors of their own, which the share's denominator counts)
    check_another_export(model, analysis(name), max_ratio=MODELS[name][3], by_params=True)


def _range_cast_model() -> onnx.ModelProto:
    """Conv -> Transpose to (1, H, W, C) -> Add with ``Cast(Range(0, H))`` laid on the
    height axis (a relative-position index built from a window's size) -> Conv over C."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "step"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["t"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["hs"], axis=0),
        helper.make_node("Squeeze", ["hs"], ["hsq"]),
        helper.make_node("Range", ["zero", "hsq", "step"], ["rng"]),
        helper.make_node("Unsqueeze", ["rng", "axes"], ["rng3"]),  # (H, 1, 1)
        helper.make_node("Cast", ["rng3"], ["pos"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["t", "pos"], ["tp"]),
        helper.make_node("MatMul", ["tp", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "range_cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_range_of_a_size_cast_to_float_locks_only_that_size():
    """Before, the Cast of ``Range(0, H)`` locked every axis of the tensor whose Shape it
    reads, the conv's 8 channels too; now only the height, and the channels prune exactly."""
    model = onnx.shape_inference.infer_shapes(_range_cast_model())
    a = analyze(model)
    assert [g.size for g in a.prunable_groups] == [8], a.groups
    pruned = check_exact(model)
    assert pruned.expected_params < pruned.before.params
