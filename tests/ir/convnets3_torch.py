"""Small modern ConvNets written the way timm (and huawei-noah) compute them (round 3b of the
unseen-architecture battery), exported by the TorchScript exporter.

- ``inceptionnext``: InceptionNeXt (``inception_next.py``): ``InceptionDWConv2d`` splits the
  channels into ``(C - 3 * gc, gc, gc, gc)`` (an identity part, a 3x3, a 1x11 and an 11x1
  depthwise conv) and concatenates them back; BN, a conv MLP, a layer scale
  (``gamma.reshape(1, -1, 1, 1)``); the ``MlpClassifierHead`` (Linear, GELU, LayerNorm,
  Linear). Opset 17.
- ``repvit``: RepViT (``repvit.py``) in its training form: ``RepVggDw`` (a 3x3 depthwise
  conv + BN, a 1x1 depthwise conv and the identity summed, then BN), squeeze-excite every
  other block, conv MLPs, ``RepVitDownsample``, and the distilled classifier
  (``NormLinear``: BatchNorm1d + Linear, the two heads averaged). Opset 13.
- ``ghostnetv2``: GhostNetV2 (huawei-noah ``ghostnetv2_pytorch.py``): ghost modules cut
  back to ``oup`` by a slice, DFC attention (avg-pool, 1x1 conv, depthwise (1, 5) and (5, 1) convs,
  sigmoid, nearest interpolation to the ghost output's size), squeeze-excite with a hard
  sigmoid, opset 11.
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from torch import nn

# ---- InceptionNeXt --------------------------------------------------------------------------


class InceptionDWConv2d(nn.Module):
    def __init__(self, in_chs, square_kernel_size=3, band_kernel_size=11, branch_ratio=0.125):
        super().__init__()
        gc = int(in_chs * branch_ratio)
        sp, bp = square_kernel_size // 2, band_kernel_size // 2
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=sp, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, bp), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(bp, 0), groups=gc)
        self.split_indexes = (in_chs - 3 * gc, gc, gc, gc)

    def forward(self, x):
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_indexes, dim=1)
        return torch.cat(
            (x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1
        )


class ConvMlp(nn.Module):
    def __init__(self, cin, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(cin, hidden, 1, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, cin, 1, bias=True)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class MetaNeXtBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.token_mixer = InceptionDWConv2d(dim)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))

    def forward(self, x):
        shortcut = x
        x = self.mlp(self.norm(self.token_mixer(x)))
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class TinyInceptionNeXt(nn.Module):
    def __init__(self, dims=(24, 48, 80), nc=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))
        stages, cin = [], dims[0]
        for i, d in enumerate(dims):
            down = (
                nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, d, 2, 2)) if i else nn.Identity()
            )
            stages.append(nn.Sequential(down, MetaNeXtBlock(d), MetaNeXtBlock(d)))
            cin = d
        self.stages = nn.Sequential(*stages)
        self.fc1 = nn.Linear(dims[-1], 3 * dims[-1])
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(3 * dims[-1])
        self.fc2 = nn.Linear(3 * dims[-1], nc)

    def forward(self, x):
        x = self.stages(self.stem(x)).mean((2, 3))
        return self.fc2(self.norm(self.act(self.fc1(x))))


def inceptionnext(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyInceptionNeXt()), size, 17, seed, dynamo)


# ---- RepViT ---------------------------------------------------------------------------------


class ConvNorm(nn.Sequential):
    def __init__(self, cin, cout, ks=1, stride=1, pad=0, groups=1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class NormLinear(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(cin))
        self.add_module("l", nn.Linear(cin, cout))


class RepVggDw(nn.Module):
    def __init__(self, ed, kernel_size):
        super().__init__()
        self.conv = ConvNorm(ed, ed, kernel_size, 1, (kernel_size - 1) // 2, groups=ed)
        self.conv1 = nn.Conv2d(ed, ed, 1, 1, 0, groups=ed)
        self.bn = nn.BatchNorm2d(ed)

    def forward(self, x):
        return self.bn(self.conv(x) + self.conv1(x) + x)


class RepVitMlp(nn.Module):
    def __init__(self, cin, hidden):
        super().__init__()
        self.conv1 = ConvNorm(cin, hidden, 1)
        self.act = nn.GELU()
        self.conv2 = ConvNorm(hidden, cin, 1)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, ch, rd_ratio=0.25):
        super().__init__()
        rd = max(8, int(ch * rd_ratio + 4) // 8 * 8)
        self.fc1 = nn.Conv2d(ch, rd, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, ch, 1, bias=True)

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x_se))))


class RepViTBlock(nn.Module):
    def __init__(self, dim, mlp_ratio, kernel_size, use_se):
        super().__init__()
        self.token_mixer = RepVggDw(dim, kernel_size)
        self.se = SqueezeExcite(dim) if use_se else nn.Identity()
        self.channel_mixer = RepVitMlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class RepVitDownsample(nn.Module):
    def __init__(self, cin, mlp_ratio, cout, kernel_size):
        super().__init__()
        self.pre_block = RepViTBlock(cin, mlp_ratio, kernel_size, use_se=False)
        self.spatial_downsample = ConvNorm(cin, cin, kernel_size, 2, (kernel_size - 1) // 2, cin)
        self.channel_downsample = ConvNorm(cin, cout, 1)
        self.ffn = RepVitMlp(cout, cout * mlp_ratio)

    def forward(self, x):
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))
        return x + self.ffn(x)


class TinyRepViT(nn.Module):
    def __init__(self, dims=(16, 32, 48), nc=10):
        super().__init__()
        d0, d1, d2 = dims
        self.stem = nn.Sequential(
            ConvNorm(3, d0 // 2, 3, 2, 1), nn.GELU(), ConvNorm(d0 // 2, d0, 3, 2, 1)
        )
        self.stages = nn.Sequential(
            RepViTBlock(d0, 2, 3, True),
            RepViTBlock(d0, 2, 3, False),
            RepVitDownsample(d0, 2, d1, 3),
            RepViTBlock(d1, 2, 3, True),
            RepViTBlock(d1, 2, 3, False),
            RepVitDownsample(d1, 2, d2, 3),
            RepViTBlock(d2, 2, 3, True),
        )
        self.head = NormLinear(d2, nc)
        self.head_dist = NormLinear(d2, nc)

    def forward(self, x):
        x = self.stages(self.stem(x)).mean((2, 3), keepdim=False)
        return (self.head(x) + self.head_dist(x)) / 2


def repvit(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TinyRepViT()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.data.uniform_(-0.2, 0.2)
            m.running_var.data.uniform_(0.5, 1.5)
    return export(model, size, 13, seed, dynamo)


# ---- GhostNetV2 (huawei-noah) ---------------------------------------------------------------


def hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class GhostSqueezeExcite(nn.Module):
    def __init__(self, chs, se_ratio=0.25, divisor=4):
        super().__init__()
        reduced = max(divisor, int(chs * se_ratio + divisor / 2) // divisor * divisor)
        self.conv_reduce = nn.Conv2d(chs, reduced, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced, chs, 1, bias=True)

    def forward(self, x):
        se = self.conv_expand(F.relu(self.conv_reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * hard_sigmoid(se)


class GhostModuleV2(nn.Module):
    def __init__(self, inp, oup, kernel_size=1, ratio=2, dw_size=3, relu=True, mode="original"):
        super().__init__()
        self.mode, self.oup = mode, oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        act = nn.ReLU() if relu else nn.Sequential()
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, 1, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels),
            act,
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(
                init_channels,
                new_channels,
                dw_size,
                1,
                dw_size // 2,
                groups=init_channels,
                bias=False,
            ),
            nn.BatchNorm2d(new_channels),
            nn.ReLU() if relu else nn.Sequential(),
        )
        if mode == "attn":
            self.short_conv = nn.Sequential(
                nn.Conv2d(inp, oup, kernel_size, 1, kernel_size // 2, bias=False),
                nn.BatchNorm2d(oup),
                nn.Conv2d(oup, oup, (1, 5), 1, (0, 2), groups=oup, bias=False),
                nn.BatchNorm2d(oup),
                nn.Conv2d(oup, oup, (5, 1), 1, (2, 0), groups=oup, bias=False),
                nn.BatchNorm2d(oup),
            )

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        if self.mode == "original":
            return out[:, : self.oup, :, :]
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        gate = F.interpolate(
            torch.sigmoid(res), size=(out.shape[-2], out.shape[-1]), mode="nearest"
        )
        return out[:, : self.oup, :, :] * gate


class GhostBottleneckV2(nn.Module):
    def __init__(self, cin, mid, cout, k=3, stride=1, se_ratio=0.0, layer_id=0):
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModuleV2(
            cin, mid, relu=True, mode="original" if layer_id <= 1 else "attn"
        )
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid, mid, k, stride, (k - 1) // 2, groups=mid, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid)
        self.se = GhostSqueezeExcite(mid, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModuleV2(mid, cout, relu=False, mode="original")
        if cin == cout and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cin, k, stride, (k - 1) // 2, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x):
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(residual)


class TinyGhostNetV2(nn.Module):
    # k, exp, c, se, s (ghostnetv2's cfgs, first stages, small widths; odd widths slice)
    CFGS = [(3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 0.25, 2),
            (5, 120, 40, 0.25, 1), (3, 240, 80, 0, 2), (3, 184, 80, 0, 1),
            (3, 481, 112, 0.25, 1)]  # fmt: skip

    def __init__(self, nc=10):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for layer_id, (k, exp, c, se, s) in enumerate(self.CFGS):
            blocks.append(GhostBottleneckV2(cin, exp, c, k, s, se, layer_id))
            cin = c
        self.blocks = nn.Sequential(
            *blocks,
            nn.Sequential(nn.Conv2d(cin, 192, 1, bias=False), nn.BatchNorm2d(192), nn.ReLU()),
        )
        self.conv_head = nn.Conv2d(192, 256, 1, bias=True)
        self.classifier = nn.Linear(256, nc)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv_stem(x))))
        x = F.relu(self.conv_head(F.adaptive_avg_pool2d(x, 1)))
        return self.classifier(x.flatten(1))


def ghostnetv2(size: int = 56, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(TinyGhostNetV2(), size, 11, seed, dynamo)
