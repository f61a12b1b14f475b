"""The Pruner on attention whose query is not its key (DETR's decoder, torch's
``nn.MultiheadAttention`` called with separate query, key and value, masks, ``kdim``): the fx
frontend splits the packed ``in_proj_weight`` into its q, k and v row blocks, so whole heads
of all three and the output projection's columns are masked together, and the masked torch
model computes what its compact ONNX export computes in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from detr_torch import TinyDETR
from test_pruner_transformers import scaled_error
from torch import nn

from drpopt.ir.from_torch import FX_PATH
from drpopt.retrain import Pruner, export_onnx


class Decoder(nn.Module):
    """Self-attention with positions on q and k only, then cross-attention into a memory of
    another width (``kdim``/``vdim``: separate q, k, v weights), with padding and attention
    masks; ``read_weights``: the head-averaged attention weights are an output too."""

    def __init__(self, batch_first: bool, kdim: int | None, read_weights: bool = False) -> None:
        super().__init__()
        e, self.batch_first, self.read_weights = 32, batch_first, read_weights
        self.embed, self.memory = nn.Linear(8, e), nn.Linear(8, kdim or e)
        self.self_attn = nn.MultiheadAttention(e, 4, batch_first=batch_first)
        self.cross = nn.MultiheadAttention(e, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.mlp = nn.Sequential(nn.Linear(e, 64), nn.ReLU(), nn.Linear(64, e))
        self.head = nn.Linear(e, 5)
        self.query_pos = nn.Parameter(torch.randn(1, 6, e) if batch_first else torch.randn(6, 1, e))
        self.register_buffer("causal", torch.triu(torch.full((6, 6), -1e4), 1))

    def forward(self, x, m, padding):
        t, mem = self.embed(x), self.memory(m)
        q = t + self.query_pos
        t = t + self.self_attn(q, q, t, attn_mask=self.causal, need_weights=False)[0]
        out, weights = self.cross(t + self.query_pos, mem, mem, key_padding_mask=padding)
        t = t + out
        y = self.head(t + self.mlp(t))
        return (y, weights) if self.read_weights else y


def _decoder_inputs(batch_first: bool, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x, m = torch.randn(2, 6, 8, generator=g), torch.randn(2, 9, 8, generator=g)
    if not batch_first:
        x, m = x.transpose(0, 1).contiguous(), m.transpose(0, 1).contiguous()
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True  # the second sample's last keys are padding
    return x, m, padding


CASES = {
    "detr": (
        lambda: TinyDETR(),
        lambda seed: (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),),
    ),
    "decoder": (lambda: Decoder(False, None), lambda seed: _decoder_inputs(False, seed)),
    "decoder_batch_first_kdim": (
        lambda: Decoder(True, 24),
        lambda seed: _decoder_inputs(True, seed),
    ),
    "decoder_weights_read": (
        lambda: Decoder(False, None, read_weights=True),
        lambda seed: _decoder_inputs(False, seed),
    ),
}
WHOLE_HEADS = ["detr", "decoder", "decoder_batch_first_kdim"]


def _pruned(name: str) -> tuple[nn.Module, Pruner]:
    build, inputs = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    pruner = Pruner(model, inputs(0), final_rate=0.5)
    pruner.update()
    return model, pruner


def _rows(pruner: Pruner, weight: str, heads: int) -> np.ndarray:
    """Kept rows of ``weight`` as (row block, head, head dim)."""
    rows = pruner._masked[weight].mask.numpy().any(axis=1)
    return rows.reshape(-1, heads, rows.size // heads // (3 if "in_proj" in weight else 1))


@pytest.mark.parametrize("name", WHOLE_HEADS)
def test_heads_of_cross_attention_are_masked_whole_in_q_k_v_and_the_projection(name):
    """Some heads go whole from q, k, v (all three row blocks of the packed weight, or the
    three separate weights) and from the output projection's columns; a kept head keeps
    the same dims in q and k, and its v rows are the projection's kept columns."""
    model, pruner = _pruned(name)
    assert pruner.trace.path.startswith(FX_PATH), pruner.trace.path
    attention = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert attention
    for prefix, mod in attention:
        h = mod.num_heads
        if mod._qkv_same_embed_dim:
            q, k, v = _rows(pruner, f"{prefix}.in_proj_weight", h)
        else:
            q, k, v = (_rows(pruner, f"{prefix}.{p}_proj_weight", h)[0] for p in "qkv")
        cols = pruner._masked[f"{prefix}.out_proj.weight"].mask.numpy().any(axis=0).reshape(h, -1)
        alive = [x.any(axis=1) for x in (q, k, v, cols)]
        assert all((a == alive[0]).all() for a in alive), f"{prefix}: heads differ: {alive}"
        assert 0 < alive[0].sum() < h, f"{prefix}: no head pruned: {alive[0]}"
        assert (q == k).all() and (v == cols).all(), prefix


def test_heads_averaged_into_an_output_stay_whole_and_their_width_is_pruned():
    """The head-averaged weights (``need_weights``, read) would change if a head went: the
    heads stay, and the channels inside each head are pruned instead (the same dims of q
    and k in every head; those of v with the output projection's columns)."""
    _, pruner = _pruned("decoder_weights_read")
    rows = pruner._masked["cross.in_proj_weight"].mask.numpy().any(axis=1).reshape(3, 4, 8)
    assert rows.any(axis=2).all(), "a whole head went"
    assert (rows == rows[:, :1]).all(), "heads keep different dims"
    assert (rows[0] == rows[1]).all() and rows[0, 0].sum() < 8 and rows[2, 0].sum() < 8


@pytest.mark.parametrize("name", list(CASES))
def test_the_masked_model_computes_what_its_compact_export_does(name, tmp_path):
    model, _ = _pruned(name)
    build, inputs = CASES[name]
    result = export_onnx(model, inputs(0), tmp_path / "compact.onnx", compact=True)
    assert result.params < 0.85 * result.dense_params
    feeds = inputs(5)  # not the inputs the export verified on
    sess = ort.InferenceSession(str(tmp_path / "compact.onnx"))
    outs = sess.run(
        None, {i.name: f.numpy() for i, f in zip(sess.get_inputs(), feeds, strict=False)}
    )
    torch.manual_seed(0)
    dense = build().eval()
    with torch.no_grad():
        masked, plain = model(*feeds), dense(*feeds)
    masked = masked if isinstance(masked, tuple | list) else (masked,)
    plain = plain if isinstance(plain, tuple | list) else (plain,)
    for got, want in zip(outs, masked, strict=True):
        assert scaled_error(got, want.numpy()) < 1e-5
    assert scaled_error(plain[0].numpy(), masked[0].numpy()) > 1e-3  # the masks changed it
