"""A small EfficientViT (B series) written the way mit-han-lab/efficientvit computes it
(``efficientvit/models/nn/ops.py``: ``LiteMLA``, ``MBConv``, ``EfficientViTBlock``;
``models/efficientvit/backbone.py``, ``cls.py``), exported at opset 17 with a symbolic batch.

``LiteMLA``, ReLU linear attention: a 1x1 conv gives q/k/v for every head (head-major
channels), a multi-scale aggregation (a 5x5 depthwise conv and a 1x1 conv of ``groups=3 *
heads``) is concatenated to it, ``reshape(B, -1, 3 * dim, H * W)`` splits the heads, q/k/v
are sliced out of each, ``F.pad(v, (0, 0, 0, 1), value=1)`` appends a row of ones to v,
``(v @ k^T) @ q``, and the last row divides the others (``out[:, :, :-1] / (out[:, :, -1:] +
eps)``); a 1x1 projection with BN, a residual add. MBConvs with Hardswish, and the classifier
head (1x1 conv, pooling, Linear + LayerNorm + Hardswish, Linear).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, use_bias=False, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=use_bias)
        self.norm = nn.BatchNorm2d(cout) if norm else None
        self.act = nn.Hardswish() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class MBConv(nn.Module):
    def __init__(self, cin, cout, stride=1, expand_ratio=4):
        super().__init__()
        mid = round(cin * expand_ratio)
        self.inverted_conv = ConvLayer(cin, mid, 1, use_bias=True, norm=False)
        self.depth_conv = ConvLayer(mid, mid, 3, stride, groups=mid, use_bias=True, norm=False)
        self.point_conv = ConvLayer(mid, cout, 1, act=False)

    def forward(self, x):
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
    def __init__(self, in_channels, out_channels, dim=8, scales=(5,), eps=1.0e-15):
        super().__init__()
        self.eps = eps
        heads = in_channels // dim
        total_dim = heads * dim
        self.dim = dim
        self.qkv = ConvLayer(in_channels, 3 * total_dim, 1, norm=False, act=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    3 * total_dim,
                    3 * total_dim,
                    s,
                    padding=s // 2,
                    groups=3 * total_dim,
                    bias=False,
                ),
                nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.kernel_func = nn.ReLU(inplace=False)
        self.proj = ConvLayer(total_dim * (1 + len(scales)), out_channels, 1, act=False)

    def relu_linear_att(self, qkv):
        B, _, H, W = list(qkv.size())
        qkv = torch.reshape(qkv, (B, -1, 3 * self.dim, H * W))
        q, k, v = (
            qkv[:, :, 0 : self.dim],
            qkv[:, :, self.dim : 2 * self.dim],
            qkv[:, :, 2 * self.dim :],
        )
        q = self.kernel_func(q)
        k = self.kernel_func(k)
        trans_k = k.transpose(-1, -2)
        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1)
        vk = torch.matmul(v, trans_k)
        out = torch.matmul(vk, q)
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return torch.reshape(out, (B, -1, H, W))

    def forward(self, x):
        qkv = self.qkv(x)
        multi_scale_qkv = [qkv] + [op(qkv) for op in self.aggreg]
        return self.proj(self.relu_linear_att(torch.cat(multi_scale_qkv, dim=1)))


class EfficientViTBlock(nn.Module):
    def __init__(self, in_channels, dim=8, expand_ratio=4):
        super().__init__()
        self.context_module = LiteMLA(in_channels, in_channels, dim=dim)
        self.local_module = MBConv(in_channels, in_channels, expand_ratio=expand_ratio)

    def forward(self, x):
        x = self.context_module(x) + x
        return self.local_module(x) + x


class EfficientViT(nn.Module):
    def __init__(self, widths=(8, 16, 24, 32), num_classes=10):
        super().__init__()
        self.input_stem = ConvLayer(3, widths[0], 3, 2)
        self.stages = nn.Sequential(
            MBConv(widths[0], widths[1], 2),
            MBConv(widths[1], widths[1], 1),
            MBConv(widths[1], widths[2], 2),
            EfficientViTBlock(widths[2]),
            MBConv(widths[2], widths[3], 2),
            EfficientViTBlock(widths[3]),
        )
        self.head_in = ConvLayer(widths[3], 64, 1)
        self.fc1 = nn.Linear(64, 96, bias=False)
        self.ln = nn.LayerNorm(96)
        self.act = nn.Hardswish()
        self.fc2 = nn.Linear(96, num_classes)

    def forward(self, x):
        x = self.head_in(self.stages(self.input_stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(self.act(self.ln(self.fc1(x))))


def efficientvit(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = EfficientViT()
    model.ln.weight.data.uniform_(0.5, 1.5)
    model.ln.bias.data.uniform_(-0.2, 0.2)
    return export_as(model, (1, 3, size, size), opset=17, dynamic_batch=True, seed=seed)
