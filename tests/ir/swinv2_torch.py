"""A small Swin Transformer V2 written the way timm's ``swin_transformer_v2.py`` computes it.

What V2 changes in the window attention: ``qkv`` is ``F.linear`` with the bias
``cat(q_bias, zeros, v_bias)``; scaled cosine attention (``F.normalize`` of q and k over the
head width, times ``clamp(logit_scale, max=log(100)).exp()`` per head); the continuous
position bias, an MLP (``Linear(2, 64)``, ReLU, ``Linear(64, heads)``) over a constant table
of log-spaced relative coordinates, gathered per position pair and ``16 * sigmoid``; and
res-post-norm blocks (``x + norm1(attn(x))``). Patch embedding by a strided conv with a
LayerNorm, patch merging by a 2x2 space-to-depth ``reshape``/``permute`` (timm >= 0.9),
``LayerNorm`` + ``Linear`` reduction, mean-pooled head. Windows are not shifted here
(``swin_torch.py`` covers the shifts and masks).
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from audio_torch import calibrate_1d
from export_torch import export_as
from torch import nn


class WindowAttention(nn.Module):
    def __init__(self, dim, window_size, num_heads, cpb_hidden=64):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.rand((num_heads, 1, 1)) + 5))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(cpb_hidden, num_heads, bias=False),
        )
        ws = window_size
        h = torch.arange(-(ws - 1), ws, dtype=torch.float32)
        table = torch.stack(torch.meshgrid([h, h], indexing="ij")).permute(1, 2, 0).contiguous()
        table = table.unsqueeze(0) / (ws - 1) * 8
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
        self.register_buffer("relative_coords_table", table, persistent=False)
        coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij"))
        coords = torch.flatten(coords, 1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B_, N, _ = x.shape
        qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        attn = attn * logit_scale
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(N, N, -1)
        bias = 16 * torch.sigmoid(bias.permute(2, 0, 1).contiguous())
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, -1)
        return self.proj(x)


class SwinTransformerV2Block(nn.Module):
    def __init__(self, dim, num_heads, window_size, mlp_ratio=2.0):
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def _attn(self, x):
        B, H, W, C = x.shape
        ws = self.window_size
        w = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
        w = w.reshape(-1, ws * ws, C)  # window_partition
        w = self.attn(w).view(-1, ws, ws, C)
        w = w.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
        return w.reshape(-1, H, W, C)  # window_reverse

    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.norm1(self._attn(x))
        x = x.reshape(B, -1, C)
        x = x + self.norm2(self.mlp(x))
        return x.reshape(B, H, W, C)


class PatchMerging(nn.Module):
    def __init__(self, dim, out_dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.norm(self.reduction(x))


class TinySwinV2(nn.Module):
    def __init__(self, dims=(16, 32), heads=(2, 4), window_size=4, num_classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dims[0], 4, 4)
        self.embed_norm = nn.LayerNorm(dims[0])
        self.stage1 = nn.Sequential(
            *[SwinTransformerV2Block(dims[0], heads[0], window_size) for _ in range(2)]
        )
        self.merge = PatchMerging(dims[0], dims[1])
        self.stage2 = nn.Sequential(
            *[SwinTransformerV2Block(dims[1], heads[1], window_size) for _ in range(2)]
        )
        self.norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], num_classes)

    def forward(self, x):
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        x = self.stage2(self.merge(self.stage1(x)))
        return self.head(self.norm(x).mean((1, 2)))


def swinv2(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = calibrate_1d(TinySwinV2(), (1, 3, size, size))
    if not dynamo:
        return export_as(model, (1, 3, size, size), opset=17, seed=seed)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
