"""More classifiers with unusual channel operations (round 5a of the unseen-architecture
battery; the others in ``round5a_torch.py``), written the way their reference code writes
them and exported at opset 17 by the TorchScript exporter (``backbones3_torch.export``).

- ``vovnet``: eSE-VoVNet-39b (timm ``vovnet.py``): one-shot aggregation (the input and every
  3x3's output concatenated once), a 1x1 over the concat, effective SE (one conv of all the
  channels, hard sigmoid), a residual add on the stage's later blocks.
- ``hornet``: HorNet (raoyongming/HorNet ``hornet.py``): recursive gated convolution
  (``gnconv``: ``proj_in`` split into ``pwa`` and pieces of growing widths
  ``dim // 2 ** i``, one depthwise 7x7 over them, products ``pws[i](x) * dw_list[i + 1]``),
  channels-first LayerNorm written out, ``gamma1.view(C, 1, 1)`` with ``C`` from
  ``x.shape``, a channels-last Linear MLP.
- ``van``: VAN (Visual-Attention-Network ``van.py``): large kernel attention (depthwise 5x5,
  depthwise 7x7 of dilation 3, 1x1, ``u * attn``), BatchNorm pre-norms, layer scales as
  ``unsqueeze(-1).unsqueeze(-1)``, each stage ending in a LayerNorm of the tokens reshaped
  back by ``reshape(B, H, W, -1)``.
- ``starnet``: StarNet (ma-xu/Rewrite-the-Stars ``starnet.py``): ``act(f1(x)) * f2(x)``.
- ``tresnet``: TResNet (timm ``tresnet.py``): space-to-depth stem by view / permute / view,
  anti-aliased downsampling (reflect pad, a fixed blur filter as a depthwise conv),
  BatchNorm + LeakyReLU, SE.
- ``shufflenetv1``: ShuffleNetV1 (megvii-model/ShuffleNet-Series ``ShuffleNetV1/blocks.py``):
  grouped 1x1 convs (3 groups), its channel shuffle ``reshape(B, C // g, g, H, W)`` /
  ``permute`` / ``reshape``, stride-2 blocks concatenating an average-pooled input.
- ``repghost``: RepGhostNet (ChengpengChen/RepGhost ``repghost.py``), training form: the
  cheap depthwise op added to a BatchNorm of its input (no concat), SE with a hard sigmoid
  written as ``relu6(x + 3) / 6``, GhostNet's bottleneck (``convnets3_torch``) around them.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from convnets3_torch import GhostBottleneckV2
from round5a_torch import _conv_bn
from torch import nn


class EffectiveSE(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc(x_se)
        return x * self.gate(x_se)


class OsaBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, layers: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv_mid = nn.ModuleList(
            _conv_bn(cin if i == 0 else mid, mid, 3) for i in range(layers)
        )
        self.conv_concat = _conv_bn(cin + layers * mid, cout, 1)
        self.attn = EffectiveSE(cout)

    def forward(self, x):
        output = [x]
        for i, module in enumerate(self.conv_mid):  # SequentialAppendList
            output.append(module(x if i == 0 else output[-1]))
        x = self.conv_concat(torch.cat(output, dim=1))
        x = self.attn(x)
        return x + output[0] if self.residual else x


class VovNet(nn.Module):
    def __init__(self, conv=(16, 20, 24), out=(32, 48, 64), blocks=(1, 2, 2), num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn(3, 16, 3, 2), _conv_bn(16, 16, 3), _conv_bn(16, 32, 3, 2)
        )
        stages, cin = [], 32
        for i, (mid, cout, n) in enumerate(zip(conv, out, blocks, strict=True)):
            if i > 0:
                stages.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            for j in range(n):
                stages.append(OsaBlock(cin, mid, cout, 3, residual=j > 0))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


def vovnet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(VovNet(), size, 17, seed, dynamo)


# ---- HorNet (raoyongming/HorNet) ----------------------------------------------------------------


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.bias = nn.Parameter(torch.rand(dim) * 0.4 - 0.2)
        self.eps, self.data_format, self.shape = eps, data_format, (dim,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GnConv(nn.Module):
    def __init__(self, dim: int, order: int = 5, s: float = 1.0 / 3.0) -> None:
        super().__init__()
        self.order = order
        self.dims = [dim // 2**i for i in range(order)]
        self.dims.reverse()
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(sum(self.dims), sum(self.dims), 7, padding=3, groups=sum(self.dims))
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(
            [nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)]
        )
        self.scale = s

    def forward(self, x):
        fused_x = self.proj_in(x)
        pwa, abc = torch.split(fused_x, (self.dims[0], sum(self.dims)), dim=1)
        dw_abc = self.dwconv(abc) * self.scale
        dw_list = torch.split(dw_abc, self.dims, dim=1)
        x = pwa * dw_list[0]
        for i in range(self.order - 1):
            x = self.pws[i](x) * dw_list[i + 1]
        return self.proj_out(x)


class HorBlock(nn.Module):
    def __init__(self, dim: int, order: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6, data_format="channels_first")
        self.gnconv = GnConv(dim, order)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(torch.rand(dim) + 0.5)  # trained, not 1e-6
        self.gamma2 = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        _, C, _, _ = x.shape
        gamma1 = self.gamma1.view(C, 1, 1)
        x = x + gamma1 * self.gnconv(self.norm1(x))
        shortcut = x
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm2(x))))
        x = (self.gamma2 * x).permute(0, 3, 1, 2)
        return shortcut + x


class HorNet(nn.Module):
    def __init__(self, dims=(16, 32, 64, 128), orders=(2, 3, 4, 5), num_classes=10) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm(dims[0], data_format="channels_first")]
        for i, (dim, order) in enumerate(zip(dims, orders, strict=True)):
            if i > 0:
                layers += [LayerNorm(dims[i - 1], data_format="channels_first")]
                layers += [nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers.append(HorBlock(dim, order))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean([-2, -1])))


def hornet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(HorNet()), size, 17, seed, dynamo)


# ---- VAN (Visual-Attention-Network) -------------------------------------------------------------


class LKA(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, stride=1, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        u = x.clone()
        attn = self.conv1(self.conv_spatial(self.conv0(x)))
        return u * attn


class VanBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.proj_1, self.proj_2 = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.spatial_gating_unit = LKA(dim)
        self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, dim, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.layer_scale_1 = nn.Parameter(torch.rand(dim) + 0.5)
        self.layer_scale_2 = nn.Parameter(torch.rand(dim) + 0.5)

    def attn(self, x):
        shortcut = x.clone()
        x = self.proj_2(self.spatial_gating_unit(F.gelu(self.proj_1(x))))
        return x + shortcut

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.attn(self.norm1(x))
        mlp = self.fc2(F.gelu(self.dwconv(self.fc1(self.norm2(x)))))
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * mlp


class Van(nn.Module):
    def __init__(self, dims=(16, 32, 64), depths=(1, 1, 2), num_classes=10) -> None:
        super().__init__()
        self.embeds, self.blocks, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = 3
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            k, stride = (7, 4) if i == 0 else (3, 2)  # OverlapPatchEmbed
            self.embeds.append(
                nn.Sequential(nn.Conv2d(cin, dim, k, stride, k // 2), nn.BatchNorm2d(dim))
            )
            self.blocks.append(nn.Sequential(*(VanBlock(dim) for _ in range(depth))))
            self.norms.append(nn.LayerNorm(dim))
            cin = dim
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        B = x.shape[0]
        for i, (embed, blocks, norm) in enumerate(
            zip(self.embeds, self.blocks, self.norms, strict=True)
        ):
            x = embed[0](x)
            _, _, H, W = x.shape
            x = blocks(embed[1](x))
            x = norm(x.flatten(2).transpose(1, 2))
            if i != len(self.blocks) - 1:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
        return self.head(x.mean(dim=1))


def van(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(Van()), size, 17, seed, dynamo)


# ---- StarNet (ma-xu/Rewrite-the-Stars) ----------------------------------------------------------


def _conv(cin, cout, k=1, stride=1, groups=1, with_bn=True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups)]
    return nn.Sequential(*layers, *([nn.BatchNorm2d(cout)] if with_bn else []))


class StarBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int = 3) -> None:
        super().__init__()
        self.dwconv = _conv(dim, dim, 7, groups=dim)
        self.f1 = _conv(dim, mlp_ratio * dim, with_bn=False)
        self.f2 = _conv(dim, mlp_ratio * dim, with_bn=False)
        self.g = _conv(mlp_ratio * dim, dim)
        self.dwconv2 = _conv(dim, dim, 7, groups=dim, with_bn=False)
        self.act = nn.ReLU6()

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x1, x2 = self.f1(x), self.f2(x)
        x = self.act(x1) * x2
        return shortcut + self.dwconv2(self.g(x))


class StarNet(nn.Module):
    def __init__(self, base: int = 16, depths=(1, 1, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 16, 3, 2), nn.ReLU6())
        stages, cin = [], 16
        for i, depth in enumerate(depths):
            dim = base * 2**i
            stages += [_conv(cin, dim, 3, 2), *(StarBlock(dim) for _ in range(depth))]
            cin = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.norm(self.stages(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def starnet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(StarNet(), size, 17, seed, dynamo)


# ---- TResNet (timm tresnet.py) ------------------------------------------------------------------


class SpaceToDepth(nn.Module):
    def __init__(self, block_size: int = 4) -> None:
        super().__init__()
        self.bs = block_size

    def forward(self, x):
        N, C, H, W = x.size()
        x = x.view(N, C, H // self.bs, self.bs, W // self.bs, self.bs)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(N, C * self.bs * self.bs, H // self.bs, W // self.bs)


class BlurPool2d(nn.Module):
    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.channels, self.stride = channels, stride
        coeffs = torch.tensor([0.25, 0.5, 0.25])  # poly1d((0.5, 0.5)) ** 2
        blur = (coeffs[:, None] * coeffs[None, :])[None, None, :, :]
        self.register_buffer("filt", blur.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x):
        x = F.pad(x, [1, 1, 1, 1], mode="reflect")
        return F.conv2d(x, self.filt, stride=self.stride, groups=self.channels)


def _conv_iabn(cin, cout, k=3, stride=1, act=True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.LeakyReLU(0.01)] if act else []))


class SEModule(nn.Module):
    def __init__(self, channels: int, rd: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, rd, 1), nn.Conv2d(rd, channels, 1)

    def forward(self, x):
        x_se = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(x_se)


class TresBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        if stride == 1:
            self.conv1 = _conv_iabn(cin, planes, 3, 1)
        else:  # anti-aliased: stride 1 conv, then the blur pool
            self.conv1 = nn.Sequential(_conv_iabn(cin, planes, 3, 1), BlurPool2d(planes))
        self.conv2 = _conv_iabn(planes, planes, 3, act=False)
        self.se = SEModule(planes, max(planes // 4, 8))
        self.downsample = None
        if stride != 1 or cin != planes:
            pool = (
                [nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)] if stride > 1 else []
            )
            self.downsample = nn.Sequential(*pool, _conv_iabn(cin, planes, 1, act=False))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.se(self.conv2(self.conv1(x)))
        return F.relu(out + shortcut)


class TResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(SpaceToDepth(), _conv_iabn(48, widths[0], 3))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [TresBasicBlock(cin, w, 1 if i == 0 else 2), TresBasicBlock(w, w)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.body(x)).mean((2, 3)))  # FastAdaptiveAvgPool


def tresnet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(TResNet(), size, 17, seed, dynamo)


# ---- ShuffleNetV1 (megvii-model/ShuffleNet-Series) ----------------------------------------------


class ShuffleV1Block(nn.Module):
    def __init__(self, inp, oup, *, group, first_group, mid_channels, ksize, stride) -> None:
        super().__init__()
        self.stride, self.group = stride, group
        outputs = oup - inp if stride == 2 else oup
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(inp, mid_channels, 1, 1, 0, groups=1 if first_group else group, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
            nn.Conv2d(
                mid_channels,
                mid_channels,
                ksize,
                stride,
                ksize // 2,
                groups=mid_channels,
                bias=False,
            ),
            nn.BatchNorm2d(mid_channels),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid_channels, outputs, 1, 1, 0, groups=group, bias=False),
            nn.BatchNorm2d(outputs),
        )
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, old_x):
        x = x_proj = old_x
        x = self.branch_main_1(x)
        if self.group > 1:
            x = self.channel_shuffle(x)
        x = self.branch_main_2(x)
        if self.stride == 1:
            return F.relu(x + x_proj)
        return torch.cat((self.branch_proj(x_proj), F.relu(x)), 1)

    def channel_shuffle(self, x):
        batchsize, num_channels, height, width = x.data.size()
        group_channels = num_channels // self.group
        x = x.reshape(batchsize, group_channels, self.group, height, width)
        x = x.permute(0, 2, 1, 3, 4)
        return x.reshape(batchsize, num_channels, height, width)


class ShuffleNetV1(nn.Module):
    def __init__(self, group: int = 3, stage_repeats=(2, 3, 2), num_classes: int = 10) -> None:
        super().__init__()
        stage_out_channels = [-1, 12, 60, 120, 240]
        cin = stage_out_channels[1]
        self.first_conv = _conv_bn(3, cin, 3, 2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        features = []
        for idxstage, repeats in enumerate(stage_repeats):
            cout = stage_out_channels[idxstage + 2]
            for i in range(repeats):
                stride = 2 if i == 0 else 1
                first_group = idxstage == 0 and i == 0
                features.append(
                    ShuffleV1Block(
                        cin,
                        cout,
                        group=group,
                        first_group=first_group,
                        mid_channels=cout // 4,
                        ksize=3,
                        stride=stride,
                    )
                )
                cin = cout
        self.features = nn.Sequential(*features)
        self.classifier = nn.Linear(cin, num_classes, bias=False)

    def forward(self, x):
        x = self.features(self.maxpool(self.first_conv(x)))
        x = F.avg_pool2d(x, x.shape[-1])  # globalpool (AvgPool2d(7) at 224)
        return self.classifier(x.contiguous().view(-1, x.shape[1]))


def shufflenetv1(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(ShuffleNetV1(), size, 17, seed, dynamo)


# ---- RepGhostNet (ChengpengChen/RepGhost), training form ----------------------------------------


def _hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class GhostSE(nn.Module):
    def __init__(self, chs: int, rd: int) -> None:
        super().__init__()
        self.conv_reduce, self.conv_expand = nn.Conv2d(chs, rd, 1), nn.Conv2d(rd, chs, 1)

    def forward(self, x):
        x_se = self.conv_expand(F.relu(self.conv_reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * _hard_sigmoid(x_se)


class RepGhostModule(nn.Module):
    def __init__(self, inp: int, oup: int, relu: bool = True) -> None:
        super().__init__()
        self.primary_conv = _conv_bn(inp, oup, 1, act=relu)
        self.fusion_conv = nn.Sequential(nn.Identity())
        self.fusion_bn = nn.Sequential(nn.BatchNorm2d(oup))  # reparam_bn
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(oup, oup, 3, 1, 1, groups=oup, bias=False), nn.BatchNorm2d(oup)
        )
        self.relu = nn.ReLU() if relu else nn.Sequential()

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        for conv, bn in zip(self.fusion_conv, self.fusion_bn, strict=True):
            x2 = x2 + bn(conv(x1))
        return self.relu(x2)


class RepGhostBottleneck(GhostBottleneckV2):
    """RepGhost's bottleneck is GhostNet's (``conv_dw`` where it strides, SE, the depthwise
    + 1x1 shortcut, the same forward) with RepGhost modules and its own SE."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, se: bool = False):
        super().__init__(cin, mid, cout, 3, stride)
        self.ghost1 = RepGhostModule(cin, mid, relu=True)
        self.se = GhostSE(mid, max(4, mid // 4)) if se else None
        self.ghost2 = RepGhostModule(mid, cout, relu=False)


class RepGhostNet(nn.Module):
    # (mid, out, stride, se): repghostnet_0_5x-like
    CFG = (
        (8, 16, 1, False),
        (24, 24, 2, False),
        (36, 24, 1, False),
        (36, 40, 2, True),
        (60, 40, 1, True),
        (120, 80, 2, False),
        (100, 80, 1, False),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = _conv_bn(3, 16, 3, 2)
        blocks, cin = [], 16
        for mid, cout, stride, se in self.CFG:
            blocks.append(RepGhostBottleneck(cin, mid, cout, stride, se))
            cin = cout
        self.blocks = nn.Sequential(*blocks, _conv_bn(cin, 160, 1))
        self.conv_head = nn.Conv2d(160, 256, 1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.blocks(self.conv_stem(x)), 1)
        return self.classifier(F.relu(self.conv_head(x)).flatten(1))


def repghost(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(RepGhostNet(), size, 17, seed, dynamo)
