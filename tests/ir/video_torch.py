"""Small video networks (3-D convolutions) written the way their projects write them.

- ``r2plus1d``: torchvision's ``r2plus1d_18``: the R(2+1)D stem (``Conv3d`` 1x7x7 then
  3x1x1), ``BasicBlock`` s of ``Conv2Plus1D`` (a spatial ``(1, 3, 3)`` conv to the midplanes
  ``t*d*d*cin*cout // (d*d*cin + t*cout)``, BN, ReLU, a temporal ``(3, 1, 1)`` conv), a
  strided 1x1x1 downsample, ``AdaptiveAvgPool3d(1)``, ``flatten`` and the ``fc``;
- ``x3d``: facebookresearch/pytorchvideo's X3D: the stem (``Conv3d`` 1x3x3 then a depthwise
  5x1x1), ``BottleneckBlock`` s with a depthwise 3x3x3 conv, squeeze-excitation on every
  other block (``SqueezeExcitation`` over ``(T, H, W)``), Swish, residual adds with a
  strided 1x1x1 shortcut, and the head (1x1x1 conv, BN, ReLU, global pool, a 1x1x1
  "linear" conv to 2048-ish features, ReLU, the projection ``Linear``).
"""

from __future__ import annotations

import onnx
import torch
from audio_torch import calibrate_1d
from export_torch import export_as
from torch import nn

# ---- R(2+1)D (torchvision models/video/resnet.py) -----------------------------------------


class Conv2Plus1D(nn.Sequential):
    def __init__(self, in_planes, out_planes, midplanes, stride=1, padding=1):
        super().__init__(
            nn.Conv3d(
                in_planes,
                midplanes,
                kernel_size=(1, 3, 3),
                stride=(1, stride, stride),
                padding=(0, padding, padding),
                bias=False,
            ),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                midplanes,
                out_planes,
                kernel_size=(3, 1, 1),
                stride=(stride, 1, 1),
                padding=(padding, 0, 0),
                bias=False,
            ),
        )


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        super().__init__()
        self.conv1 = nn.Sequential(
            Conv2Plus1D(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes), nn.ReLU()
        )
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class R2Plus1dStem(nn.Sequential):
    def __init__(self, planes=16, mid=12):
        super().__init__(
            nn.Conv3d(3, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, planes, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(planes),
            nn.ReLU(inplace=True),
        )


class TinyR2Plus1D(nn.Module):
    def __init__(self, widths=(16, 24, 32), num_classes=10):
        super().__init__()
        self.stem = R2Plus1dStem(widths[0])
        layers, inplanes = [], widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(
                    nn.Conv3d(inplanes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm3d(planes),
                )
            layers.append(BasicBlock(inplanes, planes, stride, down))
            inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.avgpool(self.layers(self.stem(x)))
        return self.fc(x.flatten(1))


# ---- X3D (pytorchvideo models/x3d.py, models/resnet.py BottleneckBlock) -------------------


class SqueezeExcitation(nn.Module):
    """pytorchvideo's ``SqueezeExcitation`` (fvcore ``layers.squeeze_excitation``), 3-D."""

    def __init__(self, num_channels, reduction_ratio=0.0625):
        super().__init__()
        squeezed = max(8, int(num_channels * reduction_ratio))
        self.block = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(num_channels, squeezed, 1, bias=True),
            nn.ReLU(),
            nn.Conv3d(squeezed, num_channels, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.block(x)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class X3DBottleneck(nn.Module):
    def __init__(self, dim_in, dim_inner, dim_out, stride, use_se):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(
            dim_inner,
            dim_inner,
            3,
            stride=(1, stride, stride),
            padding=1,
            groups=dim_inner,
            bias=False,
        )
        self.norm_b = nn.Sequential(
            nn.BatchNorm3d(dim_inner), SqueezeExcitation(dim_inner) if use_se else nn.Identity()
        )
        self.act_b = Swish()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)
        self.branch1 = None
        if stride != 1 or dim_in != dim_out:
            self.branch1 = nn.Sequential(
                nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(dim_out),
            )

    def forward(self, x):
        y = self.act_a(self.norm_a(self.conv_a(x)))
        y = self.act_b(self.norm_b(self.conv_b(y)))
        y = self.norm_c(self.conv_c(y))
        shortcut = x if self.branch1 is None else self.branch1(x)
        return torch.relu(shortcut + y)


class TinyX3D(nn.Module):
    def __init__(self, stem=12, stages=((12, 2), (24, 2)), expansion=2.25, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(stem, stem, (5, 1, 1), padding=(2, 0, 0), groups=stem, bias=False),
            nn.BatchNorm3d(stem),
            nn.ReLU(),
        )
        blocks, dim_in = [], stem
        for width, depth in stages:
            for i in range(depth):
                inner = int(expansion * width)
                blocks.append(X3DBottleneck(dim_in, inner, width, 2 if i == 0 else 1, i % 2 == 0))
                dim_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head_pre = nn.Sequential(
            nn.Conv3d(dim_in, 48, 1, bias=False), nn.BatchNorm3d(48), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.post_conv = nn.Conv3d(48, 64, 1, bias=False)
        self.proj = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.pool(self.head_pre(self.blocks(self.stem(x))))
        x = torch.relu(self.post_conv(x))
        x = x.permute((0, 2, 3, 4, 1))  # pytorchvideo's ResNetBasicHead
        return self.proj(x).view(x.shape[0], -1)


def _export(model: nn.Module, shape: tuple[int, ...], seed: int, **kw) -> onnx.ModelProto:
    torch.manual_seed(seed)
    calibrate_1d(model, shape)
    return export_as(model, shape, seed=seed, **kw)


def r2plus1d(frames: int = 4, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyR2Plus1D(), (1, 3, frames, size, size), seed, opset=13)


def x3d(frames: int = 4, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyX3D(), (1, 3, frames, size, size), seed, opset=13)
