"""Classifiers whose channel operations are unusual (round 5a of the unseen-architecture
battery), written the way their reference code writes them; more in
``round5a_more_torch.py``.

- ``eca``: ECA-ResNet (BangguWu/ECANet ``eca_module.py``): global pooling, then a Conv1d of
  one channel over the pooled channels (``y.squeeze(-1).transpose(-1, -2)``): each channel's
  gate mixes its neighbours'.
- ``fasternet``: FasterNet (JierunChen/FasterNet ``models/fasternet.py``): partial conv on
  the first quarter of the channels, ``torch.split`` / ``torch.cat`` (``split_cat``, the
  training form) or ``x.clone(); x[:, :k] = conv(x[:, :k])`` (``slicing``, the inference
  form), then a 1x1 MLP and the residual add.
- ``mixnet``: MixNet (timm ``mixed_conv2d.py``, ``_efficientnet_blocks.py``): channels split
  into uneven groups (``_split_channels``), a depthwise conv of a different kernel per group
  and grouped 1x1 expansions / projections as split + convs + concat; squeeze-excite.
- ``sknet``: SKNet (timm ``selective_kernel.py``): the input split across two paths (3x3
  and dilated 3x3), ``torch.stack`` on a new axis, the attention's select conv viewed as
  ``(B, paths, C, 1, 1)`` with a softmax across the paths, a weighted sum over them.
- ``nf_resnet``: NF-ResNet with SE (timm ``nfnet.py``): ``ScaledStdConv2d`` computes its
  weight in the graph with ``F.batch_norm`` over the weight itself, gamma-scaled
  activations, ``x * beta`` before a block and ``out * alpha + shortcut`` after it, SE
  with ``attn_gain = 2``.
- ``dpn``: DPN (timm ``dpn.py``): dual path blocks (the projection's and the block's output
  sliced at ``num_1x1_c``: a residual add on the first part, a concat on the rest),
  BatchNorm + ReLU over the concatenated paths before every conv, grouped 3x3 convs.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from torch import nn


def _conv_bn(cin, cout, k=1, stride=1, groups=1, act=True, dilation=1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), *([nn.ReLU()] if act else []))


# ---- ECA-ResNet (BangguWu/ECANet) ---------------------------------------------------------------


class EcaLayer(nn.Module):
    def __init__(self, k_size: int = 3) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


class EcaBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, planes, 3, stride)
        self.conv2 = _conv_bn(planes, planes, 3, act=False)
        self.eca = EcaLayer(3)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = _conv_bn(cin, planes, 1, stride, act=False)

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.eca(self.conv2(self.conv1(x)))
        return F.relu(out + residual)


class EcaResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [EcaBasicBlock(cin, w, 1 if i == 0 else 2), EcaBasicBlock(w, w)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def eca(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(EcaResNet(), size, 17, seed, dynamo)


# ---- FasterNet (JierunChen/FasterNet) -----------------------------------------------------------


class PartialConv3(nn.Module):
    def __init__(self, dim: int, n_div: int, forward: str) -> None:
        super().__init__()
        self.dim_conv3 = dim // n_div
        self.dim_untouched = dim - self.dim_conv3
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, 1, 1, bias=False)
        self.forward = getattr(self, f"forward_{forward}")

    def forward_slicing(self, x):
        x = x.clone()  # keep the original input intact for the residual connection later
        x[:, : self.dim_conv3, :, :] = self.partial_conv3(x[:, : self.dim_conv3, :, :])
        return x

    def forward_split_cat(self, x):
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        x1 = self.partial_conv3(x1)
        return torch.cat((x1, x2), 1)


class FasterBlock(nn.Module):
    def __init__(self, dim: int, forward: str, n_div: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, dim, 1, bias=False),
        )
        self.spatial_mixing = PartialConv3(dim, n_div, forward)

    def forward(self, x):
        shortcut = x
        x = self.spatial_mixing(x)
        return shortcut + self.mlp(x)


class FasterNet(nn.Module):
    def __init__(self, forward: str, dim: int = 16, depths=(1, 2, 2), num_classes=10) -> None:
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Conv2d(3, dim, 4, 4, bias=False), nn.BatchNorm2d(dim))
        stages = []
        for i, depth in enumerate(depths):
            d = dim * 2**i
            stages += [FasterBlock(d, forward) for _ in range(depth)]
            if i < len(depths) - 1:  # PatchMerging
                stages += [nn.Conv2d(d, 2 * d, 2, 2, bias=False), nn.BatchNorm2d(2 * d)]
        self.stages = nn.Sequential(*stages)
        features = dim * 2 ** (len(depths) - 1)
        self.avgpool_pre_head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(features, 64, 1, bias=False), nn.ReLU()
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.avgpool_pre_head(self.stages(self.patch_embed(x)))
        return self.head(torch.flatten(x, 1))


def fasternet(
    size: int = 64, seed: int = 0, dynamo: bool = False, forward: str = "split_cat"
) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(FasterNet(forward), size, 17, seed, dynamo)


# ---- MixNet (timm) ------------------------------------------------------------------------------


def _split_channels(num_chan: int, num_groups: int) -> list[int]:
    split = [num_chan // num_groups for _ in range(num_groups)]
    split[0] += num_chan - sum(split)
    return split


class MixedConv2d(nn.ModuleDict):
    def __init__(self, cin, cout, kernel_size, stride=1, depthwise=False) -> None:
        super().__init__()
        kernel_size = kernel_size if isinstance(kernel_size, list) else [kernel_size]
        in_splits = _split_channels(cin, len(kernel_size))
        out_splits = _split_channels(cout, len(kernel_size))
        for idx, (k, in_ch, out_ch) in enumerate(
            zip(kernel_size, in_splits, out_splits, strict=True)
        ):
            groups = in_ch if depthwise else 1
            self.add_module(
                str(idx), nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False)
            )
        self.splits = in_splits

    def forward(self, x):
        x_split = torch.split(x, self.splits, 1)
        x_out = [c(x_split[i]) for i, c in enumerate(self.values())]
        return torch.cat(x_out, 1)


class SqueezeExcite(nn.Module):
    def __init__(self, chs: int, rd: int, gate=torch.sigmoid) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd, 1)
        self.conv_expand = nn.Conv2d(rd, chs, 1)
        self.gate = gate

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_expand(F.silu(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class MixInvertedResidual(nn.Module):
    def __init__(self, cin, cout, dw_k, exp_k, pw_k, stride=1, exp=3, se=0.5) -> None:
        super().__init__()
        mid = cin * exp
        self.conv_pw = MixedConv2d(cin, mid, exp_k)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = MixedConv2d(mid, mid, dw_k, stride, depthwise=True)
        self.bn2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, max(1, int(cin * se)))
        self.conv_pwl = MixedConv2d(mid, cout, pw_k)
        self.bn3 = nn.BatchNorm2d(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x):
        shortcut = x
        x = F.silu(self.bn1(self.conv_pw(x)))
        x = F.silu(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(self.se(x)))
        return x + shortcut if self.has_skip else x


class MixNet(nn.Module):
    # (cin, cout, dw kernels, expansion kernels, projection kernels, stride), mixnet_s-like
    CFG = (
        (16, 24, [3], [1, 1], [1, 1], 2),
        (24, 24, [3], [1, 1], [1, 1], 1),
        (24, 40, [3, 5, 7], [1], [1, 1], 2),
        (40, 40, [3, 5], [1, 1], [1, 1], 1),
        (40, 80, [3, 5, 7], [1], [1, 1], 2),
        (80, 80, [3, 5], [1], [1, 1], 1),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = _conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(*(MixInvertedResidual(*c) for c in self.CFG))
        self.conv_head = _conv_bn(80, 128, 1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.conv_head(self.blocks(self.conv_stem(x)))
        return self.classifier(x.mean((2, 3)))


def mixnet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(MixNet(), size, 17, seed, dynamo)


# ---- SKNet (timm selective_kernel.py) -----------------------------------------------------------


class SelectiveKernelAttn(nn.Module):
    def __init__(self, channels: int, num_paths: int = 2, attn_channels: int = 8) -> None:
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(attn_channels)
        self.act = nn.ReLU()
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, kernel_size=1, bias=False)

    def forward(self, x):
        x = x.sum(1).mean((2, 3), keepdim=True)
        x = self.act(self.bn(self.fc_reduce(x)))
        x = self.fc_select(x)
        B, C, H, W = x.shape
        x = x.view(B, self.num_paths, C // self.num_paths, H, W)
        return torch.softmax(x, dim=1)


class SelectiveKernel(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, split_input: bool = True) -> None:
        super().__init__()
        kernel_size = [3, 5]
        dilation = [(k - 1) // 2 for k in kernel_size]  # keep_3x3
        self.num_paths, self.in_channels, self.split_input = 2, cin, split_input
        path_in = cin // self.num_paths if split_input else cin
        self.paths = nn.ModuleList(_conv_bn(path_in, cout, 3, stride, dilation=d) for d in dilation)
        self.attn = SelectiveKernelAttn(cout, self.num_paths, max(8, cout // 8))

    def forward(self, x):
        if self.split_input:
            x_split = torch.split(x, self.in_channels // self.num_paths, 1)
            x_paths = [op(x_split[i]) for i, op in enumerate(self.paths)]
        else:
            x_paths = [op(x) for op in self.paths]
        x = torch.stack(x_paths, dim=1)
        x_attn = self.attn(x)
        x = x * x_attn
        return torch.sum(x, dim=1)


class SelectiveKernelBasic(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = SelectiveKernel(cin, planes, stride)
        self.conv2 = _conv_bn(planes, planes, 3, act=False)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = _conv_bn(cin, planes, 1, stride, act=False)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(self.conv1(x)) + shortcut)


class SkResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [SelectiveKernelBasic(cin, w, 1 if i == 0 else 2)]
            blocks += [SelectiveKernelBasic(w, w)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


def sknet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(SkResNet(), size, 17, seed, dynamo)


# ---- NF-ResNet (timm nfnet.py) ------------------------------------------------------------------


class ScaledStdConv2d(nn.Conv2d):
    def __init__(self, cin, cout, k, stride=1, groups=1, bias=True, gamma=1.0, eps=1e-6):
        super().__init__(cin, cout, k, stride, k // 2, 1, groups, bias)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), 1.0))
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x):
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(self.gain * self.scale).view(-1),
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, 1, self.groups)


GAMMA_RELU = 1.7139588594436646  # timm _nonlin_gamma['relu']


def _act(x):
    return F.relu(x) * GAMMA_RELU


class NfBlock(nn.Module):
    def __init__(self, cin, cout, stride, alpha, beta, ratio=0.25) -> None:
        super().__init__()
        mid = int(cout * ratio)
        self.alpha, self.beta = alpha, beta
        self.downsample = None
        if stride != 1 or cin != cout:  # DownsampleAvg
            self.pool = (
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity()
            )
            self.downsample = ScaledStdConv2d(cin, cout, 1, gamma=GAMMA_RELU)
        self.conv1 = ScaledStdConv2d(cin, mid, 1, gamma=GAMMA_RELU)
        self.conv2 = ScaledStdConv2d(mid, mid, 3, stride, gamma=GAMMA_RELU)
        self.attn = SqueezeExcite(mid, max(4, mid // 4), torch.sigmoid)
        self.conv3 = ScaledStdConv2d(mid, cout, 1, gamma=GAMMA_RELU)
        self.skipinit_gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        out = _act(x) * self.beta
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(self.pool(out))
        out = self.conv2(_act(self.conv1(out)))
        out = 2.0 * self.attn(_act(out))  # attn_gain
        out = self.conv3(_act(out))
        out = out * self.skipinit_gain
        return out * self.alpha + shortcut


class NfResNet(nn.Module):
    def __init__(self, widths=(32, 64, 128), alpha=0.2, num_classes=10) -> None:
        super().__init__()
        self.stem = nn.Sequential(ScaledStdConv2d(3, 16, 7, 2, gamma=GAMMA_RELU))
        blocks, cin, expected_var = [], 16, 1.0
        for i, w in enumerate(widths):
            for j in range(2):
                beta = 1.0 / expected_var**0.5
                blocks.append(NfBlock(cin, w, 2 if j == 0 and i > 0 else 1, alpha, beta))
                expected_var = 1.0 if j == 0 else expected_var + alpha**2
                cin = w
        self.stages = nn.Sequential(*blocks)
        self.final_conv = ScaledStdConv2d(cin, 2 * cin, 1, gamma=GAMMA_RELU)
        self.fc = nn.Linear(2 * cin, num_classes)

    def forward(self, x):
        x = F.max_pool2d(_act(self.stem(x)), 3, 2, 1)
        x = _act(self.final_conv(self.stages(x)))
        return self.fc(x.mean((2, 3)))


def nf_resnet(
    size: int = 64, seed: int = 0, dynamo: bool = False, opset: int = 17
) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = NfResNet()
    for m in model.modules():
        if isinstance(m, ScaledStdConv2d):
            m.gain.data.uniform_(0.5, 1.5)  # trained gains, not 1
    return export(model, size, opset, seed, dynamo)


# ---- DPN (timm dpn.py) --------------------------------------------------------------------------


class BnActConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin, eps=0.001)
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(F.relu(self.bn(x)))


class DualPathBlock(nn.Module):
    def __init__(self, cin, num_1x1_a, num_3x3_b, num_1x1_c, inc, groups, block_type) -> None:
        super().__init__()
        self.num_1x1_c, self.inc = num_1x1_c, inc
        self.c1x1_w = None
        if block_type != "normal":  # proj (stride 1) or down (stride 2)
            stride = 2 if block_type == "down" else 1
            self.c1x1_w = BnActConv2d(cin, num_1x1_c + 2 * inc, 1, stride)
        self.key_stride = 2 if block_type == "down" else 1
        self.c1x1_a = BnActConv2d(cin, num_1x1_a, 1)
        self.c3x3_b = BnActConv2d(num_1x1_a, num_3x3_b, 3, self.key_stride, groups)
        self.c1x1_c = BnActConv2d(num_3x3_b, num_1x1_c + inc, 1)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.c1x1_w is None:
            x_s1, x_s2 = x[0], x[1]
        else:
            x_s = self.c1x1_w(x_in)
            x_s1 = x_s[:, : self.num_1x1_c, :, :]
            x_s2 = x_s[:, self.num_1x1_c :, :, :]
        x_in = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        out1 = x_in[:, : self.num_1x1_c, :, :]
        out2 = x_in[:, self.num_1x1_c :, :, :]
        resid = x_s1 + out1
        dense = torch.cat([x_s2, out2], dim=1)
        return resid, dense


class Dpn(nn.Module):
    # dpn68-like (small): k_r, groups, k_sec, inc_sec, bw per stage
    def __init__(self, k_r=16, groups=4, k_sec=(1, 2, 2), inc_sec=(4, 8, 8), num_classes=10):
        super().__init__()
        self.conv1_1 = _conv_bn(3, 16, 3, 2)
        blocks, cin = [nn.MaxPool2d(3, 2, 1)], 16
        for i, (n, inc) in enumerate(zip(k_sec, inc_sec, strict=True)):
            bw = 16 * 2**i
            r = (k_r * bw) // 16
            blocks.append(DualPathBlock(cin, r, r, bw, inc, groups, "proj" if i == 0 else "down"))
            cin = bw + 3 * inc
            for _ in range(2, n + 1):
                blocks.append(DualPathBlock(cin, r, r, bw, inc, groups, "normal"))
                cin += inc
        self.features = nn.Sequential(*blocks)
        self.conv5_bn_ac = nn.BatchNorm2d(cin, eps=0.001)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x):
        x = self.features(self.conv1_1(x))
        x = F.relu(self.conv5_bn_ac(torch.cat(x, dim=1)))  # CatBnAct
        x = self.classifier(F.adaptive_avg_pool2d(x, 1))
        return x.flatten(1)


def dpn(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(Dpn(), size, 17, seed, dynamo)
