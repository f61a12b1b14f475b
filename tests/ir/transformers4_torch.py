"""Newer vision transformers and MLP models written the way their own projects compute them
(round 4b of the unseen-architecture battery), at small sizes with their structure intact.

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
- ``sam_vit``: SAM's image encoder (facebookresearch/segment-anything
  ``modeling/image_encoder.py``): tokens as ``(B, H, W, C)``, a learned absolute position,
  windowed attention with ``window_partition`` (``F.pad`` to whole windows) and
  ``window_unpartition`` (sliced back), global blocks, decomposed relative positions
  (``get_rel_pos`` gathers, two einsums over q's head width), q/k/v reshaped to
  ``(3, B * heads, HW, -1)``, and the neck (1x1 conv, ``LayerNorm2d``, 3x3 conv,
  ``LayerNorm2d``).
- ``beit``: BEiT (microsoft/unilm ``beit/modeling_finetune.py``): q and v biases, a relative
  position bias table gathered per head by ``relative_position_index`` (with class-token
  rows), LayerScale ``gamma_1``/``gamma_2``, mean pooling with ``fc_norm``.
- ``cait``: CaiT (facebookresearch/deit ``cait_models.py``): talking-heads attention
  (``proj_l`` and ``proj_w``: Linears across the heads axis of the attention map, before and
  after the softmax), LayerScale blocks, then class-attention blocks (the class token
  attends to ``cat(cls, x)``: q from the class token only).
- ``mixer``: MLP-Mixer (timm ``mlp_mixer.py`` ``MixerBlock``): token-mixing MLP over
  ``norm1(x).transpose(1, 2)`` and a channel MLP.
- ``resmlp``: ResMLP (facebookresearch/deit ``resmlp_models.py``): ``Affine`` norms
  (``alpha * x + beta``), a Linear over the patches, LayerScale, mean of the tokens.
- ``gmlp``: gMLP (timm ``mlp_mixer.py`` ``SpatialGatingBlock``, ``GatedMlp``): the spatial
  gating unit ``u, v = x.chunk(2, -1)``, LayerNorm over ``v``, a Linear over the tokens,
  ``u * v``.
- ``focalnet``: FocalNet (microsoft/FocalNet ``classification/focalnet.py``): focal
  modulation (``f`` Linear split into q, context and ``focal_level + 1`` gates, depthwise
  context convs accumulated with per-level gates, a global context, ``h`` 1x1 conv, ``q *
  modulator``), LayerScale, patch-embedding downsamples with LayerNorm.

- ``coatnet``: CoAtNet as timm ``maxxvit.py`` writes it: a two-conv stem, ``MbConvBlock``
  (BatchNorm pre-norm, 1x1 expand, strided depthwise 3x3, SE, 1x1 project; a pooled 1x1 conv
  shortcut where it downsamples), then ``TransformerBlock2d`` on NCHW maps (``LayerNorm2d``
  as permute / ``F.layer_norm`` / permute, a pooled downsample, ``Attention2d`` with the
  heads first: ``qkv(x).view(B, heads, 3 * dim_head, -1).chunk(3, dim=2)``, a relative
  position bias gathered per head, ``ConvMlp``), a final norm and a pooled classifier.

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


# ---- SAM image encoder (facebookresearch/segment-anything) ----------------------------------


class LayerNorm2d(nn.Module):
    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(num_channels) + 0.5)
        self.bias = nn.Parameter(torch.rand(num_channels) * 0.4 - 0.2)
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def window_partition(x, window_size):
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(windows, window_size, pad_hw, hw):
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_rel_pos(q_size, k_size, rel_pos):
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    attn = attn.view(B, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(B, q_h * q_w, k_h * k_w)


class SamAttention(nn.Module):
    def __init__(self, dim: int, heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = heads
        head_dim = dim // heads
        self.scale = head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * input_size[0] - 1, head_dim) * 0.1)
        self.rel_pos_w = nn.Parameter(torch.randn(2 * input_size[1] - 1, head_dim) * 0.1)

    def forward(self, x):
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class SamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window_size: int, grid: int) -> None:
        super().__init__()
        size = (window_size, window_size) if window_size > 0 else (grid, grid)
        self.norm1, self.attn = _ln(dim), SamAttention(dim, heads, size)
        self.norm2, self.mlp = _ln(dim), MLPBlock(dim, 4 * dim)
        self.window_size = window_size

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class TinySamEncoder(nn.Module):
    def __init__(self, size=48, patch=8, dim=32, heads=4, depth=4, window=4, out_chans=24):
        super().__init__()
        grid = size // patch  # 6: windows of 4 pad it to 8
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, grid, grid, dim) * 0.1)
        global_attn = (1, 3)
        self.blocks = nn.ModuleList(
            SamBlock(dim, heads, 0 if i in global_attn else window, grid) for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


def sam_vit(size: int = 48, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinySamEncoder(size)), size, 17, seed, dynamo)


# ---- BEiT (microsoft/unilm beit) ------------------------------------------------------------


def relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += window - 1
    relative_coords[:, :, 1] += window - 1
    relative_coords[:, :, 0] *= 2 * window - 1
    num_relative_distance = (2 * window - 1) ** 2 + 3
    n = window * window + 1
    index = torch.zeros(size=(n, n), dtype=relative_coords.dtype)
    index[1:, 1:] = relative_coords.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


class BeitAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.scale, self.window = heads, (dim // heads) ** -0.5, window
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1) ** 2 + 3, heads) * 0.5
        )
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        n = self.window * self.window + 1
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class BeitBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.norm1, self.attn = _ln(dim), BeitAttention(dim, heads, window)
        self.norm2, self.mlp = _ln(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class TinyBeit(nn.Module):
    def __init__(self, size=32, patch=8, dim=48, heads=4, depth=3, classes=10):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.blocks = nn.ModuleList(BeitBlock(dim, heads, size // patch) for _ in range(depth))
        self.fc_norm, self.head = _ln(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.fc_norm(x[:, 1:].mean(1)))


def beit(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyBeit(size)), size, 17, seed, dynamo)


# ---- CaiT (facebookresearch/deit cait_models.py) --------------------------------------------


class AttentionTalkingHead(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.proj_l, self.proj_w = nn.Linear(heads, heads), nn.Linear(heads, heads)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = attn.softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class ClassAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x[:, 0]).unsqueeze(1).reshape(B, 1, h, C // h).permute(0, 2, 1, 3)
        k = self.k(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        q = q * self.scale
        v = self.v(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x_cls = (attn @ v).transpose(1, 2).reshape(B, 1, C)
        return self.proj(x_cls)


class LayerScaleBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = _ln(dim), AttentionTalkingHead(dim, heads)
        self.norm2, self.mlp = _ln(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class LayerScaleBlockCA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = _ln(dim), ClassAttention(dim, heads)
        self.norm2, self.mlp = _ln(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x, x_cls):
        u = torch.cat((x_cls, x), dim=1)
        x_cls = x_cls + self.gamma_1 * self.attn(self.norm1(u))
        return x_cls + self.gamma_2 * self.mlp(self.norm2(x_cls))


class TinyCaiT(nn.Module):
    def __init__(self, size=32, patch=8, dim=48, heads=4, depth=2, depth_token_only=2, classes=10):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.1)
        self.blocks = nn.ModuleList(LayerScaleBlock(dim, heads) for _ in range(depth))
        self.blocks_token_only = nn.ModuleList(
            LayerScaleBlockCA(dim, heads) for _ in range(depth_token_only)
        )
        self.norm, self.head = _ln(dim), nn.Linear(dim, classes)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed(x) + self.pos_embed
        cls_tokens = self.cls_token.expand(B, -1, -1)
        for blk in self.blocks:
            x = blk(x)
        for blk in self.blocks_token_only:
            cls_tokens = blk(x, cls_tokens)
        x = self.norm(torch.cat((cls_tokens, x), dim=1))
        return self.head(x[:, 0])


def cait(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyCaiT(size)), size, 17, seed, dynamo)


# ---- MLP-Mixer, ResMLP, gMLP ----------------------------------------------------------------


class MixerBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int, mlp_ratio=(0.5, 4.0)) -> None:
        super().__init__()
        tokens_dim, channels_dim = (int(x * dim) for x in mlp_ratio)
        self.norm1, self.mlp_tokens = _ln(dim), Mlp(seq_len, tokens_dim)
        self.norm2, self.mlp_channels = _ln(dim), Mlp(dim, channels_dim)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class Affine(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(dim) + 0.5)
        self.beta = nn.Parameter(torch.rand(dim) * 0.4 - 0.2)

    def forward(self, x):
        return self.alpha * x + self.beta


class ResMLPBlock(nn.Module):
    def __init__(self, dim: int, num_patches: int) -> None:
        super().__init__()
        self.norm1, self.attn = Affine(dim), nn.Linear(num_patches, num_patches)
        self.norm2, self.mlp = Affine(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class SpatialGatingUnit(nn.Module):
    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm, self.proj = _ln(dim // 2), nn.Linear(seq_len, seq_len)

    def forward(self, x):
        u, v = x.chunk(2, dim=-1)
        v = self.norm(v)
        v = self.proj(v.transpose(-1, -2))
        return u * v.transpose(-1, -2)


class GatedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, seq_len: int) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
        self.gate, self.norm = SpatialGatingUnit(hidden, seq_len), nn.Identity()
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x):
        return self.fc2(self.norm(self.gate(self.act(self.fc1(x)))))


class SpatialGatingBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm, self.mlp_channels = _ln(dim), GatedMlp(dim, 4 * dim, seq_len)

    def forward(self, x):
        return x + self.mlp_channels(self.norm(x))


class TinyMlpNet(nn.Module):
    """timm ``MlpMixer`` (also ResMLP and gMLP there): stem, blocks, norm, token mean, head."""

    def __init__(self, kind: str, size=32, patch=4, dim=32, depth=3, classes=10):
        super().__init__()
        seq = (size // patch) ** 2
        self.stem = PatchEmbed(patch, dim)
        block = {"mixer": MixerBlock, "resmlp": ResMLPBlock, "gmlp": SpatialGatingBlock}[kind]
        self.blocks = nn.Sequential(*(block(dim, seq) for _ in range(depth)))
        self.norm = Affine(dim) if kind == "resmlp" else _ln(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.norm(self.blocks(self.stem(x)))
        return self.head(x.mean(dim=1))


def mixer(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyMlpNet("mixer", size)), size, 17, seed, dynamo)


def resmlp(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(TinyMlpNet("resmlp", size), size, 17, seed, dynamo)


def gmlp(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyMlpNet("gmlp", size)), size, 17, seed, dynamo)


# ---- FocalNet (microsoft/FocalNet) ----------------------------------------------------------


class FocalModulation(nn.Module):
    def __init__(self, dim: int, focal_window: int = 3, focal_level: int = 2) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.f = nn.Linear(dim, 2 * dim + (focal_level + 1))
        self.h = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
        self.act, self.proj = nn.GELU(), nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel_size = 2 * k + focal_window
            conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))

    def forward(self, x):
        C = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2).contiguous()
        q, ctx, gates = torch.split(x, (C, C, self.focal_level + 1), 1)
        ctx_all = 0
        for level in range(self.focal_level):
            ctx = self.focal_layers[level](ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        modulator = self.h(ctx_all)
        x_out = (q * modulator).permute(0, 2, 3, 1).contiguous()
        return self.proj(x_out)


class FocalNetBlock(nn.Module):
    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm1, self.modulation = _ln(dim), FocalModulation(dim)
        self.norm2, self.mlp = _ln(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x):
        H = W = self.resolution
        B, _, C = x.shape
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        x = self.modulation(x).view(B, H * W, C)
        x = shortcut + self.gamma_1 * x
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class FocalPatchEmbed(nn.Module):
    def __init__(self, patch: int, cin: int, dim: int) -> None:
        super().__init__()
        self.proj, self.norm = nn.Conv2d(cin, dim, patch, patch), _ln(dim)

    def forward(self, x):
        x = self.proj(x)
        H, W = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class TinyFocalNet(nn.Module):
    def __init__(self, size=32, dims=(16, 32), depths=(1, 2), classes=10):
        super().__init__()
        self.embeds = nn.ModuleList(
            [FocalPatchEmbed(4, 3, dims[0]), FocalPatchEmbed(2, dims[0], dims[1])]
        )
        res = (size // 4, size // 8)
        self.stages = nn.ModuleList(
            nn.Sequential(*(FocalNetBlock(d, r) for _ in range(n)))
            for d, r, n in zip(dims, res, depths, strict=True)
        )
        self.norm, self.head = _ln(dims[-1]), nn.Linear(dims[-1], classes)

    def forward(self, x):
        x, H, W = self.embeds[0](x)
        x = self.stages[0](x)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, H, W)  # BasicLayer's downsample
        x, H, W = self.embeds[1](x)
        x = self.norm(self.stages[1](x))
        x = torch.flatten(F.adaptive_avg_pool1d(x.transpose(1, 2), 1), 1)
        return self.head(x)


def focalnet(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyFocalNet(size)), size, 17, seed, dynamo)


# ---- CoAtNet (timm maxxvit.py) --------------------------------------------------------------


class LayerNorm2dPermute(nn.LayerNorm):
    """timm ``layers/norm.py`` ``LayerNorm2d``: a LayerNorm over the channels of NCHW."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Downsample2d(nn.Module):
    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2)
        self.expand = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x):
        return self.expand(self.pool(x))


def _bn_act(c: int, act: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.GELU() if act else nn.Identity())


class SEModule(nn.Module):
    def __init__(self, c: int, rd: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, rd, 1), nn.SiLU(), nn.Conv2d(rd, c, 1)

    def forward(self, x):
        x_se = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * x_se.sigmoid()


class MbConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        mid = int(cin * expand_ratio)
        self.shortcut = Downsample2d(cin, cout) if stride == 2 else nn.Identity()
        self.pre_norm = _bn_act(cin, act=False)
        self.conv1_1x1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = _bn_act(mid)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.norm2 = _bn_act(mid)
        self.se = SEModule(mid, int(0.25 * cin))
        self.conv3_1x1 = nn.Conv2d(mid, cout, 1)

    def forward(self, x):
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.conv3_1x1(x) + shortcut


class RelPosBias(nn.Module):
    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        area = window * window
        self.bias_shape = (area, area, num_heads)
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1) ** 2, num_heads) * 0.5
        )
        index = relative_position_index(window)[1:, 1:].contiguous()  # no class token here
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, attn):
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.bias_shape).permute(2, 0, 1)
        return attn + bias.unsqueeze(0).contiguous()


class Attention2d(nn.Module):
    def __init__(self, dim: int, dim_out: int, window: int, dim_head: int = 8) -> None:
        super().__init__()
        self.num_heads, self.dim_head, self.scale = dim_out // dim_head, dim_head, dim_head**-0.5
        self.qkv = nn.Conv2d(dim, dim_out * 3, 1)
        self.rel_pos = RelPosBias(window, self.num_heads)
        self.proj = nn.Conv2d(dim_out, dim_out, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.qkv(x).view(B, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = self.rel_pos(attn).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, -1, H, W)
        return self.proj(x)


class TransformerBlock2d(nn.Module):
    def __init__(self, dim: int, dim_out: int, stride: int, window: int) -> None:
        super().__init__()
        if stride == 2:
            self.shortcut = Downsample2d(dim, dim_out)
            self.norm1 = nn.Sequential(LayerNorm2dPermute(dim), Downsample2d(dim, dim))
        else:
            self.shortcut, self.norm1 = nn.Identity(), LayerNorm2dPermute(dim)
        self.attn = Attention2d(dim, dim_out, window)
        self.norm2 = LayerNorm2dPermute(dim_out)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim_out, 4 * dim_out, 1), nn.GELU(), nn.Conv2d(4 * dim_out, dim_out, 1)
        )

    def forward(self, x):
        x = self.shortcut(x) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyCoAtNet(nn.Module):
    def __init__(self, size=64, dims=(16, 24, 32, 48), classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 12, 3, 2, 1, bias=False), _bn_act(12), nn.Conv2d(12, 16, 3, 1, 1)
        )
        res = size // 2
        blocks: list[nn.Module] = []
        cin = 16
        for i, d in enumerate(dims):
            res //= 2
            if i < 2:
                blocks += [MbConvBlock(cin, d, 2), MbConvBlock(d, d, 1)]
            else:
                blocks += [TransformerBlock2d(cin, d, 2, res), TransformerBlock2d(d, d, 1, res)]
            cin = d
        self.stages = nn.Sequential(*blocks)
        self.norm, self.head = LayerNorm2dPermute(cin), nn.Linear(cin, classes)

    def forward(self, x):
        x = self.norm(self.stages(self.stem(x)))
        return self.head(x.mean((2, 3)))


def coatnet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyCoAtNet(size)), size, 17, seed, dynamo)
