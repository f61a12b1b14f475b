"""The fx rules of transformer layers (``ir/from_fx.py``): LayerNorm, matrix products,
``expand``, ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``, registered into
``ir.fx_ops.MODULE_RULES`` / ``FUNCTION_RULES`` on import.

Each becomes the plain ONNX ops the channel rules read, so heads come out as they do from
an exported file (``Reshape`` into ``(..., 3, heads, head_dim)`` then ``Transpose`` and
``Split``; whole heads are one channel unit of q, k, v and the output projection's input):
- ``nn.LayerNorm`` / ``F.layer_norm`` -> ``LayerNormalization`` (scale and bias as inputs;
  ``elementwise_affine=False`` gives constant ones and zeros);
- ``@`` / ``torch.matmul`` / ``bmm`` -> ``MatMul``; ``expand`` / ``expand_as`` -> ``Expand``
  to the traced output shape;
- ``F.scaled_dot_product_attention`` -> ``Mul`` (scale) on q, ``Transpose`` of k,
  ``MatMul``, ``Add`` of a float mask (``is_causal``: a constant ``-inf`` upper triangle),
  ``Softmax``, ``Dropout`` when ``dropout_p > 0`` (F.sdpa drops whenever it is given),
  ``MatMul`` with v; a boolean mask (True: may attend) is ``Where(mask, 0, -inf)`` added
  the same way; ``enable_gqa``: k's and v's heads repeated for their query heads
  (Reshape, Expand, Reshape, as the dynamo exporter writes it: ``_repeat_kv``);
- ``nn.MultiheadAttention``: self-attention (query, key and value the same tensor, no mask)
  as timm writes it: one ``Gemm`` on the packed weight, ``Reshape`` to
  ``(rows, 3, heads, head_dim)``, heads moved forward, ``Split`` into q, k, v, the attention
  above, heads moved back, ``Gemm`` of ``out_proj``; so the packed rows of q, k and v map
  heads at offsets 0, E and 2E. Any other call (cross-attention, DETR's positions added to
  q and k only, ``kdim``/``vdim``, masks): the packed weight and bias are ``Split`` into
  their q, k and v row blocks (the blocks' roles pass to the packed parameter:
  ``ir/solve.py``), one ``Gemm`` each, heads moved forward; ``key_padding_mask``
  (batch, keys) and a 2-D ``attn_mask`` are added to the scores (boolean: ``-inf`` where
  True). The head-averaged weights, when the forward reads them, are a ``ReduceMean``
  over the heads (which then stay whole: their width is pruned instead). ``bias_k``/
  ``bias_v``, ``add_zero_attn``, ``is_causal`` and 3-D masks are not mapped (named
  ``fx::MultiheadAttention(...)`` nodes); its dropout while training is a ``Dropout``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drpopt.ir.core import Value
from drpopt.ir.from_fx import _Converter
from drpopt.ir.fx_ops import FUNCTION_RULES, MODULE_RULES


def _get(args: Any, kwargs: Any, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


# ---- LayerNorm ------------------------------------------------------------------------
def _layer_norm_ops(
    c: _Converter, n: Any, x: Value, size: Any, w: Value | None, b: Value | None, eps: float
) -> Value:
    dims = [int(d) for d in (size if isinstance(size, list | tuple) else [size])]
    dtype = x.dtype or np.float32
    if w is None:
        w = c.const(f"{n.name}.scale", np.ones(dims, dtype))
    ins = [x, w] + ([b] if b is not None else [])
    y = c.out(n)
    c.emit("LayerNormalization", n, ins, [y], axis=-len(dims), epsilon=float(eps))
    return y


def _module_layernorm(c: _Converter, n: Any, mod: Any) -> Value:
    t = n.target
    w = c.tensor_const(f"{t}.weight", mod.weight) if mod.weight is not None else None
    b = c.tensor_const(f"{t}.bias", mod.bias) if getattr(mod, "bias", None) is not None else None
    return _layer_norm_ops(c, n, c.arg(n.args[0]), mod.normalized_shape, w, b, mod.eps)


def _f_layer_norm(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    w, b = _get(args, kwargs, 2, "weight"), _get(args, kwargs, 3, "bias")
    if any(v is not None and not isinstance(v, Value) for v in (w, b)):
        return c.unsupported(n, key)
    eps = float(_get(args, kwargs, 4, "eps", 1e-5))
    return _layer_norm_ops(c, n, args[0], _get(args, kwargs, 1, "normalized_shape"), w, b, eps)


# ---- products and broadcasting ---------------------------------------------------------
def _f_matmul(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    a, b = args[0], _get(args, kwargs, 1, "other", kwargs.get("mat2"))
    if not (isinstance(a, Value) and isinstance(b, Value)):
        return c.unsupported(n, key)
    y = c.out(n)
    c.emit("MatMul", n, [a, b], [y])
    return y


def _f_expand(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    x, y = args[0], c.out(n)
    if y.shape is None:
        return c.unsupported(n, key)
    if y.shape == x.shape:
        return x
    c.emit("Expand", n, [x, c.ints(f"{n.name}.shape", list(y.shape))], [y])
    return y


# ---- attention --------------------------------------------------------------------------
def _swap_last(c: _Converter, n: Any, x: Value, name: str) -> Value:
    rank = x.rank or 0
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    shape = None if x.shape is None else tuple(x.shape[p] for p in perm)
    y = c.tmp(name, shape, x.dtype)
    c.emit("Transpose", n, [x], [y], perm=perm)
    return y


def _attention_ops(
    c: _Converter,
    n: Any,
    q: Value,
    k: Value,
    v: Value,
    scale: float,
    mask: Value | None = None,
    causal: bool = False,
    out: Value | None = None,
    dropout: float = 0.0,
) -> tuple[Value, Value]:
    """``dropout(softmax(q * scale @ k^T + mask)) @ v`` on ``(..., tokens, head_dim)``
    tensors: (the result, the attention probabilities before dropout)."""
    dtype = q.dtype or np.float32
    lead = tuple((q.shape or ())[:-1])
    keys = (k.shape or (None, None))[-2]
    scores_shape = (*lead, keys) if q.shape is not None else None
    qs = c.tmp(f"{n.name}.q_scaled", q.shape, dtype)
    c.emit("Mul", n, [q, c.const(f"{n.name}.scale", np.asarray(scale, dtype))], [qs])
    scores = c.tmp(f"{n.name}.scores", scores_shape, dtype)
    c.emit("MatMul", n, [qs, _swap_last(c, n, k, f"{n.name}.k_t")], [scores])
    if causal:
        rows, cols = int(lead[-1]), int(keys)
        tri = np.triu(np.full((rows, cols), -np.inf, dtype), 1)
        mask = c.const(f"{n.name}.causal", tri)
    if mask is not None:
        masked = c.tmp(f"{n.name}.masked", scores_shape, dtype)
        c.emit("Add", n, [scores, mask], [masked])
        scores = masked
    probs = c.tmp(f"{n.name}.probs", scores_shape, dtype)
    c.emit("Softmax", n, [scores], [probs], axis=-1)
    used = probs
    if dropout:
        used = c.tmp(f"{n.name}.dropped", scores_shape, dtype)
        ratio = c.const(f"{n.name}.ratio", np.asarray(dropout, dtype))
        c.emit("Dropout", n, [probs, ratio, c.const(f"{n.name}.train", np.asarray(True))], [used])
    y = out if out is not None else c.tmp(f"{n.name}.attn", (*lead, v.shape[-1]), dtype)
    c.emit("MatMul", n, [used, v], [y])
    return y, probs


def _f_sdpa(c: _Converter, n: Any, key: str, args: Any, kwargs: Any) -> Any:
    q, k, v = args[0], _get(args, kwargs, 1, "key"), _get(args, kwargs, 2, "value")
    mask = _get(args, kwargs, 3, "attn_mask")
    dropout = float(_get(args, kwargs, 4, "dropout_p", 0.0) or 0.0)
    causal = bool(_get(args, kwargs, 5, "is_causal", False))
    scale = kwargs.get("scale")
    if not all(isinstance(t, Value) and t.shape is not None for t in (q, k, v)):
        return c.unsupported(n, key)
    if kwargs.get("enable_gqa"):
        k, v = _repeat_kv(c, n, q, k, "k"), _repeat_kv(c, n, q, v, "v")
        if k is None or v is None:
            return c.unsupported(n, f"{key}(enable_gqa)")
    if mask is not None and not isinstance(mask, Value):
        return c.unsupported(n, f"{key}(attn_mask {type(mask).__name__})")
    if causal and mask is not None:
        return c.unsupported(n, f"{key}(is_causal with attn_mask)")
    if mask is not None and (mask.dtype or np.dtype(np.float32)).kind == "b":
        mask = _boolean_to_additive(c, n, mask, q.dtype or np.float32, keep=True)
    scale = float(scale) if scale is not None else 1.0 / float(np.sqrt(q.shape[-1]))
    y, _ = _attention_ops(c, n, q, k, v, scale, mask, causal, c.out(n), dropout)
    return y


def _repeat_kv(c: _Converter, n: Any, q: Value, t: Value, tag: str) -> Value | None:
    """``enable_gqa``: k's (or v's) heads (axis -3) each serve ``Hq / Hkv`` consecutive
    query heads, torch's ``repeat_interleave`` over the heads, written as the dynamo
    exporter does: Reshape to ``(..., Hkv, 1, S, D)``, Expand to ``(..., Hkv, Hq / Hkv, S,
    D)``, Reshape merging the two into ``Hq``. The merge maps the query heads as blocks of
    ``Hq / Hkv`` of the kv heads (the coarse axis carries the channels), so a kv head
    prunes with its query heads and the output projection's columns. None when the shapes
    are not static or do not divide."""
    qs, ts = q.shape, t.shape
    if qs is None or ts is None or len(qs) < 3 or len(ts) != len(qs):
        return None
    if not all(isinstance(d, int) for d in (*qs, *ts)):
        return None
    hq, hkv = qs[-3], ts[-3]
    if hq == hkv:
        return t
    if hkv < 1 or hq % hkv:
        return None
    lead, (s, d) = tuple(ts[:-3]), ts[-2:]
    base = f"{n.name}.{tag}_gqa"
    steps = [(hkv, 1), (hkv, hq // hkv), (hq,)]
    cur = t
    for i, (op, heads) in enumerate(zip(("Reshape", "Expand", "Reshape"), steps, strict=True)):
        shape = (*lead, *heads, s, d)
        nxt = c.tmp(f"{base}{i}", shape, t.dtype)
        c.emit(op, n, [cur, c.ints(f"{base}{i}.shape", list(shape))], [nxt])
        cur = nxt
    return cur


def _qkv(args: tuple, kwargs: dict) -> tuple[Any, Any, Any]:
    """query, key and value of an ``nn.MultiheadAttention`` call, positional or by keyword."""
    names = ("query", "key", "value")
    return tuple(_get(args, kwargs, i, name) for i, name in enumerate(names))  # type: ignore[return-value]


def _mha_refusal(mod: Any, args: tuple, kwargs: dict) -> str | None:
    """Why an ``nn.MultiheadAttention`` call is not mapped (None: it is)."""
    q, k, v = _qkv(args, kwargs)
    if mod.bias_k is not None or mod.add_zero_attn:
        return "bias_k/add_zero_attn"
    if _get(args, kwargs, 7, "is_causal", False):
        return "is_causal"
    if not all(
        isinstance(t, Value) and t.shape is not None and len(t.shape) == 3 for t in (q, k, v)
    ):
        return "input not (batch, tokens, embed)"
    for i, name, ranks in ((3, "key_padding_mask", (2,)), (5, "attn_mask", (2,))):
        m = _get(args, kwargs, i, name)
        if m is not None and (not isinstance(m, Value) or m.rank not in ranks):
            return f"{name} of rank {getattr(m, 'rank', None)}"
    return None


def _module_mha(c: _Converter, n: Any, mod: Any) -> Any:
    """See the module docstring; returns ``(output, weights or None)`` as the module."""
    args, kwargs = c.arg(n.args), c.arg(n.kwargs)
    why = _mha_refusal(mod, args, kwargs)
    if why is not None:
        return c.unsupported(n, f"MultiheadAttention({why})")
    q, k, v = _qkv(args, kwargs)
    heads, hd = int(mod.num_heads), int(mod.embed_dim) // int(mod.num_heads)
    masks = (_get(args, kwargs, 3, "key_padding_mask"), _get(args, kwargs, 5, "attn_mask"))
    if q is k is v and mod._qkv_same_embed_dim and masks == (None, None):
        qkv_ = _packed_self_attention(c, n, mod, q)
    else:
        qkv_ = _projections(c, n, mod, (q, k, v))
    mask = _additive_mask(c, n, *masks, qkv_[0], qkv_[1].shape)
    drop = float(mod.dropout) if mod.training else 0.0
    attn, probs = _attention_ops(c, n, *qkv_, 1.0 / float(np.sqrt(hd)), mask, dropout=drop)
    first, second = (int(d) for d in q.shape[:2])
    rows, e = first * second, int(mod.embed_dim)
    n_ = second if mod.batch_first else first
    b_ = first if mod.batch_first else second
    back = [0, 2, 1, 3] if mod.batch_first else [2, 0, 1, 3]
    shape_back = (b_, n_, heads, hd) if mod.batch_first else (n_, b_, heads, hd)
    merged = c.tmp(f"{n.name}.merged", shape_back, attn.dtype)
    c.emit("Transpose", n, [attn], [merged], perm=back)
    flat_out = c.tmp(f"{n.name}.merged_rows", (rows, e), attn.dtype)
    c.emit("Reshape", n, [merged, c.ints(f"{n.name}.merged_shape", [rows, e])], [flat_out])
    t = n.target
    ow = c.tensor_const(f"{t}.out_proj.weight", mod.out_proj.weight)
    ob = (
        c.tensor_const(f"{t}.out_proj.bias", mod.out_proj.bias)
        if mod.out_proj.bias is not None
        else None
    )
    proj = c.tmp(f"{n.name}.proj", (rows, e), attn.dtype)
    c.emit("Gemm", n, [flat_out, ow] + ([ob] if ob is not None else []), [proj], transB=1)
    y = c.out(n, 0)
    c.emit("Reshape", n, [proj, c.ints(f"{n.name}.out_shape", list(y.shape or ()))], [y])
    return y, _mha_weights(c, n, probs, _named(args, kwargs))


def _packed_self_attention(c: _Converter, n: Any, mod: Any, x: Value) -> list[Value]:
    """Self-attention as timm writes it: one Gemm on the packed ``in_proj_weight``, reshaped
    to ``(rows, 3, heads, head_dim)``, heads moved forward, split into q, k and v."""
    t, e, heads = n.target, int(mod.embed_dim), int(mod.num_heads)
    hd = e // heads
    first, second, _ = (int(d) for d in x.shape)  # batch_first: (B, N, E), else (N, B, E)
    b_, n_ = (first, second) if mod.batch_first else (second, first)
    dtype = x.dtype or np.float32
    rows = first * second
    w = c.tensor_const(f"{t}.in_proj_weight", mod.in_proj_weight)
    bias = (
        c.tensor_const(f"{t}.in_proj_bias", mod.in_proj_bias)
        if mod.in_proj_bias is not None
        else None
    )
    flat = c.tmp(f"{n.name}.rows", (rows, e), dtype)
    c.emit("Reshape", n, [x, c.ints(f"{n.name}.rows_shape", [rows, e])], [flat])
    qkv = c.tmp(f"{n.name}.qkv", (rows, 3 * e), dtype)
    c.emit("Gemm", n, [flat, w] + ([bias] if bias is not None else []), [qkv], transB=1)
    split5 = (first, second, 3, heads, hd)
    qkv5 = c.tmp(f"{n.name}.qkv_heads", split5, dtype)
    c.emit("Reshape", n, [qkv, c.ints(f"{n.name}.heads_shape", list(split5))], [qkv5])
    perm = [2, 0, 3, 1, 4] if mod.batch_first else [2, 1, 3, 0, 4]
    moved = c.tmp(f"{n.name}.qkv_t", (3, b_, heads, n_, hd), dtype)
    c.emit("Transpose", n, [qkv5], [moved], perm=perm)
    parts = [c.tmp(f"{n.name}.{p}1", (1, b_, heads, n_, hd), dtype) for p in "qkv"]
    c.emit("Split", n, [moved, c.ints(f"{n.name}.split", [1, 1, 1])], parts, axis=0)
    out = []
    for p, part in zip("qkv", parts, strict=True):
        sq = c.tmp(f"{n.name}.{p}", (b_, heads, n_, hd), dtype)
        c.emit("Squeeze", n, [part, c.ints(f"{n.name}.axes0", [0])], [sq])
        out.append(sq)
    return out


def _projections(c: _Converter, n: Any, mod: Any, xs: tuple[Value, ...]) -> list[Value]:
    """q, k and v of cross-attention (or of self-attention with positions added to q and k
    only, as DETR does) as ``(batch, heads, tokens, head_dim)``: the packed
    ``in_proj_weight`` (and ``in_proj_bias``) is ``Split`` into its three row blocks, each
    read by its own ``Gemm``, so a head's rows stay rows of the parameter the Pruner masks;
    ``kdim``/``vdim`` modules have ``q/k/v_proj_weight`` of their own."""
    t, e, heads = n.target, int(mod.embed_dim), int(mod.num_heads)
    dtype = xs[0].dtype or np.float32
    if mod._qkv_same_embed_dim:
        packed = c.tensor_const(f"{t}.in_proj_weight", mod.in_proj_weight)
        weights = _split_rows(c, n, packed, e, "w", dtype, (e, e))
    else:
        weights = [
            c.tensor_const(f"{t}.{p}_proj_weight", getattr(mod, f"{p}_proj_weight")) for p in "qkv"
        ]
    biases: list[Value | None] = [None] * 3
    if mod.in_proj_bias is not None:
        packed_b = c.tensor_const(f"{t}.in_proj_bias", mod.in_proj_bias)
        biases = list(_split_rows(c, n, packed_b, e, "b", dtype, (e,)))
    out = []
    for p, x, w, b in zip("qkv", xs, weights, biases, strict=True):
        first, second, width = (int(d) for d in x.shape)
        b_, n_ = (first, second) if mod.batch_first else (second, first)
        flat = c.tmp(f"{n.name}.{p}_rows", (first * second, width), dtype)
        c.emit(
            "Reshape", n, [x, c.ints(f"{n.name}.{p}_rows_shape", [first * second, width])], [flat]
        )
        y = c.tmp(f"{n.name}.{p}_proj", (first * second, e), dtype)
        c.emit("Gemm", n, [flat, w] + ([b] if b is not None else []), [y], transB=1)
        split = (first, second, heads, e // heads)
        y4 = c.tmp(f"{n.name}.{p}_heads", split, dtype)
        c.emit("Reshape", n, [y, c.ints(f"{n.name}.{p}_heads_shape", list(split))], [y4])
        moved = c.tmp(f"{n.name}.{p}", (b_, heads, n_, e // heads), dtype)
        perm = [0, 2, 1, 3] if mod.batch_first else [1, 2, 0, 3]
        c.emit("Transpose", n, [y4], [moved], perm=perm)
        out.append(moved)
    return out


def _split_rows(
    c: _Converter, n: Any, packed: Value, e: int, tag: str, dtype: Any, shape: tuple[int, ...]
) -> list[Value]:
    parts = [c.tmp(f"{n.name}.{p}_{tag}", shape, dtype) for p in "qkv"]
    c.emit("Split", n, [packed, c.ints(f"{n.name}.{tag}_split", [e, e, e])], parts, axis=0)
    return parts


def _boolean_to_additive(c: _Converter, n: Any, mask: Value, dtype: Any, keep: bool) -> Value:
    """A boolean mask as the float one added to the scores: ``-inf`` where attention is not
    allowed (``keep``: True marks the allowed places, as SDPA reads it; else True marks
    those masked out, as ``nn.MultiheadAttention`` reads it), 0 elsewhere."""
    f = c.tmp(f"{n.name}.mask_f", tuple(mask.shape or ()), dtype)
    ninf = c.const(f"{n.name}.ninf", np.asarray(-np.inf, dtype))
    zero = c.const(f"{n.name}.zero", np.asarray(0.0, dtype))
    c.emit("Where", n, [mask, zero, ninf] if keep else [mask, ninf, zero], [f])
    return f


def _additive_mask(
    c: _Converter, n: Any, padding: Value | None, attn: Value | None, q: Value, k_shape: Any
) -> Value | None:
    """``key_padding_mask`` (batch, keys) and ``attn_mask`` (queries, keys) as one mask in
    q's dtype added to the scores (boolean masks: ``-inf`` where True), broadcast over the
    heads."""
    b_, _, l_, _ = q.shape  # type: ignore[misc]
    s_ = k_shape[2]
    dtype = q.dtype or np.float32
    total = None
    for m, shape in ((padding, (b_, 1, 1, s_)), (attn, (1, 1, l_, s_))):
        if m is None:
            continue
        if (m.dtype or np.dtype(np.float32)).kind == "b":
            m = _boolean_to_additive(c, n, m, dtype, keep=False)
        r = c.tmp(f"{n.name}.mask4", shape, m.dtype)
        c.emit("Reshape", n, [m, c.ints(f"{n.name}.mask_shape", list(shape))], [r])
        if total is None:
            total = r
        else:
            both = c.tmp(f"{n.name}.masks", (b_, 1, l_, s_), dtype)
            c.emit("Add", n, [total, r], [both])
            total = both
    return total


def _mha_weights(c: _Converter, n: Any, probs: Value, kwargs: dict) -> Value | None:
    """The attention weights the module returns when ``need_weights`` (averaged over heads
    unless ``average_attn_weights=False``), written only if the forward reads them."""
    if not _get((), kwargs, 4, "need_weights", True) or not _reads_output(n, 1):
        return None
    w = c.out(n, 1)
    if _get((), kwargs, 6, "average_attn_weights", True):
        c.emit("ReduceMean", n, [probs], [w], axes=[1], keepdims=0)
    else:
        return probs
    return w


def _named(args: tuple, kwargs: dict) -> dict:
    """The call's keyword arguments with positional need_weights/average_attn_weights."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    names += ("average_attn_weights", "is_causal")
    return {**dict(zip(names, args, strict=False)), **kwargs}


def _reads_output(n: Any, index: int) -> bool:
    import operator

    return any(
        u.op == "call_function" and u.target is operator.getitem and u.args[1] == index and u.users
        for u in n.users
    )  # ``out, weights = attn(...)`` with ``weights`` unused does not read them


def _register() -> None:
    import torch.nn as nn

    MODULE_RULES.setdefault(nn.LayerNorm, _module_layernorm)
    MODULE_RULES.setdefault(nn.MultiheadAttention, _module_mha)
    for names, fn in (
        (("layer_norm",), _f_layer_norm),
        (("matmul", "bmm"), _f_matmul),
        (("expand", "expand_as"), _f_expand),
        (("scaled_dot_product_attention",), _f_sdpa),
    ):
        for name in names:
            FUNCTION_RULES.setdefault(name, fn)


_register()
