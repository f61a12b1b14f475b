"""Pose estimators, written the way their projects write them.

- ``rtmpose``: mmpose's RTMPose: the CSPNeXt backbone (``rtmdet_torch``), ``RTMCCHead``
  (a 7x7 conv to K keypoint maps, ``flatten(2)``, ``ScaleNorm`` + Linear to the token
  width, one ``RTMCCBlock`` gated attention unit, SimCC ``cls_x``/``cls_y`` Linears).
  The GAU (``mmpose/models/utils/rtmcc_block.py``): ``ScaleNorm`` (the L2 norm over the
  channels times ``dim ** -0.5``), ``uv = SiLU(Linear(x))`` split into ``u``, ``v`` (e
  each) and ``base`` (s), ``q, k = unbind(base[:, :, None] * gamma + beta, 2)``, a
  relative position bias built from ``w`` by pad/repeat/slice, ``relu(qk / sqrt(s)) ** 2``,
  ``u * (kernel @ v)``, the output Linear, and a learned per-channel ``Scale`` on the
  residual;
- ``litehrnet``: HRNet-Team's Lite-HRNet (``models/backbones/litehrnet.py``): the stem's
  ``chunk(2)`` / concat / ``channel_shuffle``; conditional channel weighting (each branch
  chunked in halves, the cross-resolution weighting pools every branch to the smallest
  size, concatenates, two 1x1 convs, ``torch.split`` back, ``F.interpolate`` and
  multiplies; depthwise conv, spatial weighting (squeeze-excite), concat, shuffle); HRNet
  fuse layers; a 1x1 heatmap head on the high-resolution branch.
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from rtmdet_torch import CSPNeXt
from torch import nn

# ---- RTMPose (mmpose models/heads/coord_cls_heads/rtmcc_head.py) ---------------------------


class ScaleNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x):
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    def __init__(self, dim, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x):
        return x * self.scale


class RTMCCBlock(nn.Module):
    def __init__(self, num_token, in_token_dims, out_token_dims, expansion_factor=2, s=16):
        super().__init__()
        self.s = s
        self.num_token = num_token
        self.e = int(in_token_dims * expansion_factor)
        self.w = nn.Parameter(torch.rand([2 * num_token - 1], dtype=torch.float))
        self.o = nn.Linear(self.e, out_token_dims, bias=False)
        self.uv = nn.Linear(in_token_dims, 2 * self.e + self.s, bias=False)
        self.gamma = nn.Parameter(torch.rand((2, self.s)))
        self.beta = nn.Parameter(torch.rand((2, self.s)))
        self.ln = ScaleNorm(in_token_dims, eps=1e-5)
        nn.init.xavier_uniform_(self.uv.weight)
        self.act_fn = nn.SiLU(True)
        self.shortcut = in_token_dims == out_token_dims
        if self.shortcut:
            self.res_scale = Scale(in_token_dims)
        self.sqrt_s = math.sqrt(s)

    def rel_pos_bias(self, seq_len):
        t = F.pad(self.w[: 2 * seq_len - 1], [0, seq_len]).repeat(seq_len)
        t = t[..., :-seq_len].reshape(-1, seq_len, 3 * seq_len - 2)
        r = (2 * seq_len - 1) // 2
        return t[..., r:-r]

    def _forward(self, x):
        x = self.ln(x)
        uv = self.act_fn(self.uv(x))
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma[None, None, :] + self.beta
        q, k = torch.unbind(base, dim=2)
        qk = torch.bmm(q, k.permute(0, 2, 1))
        bias = self.rel_pos_bias(q.size(1))
        qk += bias[:, : q.size(1), : k.size(1)]
        kernel = torch.square(F.relu(qk / self.sqrt_s))
        x = u * torch.bmm(kernel, v)
        return self.o(x)

    def forward(self, x):
        main_branch = self._forward(x)
        return self.res_scale(x) + main_branch if self.shortcut else main_branch


class RTMCCHead(nn.Module):
    def __init__(self, in_channels, out_channels, input_size, in_featuremap_size, hidden=32):
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, out_channels, 7, 1, 3)
        flatten_dims = in_featuremap_size[0] * in_featuremap_size[1]
        self.mlp = nn.Sequential(
            ScaleNorm(flatten_dims), nn.Linear(flatten_dims, hidden, bias=False)
        )
        w, h = input_size
        self.gau = RTMCCBlock(out_channels, hidden, hidden, s=16)
        self.cls_x = nn.Linear(hidden, int(w * 2.0), bias=False)  # simcc_split_ratio 2.0
        self.cls_y = nn.Linear(hidden, int(h * 2.0), bias=False)

    def forward(self, feats):
        feats = self.final_layer(feats[-1])
        feats = torch.flatten(feats, 2)
        feats = self.gau(self.mlp(feats))
        return self.cls_x(feats), self.cls_y(feats)


class RTMPose(nn.Module):
    def __init__(self, keypoints=17, input_size=(64, 64)):
        super().__init__()
        self.backbone = CSPNeXt(widths=(16, 16, 24, 32, 48))
        w, h = input_size
        self.head = RTMCCHead(48, keypoints, input_size, (w // 32, h // 32))

    def forward(self, x):
        return self.head(self.backbone(x))


def rtmpose_module(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = RTMPose()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Scale):
                m.scale.uniform_(0.5, 1.5)
            elif isinstance(m, ScaleNorm):
                m.g.uniform_(0.5, 1.5)
    return model


def rtmpose(seed: int = 0, opset: int = 11) -> onnx.ModelProto:
    """mmdeploy's RTMPose export (opset 11), input (1, 3, 64, 64)."""
    return export_as(rtmpose_module(seed), (1, 3, 64, 64), opset=opset, seed=seed)


# ---- Lite-HRNet (HRNet-Team/Lite-HRNet models/backbones/litehrnet.py) ----------------------


def conv_module(cin, cout, k=1, stride=1, groups=1, act: type[nn.Module] | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)]
    layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def channel_shuffle(x, groups):
    batch_size, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batch_size, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch_size, -1, height, width)


class SpatialWeighting(nn.Module):
    def __init__(self, channels, ratio=4):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Sequential(nn.Conv2d(channels, int(channels / ratio), 1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(int(channels / ratio), channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv2(self.conv1(self.global_avgpool(x)))


class CrossResolutionWeighting(nn.Module):
    def __init__(self, channels, ratio=4):
        super().__init__()
        self.channels = channels
        total = sum(channels)
        self.conv1 = conv_module(total, int(total / ratio), act=nn.ReLU)
        self.conv2 = conv_module(int(total / ratio), total, act=nn.Sigmoid)

    def forward(self, x):
        mini_size = x[-1].size()[-2:]
        out = [F.adaptive_avg_pool2d(s, mini_size) for s in x[:-1]] + [x[-1]]
        out = self.conv2(self.conv1(torch.cat(out, dim=1)))
        out = torch.split(out, self.channels, dim=1)
        return [
            s * F.interpolate(a, size=s.size()[-2:], mode="nearest")
            for s, a in zip(x, out, strict=True)
        ]


class ConditionalChannelWeighting(nn.Module):
    def __init__(self, in_channels, reduce_ratio=4):
        super().__init__()
        branch_channels = [c // 2 for c in in_channels]
        self.cross_resolution_weighting = CrossResolutionWeighting(branch_channels, reduce_ratio)
        self.depthwise_convs = nn.ModuleList(
            conv_module(c, c, 3, groups=c, act=None) for c in branch_channels
        )
        self.spatial_weighting = nn.ModuleList(SpatialWeighting(c, 4) for c in branch_channels)

    def forward(self, x):
        x = [s.chunk(2, dim=1) for s in x]
        x1 = [s[0] for s in x]
        x2 = self.cross_resolution_weighting([s[1] for s in x])
        x2 = [dw(s) for s, dw in zip(x2, self.depthwise_convs, strict=True)]
        x2 = [sw(s) for s, sw in zip(x2, self.spatial_weighting, strict=True)]
        out = [torch.cat([s1, s2], dim=1) for s1, s2 in zip(x1, x2, strict=True)]
        return [channel_shuffle(s, 2) for s in out]


class Stem(nn.Module):
    def __init__(self, in_channels, stem_channels, out_channels, expand_ratio=1):
        super().__init__()
        self.conv1 = conv_module(in_channels, stem_channels, 3, 2)
        mid = int(round(stem_channels * expand_ratio))
        branch = stem_channels // 2
        inc = (
            out_channels - branch if stem_channels == out_channels else out_channels - stem_channels
        )
        self.branch1 = nn.Sequential(
            conv_module(branch, branch, 3, 2, groups=branch, act=None), conv_module(branch, inc)
        )
        self.expand_conv = conv_module(branch, mid)
        self.depthwise_conv = conv_module(mid, mid, 3, 2, groups=mid, act=None)
        self.linear_conv = conv_module(
            mid, branch if stem_channels == out_channels else stem_channels
        )

    def forward(self, x):
        x1, x2 = self.conv1(x).chunk(2, dim=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return channel_shuffle(torch.cat((self.branch1(x1), x2), dim=1), 2)


class LiteHRModule(nn.Module):
    """Two branches, ``LITE`` blocks (conditional channel weighting), HRNet fusion."""

    def __init__(self, channels=(16, 32), blocks=1):
        super().__init__()
        self.layers = nn.Sequential(*(ConditionalChannelWeighting(channels) for _ in range(blocks)))
        c0, c1 = channels
        self.up = nn.Sequential(
            nn.Conv2d(c1, c0, 1, bias=False),
            nn.BatchNorm2d(c0),
            nn.Upsample(scale_factor=2, mode="nearest"),
        )
        self.down = nn.Sequential(
            nn.Conv2d(c0, c0, 3, 2, 1, groups=c0, bias=False),
            nn.BatchNorm2d(c0),
            nn.Conv2d(c0, c1, 1, bias=False),
            nn.BatchNorm2d(c1),
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.layers(x)
        return [self.relu(out[0] + self.up(out[1])), self.relu(self.down(out[0]) + out[1])]


class LiteHRNet(nn.Module):
    def __init__(self, keypoints=17):
        super().__init__()
        self.stem = Stem(3, 16, 16)
        self.transition = nn.Sequential(  # a new branch: dw 3x3 s2 + pw 1x1 + ReLU
            nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.stage = nn.Sequential(LiteHRModule(), LiteHRModule())
        self.final_layer = nn.Conv2d(16, keypoints, 1)  # TopdownHeatmapSimpleHead, no deconvs

    def forward(self, x):
        x = self.stem(x)
        return self.final_layer(self.stage([x, self.transition(x)])[0])


def litehrnet(seed: int = 0, opset: int = 11) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(LiteHRNet(), (1, 3, 64, 48), opset=opset, seed=seed)


# ---- MoveNet-style single-pose head (CenterNet heads, decoding in the graph) ---------------


class MoveNetLite(nn.Module):
    """A MobileNetV2-style body and FPN, MoveNet's four heads (person center, keypoint
    regression from the center, keypoint heatmaps, offsets: depthwise 3x3, 1x1 + ReLU,
    1x1), and its decoding exported with the model: the center's ``argmax`` over the
    flattened map, the regression gathered there (``gather`` along the pixels), the
    keypoints ``center + regression`` and the heatmaps."""

    def __init__(self, keypoints=17, width=16):
        super().__init__()
        self.k = keypoints

        def ir(cin, cout, stride):
            hidden = cin * 3
            return nn.Sequential(
                conv_module(cin, hidden, act=nn.ReLU6),
                conv_module(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                conv_module(hidden, cout, act=None),
            )

        self.stem = conv_module(3, width, 3, 2, act=nn.ReLU6)
        self.s4 = ir(width, width, 2)
        self.s8 = ir(width, width * 2, 2)
        self.lat4 = nn.Conv2d(width, width, 1)
        self.lat8 = nn.Conv2d(width * 2, width, 1)

        def head(cout):
            return nn.Sequential(
                nn.Conv2d(width, width, 3, 1, 1, groups=width),
                nn.Conv2d(width, width, 1),
                nn.ReLU(),
                nn.Conv2d(width, cout, 1),
            )

        self.center = head(1)
        self.regs = head(2 * keypoints)
        self.heat = head(keypoints)
        self.offsets = head(2 * keypoints)

    def forward(self, x):
        c4 = self.s4(self.stem(x))
        f = self.lat4(c4) + F.interpolate(self.lat8(self.s8(c4)), scale_factor=2.0)
        center = torch.sigmoid(self.center(f))
        regs, heat = self.regs(f), torch.sigmoid(self.heat(f))
        b, _, _, w = center.shape
        idx = center.flatten(1).argmax(1)
        cy, cx = (idx // w).float(), (idx % w).float()
        gathered = regs.flatten(2).gather(2, idx.view(b, 1, 1).expand(b, 2 * self.k, 1))
        reg = gathered.view(b, self.k, 2)
        offs = self.offsets(f).flatten(2).gather(2, idx.view(b, 1, 1).expand(b, 2 * self.k, 1))
        ky = cy.view(b, 1) + reg[:, :, 0] + offs.view(b, self.k, 2)[:, :, 0]
        kx = cx.view(b, 1) + reg[:, :, 1] + offs.view(b, self.k, 2)[:, :, 1]
        return torch.stack([ky, kx], -1), heat


def movenet(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(MoveNetLite(), (1, 3, 64, 64), opset=opset, seed=seed)
