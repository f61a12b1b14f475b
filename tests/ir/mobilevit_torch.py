"""A small MobileViT classifier written the way timm's ``mobilevit.py`` computes it.

``MobileVitBlock`` unfolds the feature map into patches with
``reshape(B * C * n_h, p_h, n_w, p_w).transpose(1, 2)`` then
``reshape(B, C, N, P).transpose(1, 3).reshape(B * P, N, -1)`` (sizes read from
``x.shape``), runs ViT blocks (LayerNorm, q/k/v heads by ``reshape(B, N, 3, heads, C //
heads)``, GELU MLP) over the channels, folds back the same way, then a 1x1 projection and a
3x3 fusion conv over ``cat((shortcut, x), 1)``. Inverted residuals before it, global
pooling and a Linear classifier after.
"""

from __future__ import annotations

import io
import math

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate
from torch import nn


def conv_norm_act(cin, cout, k=3, stride=1, groups=1, act=True):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.SiLU() if act else nn.Identity(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride=1, expand=2):
        super().__init__()
        mid = cin * expand
        self.conv = nn.Sequential(
            conv_norm_act(cin, mid, 1),
            conv_norm_act(mid, mid, 3, stride, groups=mid),
            conv_norm_act(mid, cout, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class TransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileVitBlock(nn.Module):
    def __init__(self, in_chs, out_chs, transformer_dim, depth=2, patch_size=2, num_heads=2):
        super().__init__()
        self.conv_kxk = conv_norm_act(in_chs, in_chs, 3)
        self.conv_1x1 = nn.Conv2d(in_chs, transformer_dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[TransformerBlock(transformer_dim, num_heads) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(transformer_dim)
        self.conv_proj = conv_norm_act(transformer_dim, out_chs, 1)
        self.conv_fusion = conv_norm_act(in_chs + out_chs, out_chs, 3)
        self.patch_size = (patch_size, patch_size)
        self.patch_area = patch_size * patch_size

    def forward(self, x):
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        patch_h, patch_w = self.patch_size
        B, C, H, W = x.shape
        new_h, new_w = math.ceil(H / patch_h) * patch_h, math.ceil(W / patch_w) * patch_w
        num_patch_h, num_patch_w = new_h // patch_h, new_w // patch_w
        num_patches = num_patch_h * num_patch_w
        interpolate = False
        if new_h != H or new_w != W:
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
            interpolate = True
        # [B, C, H, W] --> [B * C * n_h, n_w, p_h, p_w]
        x = x.reshape(B * C * num_patch_h, patch_h, num_patch_w, patch_w).transpose(1, 2)
        # [B * C * n_h, n_w, p_h, p_w] --> [BP, N, C] where P = p_h * p_w and N = n_h * n_w
        x = (
            x.reshape(B, C, num_patches, self.patch_area)
            .transpose(1, 3)
            .reshape(B * self.patch_area, num_patches, -1)
        )
        x = self.norm(self.transformer(x))
        # fold: [BP, N, C] --> [B, C, H, W]
        x = x.contiguous().view(B, self.patch_area, num_patches, -1)
        x = x.transpose(1, 3).reshape(B * C * num_patch_h, num_patch_w, patch_h, patch_w)
        x = x.transpose(1, 2).reshape(B, C, num_patch_h * patch_h, num_patch_w * patch_w)
        if interpolate:
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        x = self.conv_proj(x)
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))


class TinyMobileViT(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = conv_norm_act(3, 8, 3, 2)
        self.stages = nn.Sequential(
            InvertedResidual(8, 8),
            InvertedResidual(8, 16, 2),
            MobileVitBlock(16, 16, 24),
            InvertedResidual(16, 24, 2),
            MobileVitBlock(24, 24, 32),
        )
        self.final_conv = conv_norm_act(24, 48, 1)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.final_conv(self.stages(self.stem(x)))
        return self.head(x.mean((2, 3)))


def mobilevit(size: int = 40, seed: int = 0) -> onnx.ModelProto:
    """At 40 px the first MobileViT block sees 10x10 (patches tile it) and the second 5x5
    (interpolated to 6x6 and back)."""
    torch.manual_seed(seed)
    model = calibrate(TinyMobileViT(), (1, 3, size, size))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), buf, opset_version=17, dynamo=False
        )
    return onnx.load_from_string(buf.getvalue())
