"""Grouped-query attention (``F.scaled_dot_product_attention(..., enable_gqa=True)``):
the fx frontend repeats k's and v's heads for their query heads (``ir/fx_attention.py``
``_repeat_kv``), so each kv head is one unit with its ``Hq / Hkv`` query heads and the
output projection's columns; torch's dynamo export of the same module (Unsqueeze, Expand,
Reshape of k and v) gives the same groups. Checked by running: the fx IR computes what
torch does, sparse equals compact, the dead-channel check holds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from deadchannels import assert_groups_complete, random_feeds
from test_default_locks import assert_same, prune
from test_fx_transformers import run_ir, scaled_error
from torch import nn

from drpopt import analyze
from drpopt.ir.from_fx import from_fx
from drpopt.ir.to_onnx import to_onnx


class Gqa(nn.Module):
    """One packed projection to ``hq`` query heads and ``hkv`` key and value heads of
    width ``d`` (Llama-style GQA), SDPA with ``enable_gqa``, the output projection."""

    def __init__(self, hq: int = 4, hkv: int = 2, d: int = 4) -> None:
        super().__init__()
        self.hq, self.hkv, self.d = hq, hkv, d
        self.qkv = nn.Linear(16, (hq + 2 * hkv) * d)
        self.proj = nn.Linear(hq * d, 16)

    def forward(self, x):
        b, n, _ = x.shape
        hq, hkv, d = self.hq, self.hkv, self.d
        q, k, v = self.qkv(x).split([hq * d, hkv * d, hkv * d], -1)
        q = q.reshape(b, n, hq, d).transpose(1, 2)
        k = k.reshape(b, n, hkv, d).transpose(1, 2)
        v = v.reshape(b, n, hkv, d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.proj(y.transpose(1, 2).reshape(b, n, hq * d))


def _build(hq: int, hkv: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Gqa(hq, hkv).eval(), torch.randn(2, 5, 16)


def _kv_head_group(a, weight: str, proj: str, hq: int, hkv: int, d: int = 4):
    """The prunable group of the kv heads: q rows in blocks of ``hq / hkv`` heads, k and v
    rows in blocks of one head, the output projection's columns as q's rows."""
    (group,) = [g for g in a.prunable_groups if g.size == hkv]
    g_ = hq // hkv
    rows = sorted((m.start, m.block) for m in group.members if m.role == "producer")
    assert rows == [(0, g_ * d), (hq * d, d), ((hq + hkv) * d, d)]
    assert all(m.tensor == weight for m in group.members if m.role == "producer")
    (cols,) = [m for m in group.members if m.role == "consumer"]
    assert (cols.tensor, cols.block) == (proj, g_ * d)
    return group


@pytest.mark.parametrize(("hq", "hkv"), [(4, 2), (4, 1), (6, 3)])
def test_fx_gqa_computes_what_torch_does_and_prunes_kv_heads(hq, hkv):
    model, x = _build(hq, hkv)
    graph = from_fx(model, x)
    a = analyze(graph)
    assert not a.unsupported
    (out,) = run_ir(graph, x)
    assert scaled_error(out, model(x).detach().numpy()) < 1e-5
    if hkv > 1:
        _kv_head_group(a, "qkv.weight", "proj.weight", hq, hkv)
    else:  # one kv head serves all: the query heads prune alone (fewer copies of it)
        (group,) = [g for g in a.prunable_groups if g.size == hq]
        assert sorted((m.start, m.block) for m in group.members if m.role == "producer") == [(0, 4)]
    proto = to_onnx(graph)
    assert_groups_complete(analyze(proto), proto)
    sparse, compact = prune(proto)
    assert_same(sparse, compact, random_feeds(proto))


def test_dynamo_export_of_gqa_gives_the_same_kv_head_groups():
    model, x = _build(4, 2)
    proto = torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
    assert "Expand" in {n.op_type for n in proto.graph.node}
    a = analyze(proto)
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    inits = {t.name for t in proto.graph.initializer}
    weight, proj = (n.input[1] for n in (matmuls[0], matmuls[-1]))
    assert {weight, proj} <= inits
    _kv_head_group(a, weight, proj, 4, 2)  # (the export's weights are (in, out))
    assert_groups_complete(a, proto)
    sparse, compact = prune(proto)
    assert_same(sparse, compact, random_feeds(proto))
