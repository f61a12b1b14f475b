"""Small transformer blocks written the way their projects compute them, for the torch path.

- ``TorchvisionViT``: torchvision's ``vision_transformer.py`` (conv patch embedding,
  ``reshape`` + ``permute`` to tokens, a class token ``expand``-ed and concatenated, a
  learned position embedding added, ``EncoderBlock``s with ``nn.MultiheadAttention(...,
  batch_first=True)`` called as ``self_attention(x, x, x, need_weights=False)`` (packed
  ``in_proj_weight``), the ``MLPBlock`` Linear-GELU-Linear, a final LayerNorm, ``x[:, 0]``
  and a Linear head);
- ``TimmViT``: timm's ``vision_transformer.py`` (``qkv`` Linear, ``reshape(B, N, 3, heads,
  hd).permute(2, 0, 3, 1, 4).unbind(0)``, ``q * scale @ k.transpose(-2, -1)``, softmax,
  ``@ v``, ``transpose(1, 2).reshape(B, N, C)``, ``proj``; ``fused_attn`` uses
  ``F.scaled_dot_product_attention`` instead);
- ``ConvNeXtNet``: ConvNeXt blocks as torchvision's ``CNBlock`` (depthwise 7x7 conv,
  ``permute(0, 2, 3, 1)``, channels-last LayerNorm, Linear 4x, GELU, Linear, the layer scale
  ``gamma * x``, ``permute(0, 3, 1, 2)``, residual add) between conv stem and head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim))


class EncoderBlock(nn.Module):
    """torchvision's ``EncoderBlock``."""

    def __init__(self, dim: int, heads: int, hidden: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, attn_drop, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, hidden)

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class TorchvisionViT(nn.Module):
    """torchvision's ``VisionTransformer`` at a small size."""

    def __init__(
        self, size=32, patch=8, dim=32, heads=4, hidden=64, depth=2, classes=10, attn_drop=0.0
    ):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        seq = (size // patch) ** 2 + 1
        self.pos_embedding = nn.Parameter(torch.randn(1, seq, dim) * 0.1)
        blocks = [EncoderBlock(dim, heads, hidden, attn_drop) for _ in range(depth)]
        self.layers = nn.Sequential(*blocks)
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Linear(dim, classes)

    def forward(self, x):
        n, _, h, w = x.shape
        x = self.conv_proj(x)
        x = x.reshape(n, self.dim, (h // self.patch) * (w // self.patch)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = self.ln(self.layers(x + self.pos_embedding))
        return self.heads(x[:, 0])


class Attention(nn.Module):
    """timm's ``Attention`` (``fused``: ``F.scaled_dot_product_attention``)."""

    def __init__(self, dim: int, heads: int, fused: bool = False, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.attn_drop = nn.Dropout(attn_drop)
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            q = q * self.scale
            attn = self.attn_drop((q @ k.transpose(-2, -1)).softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, fused: bool, attn_drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused, attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """timm's ``VisionTransformer`` at a small size (class token, learned positions)."""

    def __init__(
        self,
        size=32,
        patch=8,
        dim=32,
        heads=4,
        hidden=64,
        depth=2,
        classes=10,
        fused=False,
        attn_drop=0.0,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.1)
        blocks = [TimmBlock(dim, heads, hidden, fused, attn_drop) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        return self.head(x[:, 0])


class CNBlock(nn.Module):
    """torchvision's ``CNBlock`` (stochastic depth is the identity in eval)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) * 0.5 + 0.5)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.layer_scale * y.permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    """A conv stem, two ConvNeXt blocks, a global pool, LayerNorm and a Linear head."""

    def __init__(self, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(CNBlock(dim), CNBlock(dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.norm(x))
