"""``nn.MultiheadAttention`` as the ONNX exporter should see it (``ir/from_torch.py``).

Torch's own forward exports in a form the channel analysis cannot split into heads when
the batch is over 1 (``view(tokens, batch * heads, head_dim)`` merges batch and heads), and
in eval mode under ``no_grad`` it takes a fused kernel the exporter cannot write at all.
While :func:`exportable_attention` is active:
- the fused fast path is off (``torch.backends.mha``);
- a self-attention call (query, key and value the same tensor, packed ``in_proj_weight``,
  no masks, no ``bias_k``/``add_zero_attn``, no dropout while training) computes the same
  result as timm writes attention: the packed projection, ``reshape(B, N, 3, heads,
  head_dim).permute(2, 0, 3, 1, 4).unbind(0)``, ``softmax(q * scale @ k^T) @ v``,
  ``transpose(1, 2).reshape(B, N, E)``, ``out_proj``; the fx frontend writes the same ops
  (``ir/fx_attention.py``), so both paths find the heads;
- every other call runs torch's own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _plain_self_attention(mod: Any, x: Any, need_weights: bool, average: bool) -> Any:
    import torch.nn.functional as F

    t = x if mod.batch_first else x.transpose(0, 1)
    b, n, e = t.shape
    heads = mod.num_heads
    hd = e // heads
    qkv = F.linear(t, mod.in_proj_weight, mod.in_proj_bias)
    q, k, v = qkv.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, e)
    out = F.linear(out, mod.out_proj.weight, mod.out_proj.bias)
    if not mod.batch_first:
        out = out.transpose(0, 1)
    weights = (attn.mean(dim=1) if average else attn) if need_weights else None
    return out, weights


def _is_plain(mod: Any, q: Any, k: Any, v: Any, masks: tuple, causal: bool) -> bool:
    return (
        q is k is v
        and q.dim() == 3
        and mod._qkv_same_embed_dim
        and mod.in_proj_weight is not None
        and mod.bias_k is None
        and not mod.add_zero_attn
        and all(m is None for m in masks)
        and not causal
        and not (mod.training and mod.dropout)
    )


@contextlib.contextmanager
def exportable_attention() -> Iterator[None]:
    """``nn.MultiheadAttention`` exportable with its heads visible (module docstring)."""
    import torch
    from torch import nn

    original = nn.MultiheadAttention.forward

    def forward(
        self: Any,
        query: Any,
        key: Any,
        value: Any,
        key_padding_mask: Any = None,
        need_weights: bool = True,
        attn_mask: Any = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Any:
        if _is_plain(self, query, key, value, (key_padding_mask, attn_mask), is_causal):
            return _plain_self_attention(self, query, need_weights, average_attn_weights)
        return original(
            self,
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )

    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    nn.MultiheadAttention.forward = forward
    try:
        yield
    finally:
        nn.MultiheadAttention.forward = original
        if mha is not None:
            mha.set_fastpath_enabled(before)
