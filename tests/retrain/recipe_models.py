"""Faithful small-config definitions of the architectures the public recipes prune.

torchvision, timm and ultralytics cannot be installed beside the CPU torch here, so the
recipe tests use these: the same module structure, forward code and parameter names as the
originals (timm ``VisionTransformer``, ultralytics ``DetectionModel`` v8 with its loss,
TopFormer's token pyramid + attention blocks), at widths and depths that run in seconds.
ResNet-50 and YOLOX-s come from ``drpopt.zoo.torch_models``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---- timm VisionTransformer (vit_base_patch16_224 layout) ---------------------------------


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed``: a stride-``patch`` conv, then tokens as ``[B, N, C]``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, dim: int = 768) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        return self.norm(x)


class Attention(nn.Module):
    """timm ``Attention``: one qkv Linear, heads by reshape/permute, then proj."""

    def __init__(self, dim: int, num_heads: int = 12, fused_attn: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return self.proj_drop(x)


class Mlp(nn.Module):
    """timm ``Mlp``: fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))


class Block(nn.Module):
    """timm ``Block``: pre-norm attention and MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, fused: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, fused)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """timm ``VisionTransformer`` with a class token, learned position embedding, token pool."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, fused_attn) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        x = x[:, 0]  # class token
        x = self.head_drop(self.fc_norm(x))
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def vit_b_16_like(
    img_size: int = 32, patch: int = 16, dim: int = 48, depth: int = 2, heads: int = 3, **kw
) -> VisionTransformer:
    """ViT-B/16's layout at a small width and depth (``vit_b_16_like(224, 16, 768, 12, 12)``
    is vit_base_patch16_224)."""
    return VisionTransformer(
        img_size, patch, embed_dim=dim, depth=depth, num_heads=heads, num_classes=10, **kw
    )
