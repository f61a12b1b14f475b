"""A small EfficientDet written the way zylo117/Yet-Another-EfficientDet-Pytorch computes it
(``efficientdet/model.py``, ``efficientnet/utils_extra.py``), exported with
``set_swish(memory_efficient=False)`` (``x * sigmoid(x)``) at opset 11, constant folding.

- TF "same" padding: ``Conv2dStaticSamePadding``/``MaxPool2dStaticSamePadding`` compute
  their ``F.pad`` amounts from ``x.shape[-2:]`` with ``math.ceil`` (constants in the trace);
- BiFPN with fast normalised fusion: learned per-input weights ``relu(w) / (sum(relu(w)) +
  eps)`` scale each input (``weight[0] * p6_in + weight[1] * upsample(p7_in)``), swish,
  a separable conv (depthwise 3x3 without bias, pointwise 1x1, BN); the first layer makes
  P6/P7 by a 1x1 conv + BN + same-padded max-pools from P5 and reads P4/P5 through second
  1x1 ``down_channel_2`` convs on its bottom-up path;
- heads: separable convs shared by every level with a BatchNorm per level
  (``bn_list[level][layer]``), ``permute(0, 2, 3, 1).view(N, -1, 4)`` (regression) and
  ``view(N, H, W, A, C).view(N, -1, C)`` + sigmoid (classification), concatenated over the
  levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class Conv2dStaticSamePadding(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=True, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, bias=bias, groups=groups
        )
        self.stride = self.conv.stride
        self.kernel_size = self.conv.kernel_size

    def forward(self, x):
        h, w = x.shape[-2:]
        extra_h = (math.ceil(w / self.stride[1]) - 1) * self.stride[1] - w + self.kernel_size[1]
        extra_v = (math.ceil(h / self.stride[0]) - 1) * self.stride[0] - h + self.kernel_size[0]
        left, top = extra_h // 2, extra_v // 2
        x = F.pad(x, [left, extra_h - left, top, extra_v - top])
        return self.conv(x)


class MaxPool2dStaticSamePadding(nn.Module):
    def __init__(self, kernel_size, stride):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, stride)
        self.stride = [stride] * 2
        self.kernel_size = [kernel_size] * 2

    def forward(self, x):
        h, w = x.shape[-2:]
        extra_h = (math.ceil(w / self.stride[1]) - 1) * self.stride[1] - w + self.kernel_size[1]
        extra_v = (math.ceil(h / self.stride[0]) - 1) * self.stride[0] - h + self.kernel_size[0]
        left, top = extra_h // 2, extra_v // 2
        x = F.pad(x, [left, extra_h - left, top, extra_v - top])
        return self.pool(x)


class SeparableConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels=None, norm=True, activation=False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.depthwise_conv = Conv2dStaticSamePadding(
            in_channels, in_channels, 3, 1, groups=in_channels, bias=False
        )
        self.pointwise_conv = Conv2dStaticSamePadding(in_channels, out_channels, 1, 1)
        self.norm = norm
        if norm:
            self.bn = nn.BatchNorm2d(out_channels, momentum=0.01, eps=1e-3)
        self.activation = activation
        if activation:
            self.swish = Swish()

    def forward(self, x):
        x = self.pointwise_conv(self.depthwise_conv(x))
        if self.norm:
            x = self.bn(x)
        if self.activation:
            x = self.swish(x)
        return x


def _down_channel(cin, cout):
    return nn.Sequential(
        Conv2dStaticSamePadding(cin, cout, 1), nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3)
    )


def _weights(n):
    return nn.Parameter(torch.rand(n) + 0.5)  # learned; torch.ones(n) before training


class BiFPN(nn.Module):
    def __init__(self, num_channels, conv_channels, first_time=False, epsilon=1e-4):
        super().__init__()
        self.epsilon = epsilon
        self.first_time = first_time
        for name in ("conv6_up", "conv5_up", "conv4_up", "conv3_up"):
            setattr(self, name, SeparableConvBlock(num_channels))
        for name in ("conv4_down", "conv5_down", "conv6_down", "conv7_down"):
            setattr(self, name, SeparableConvBlock(num_channels))
        for name in ("p6_upsample", "p5_upsample", "p4_upsample", "p3_upsample"):
            setattr(self, name, nn.Upsample(scale_factor=2, mode="nearest"))
        for name in ("p4_downsample", "p5_downsample", "p6_downsample", "p7_downsample"):
            setattr(self, name, MaxPool2dStaticSamePadding(3, 2))
        self.swish = Swish()
        if first_time:
            self.p5_down_channel = _down_channel(conv_channels[2], num_channels)
            self.p4_down_channel = _down_channel(conv_channels[1], num_channels)
            self.p3_down_channel = _down_channel(conv_channels[0], num_channels)
            self.p5_to_p6 = nn.Sequential(
                _down_channel(conv_channels[2], num_channels), MaxPool2dStaticSamePadding(3, 2)
            )
            self.p6_to_p7 = nn.Sequential(MaxPool2dStaticSamePadding(3, 2))
            self.p4_down_channel_2 = _down_channel(conv_channels[1], num_channels)
            self.p5_down_channel_2 = _down_channel(conv_channels[2], num_channels)
        self.p6_w1, self.p5_w1, self.p4_w1, self.p3_w1 = (_weights(2) for _ in range(4))
        self.p4_w2, self.p5_w2, self.p6_w2 = (_weights(3) for _ in range(3))
        self.p7_w2 = _weights(2)
        self.relu = nn.ReLU()

    def _fuse(self, w, inputs):
        w = self.relu(w)
        weight = w / (torch.sum(w, dim=0) + self.epsilon)
        return self.swish(sum(weight[i] * x for i, x in enumerate(inputs)))

    def forward(self, inputs):
        if self.first_time:
            p3, p4, p5 = inputs
            p6_in = self.p5_to_p6(p5)
            p7_in = self.p6_to_p7(p6_in)
            p3_in = self.p3_down_channel(p3)
            p4_in = self.p4_down_channel(p4)
            p5_in = self.p5_down_channel(p5)
        else:
            p3_in, p4_in, p5_in, p6_in, p7_in = inputs
        p6_up = self.conv6_up(self._fuse(self.p6_w1, [p6_in, self.p6_upsample(p7_in)]))
        p5_up = self.conv5_up(self._fuse(self.p5_w1, [p5_in, self.p5_upsample(p6_up)]))
        p4_up = self.conv4_up(self._fuse(self.p4_w1, [p4_in, self.p4_upsample(p5_up)]))
        p3_out = self.conv3_up(self._fuse(self.p3_w1, [p3_in, self.p3_upsample(p4_up)]))
        if self.first_time:
            p4_in = self.p4_down_channel_2(p4)
            p5_in = self.p5_down_channel_2(p5)
        p4_out = self.conv4_down(self._fuse(self.p4_w2, [p4_in, p4_up, self.p4_downsample(p3_out)]))
        p5_out = self.conv5_down(self._fuse(self.p5_w2, [p5_in, p5_up, self.p5_downsample(p4_out)]))
        p6_out = self.conv6_down(self._fuse(self.p6_w2, [p6_in, p6_up, self.p6_downsample(p5_out)]))
        p7_out = self.conv7_down(self._fuse(self.p7_w2, [p7_in, self.p7_downsample(p6_out)]))
        return p3_out, p4_out, p5_out, p6_out, p7_out


class Head(nn.Module):
    """``Regressor`` (``per_anchor=4``) and ``Classifier`` (``num_classes``, sigmoid)."""

    def __init__(self, in_channels, num_anchors, per_anchor, num_layers, levels=5, sigmoid=False):
        super().__init__()
        self.per_anchor, self.num_anchors, self.sigmoid = per_anchor, num_anchors, sigmoid
        self.conv_list = nn.ModuleList(
            SeparableConvBlock(in_channels, in_channels, norm=False) for _ in range(num_layers)
        )
        self.bn_list = nn.ModuleList(
            nn.ModuleList(
                nn.BatchNorm2d(in_channels, momentum=0.01, eps=1e-3) for _ in range(num_layers)
            )
            for _ in range(levels)
        )
        self.header = SeparableConvBlock(in_channels, num_anchors * per_anchor, norm=False)
        self.swish = Swish()

    def forward(self, inputs):
        feats = []
        for feat, bn_list in zip(inputs, self.bn_list, strict=True):
            for bn, conv in zip(bn_list, self.conv_list, strict=True):
                feat = self.swish(bn(conv(feat)))
            feat = self.header(feat).permute(0, 2, 3, 1)
            if self.sigmoid:
                n, h, w, _ = feat.shape
                feat = feat.contiguous().view(n, h, w, self.num_anchors, self.per_anchor)
                feat = feat.contiguous().view(n, -1, self.per_anchor)
            else:
                feat = feat.contiguous().view(feat.shape[0], -1, self.per_anchor)
            feats.append(feat)
        feats = torch.cat(feats, dim=1)
        return feats.sigmoid() if self.sigmoid else feats


class TinyEfficientDet(nn.Module):
    def __init__(
        self, num_channels=16, conv_channels=(16, 24, 40), num_classes=4, repeats=1, head_layers=1
    ):
        super().__init__()
        stem, layers, cin = [], [], 3
        for i, c in enumerate((8, 12, *conv_channels)):  # strides 2, 4, 8, 16, 32
            block = [Conv2dStaticSamePadding(cin, c, 3, 2, bias=False), nn.BatchNorm2d(c), Swish()]
            (stem if i < 2 else layers).append(nn.Sequential(*block))
            cin = c
        self.stem = nn.Sequential(*stem)
        self.backbone = nn.ModuleList(layers)
        self.bifpn = nn.Sequential(
            *(BiFPN(num_channels, conv_channels, first_time=i == 0) for i in range(repeats))
        )
        self.regressor = Head(num_channels, 9, 4, head_layers)
        self.classifier = Head(num_channels, 9, num_classes, head_layers, sigmoid=True)

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for layer in self.backbone:
            x = layer(x)
            feats.append(x)
        feats = self.bifpn(feats)
        return self.regressor(feats), self.classifier(feats)


def efficientdet(size: int = 128, seed: int = 0, repeats: int = 1, head_layers: int = 1):
    """D0 stacks 3 BiFPN layers and 3 head layers; one of each (the first BiFPN layer, the
    one with the extra inputs) keeps the export near 3k nodes."""
    torch.manual_seed(seed)
    model = TinyEfficientDet(repeats=repeats, head_layers=head_layers)
    return export_as(model, (1, 3, size, size), opset=11, seed=seed)
