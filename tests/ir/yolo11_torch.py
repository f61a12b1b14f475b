"""A small YOLO11 written the way ultralytics 8.3 writes it (``yolo11.yaml``).

What it adds to YOLOv8 (``yolov8_torch.py``): ``C3k2`` (a C2f whose blocks are ``C3k``, a
C3 of 3x3 bottlenecks), ``C2PSA`` (position-sensitive attention on half the channels:
``qkv`` a 1x1 conv viewed per head as ``(B, heads, 2 * key_dim + head_dim, N)`` and split,
``v @ attn^T`` plus a depthwise 3x3 positional conv on ``v``, a conv FFN) and the Detect
head's class branch of depthwise + pointwise convs. Exported as ``export format=onnx``
does (``forward_split``, a dry run so the anchors are constants, opset 17).
"""

from __future__ import annotations

import math

import onnx
import torch
from export_torch import export_as
from torch import nn
from yolov8_torch import SPPF, Bottleneck, C2f, Concat, Conv, Detect


class DWConv(Conv):
    def __init__(self, c1, c2, k=1, s=1, d=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(
            *(Bottleneck(c_, c_, shortcut, g, k=((1, 1), (3, 3)), e=1.0) for _ in range(n))
        )

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(C3):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, k=3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(
            *(Bottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0) for _ in range(n))
        )


class C3k2(C2f):
    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, g=1, shortcut=True):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut, g) if c3k else Bottleneck(self.c, self.c, shortcut, g)
            for _ in range(n)
        )


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        nh_kd = self.key_dim * num_heads
        h = dim + nh_kd * 2
        self.qkv = Conv(dim, h, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2
        )
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSABlock(nn.Module):
    def __init__(self, c, attn_ratio=0.5, num_heads=4, shortcut=True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(
            *(PSABlock(self.c, attn_ratio=0.5, num_heads=self.c // 64) for _ in range(n))
        )

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class Detect11(Detect):
    """YOLO11's Detect: the class branch is depthwise + pointwise convs."""

    def __init__(self, nc=80, ch=()):
        super().__init__(nc, ch)
        c3 = max(ch[0], min(self.nc, 100))
        self.cv3 = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                nn.Conv2d(c3, self.nc, 1),
            )
            for x in ch
        )


class TinyYOLO11(nn.Module):
    """yolo11.yaml's layer graph (backbone 0-10, head 11-23) at small widths; P5 is 128
    wide so that C2PSA has its 64-channel heads (one head here, two in yolo11n)."""

    def __init__(self, nc: int = 8, w: int = 16) -> None:
        super().__init__()
        p5 = 8 * w
        self.layers = nn.ModuleList(
            [
                Conv(3, w, 3, 2),  # 0 P1/2
                Conv(w, 2 * w, 3, 2),  # 1 P2/4
                C3k2(2 * w, 4 * w, 1, False, 0.25),  # 2
                Conv(4 * w, 4 * w, 3, 2),  # 3 P3/8
                C3k2(4 * w, 4 * w, 1, False, 0.25),  # 4
                Conv(4 * w, 4 * w, 3, 2),  # 5 P4/16
                C3k2(4 * w, 4 * w, 1, True),  # 6
                Conv(4 * w, p5, 3, 2),  # 7 P5/32
                C3k2(p5, p5, 1, True),  # 8
                SPPF(p5, p5, 5),  # 9
                C2PSA(p5, p5, 1),  # 10
                nn.Upsample(None, 2, "nearest"),  # 11
                Concat(1),  # 12 cat backbone P4
                C3k2(p5 + 4 * w, 4 * w, 1, False),  # 13
                nn.Upsample(None, 2, "nearest"),  # 14
                Concat(1),  # 15 cat backbone P3
                C3k2(8 * w, 2 * w, 1, False),  # 16 (P3/8-small)
                Conv(2 * w, 2 * w, 3, 2),  # 17
                Concat(1),  # 18 cat head P4
                C3k2(6 * w, 4 * w, 1, False),  # 19 (P4/16-medium)
                Conv(4 * w, 4 * w, 3, 2),  # 20
                Concat(1),  # 21 cat head P5
                C3k2(4 * w + p5, p5, 1, True),  # 22 (P5/32-large)
                Detect11(nc, (2 * w, 4 * w, p5)),  # 23
            ]
        )
        self.froms = {12: (-1, 6), 15: (-1, 4), 18: (-1, 13), 21: (-1, 10), 23: (16, 19, 22)}

    def forward(self, x):
        y = []
        for i, m in enumerate(self.layers):
            f = self.froms.get(i, -1)
            if f != -1:
                x = [x if j == -1 else y[j] for j in f]
            x = m(x)
            y.append(x)
        return x


def yolo11(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TinyYOLO11()
    for m in model.modules():
        if isinstance(m, C2f):
            m.forward = m.forward_split
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))  # the dry run caches the anchors
    return export_as(model, (1, 3, size, size), opset=17, seed=seed)
