"""Small multi-branch CNNs written the way their projects compute them, exported by torch.

- ``res2net``: timm's ``Bottle2neck`` (``res2net50_26w_4s``): ``torch.split`` of the 1x1
  conv's output into ``scale`` equal parts, each 3x3 conv reading the previous one's output
  added to its own part (``sp = sp + spx[i]``), the last part passed (or avg-pooled in the
  first block of a stage), a concat and the 1x1 projection; timm's ``onnx_export`` (torch's
  default opset, symbolic batch, constant folding);
- ``resnest``: timm's ``ResNestBottleneck`` with ``SplitAttn`` (radix 2): a conv of
  ``groups=radix`` producing ``radix * C`` channels, ``reshape(B, radix, C, H, W).sum(1)``,
  global mean, fc1/fc2 1x1 convs, ``RadixSoftmax`` (``view(B, card, radix, -1)
  .transpose(1, 2)``, softmax over the radix, ``reshape(B, -1)``) and the attention-weighted
  sum over the radix; avd pooling and avg-down shortcuts as ``resnest14d``;
- ``hrnet``: HRNetV2 for segmentation (HRNet-Semantic-Segmentation): parallel branches at 3
  resolutions, fuse layers (1x1 conv + BN + ``F.interpolate(size=x[i].shape[-2:])`` up,
  chains of stride-2 3x3 convs down, summed), and the head concatenating every branch
  upsampled to the highest resolution; exported at opset 11 as mmseg's ``pytorch2onnx``.
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn

# ---- Res2Net (timm/models/res2net.py) ------------------------------------------------------


class Bottle2neck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=26, scale=4):
        super().__init__()
        self.scale = scale
        self.is_first = stride > 1 or downsample is not None
        self.num_scales = max(1, scale - 1)
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width = width
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(self.num_scales)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.num_scales))
        self.pool = nn.AvgPool2d(3, stride, 1) if self.is_first else None
        self.conv3 = nn.Conv2d(width * scale, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = spx[i] if i == 0 or self.is_first else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            spo.append(sp)
        if self.scale > 1:
            spo.append(self.pool(spx[-1]) if self.pool is not None else spx[-1])
        out = self.bn3(self.conv3(torch.cat(spo, 1)))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut
        return self.relu(out)


class Res2Net(nn.Module):
    def __init__(self, planes=(8, 16), blocks=2, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 16
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(
                nn.Conv2d(inplanes, p * 4, 1, stride, bias=False), nn.BatchNorm2d(p * 4)
            )
            stage = [Bottle2neck(inplanes, p, stride, down)]
            stage += [Bottle2neck(p * 4, p) for _ in range(1, blocks)]
            layers.append(nn.Sequential(*stage))
            inplanes = p * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.layers(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


# ---- ResNeSt (timm/models/resnest.py, timm/layers/split_attn.py) ---------------------------


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class RadixSoftmax(nn.Module):
    def __init__(self, radix, cardinality):
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, x):
        batch = x.size(0)
        if self.radix > 1:
            x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
            x = F.softmax(x, dim=1)
            x = x.reshape(batch, -1)
        else:
            x = torch.sigmoid(x)
        return x


class SplitAttn(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1, groups=1, radix=2, rd_ratio=0.25):
        super().__init__()
        self.radix = radix
        mid_chs = out_channels * radix
        attn_chs = make_divisible(in_channels * radix * rd_ratio, min_value=32, divisor=8)
        self.conv = nn.Conv2d(in_channels, mid_chs, 3, stride, 1, groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid_chs)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1, groups=groups)
        self.rsoftmax = RadixSoftmax(radix, groups)

    def forward(self, x):
        x = self.act0(self.bn0(self.conv(x)))
        B, RC, H, W = x.shape
        if self.radix > 1:
            x = x.reshape((B, self.radix, RC // self.radix, H, W))
            x_gap = x.sum(dim=1)
        else:
            x_gap = x
        x_gap = x_gap.mean((2, 3), keepdim=True)
        x_gap = self.act1(self.bn1(self.fc1(x_gap)))
        x_attn = self.fc2(x_gap)
        x_attn = self.rsoftmax(x_attn).view(B, -1, 1, 1)
        if self.radix > 1:
            out = (x * x_attn.reshape((B, self.radix, RC // self.radix, 1, 1))).sum(dim=1)
        else:
            out = x * x_attn
        return out.contiguous()


class ResNestBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, radix=2, is_first=False):
        super().__init__()
        group_width = planes
        avd_stride = stride if stride > 1 or is_first else 0
        self.conv1 = nn.Conv2d(inplanes, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = SplitAttn(group_width, group_width, radix=radix)
        self.avd_last = nn.AvgPool2d(3, avd_stride, padding=1) if avd_stride > 0 else None
        self.conv3 = nn.Conv2d(group_width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.avd_last is not None:
            out = self.avd_last(out)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut
        return self.act3(out)


class ResNeSt(nn.Module):
    """``resnest14d``-shaped: deep stem, one bottleneck per stage, avg-down shortcuts."""

    def __init__(self, planes=(8, 16, 24), num_classes=10):
        super().__init__()
        w = 16
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(w // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(w // 2, w, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(w)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, inplanes = [], w
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity(),
                nn.Conv2d(inplanes, p * 4, 1, bias=False),
                nn.BatchNorm2d(p * 4),
            )
            blocks.append(ResNestBottleneck(inplanes, p, stride, down, is_first=i == 0))
            inplanes = p * 4
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.layers(x).mean((2, 3)))


# ---- HRNetV2 (HRNet-Semantic-Segmentation lib/models/seg_hrnet.py) -------------------------


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + residual)


def _conv_bn(cin, cout, stride=1, relu=True):
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    def __init__(self, channels):
        super().__init__()
        n = len(channels)
        self.num_branches = n
        self.branches = nn.ModuleList(BasicBlock(c, c) for c in channels)
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(channels[j], channels[i], 1, bias=False),
                            nn.BatchNorm2d(channels[i]),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    chain = [_conv_bn(channels[j], channels[j], 2) for _ in range(i - j - 1)]
                    chain.append(_conv_bn(channels[j], channels[i], 2, relu=False))
                    row.append(nn.Sequential(*chain))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        x = [branch(xi) for branch, xi in zip(self.branches, x, strict=True)]
        x_fuse = []
        for i in range(len(self.fuse_layers)):
            y = x[0] if i == 0 else self.fuse_layers[i][0](x[0])
            for j in range(1, self.num_branches):
                if i == j:
                    y = y + x[j]
                elif j > i:
                    height, width = x[i].shape[-2], x[i].shape[-1]
                    y = y + F.interpolate(
                        self.fuse_layers[i][j](x[j]),
                        size=[height, width],
                        mode="bilinear",
                        align_corners=False,
                    )
                else:
                    y = y + self.fuse_layers[i][j](x[j])
            x_fuse.append(self.relu(y))
        return x_fuse


class HRNetSeg(nn.Module):
    def __init__(self, channels=(8, 16, 32), num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.layer1 = BasicBlock(16, 32, downsample=down)
        self.transition1 = nn.ModuleList([_conv_bn(32, channels[0]), _conv_bn(32, channels[1], 2)])
        self.stage2 = HighResolutionModule(channels[:2])
        self.transition2 = _conv_bn(channels[1], channels[2], 2)
        self.stage3 = nn.Sequential(HighResolutionModule(channels), HighResolutionModule(channels))
        last = sum(channels)
        self.last_layer = nn.Sequential(
            nn.Conv2d(last, last, 1),
            nn.BatchNorm2d(last),
            nn.ReLU(inplace=True),
            nn.Conv2d(last, num_classes, 1),
        )

    def forward(self, x):
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        x = self.layer1(x)
        y = self.stage2([t(x) for t in self.transition1])
        y = self.stage3([y[0], y[1], self.transition2(y[-1])])
        x0_h, x0_w = y[0].size(2), y[0].size(3)
        ups = [
            F.interpolate(t, size=(x0_h, x0_w), mode="bilinear", align_corners=False) for t in y[1:]
        ]
        return self.last_layer(torch.cat([y[0], *ups], 1))


def res2net(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(Res2Net(), (1, 3, size, size), opset=17, dynamic_batch=True, seed=seed)


def resnest(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(ResNeSt(), (1, 3, size, size), opset=17, dynamic_batch=True, seed=seed)


def hrnet(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(HRNetSeg(), (1, 3, size, size), opset=11, seed=seed)
