"""Attention modules and dynamic convolutions that move channels in unusual ways (round 5a
of the unseen-architecture battery; the plain backbones in ``round5a_torch.py`` and
``round5a_more_torch.py``), each inside the backbone its paper used and written as its
reference code writes it.

- ``triplet``: Triplet attention (landskape-ai/triplet-attention ``triplet_attention.py``)
  in a ResNet: the map permuted so that height or width takes the channel axis, ``ZPool``
  (max and mean over the first axis: over H, W or the channels) concatenated, a 7x7 conv
  of two channels to one over the other two axes, a sigmoid gate, permuted back, the three
  branches averaged.
- ``coordatt``: Coordinate attention (houqb/CoordAttention ``coordatt.py``) in a
  MobileNetV2: pooling to ``(H, 1)`` and ``(1, W)``, the two concatenated along the
  spatial axis, a shared 1x1 conv + BN + h_swish, split back by ``[h, w]``, two gates.
- ``gcnet``: GCNet's context block (mmcv ``ContextBlock``) in a ResNet: attention pooling
  (1x1 conv to one map, softmax over the pixels, ``matmul`` with the flattened map), the
  transform ``Conv -> LayerNorm([planes, 1, 1]) -> ReLU -> Conv`` added to the input.
- ``condconv``: EfficientNet-CondConv (timm ``cond_conv2d.py``, ``CondConvResidual``):
  each conv's weight is ``routing_weights @ experts`` viewed as ``(B * out, in, k, k)``,
  the input reshaped to ``(1, B * C, H, W)`` and convolved with ``groups = B``.
- ``rednet``: RedNet (d-li14/involution ``involution_naive.py``): involution kernels from
  a 1x1 conv ``view(b, groups, K * K, h, w).unsqueeze(2)`` times ``nn.Unfold(x)`` viewed as
  ``(b, groups, group_channels, K * K, h, w)``, summed over the kernel positions.
- ``sequencer``: Sequencer2D (timm ``sequencer.py``): ``LSTM2d``, bidirectional LSTMs over
  the columns and the rows of an NHWC map (``reshape(-1, H, C)``, ``reshape(-1, W, C)``),
  their outputs reshaped back, concatenated and mixed by a Linear; channel MLPs.
- ``rexnet``: ReXNet (timm ``rexnet.py``): the partial residual ``x[:, 0:in_chs] +=
  shortcut`` of a block that widens its channels (exported as ScatterND), SE with a
  BatchNorm between its convs.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from round5a_torch import _conv_bn
from torch import nn

# ---- Triplet attention --------------------------------------------------------------------------


class ZPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class AttentionGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.compress = ZPool()
        self.conv = _conv_bn(2, 1, 7, act=False)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(self.compress(x)))


class TripletAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cw, self.hc, self.hw = AttentionGate(), AttentionGate(), AttentionGate()

    def forward(self, x):
        x_out11 = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        x_out21 = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        return 1 / 3 * (self.hw(x) + x_out11 + x_out21)


class AttnBasicBlock(nn.Module):
    """A ResNet basic block with an attention module after its second conv."""

    def __init__(self, cin: int, planes: int, stride: int, attn) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, planes, 3, stride)
        self.conv2 = _conv_bn(planes, planes, 3, act=False)
        self.attn = attn(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = _conv_bn(cin, planes, 1, stride, act=False)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.attn(self.conv2(self.conv1(x))) + shortcut)


class AttnResNet(nn.Module):
    def __init__(self, attn, widths=(16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 3, 2))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [AttnBasicBlock(cin, w, 1 if i == 0 else 2, attn)]
            blocks += [AttnBasicBlock(w, w, 1, attn)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def triplet(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(AttnResNet(lambda c: TripletAttention()), size, 17, seed, dynamo)


# ---- GCNet (mmcv ContextBlock) ------------------------------------------------------------------


class ContextBlock(nn.Module):
    def __init__(self, inplanes: int, ratio: float = 0.25) -> None:
        super().__init__()
        planes = int(inplanes * ratio)
        self.conv_mask = nn.Conv2d(inplanes, 1, kernel_size=1)
        self.softmax = nn.Softmax(dim=2)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1),
            nn.LayerNorm([planes, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, inplanes, kernel_size=1),
        )

    def spatial_pool(self, x):
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.conv_mask(x).view(batch, 1, height * width)
        context_mask = self.softmax(context_mask).unsqueeze(-1)
        return torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)

    def forward(self, x):
        return x + self.channel_add_conv(self.spatial_pool(x))


def gcnet(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(AttnResNet(ContextBlock))
    return export(model, size, 17, seed, dynamo)


# ---- Coordinate attention in MobileNetV2 --------------------------------------------------------


def _h_sigmoid(x):
    return F.relu6(x + 3) / 6


class CoordAtt(nn.Module):
    def __init__(self, inp: int, oup: int, reduction: int = 32) -> None:
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x
        _, _, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.bn1(self.conv1(y))
        y = y * _h_sigmoid(y)  # h_swish
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        return identity * a_w * a_h


class CaInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(inp * expand)
        self.identity = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            *([_conv_bn(inp, hidden, 1)] if expand != 1 else []),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            CoordAtt(hidden, hidden),
            _conv_bn(hidden, oup, 1, act=False),
        )

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class CaMobileNetV2(nn.Module):
    CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 48, 1, 2))  # t, c, n, s

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = [_conv_bn(3, 16, 3, 2)], 16
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(CaInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers, _conv_bn(cin, 128, 1))
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(x.view(x.size(0), -1))


def coordatt(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(CaMobileNetV2(), size, 17, seed, dynamo)


# ---- EfficientNet-CondConv (timm) ---------------------------------------------------------------


class CondConv2d(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1, groups=1, num_experts=4) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, (k, k)
        self.stride, self.padding, self.groups, self.num_experts = (
            stride,
            k // 2,
            groups,
            num_experts,
        )
        self.weight_shape = (cout, cin // groups, k, k)
        num = cout * (cin // groups) * k * k
        self.weight = nn.Parameter(torch.randn(num_experts, num) * (cin // groups * k * k) ** -0.5)

    def forward(self, x, routing_weights):
        B, C, H, W = x.shape
        weight = torch.matmul(routing_weights, self.weight)
        new_weight_shape = (B * self.out_channels, self.in_channels // self.groups)
        new_weight_shape += self.kernel_size
        weight = weight.view(new_weight_shape)
        x = x.reshape(1, B * C, H, W)
        out = F.conv2d(
            x, weight, None, stride=self.stride, padding=self.padding, groups=self.groups * B
        )
        return out.permute([1, 0, 2, 3]).view(B, self.out_channels, out.shape[-2], out.shape[-1])


class CondConvResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, exp: int, experts: int = 4) -> None:
        super().__init__()
        mid = cin * exp
        self.has_skip = stride == 1 and cin == cout
        self.routing_fn = nn.Linear(cin, experts)
        self.conv_pw = CondConv2d(cin, mid, 1, num_experts=experts)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = CondConv2d(mid, mid, 3, stride, groups=mid, num_experts=experts)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_reduce, self.conv_expand = (
            nn.Conv2d(mid, cin // 4, 1),
            nn.Conv2d(cin // 4, mid, 1),
        )
        self.conv_pwl = CondConv2d(mid, cout, 1, num_experts=experts)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        shortcut = x
        pooled_inputs = F.adaptive_avg_pool2d(x, 1).flatten(1)
        routing_weights = torch.sigmoid(self.routing_fn(pooled_inputs))
        x = F.silu(self.bn1(self.conv_pw(x, routing_weights)))
        x = F.silu(self.bn2(self.conv_dw(x, routing_weights)))
        x_se = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        x = x * torch.sigmoid(x_se)
        x = self.bn3(self.conv_pwl(x, routing_weights))
        return x + shortcut if self.has_skip else x


class CondConvNet(nn.Module):
    """efficientnet_cc_b0_4e's layout, narrowed: plain MBConv stages, then CondConv ones."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = _conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(
            _conv_bn(16, 16, 3, groups=16),
            _conv_bn(16, 24, 1, act=False),
            CondConvResidual(24, 32, 2, 4),
            CondConvResidual(32, 32, 1, 4),
            CondConvResidual(32, 48, 2, 4),
        )
        self.conv_head = _conv_bn(48, 128, 1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.conv_head(self.blocks(self.conv_stem(x)))
        return self.classifier(x.mean((2, 3)))


def condconv(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(CondConvNet(), size, 17, seed, dynamo)


# ---- RedNet (d-li14/involution) -----------------------------------------------------------------


class Involution(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.channels = kernel_size, stride, channels
        reduction_ratio = 4
        self.group_channels = 8
        self.groups = channels // self.group_channels
        self.conv1 = _conv_bn(channels, channels // reduction_ratio, 1)
        self.conv2 = nn.Conv2d(channels // reduction_ratio, kernel_size**2 * self.groups, 1)
        if stride > 1:
            self.avgpool = nn.AvgPool2d(stride, stride)
        self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, stride)

    def forward(self, x):
        weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size**2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size**2, h, w)
        return (weight * out).sum(dim=3).view(b, self.channels, h, w)


class InvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, planes, 1)
        self.conv2 = nn.Sequential(Involution(planes, 7, stride), nn.BatchNorm2d(planes), nn.ReLU())
        self.conv3 = _conv_bn(planes, planes * 4, 1, act=False)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            pool = [nn.AvgPool2d(stride, stride)] if stride > 1 else []
            self.downsample = nn.Sequential(*pool, _conv_bn(cin, planes * 4, 1, act=False))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class RedNet(nn.Module):
    def __init__(self, planes=(16, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 16
        for i, p in enumerate(planes):
            blocks += [InvBottleneck(cin, p, 1 if i == 0 else 2), InvBottleneck(p * 4, p)]
            cin = p * 4
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def rednet(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(RedNet(), size, 17, seed, dynamo)


# ---- Sequencer2D (timm sequencer.py) ------------------------------------------------------------


class LSTM2d(nn.Module):
    """``RNN2dBase`` with ``nn.LSTM``: bidirectional LSTMs over the columns and the rows of
    an NHWC map (batch ``B * W`` and ``B * H``), concatenated, a Linear back to C."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.rnn_v = nn.LSTM(input_size, hidden_size, 1, batch_first=True, bidirectional=True)
        self.rnn_h = nn.LSTM(input_size, hidden_size, 1, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(4 * hidden_size, input_size)  # union "cat", with_fc

    def forward(self, x):
        B, H, W, C = x.shape
        v = x.permute(0, 2, 1, 3)
        v = v.reshape(-1, H, C)
        v, _ = self.rnn_v(v)
        v = v.reshape(B, W, H, -1)
        v = v.permute(0, 2, 1, 3)
        h = x.reshape(-1, W, C)
        h, _ = self.rnn_h(h)
        h = h.reshape(B, H, W, -1)
        return self.fc(torch.cat([v, h], dim=-1))


class Sequencer2dBlock(nn.Module):
    def __init__(self, dim: int, hidden_size: int, mlp_ratio: float = 3.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.rnn_tokens_mixer = LSTM2d(dim, hidden_size)
        hidden = int(dim * mlp_ratio)
        self.mlp_channels = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.rnn_tokens_mixer(self.norm1(x))
        return x + self.mlp_channels(self.norm2(x))


class Downsample2d(nn.Module):
    def __init__(self, cin: int, cout: int, patch_size: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(cin, cout, patch_size, patch_size)

    def forward(self, x):
        return self.down(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Sequencer2d(nn.Module):
    def __init__(self, dims=(32, 64), hidden=(12, 16), depths=(1, 2), num_classes=10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dims[0], 7, 7)  # PatchEmbed, output NHWC
        stages = []
        for i, (dim, h, depth) in enumerate(zip(dims, hidden, depths, strict=True)):
            if i > 0:
                stages.append(Downsample2d(dims[i - 1], dim, 2))
            stages += [Sequencer2dBlock(dim, h) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x).permute(0, 2, 3, 1))
        return self.head(self.norm(x).mean(dim=(1, 2)))


def sequencer(size: int = 56, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(Sequencer2d()), size, 17, seed, dynamo)


# ---- ReXNet (timm rexnet.py) --------------------------------------------------------------------


class SEWithNorm(nn.Module):
    def __init__(self, channels: int, rd: int) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = (
            nn.Conv2d(channels, rd, 1),
            nn.BatchNorm2d(rd),
            nn.Conv2d(rd, channels, 1),
        )

    def forward(self, x):
        x_se = self.fc2(F.relu(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * torch.sigmoid(x_se)


class LinearBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, exp_ratio: float, se_ratio: float):
        super().__init__()
        self.use_shortcut = stride == 1 and cin <= cout
        self.in_channels = cin
        dw_chs = round(cin * exp_ratio) if exp_ratio != 1.0 else cin
        self.conv_exp = None if exp_ratio == 1.0 else _conv_bn(cin, dw_chs, 1, act=False)
        self.conv_dw = _conv_bn(dw_chs, dw_chs, 3, stride, groups=dw_chs, act=False)
        self.se = SEWithNorm(dw_chs, max(8, int(dw_chs * se_ratio))) if se_ratio > 0 else None
        self.act_dw = nn.ReLU6()
        self.conv_pwl = _conv_bn(dw_chs, cout, 1, act=False)

    def forward(self, x):
        shortcut = x
        if self.conv_exp is not None:
            x = F.silu(self.conv_exp(x))
        x = self.conv_dw(x)
        if self.se is not None:
            x = self.se(x)
        x = self.conv_pwl(self.act_dw(x))
        if self.use_shortcut:
            x[:, 0 : self.in_channels] += shortcut
        return x


class ReXNet(nn.Module):
    # (in, out, stride, exp, se): ReXNet's linearly growing widths, narrowed
    CFG = (
        (16, 16, 1, 1.0, 0.0),
        (16, 27, 2, 6.0, 0.0),
        (27, 38, 1, 6.0, 0.0),
        (38, 50, 2, 6.0, 1 / 12),
        (50, 61, 1, 6.0, 1 / 12),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)
        self.features = nn.Sequential(*(LinearBottleneck(*c) for c in self.CFG))
        self.head = _conv_bn(61, 128, 1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.silu(self.head(self.features(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def rexnet(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(ReXNet(), size, 17, seed, dynamo)
