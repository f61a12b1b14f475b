"""Vision transformers with other attention forms (round 4b of the unseen-architecture
battery; shared layers in ``transformers4_torch.py``).

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

Exported at opset 17 by the TorchScript exporter (``export_as``), or with ``dynamo=True``
by torch's default exporter (``backbones3_torch.export``).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from torch import nn
from transformers4_torch import Mlp, PatchEmbed, _ln

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
