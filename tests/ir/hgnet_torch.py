"""A small PP-HGNetV2 written the way timm's ``hgnet.py`` (a port of PaddleClas'
``pp_hgnet_v2.py``, the backbone of RT-DETR and PP-OCRv4 server) computes it.

- ``StemV2``: 3x3/2 conv, ``F.pad(x, (0, 1, 0, 1))``, a branch of 2x2 convs (padded again)
  beside a ``MaxPool2d(2, 1, ceil_mode=True)``, concat, 3x3/2 and 1x1 convs;
- ``LearnableAffineBlock`` after each activation: a learned scalar scale and bias;
- HG blocks: a chain of convs (or light convs: 1x1 then depthwise) whose outputs are all
  concatenated with the block's input, then the aggregation: a squeeze 1x1 and an
  excitation 1x1 (``agg='se'``, V2) or a 1x1 and ESE (``x * sigmoid(conv(x.mean((2, 3))))``,
  ``agg='ese'``, V1), with a residual add in the later blocks of a stage;
- depthwise stride-2 downsampling between stages, and the V2 classifier head: global pool,
  a 1x1 ``last_conv``, ReLU + LAB, flatten, Linear.

Exported as timm's ``onnx_export`` (torch's default opset, symbolic batch, folding).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn


class LearnableAffineBlock(nn.Module):
    def __init__(self, scale_value=1.0, bias_value=0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale_value]))
        self.bias = nn.Parameter(torch.tensor([bias_value]))

    def forward(self, x):
        return self.scale * x + self.bias


class ConvBNAct(nn.Module):
    def __init__(
        self, in_chs, out_chs, kernel_size, stride=1, groups=1, use_act=True, use_lab=False
    ):
        super().__init__()
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU() if use_act else nn.Identity()
        self.lab = LearnableAffineBlock(1.2, 0.1) if use_act and use_lab else nn.Identity()

    def forward(self, x):
        return self.lab(self.act(self.bn(self.conv(x))))


class LightConvBNAct(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size, use_lab=False):
        super().__init__()
        self.conv1 = ConvBNAct(in_chs, out_chs, 1, use_act=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(out_chs, out_chs, kernel_size, groups=out_chs, use_lab=use_lab)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class StemV2(nn.Module):
    def __init__(self, in_chs, mid_chs, out_chs, use_lab=False):
        super().__init__()
        self.stem1 = ConvBNAct(in_chs, mid_chs, 3, 2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid_chs, mid_chs // 2, 2, 1, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid_chs // 2, mid_chs, 2, 1, use_lab=use_lab)
        self.stem3 = ConvBNAct(mid_chs * 2, mid_chs, 3, 2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid_chs, out_chs, 1, 1, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x):
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        x2 = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        x1 = self.pool(x)
        return self.stem4(self.stem3(torch.cat([x1, x2], dim=1)))


class EseModule(nn.Module):
    def __init__(self, chs):
        super().__init__()
        self.conv = nn.Conv2d(chs, chs, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return torch.mul(x, self.sigmoid(self.conv(x.mean((2, 3), keepdim=True))))


class HighPerfGpuBlock(nn.Module):
    def __init__(
        self, in_chs, mid_chs, out_chs, layer_num, kernel_size=3, residual=False,
        light_block=False, use_lab=False, agg="se",
    ):  # fmt: skip
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList(
            LightConvBNAct(in_chs if i == 0 else mid_chs, mid_chs, kernel_size, use_lab=use_lab)
            if light_block
            else ConvBNAct(in_chs if i == 0 else mid_chs, mid_chs, kernel_size, use_lab=use_lab)
            for i in range(layer_num)
        )
        total_chs = in_chs + layer_num * mid_chs
        if agg == "se":
            self.aggregation = nn.Sequential(
                ConvBNAct(total_chs, out_chs // 2, 1, use_lab=use_lab),
                ConvBNAct(out_chs // 2, out_chs, 1, use_lab=use_lab),
            )
        else:
            self.aggregation = nn.Sequential(
                ConvBNAct(total_chs, out_chs, 1, use_lab=use_lab), EseModule(out_chs)
            )

    def forward(self, x):
        identity = x
        output = [x]
        for layer in self.layers:
            x = layer(x)
            output.append(x)
        x = self.aggregation(torch.cat(output, dim=1))
        return x + identity if self.residual else x


class HighPerfGpuStage(nn.Module):
    def __init__(
        self, in_chs, mid_chs, out_chs, block_num, layer_num, downsample=True,
        light_block=False, kernel_size=3, use_lab=False, agg="se",
    ):  # fmt: skip
        super().__init__()
        self.downsample = (
            ConvBNAct(in_chs, in_chs, 3, 2, groups=in_chs, use_act=False, use_lab=use_lab)
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(
                HighPerfGpuBlock(
                    in_chs if i == 0 else out_chs,
                    mid_chs,
                    out_chs,
                    layer_num,
                    kernel_size,
                    residual=i > 0,
                    light_block=light_block,
                    use_lab=use_lab,
                    agg=agg,
                )
                for i in range(block_num)
            )
        )

    def forward(self, x):
        return self.blocks(self.downsample(x))


class HGNetV2(nn.Module):
    # (in, mid, out, blocks, layers, downsample, light, kernel, agg): B0's layout, narrower;
    # the second stage aggregates with ESE as PP-HGNet (V1) does
    CFG = (
        (16, 8, 32, 1, 2, False, False, 3, "se"),
        (32, 16, 48, 2, 2, True, False, 3, "ese"),
        (48, 16, 64, 2, 2, True, True, 5, "se"),
    )

    def __init__(self, num_classes=10, use_lab=True, num_features=96):
        super().__init__()
        self.stem = StemV2(3, 8, 16, use_lab=use_lab)
        self.stages = nn.Sequential(
            *(
                HighPerfGpuStage(i, m, o, b, n, d, light, k, use_lab, agg)
                for i, m, o, b, n, d, light, k, agg in self.CFG
            )
        )
        self.last_conv = nn.Conv2d(self.CFG[-1][2], num_features, 1, bias=False)
        self.act = nn.ReLU()
        self.lab = LearnableAffineBlock(1.1, 0.05) if use_lab else nn.Identity()
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x)).mean((2, 3), keepdim=True)
        x = self.lab(self.act(self.last_conv(x)))
        return self.fc(x.flatten(1))


def hgnetv2(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(HGNetV2(), (1, 3, size, size), opset=17, dynamic_batch=True, seed=seed)
