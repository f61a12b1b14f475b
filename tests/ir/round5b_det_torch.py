"""SSD300 and RetinaNet of round 5b of the unseen-architecture battery (more detectors in
``round5b_torch.py``), small widths, each block as its project writes it:

- ``ssd300``: SSD300-VGG16 (amdegroot/ssd.pytorch ``ssd.py``, decode as lufficc/SSD's
  ``box_head``): VGG with ``ceil_mode`` pool, pool5 3x3/1, dilated conv6, conv7,
  ``L2Norm`` on conv4_3 (``x / (sqrt(sum(x^2, C)) + eps) * weight.expand_as(x)``), the
  extra layers, loc/conf 3x3 heads per source, permute-view-cat, softmax of the scores and
  the prior-box decode (center variance 0.1, size variance 0.2, to corners); opset 11.
- ``retinanet``: torchvision ``retinanet_resnet50_fpn`` (ResNet of basic blocks here): FPN
  with ``LastLevelP6P7`` (P6 from C5), the classification and regression heads (four 3x3
  conv + ReLU, then the predictor) shared by every level, ``view(N, A, K, H, W).permute(0,
  3, 4, 1, 2).reshape(N, -1, K)`` and concat of the levels, sigmoid of the logits and the
  ``BoxCoder`` decode against the anchors; opset 11.
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from torch import nn

# ---- SSD300-VGG16 -----------------------------------------------------------------------------


class L2Norm(nn.Module):
    def __init__(self, n_channels, scale):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.full((n_channels,), float(scale))), 1e-10
        self.weight.data += torch.rand(n_channels)  # trained scales differ per channel

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        x = torch.div(x, norm)
        return self.weight.unsqueeze(0).unsqueeze(2).unsqueeze(3).expand_as(x) * x


def vgg(cfg, i=3):
    layers, in_channels = [], i
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif v == "C":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    conv6 = nn.Conv2d(in_channels, 2 * in_channels, kernel_size=3, padding=6, dilation=6)
    conv7 = nn.Conv2d(2 * in_channels, 2 * in_channels, kernel_size=1)
    return [*layers, pool5, conv6, nn.ReLU(inplace=True), conv7, nn.ReLU(inplace=True)]


def add_extras(cfg, i):
    layers, in_channels, flag = [], i, False
    for k, v in enumerate(cfg):
        if in_channels != "S":
            if v == "S":
                layers += [nn.Conv2d(in_channels, cfg[k + 1], (1, 3)[flag], stride=2, padding=1)]
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=(1, 3)[flag])]
            flag = not flag
        in_channels = v
    return layers


class TinySSD300(nn.Module):
    """ssd.pytorch's ``build_ssd('test', 300)`` at 1/8 of VGG's widths, its post-processing as
    lufficc/SSD exports it (softmax scores, boxes decoded against the priors)."""

    base_cfg = [8, 8, "M", 16, 16, "M", 32, 32, 32, "C", 64, 64, 64, "M", 64, 64, 64]
    extras_cfg = [32, "S", 64, 16, "S", 32, 16, 32, 16, 32]
    mbox = [4, 6, 6, 6, 4, 4]

    def __init__(self, nc=5):
        super().__init__()
        self.nc = nc
        self.vgg = nn.ModuleList(vgg(self.base_cfg))
        self.L2Norm = L2Norm(64, 20)
        self.extras = nn.ModuleList(add_extras(self.extras_cfg, 128))
        sources = [64, 128] + [v.out_channels for v in self.extras[1::2]]
        self.loc = nn.ModuleList(
            nn.Conv2d(c, m * 4, 3, padding=1) for c, m in zip(sources, self.mbox, strict=True)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, m * nc, 3, padding=1) for c, m in zip(sources, self.mbox, strict=True)
        )
        self.register_buffer("priors", self._priors((38, 19, 10, 5, 3, 1)))

    def _priors(self, fmaps):
        steps, sizes = (8, 16, 32, 64, 100, 300), (30, 60, 111, 162, 213, 264, 315)
        out = []
        for k, f in enumerate(fmaps):
            ratios = [2] if self.mbox[k] == 4 else [2, 3]
            for i in range(f * f):
                cx, cy = (i % f + 0.5) * steps[k] / 300, (i // f + 0.5) * steps[k] / 300
                s, s2 = sizes[k] / 300, math.sqrt(sizes[k] * sizes[k + 1]) / 300
                out += [[cx, cy, s, s], [cx, cy, s2, s2]]
                for r in ratios:
                    out += [[cx, cy, s * math.sqrt(r), s / math.sqrt(r)]]
                    out += [[cx, cy, s / math.sqrt(r), s * math.sqrt(r)]]
        return torch.tensor(out).clamp(0, 1)

    def forward(self, x):
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        loc = torch.cat(
            [
                loc_conv(s).permute(0, 2, 3, 1).contiguous().view(x.size(0), -1)
                for s, loc_conv in zip(sources, self.loc, strict=True)
            ],
            1,
        )
        conf = torch.cat(
            [
                c(s).permute(0, 2, 3, 1).contiguous().view(x.size(0), -1)
                for s, c in zip(sources, self.conf, strict=True)
            ],
            1,
        )
        loc, scores = (
            loc.view(x.size(0), -1, 4),
            F.softmax(conf.view(x.size(0), -1, self.nc), dim=2),
        )
        p = self.priors
        centers = loc[..., :2] * 0.1 * p[:, 2:] + p[:, :2]
        wh = torch.exp(loc[..., 2:] * 0.2) * p[:, 2:]
        return scores, torch.cat([centers - wh / 2, centers + wh / 2], 2)


def ssd300(seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinySSD300(), 300, 11, seed, dynamo)


# ---- RetinaNet (torchvision) ------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + idt)


class TinyResNet(nn.Module):
    def __init__(self, widths=(8, 16, 32, 64), blocks=1):
        super().__init__()
        self.conv1, self.bn1 = (
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
        )
        self.layers, cin = nn.ModuleList(), widths[0]
        for i, w in enumerate(widths):
            self.layers.append(
                nn.Sequential(
                    *(
                        ResBlock(cin if b == 0 else w, w, 2 if i and b == 0 else 1)
                        for b in range(blocks)
                    )
                )
            )
            cin = w

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class RetinaHead(nn.Module):
    def __init__(self, c, a, k):
        super().__init__()
        self.conv = nn.Sequential(
            *(m for _ in range(4) for m in (nn.Conv2d(c, c, 3, padding=1), nn.ReLU()))
        )
        self.pred, self.k = nn.Conv2d(c, a * k, 3, padding=1), k

    def forward(self, feats):
        out = []
        for f in feats:
            y = self.pred(self.conv(f))
            n, _, h, w = y.shape
            out.append(y.view(n, -1, self.k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.k))
        return torch.cat(out, 1)


class TinyRetinaNet(nn.Module):
    """torchvision ``retinanet_resnet50_fpn`` (v1: P6 from C5) on a small ResNet; 9 anchors."""

    def __init__(self, nc=4, c=24, a=9):
        super().__init__()
        self.body = TinyResNet()
        self.inner = nn.ModuleList(nn.Conv2d(w, c, 1) for w in (16, 32, 64))
        self.layer = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(3))
        self.p6, self.p7 = nn.Conv2d(64, c, 3, 2, 1), nn.Conv2d(c, c, 3, 2, 1)
        self.cls, self.reg = RetinaHead(c, a, nc), RetinaHead(c, a, 4)
        sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
        anchors = []
        for (h, w), s in zip(sizes, (8, 16, 32, 64, 128), strict=True):
            base = (
                torch.tensor(
                    [
                        [-r * m, -m / r, r * m, m / r]
                        for m in (s * 2, s * 2.52, s * 3.17)
                        for r in (0.7, 1.0, 1.41)
                    ]
                )
                / 2
            )
            ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
            shifts = torch.stack((xs, ys, xs, ys), -1).view(-1, 1, 4).float()
            anchors.append((shifts + base).reshape(-1, 4))
        self.register_buffer("anchors", torch.cat(anchors))

    def forward(self, x):
        _c2, c3, c4, c5 = self.body(x)
        last = self.inner[2](c5)
        results = [self.layer[2](last)]
        for i, feat in ((1, c4), (0, c3)):
            last = self.inner[i](feat) + F.interpolate(last, size=feat.shape[-2:], mode="nearest")
            results.insert(0, self.layer[i](last))
        p6 = self.p6(c5)
        feats = [*results, p6, self.p7(F.relu(p6))]
        logits, rel = self.cls(feats), self.reg(feats)
        widths, heights = (
            self.anchors[:, 2] - self.anchors[:, 0],
            self.anchors[:, 3] - self.anchors[:, 1],
        )
        cx, cy = self.anchors[:, 0] + 0.5 * widths, self.anchors[:, 1] + 0.5 * heights
        clip = math.log(1000.0 / 16)
        pcx, pcy = rel[..., 0] * widths + cx, rel[..., 1] * heights + cy
        pw, ph = (
            torch.exp(rel[..., 2].clamp(max=clip)) * widths,
            torch.exp(rel[..., 3].clamp(max=clip)) * heights,
        )
        boxes = torch.stack((pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2), 2)
        return torch.sigmoid(logits), boxes


def retinanet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyRetinaNet(), size, 11, seed, dynamo)
