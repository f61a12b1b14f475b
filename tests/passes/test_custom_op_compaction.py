"""One rule object per op: a custom op's ``OpRule`` couples its channels and rewrites it when
they go, so ``compact`` writes a smaller model computing what the sparse one does; without a
compaction hook the op is refused, never cut by guess; the built-in table holds one rule
object per op type, with the hooks compaction needs."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from channel_norm import RULES as NORM_RULES
from channel_norm import channel_norm_model
from channel_scale import CHANNEL_SCALE, channel_scale_model, couple_channel_scale
from deadchannels import random_feeds, run_model

from drpopt.errors import UnsupportedModelError
from drpopt.ir.rules import RULES, OpRule, follow_members, register_rule
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import (
    ApplyMasksPass,
    CleanupPass,
    CompactPass,
    MaskPass,
    PassFailedError,
    PassManager,
    ScorePass,
)

KEY = "acme::ChannelScale"


@pytest.fixture
def registered():
    """Registers a rule for the test (``register_rule(key, rule)``), removed afterwards."""
    added = []

    def add(rule, key=KEY):
        register_rule(key, rule)
        added.append(key)

    yield add
    for key in added:
        RULES.pop(key, None)


def relative_error(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The largest ``max|ref - got| / spread(ref)``; a constant reference is refused."""
    worst = 0.0
    for ref, out in zip(reference, got, strict=True):
        assert ref.shape == out.shape, (ref.shape, out.shape)
        spread = float(ref.max() - ref.min())
        assert spread > 1e-3 * max(1.0, float(np.abs(ref).max())), "degenerate reference"
        worst = max(worst, float(np.abs(ref - out).max()) / spread)
    return worst


def masked(model: onnx.ModelProto, exclude: tuple[str, ...] = ()):
    """The pipeline result of score, mask (rate 0.5, first and last layers too), apply-masks."""
    mask = MaskPass(rate=0.5, keep_first=False, keep_last=False, exclude=list(exclude))
    return PassManager([ScorePass(), mask, ApplyMasksPass()])(model)


def readme_rule() -> OpRule:
    """The README's plugin example of ``acme::ChannelScale``, as written there."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    (block,) = [b for b in blocks if KEY in b]
    namespace: dict = {}
    exec(compile(block, "README.md plugin example", "exec"), namespace)
    return namespace["RULES"][KEY]


@pytest.mark.parametrize("source", ["tests", "readme"])
def test_custom_op_compacts_through_its_rule(registered, source):
    registered(CHANNEL_SCALE if source == "tests" else readme_rule())
    model = channel_scale_model()
    sparse = masked(model)
    assert {g.key.split(".")[0] for g in sparse.plan.groups if g.pruned} >= {"c2"}
    sparse_proto = to_onnx(sparse.model)
    compact = to_onnx(PassManager([CompactPass(), CleanupPass()])(sparse.model).model)
    onnx.checker.check_model(compact, full_check=True)
    feeds = random_feeds(model)
    assert relative_error(run_model(sparse_proto, feeds), run_model(compact, feeds)) < 1e-5
    (node,) = [n for n in compact.graph.node if n.op_type == "ChannelScale"]
    assert list(onnx.helper.get_attribute_value(node.attribute[0])) == [1, 8, 1, 1]
    weights = {t.name: tuple(t.dims) for t in compact.graph.initializer}
    assert weights["out.weight"] == (4, 8, 3, 3) and weights["cs.scale"] == (8,)


def test_a_hook_that_says_nothing_is_wrong_here(registered):
    """The test above can fail: with ``follow_members`` the attribute keeps saying 16
    channels, and the compact model no longer runs."""
    registered(OpRule(couple_channel_scale, compact=follow_members))
    sparse = masked(channel_scale_model())
    compact = to_onnx(PassManager([CompactPass()])(sparse.model).model)
    with pytest.raises(Exception, match="ChannelScale"):
        run_model(compact, random_feeds(channel_scale_model()))


def test_without_a_compaction_hook_compact_refuses_before_changing_anything(registered):
    registered(couple_channel_scale)  # a bare coupling function: no compaction hook
    assert RULES[KEY].compact is None
    sparse = masked(channel_scale_model())
    assert any(g.pruned for g in sparse.plan.groups)  # analysis and masking still work
    graph = sparse.model
    version = graph.version
    with pytest.raises(PassFailedError) as info:
        PassManager([CompactPass()])(graph)
    assert isinstance(info.value.__cause__, UnsupportedModelError)
    message = str(info.value)
    assert "\n" not in message
    assert "acme::ChannelScale 'cs' has pruned channels but its rule has no compaction hook" in (
        message
    )
    assert graph.version == version and graph.values["cs.scale"].shape == (16,)


def test_without_a_hook_compact_is_fine_where_nothing_is_cut(registered):
    registered(couple_channel_scale)
    sparse = masked(channel_scale_model(), exclude=("out",))  # c2 feeds out
    assert [g.key.split(".")[0] for g in sparse.plan.groups if g.pruned] == ["c1"]
    result = PassManager([CompactPass(), CleanupPass()])(sparse.model)
    assert result.model.values["c1.weight"].shape[0] == 4


def test_builtin_table_holds_one_rule_object_per_op():
    assert all(isinstance(r, OpRule) for r in RULES.values())
    assert all(r.compact is not None for r in RULES.values())  # built-ins know how
    assert RULES["Relu"].compact is follow_members
    hooked = {op for op, r in RULES.items() if r.compact is not follow_members}
    assert hooked == {"Conv", "ConvTranspose", "Cast", "CastLike", "Split", "Slice"} | {
        "Gather",
        "Reshape",
        "Resize",
        "Expand",
        "Pad",  # zeros padded onto the channels
    } | {"LSTM", "GRU", "RNN"} | {"GroupNormalization"} | {  # hidden_size, num_groups
        "Attention",  # q_num_heads, kv_num_heads (opset 23)
        "RotaryEmbedding",  # num_heads
    } | {"com.microsoft::FusedConv", "com.microsoft::FusedGemm"}  # their layer's (rules_ort)
    assert RULES["Reshape"].finish is not None
    assert RULES["Cast"].couple is not RULES["Relu"].couple  # later registrations win


def test_a_custom_normalisation_couples_compacts_and_masks_through_its_rule(registered):
    """``acme::ChannelNorm`` reads every channel for its statistic: its rule's ``sparse``
    hook gives the sparse model the masked form, so sparse equals compact; ``compact`` puts
    the plain op back (``finish`` of the masked op's rule) and drops the masked function."""
    for key, op_rule in NORM_RULES.items():
        registered(op_rule, key)
    sparse, compact = _sparse_and_compact(channel_norm_model())
    assert [n.op_type for n in sparse.graph.node if n.domain == "acme"] == ["MaskedChannelNorm"]
    (node,) = [n for n in compact.graph.node if n.domain == "acme"]
    assert node.op_type == "ChannelNorm" and node.attribute[0].i == 8
    assert [f.name for f in compact.functions] == ["ChannelNorm"]
    onnx.checker.check_model(compact, full_check=True)
    feeds = random_feeds(compact)
    assert relative_error(run_model(sparse, feeds), run_model(compact, feeds)) < 1e-5


def test_without_its_sparse_form_the_normalisation_differs(registered):
    """The test above can fail: without ``sparse`` the sparse model's statistic still
    divides by 16 channels, the compact one's by 8."""
    rules = dict(NORM_RULES)
    rules["acme::ChannelNorm"] = replace(rules["acme::ChannelNorm"], sparse=None)
    for key, op_rule in rules.items():
        registered(op_rule, key)
    sparse, compact = _sparse_and_compact(channel_norm_model())
    assert not [n for n in sparse.graph.node if n.op_type == "MaskedChannelNorm"]
    feeds = random_feeds(compact)
    assert relative_error(run_model(sparse, feeds), run_model(compact, feeds)) > 1e-2


def _sparse_and_compact(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The sparse model (score, mask, apply-masks) and the compact one of the same plan."""
    sparse = masked(model)
    assert {g.key.split(".")[0] for g in sparse.plan.groups if g.pruned} >= {"c2"}
    sparse_proto = to_onnx(sparse.model)
    compact = to_onnx(PassManager([CompactPass(), CleanupPass()])(sparse.model).model)
    return sparse_proto, compact
