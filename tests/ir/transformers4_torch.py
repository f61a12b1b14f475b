"""Newer vision transformers written the way their own projects compute them (round 4b of
the unseen-architecture battery), at small sizes with their structure intact; the
attention variants are in ``attention4_torch.py``, the MLP and conv hybrids in
``mixers4_torch.py``.

- ``dinov2``: DINOv2 (facebookresearch/dinov2 ``models/vision_transformer.py``,
  ``layers/block.py``, ``layers/attention.py``, ``layers/layer_scale.py``,
  ``layers/swiglu_ffn.py``): a class token and register tokens around the patch tokens,
  LayerScale, the SwiGLU FFN (``w12`` then ``chunk(2, -1)``, ``silu(x1) * x2``, ``w3``), and
  the linear classifier of ``hub/classifiers.py`` on the class token and the patch mean;
  ``dinov2_interpolated``: exported below its training size, so ``interpolate_pos_encoding``
  resizes the position embedding bicubically in the graph (scales from the input's size).
- ``eva02``: EVA-02 as timm ``eva.py`` writes it: q/k/v biases concatenated around a zero k
  bias (``F.linear(x, qkv.weight, qkv_bias)``), 2-D rotary embedding of q and k (sin and cos
  ``repeat_interleave``-d, ``rot`` pairs channels ``2i`` and ``2i + 1`` of a head) after the
  class token, SwiGLU with separate gate/value Linears and a LayerNorm over the hidden width
  (``scale_mlp``), average pooling with ``fc_norm``; ``eva02_subln``: the EVA-02 repo's
  own form (``EVA-02/asuka/modeling_finetune.py``: separate q/k/v projections, its
  ``rotate_half`` by reshape to pairs, unbind and stack, ``inner_attn_ln`` over the heads).

Exported at opset 17 by the TorchScript exporter (``export_as``), or with ``dynamo=True``
by torch's default exporter (``backbones3_torch.export``).
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from torch import nn


def _ln(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, out or dim),
        )

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 0.5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * (1 + torch.rand(dim)))

    def forward(self, x):
        return x * self.gamma


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, cin: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


# ---- DINOv2 (facebookresearch/dinov2) -------------------------------------------------------


class DinoAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class SwiGLUFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, swiglu: bool) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = _ln(dim), DinoAttention(dim, heads), LayerScale(dim)
        # SwiGLUFFNFused: hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        ffn = SwiGLUFFN(dim, (int(dim * 4 * 2 / 3) + 7) // 8 * 8) if swiglu else Mlp(dim, 4 * dim)
        self.norm2, self.mlp, self.ls2 = _ln(dim), ffn, LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TinyDinoV2(nn.Module):
    def __init__(self, size=32, patch=8, dim=48, heads=4, depth=3, registers=4, classes=10):
        super().__init__()
        self.patch_embed, self.patch_size = PatchEmbed(patch, dim), patch
        n = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.1)
        self.register_tokens = nn.Parameter(torch.randn(1, registers, dim) * 0.1)
        self.num_register_tokens, self.interpolate_offset = registers, 0.1
        self.blocks = nn.ModuleList(DinoBlock(dim, heads, i % 2 == 0) for i in range(depth))
        self.norm = _ln(dim)
        self.head = nn.Linear(2 * dim, classes)

    def interpolate_pos_encoding(self, x, w, h):
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        M = int(math.sqrt(N))
        sx = float(w0 + self.interpolate_offset) / M
        sy = float(h0 + self.interpolate_offset) / M
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            scale_factor=(sx, sy),
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def forward(self, x):
        B, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        cls_token = x_norm[:, 0]
        patch_tokens = x_norm[:, self.num_register_tokens + 1 :]
        return self.head(torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1))


def dinov2(
    size: int = 32, seed: int = 0, dynamo: bool = False, trained_at: int | None = None
) -> onnx.ModelProto:
    """``trained_at``: the image size of the position embedding (DINOv2's 518 exported at
    224): ``interpolate_pos_encoding`` resizes it bicubically in the graph."""
    torch.manual_seed(seed)
    model = TinyDinoV2(trained_at or size)
    return export(randomize_norms(model), size, 17, seed, dynamo)


def dinov2_interpolated(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return dinov2(size, seed, dynamo, trained_at=48)


# ---- EVA-02 (timm eva.py) -------------------------------------------------------------------


def rot(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


def apply_rot_embed_cat(x, emb):
    sin_emb, cos_emb = emb.tensor_split(2, -1)
    return x * cos_emb + rot(x) * sin_emb


def rotary_embed(head_dim: int, grid: int, temperature: float = 10000.0) -> torch.Tensor:
    """timm ``build_rotary_pos_embed`` (``in_pixels=False``): ``cat([sin, cos], -1)`` of
    shape ``(grid * grid, 2 * head_dim)``, each frequency repeated for a channel pair."""
    num_bands = head_dim // 4
    exp = torch.arange(0, num_bands, 1, dtype=torch.float32) / num_bands
    bands = 1.0 / (temperature**exp)
    t = torch.arange(grid, dtype=torch.float32)
    pos = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).unsqueeze(-1)
    emb = pos * bands
    sin = emb.sin().reshape(grid * grid, -1).repeat_interleave(2, -1)
    cos = emb.cos().reshape(grid * grid, -1).repeat_interleave(2, -1)
    return torch.cat([sin, cos], -1)


class EvaAttention(nn.Module):
    def __init__(self, dim: int, heads: int, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.norm, self.proj = nn.Identity(), nn.Linear(dim, dim)

    def forward(self, x, rope):
        B, N, C = x.shape
        qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, weight=self.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        npt = self.num_prefix_tokens
        q = torch.cat([q[:, :, :npt, :], apply_rot_embed_cat(q[:, :, npt:, :], rope)], dim=2)
        k = torch.cat([k[:, :, :npt, :], apply_rot_embed_cat(k[:, :, npt:, :], rope)], dim=2)
        x = F.scaled_dot_product_attention(q.type_as(v), k.type_as(v), v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(self.norm(x))


class SwiGLU(nn.Module):
    """timm ``layers/mlp.py`` ``SwiGLU`` with ``norm_layer`` (EVA-02's ``scale_mlp``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1_g, self.fc1_x = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.act, self.norm, self.fc2 = nn.SiLU(), _ln(hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = self.act(self.fc1_g(x)) * self.fc1_x(x)
        return self.fc2(self.norm(x))


def rotate_half(x):
    """EVA-02's own ``rotate_half`` (einops ``'... (d r) -> ... d r'``, unbind, stack back)."""
    x = x.reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class EvaSublnAttention(nn.Module):
    """The EVA-02 repo's ``Attention`` with ``subln=True``: separate q/k/v projections (k
    without a bias), the rotary embedding ``t * cos + rotate_half(t) * sin`` on the patch
    tokens, and ``inner_attn_ln`` (a LayerNorm over all heads) before ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.inner_attn_ln, self.proj = _ln(dim), nn.Linear(dim, dim)

    def forward(self, x, rope):
        B, N, _ = x.shape
        q = F.linear(input=x, weight=self.q_proj.weight, bias=self.q_bias)
        k = F.linear(input=x, weight=self.k_proj.weight, bias=None)
        v = F.linear(input=x, weight=self.v_proj.weight, bias=self.v_bias)
        q = q.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        k = k.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        v = v.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        sin, cos = rope.tensor_split(2, -1)
        q_t = q[:, :, 1:, :]
        q = torch.cat((q[:, :, :1, :], q_t * cos + rotate_half(q_t) * sin), -2).type_as(v)
        k_t = k[:, :, 1:, :]
        k = torch.cat((k[:, :, :1, :], k_t * cos + rotate_half(k_t) * sin), -2).type_as(v)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(self.inner_attn_ln(x))


class EvaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, subln: bool = False) -> None:
        super().__init__()
        attn = EvaSublnAttention(dim, heads) if subln else EvaAttention(dim, heads)
        self.norm1, self.attn = _ln(dim), attn
        self.norm2, self.mlp = _ln(dim), SwiGLU(dim, int(dim * 4 * 2 / 3))

    def forward(self, x, rope):
        x = x + self.attn(self.norm1(x), rope=rope)
        return x + self.mlp(self.norm2(x))


class TinyEva02(nn.Module):
    def __init__(self, size=32, patch=8, dim=48, heads=4, depth=3, classes=10, subln=False):
        super().__init__()
        grid = size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.1)
        self.register_buffer("rope", rotary_embed(dim // heads, grid), persistent=False)
        self.blocks = nn.ModuleList(EvaBlock(dim, heads, subln) for _ in range(depth))
        self.fc_norm, self.head = _ln(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x, rope=self.rope)
        return self.head(self.fc_norm(x[:, 1:].mean(dim=1)))


def eva02(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyEva02(size)), size, 17, seed, dynamo)


def eva02_subln(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """As the EVA-02 repo (baaivision/EVA ``EVA-02/asuka/modeling_finetune.py``) writes it."""
    torch.manual_seed(seed)
    return export(randomize_norms(TinyEva02(size, subln=True)), size, 17, seed, dynamo)
