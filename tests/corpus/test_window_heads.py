"""SAM's windowed attention (``tests/ir/attention4_torch.py``): ``reshape(3, B * heads, HW,
-1)`` merges the windows with the heads and ``view(B, heads, H, W, -1)`` splits them back.
The level search (``ir/analysis.py:_best_mapping``) raises the merge to the heads; that
alone gains nothing (the split back still maps the merged axis at the windows), so the
mappings the raise newly locked follow it, and the heads of the windowed blocks prune."""

from __future__ import annotations

import pytest
from test_unseen_round4b import analysis, case
from unseen_battery import check_exact

pytestmark = pytest.mark.corpus

WINDOWED = ("/blocks.0/attn/", "/blocks.2/attn/")  # blocks 1 and 3 attend globally


def _heads(a, block: str):
    """The groups cutting the output rows of a block's qkv weight."""
    return [
        g
        for g in a.groups
        if any(m.node == f"{block}qkv/MatMul" and m.axis == 1 for m in g.members)
    ]


@pytest.mark.parametrize("block", WINDOWED)
def test_windowed_heads_are_prunable_with_proj_input(block):
    """Whole heads: q, k and v rows of a head (blocks of 8) with proj's input rows."""
    a = analysis("sam_vit")
    (heads,) = _heads(a, block)
    assert heads.prunable and heads.size == 4, heads.reason
    proj = [m for m in heads.members if m.node == f"{block}proj/MatMul" and m.axis == 0]
    assert proj and all(m.block == 8 for m in proj)


@pytest.mark.parametrize("config", ["rate0.5", "drpai"])
def test_windowed_heads_prune_exactly(config):
    """Sparse equals compact in onnxruntime with the windowed heads pruned, and the plan
    does cut them (each windowed block's q/k/v weight loses whole heads)."""
    c = case("sam_vit")
    pruned = check_exact(c.model, config, c.feeds)
    cut = {id(g) for g, gp in pruned.plan.resolve(pruned.before) if gp.pruned}
    for block in WINDOWED:
        (heads,) = _heads(pruned.before, block)
        assert id(heads) in cut, block
