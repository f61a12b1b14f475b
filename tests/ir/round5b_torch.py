"""Detectors of round 5b of the unseen-architecture battery (SSD300 and RetinaNet in
``round5b_det_torch.py``; segmenters in ``round5b_seg_torch.py``, ``round5b_ocr_torch.py``),
small widths, each block as its project writes it:

- ``yolov9``: GELAN-C (WongKinYiu/yolov9 ``models/common.py``, ``models/detect/gelan-c.yaml``):
  ``RepNCSPELAN4`` (``cv1(x).chunk(2, 1)``, two RepNCSP + Conv paths, ``cv4`` over the
  concat), ``ADown`` (``avg_pool2d(2, 1)``, chunk into halves: a strided 3x3 conv on one, a
  max pool and 1x1 conv on the other), ``SPPELAN``; ``DDetect`` with grouped 3x3 convs
  (``g=4``), ``DFL`` (softmax over ``reg_max`` bins, a 1x1 conv with ``arange`` weights) and
  ``dist2bbox`` (xywh) times the strides, ``cat(dbox, cls.sigmoid())``; exported as its
  ``export.py`` does (opset 12, dynamic batch).
- ``ppyoloe``: PP-YOLOE (PaddleDetection ``cspresnet.py``, ``custom_pan.py``,
  ``ppyoloe_head.py``): CSPRepResNet stages (``RepVggBlock`` 3x3 + 1x1 branches,
  ``EffectiveSELayer``: ``x * hardsigmoid(fc(mean(x)))``), a CSP-PAN with SPP, the ET-head
  (``ESEAttn``: ``conv(feat * sigmoid(fc(avg_feat)))``, ``cls`` reads ``stem + feat``), the
  DFL as ``proj_conv`` (fixed ``linspace`` weights) over ``softmax`` of the bins, distance to
  boxes times the strides; the exported form without NMS (boxes, scores), opset 11.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from torch import nn

# ---- YOLOv9 / GELAN ---------------------------------------------------------------------------


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RepConvN(nn.Module):
    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        self.conv1, self.conv2 = Conv(c1, c2, k, s, act=False), Conv(c1, c2, 1, s, 0, act=False)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv1(x) + self.conv2(x))


class RepNBottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, e=1.0):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2 = RepConvN(c1, c_, 3), Conv(c_, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class RepNCSP(nn.Module):
    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_), Conv(c1, c_), Conv(2 * c_, c2)
        self.m = nn.Sequential(*(RepNBottleneck(c_, c_) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class RepNCSPELAN4(nn.Module):
    def __init__(self, c1, c2, c3, c4, c5=1):
        super().__init__()
        self.cv1 = Conv(c1, c3, 1)
        self.cv2 = nn.Sequential(RepNCSP(c3 // 2, c4, c5), Conv(c4, c4, 3))
        self.cv3 = nn.Sequential(RepNCSP(c4, c4, c5), Conv(c4, c4, 3))
        self.cv4 = Conv(c3 + 2 * c4, c2, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in [self.cv2, self.cv3])
        return self.cv4(torch.cat(y, 1))


class ADown(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.c = c2 // 2
        self.cv1, self.cv2 = Conv(c1 // 2, self.c, 3, 2, 1), Conv(c1 // 2, self.c, 1, 1, 0)

    def forward(self, x):
        x = F.avg_pool2d(x, 2, 1, 0, False, True)
        x1, x2 = x.chunk(2, 1)
        x1 = self.cv1(x1)
        x2 = self.cv2(F.max_pool2d(x2, 3, 2, 1))
        return torch.cat((x1, x2), 1)


class SPPELAN(nn.Module):
    def __init__(self, c1, c2, c3, k=5):
        super().__init__()
        self.cv1, self.cv5 = Conv(c1, c3, 1), Conv(4 * c3, c2, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for _ in range(3))

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(m(y[-1]) for m in self.pools)
        return self.cv5(torch.cat(y, 1))


class DFL(nn.Module):
    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _c, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(shapes, strides, offset=0.5):
    points, stride_tensor = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        sy, sx = torch.meshgrid(torch.arange(h) + offset, torch.arange(w) + offset, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), float(s)))
    return torch.cat(points).transpose(0, 1), torch.cat(stride_tensor).transpose(0, 1)


class DDetect(nn.Module):
    def __init__(self, nc, ch, strides, reg_max=16):
        super().__init__()
        self.nc, self.reg_max, self.no, self.strides = nc, reg_max, nc + reg_max * 4, strides
        c2 = max(ch[0] // 4, reg_max * 4, 16)
        c3 = max(ch[0], min(nc * 2, 128))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3, g=4), nn.Conv2d(c2, 4 * reg_max, 1))
            for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3, g=4), nn.Conv2d(c3, nc, 1)) for x in ch
        )
        self.dfl = DFL(reg_max)

    def forward(self, x):
        shape = x[0].shape
        x = [torch.cat((a(xi), b(xi)), 1) for xi, a, b in zip(x, self.cv2, self.cv3, strict=True)]
        anchors, strides = make_anchors([xi.shape[2:] for xi in x], self.strides)
        box, cls = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2).split(
            (self.reg_max * 4, self.nc), 1
        )
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class TinyGELAN(nn.Module):
    """gelan-c.yaml at 1/8 of its widths (64 -> 8), one RepNCSP bottleneck per stage."""

    def __init__(self, nc=4, w=8):
        super().__init__()
        e = RepNCSPELAN4
        self.b1, self.b2 = Conv(3, w, 3, 2), Conv(w, 2 * w, 3, 2)
        self.b3, self.b4 = e(2 * w, 4 * w, 2 * w, w), ADown(4 * w, 4 * w)
        self.b5, self.b6 = e(4 * w, 8 * w, 4 * w, 2 * w), ADown(8 * w, 8 * w)
        self.b7, self.b8 = e(8 * w, 8 * w, 8 * w, 4 * w), ADown(8 * w, 8 * w)
        self.b9, self.sppelan = e(8 * w, 8 * w, 8 * w, 4 * w), SPPELAN(8 * w, 8 * w, 4 * w)
        self.h13, self.h16 = e(16 * w, 8 * w, 8 * w, 4 * w), e(16 * w, 4 * w, 4 * w, 2 * w)
        self.h17, self.h19 = ADown(4 * w, 4 * w), e(12 * w, 8 * w, 8 * w, 4 * w)
        self.h20, self.h22 = ADown(8 * w, 8 * w), e(16 * w, 8 * w, 8 * w, 4 * w)
        self.up = nn.Upsample(None, 2, "nearest")
        self.detect = DDetect(nc, (4 * w, 8 * w, 8 * w), (8, 16, 32))

    def forward(self, x):
        p3 = self.b5(self.b4(self.b3(self.b2(self.b1(x)))))
        p4 = self.b7(self.b6(p3))
        p5 = self.sppelan(self.b9(self.b8(p4)))
        h13 = self.h13(torch.cat((self.up(p5), p4), 1))
        h16 = self.h16(torch.cat((self.up(h13), p3), 1))
        h19 = self.h19(torch.cat((self.h17(h16), h13), 1))
        h22 = self.h22(torch.cat((self.h20(h19), p5), 1))
        return self.detect([h16, h19, h22])


def yolov9(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """GELAN-C as yolov9's ``export.py --include onnx --dynamic`` writes it (opset 12)."""
    return export(
        TinyGELAN(), size, 12, seed, dynamo, **({} if dynamo else {"dynamic_batch": True})
    )


# ---- PP-YOLOE ---------------------------------------------------------------------------------


class ConvBNLayer(nn.Module):
    def __init__(self, ch_in, ch_out, k=3, stride=1, padding=0, act=True):
        super().__init__()
        self.conv = nn.Conv2d(ch_in, ch_out, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(ch_out)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RepVggBlock(nn.Module):
    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.conv1 = ConvBNLayer(ch_in, ch_out, 3, 1, 1, act=False)
        self.conv2 = ConvBNLayer(ch_in, ch_out, 1, 1, 0, act=False)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv1(x) + self.conv2(x))


class BasicBlock(nn.Module):
    def __init__(self, ch_in, ch_out, shortcut=True):
        super().__init__()
        self.conv1, self.conv2 = ConvBNLayer(ch_in, ch_out, 3, 1, 1), RepVggBlock(ch_out, ch_out)
        self.shortcut = shortcut

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class EffectiveSELayer(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class CSPResStage(nn.Module):
    def __init__(self, ch_in, ch_out, n, stride=2):
        super().__init__()
        ch_mid = (ch_in + ch_out) // 2
        self.conv_down = ConvBNLayer(ch_in, ch_mid, 3, stride, 1) if stride == 2 else None
        self.conv1, self.conv2 = (
            ConvBNLayer(ch_mid, ch_mid // 2, 1),
            ConvBNLayer(ch_mid, ch_mid // 2, 1),
        )
        self.blocks = nn.Sequential(*(BasicBlock(ch_mid // 2, ch_mid // 2) for _ in range(n)))
        self.attn, self.conv3 = EffectiveSELayer(ch_mid), ConvBNLayer(ch_mid, ch_out, 1)

    def forward(self, x):
        if self.conv_down is not None:
            x = self.conv_down(x)
        y = torch.cat([self.conv1(x), self.blocks(self.conv2(x))], 1)
        return self.conv3(self.attn(y))


class SPP(nn.Module):
    def __init__(self, ch_in, ch_out, pool_size=(5, 9, 13)):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in pool_size)
        self.conv = ConvBNLayer(ch_in * 4, ch_out, 1)

    def forward(self, x):
        return self.conv(torch.cat([x] + [p(x) for p in self.pools], 1))


class CSPStage(nn.Module):
    """custom_pan.py ``CSPStage``: BasicBlocks without shortcut, SPP after the first when asked."""

    def __init__(self, ch_in, ch_out, n, spp=False):
        super().__init__()
        ch_mid = ch_out // 2
        self.conv1, self.conv2 = ConvBNLayer(ch_in, ch_mid, 1), ConvBNLayer(ch_in, ch_mid, 1)
        layers = []
        for i in range(n):
            layers.append(BasicBlock(ch_mid, ch_mid, shortcut=False))
            if i == (n - 1) // 2 and spp:
                layers.append(SPP(ch_mid, ch_mid))
        self.convs, self.conv3 = nn.Sequential(*layers), ConvBNLayer(ch_mid * 2, ch_out, 1)

    def forward(self, x):
        return self.conv3(torch.cat([self.conv1(x), self.convs(self.conv2(x))], 1))


class ESEAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc, self.conv = nn.Conv2d(c, c, 1), ConvBNLayer(c, c, 1)

    def forward(self, feat, avg_feat):
        return self.conv(feat * torch.sigmoid(self.fc(avg_feat)))


class PPYOLOEHead(nn.Module):
    def __init__(self, chs, nc=4, reg_max=16, strides=(8, 16, 32)):
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, strides
        self.stem_cls = nn.ModuleList(ESEAttn(c) for c in chs)
        self.stem_reg = nn.ModuleList(ESEAttn(c) for c in chs)
        self.pred_cls = nn.ModuleList(nn.Conv2d(c, nc, 3, padding=1) for c in chs)
        self.pred_reg = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + 1), 3, padding=1) for c in chs)
        self.proj_conv = nn.Conv2d(reg_max + 1, 1, 1, bias=False).requires_grad_(False)
        self.proj_conv.weight.data[:] = torch.linspace(0, reg_max, reg_max + 1).view(1, -1, 1, 1)

    def forward(self, feats):
        scores, dists = [], []
        for i, feat in enumerate(feats):
            _, _, h, w = feat.shape
            avg = F.adaptive_avg_pool2d(feat, (1, 1))
            cls_logit = self.pred_cls[i](self.stem_cls[i](feat, avg) + feat)
            reg = self.pred_reg[i](self.stem_reg[i](feat, avg))
            reg = reg.reshape([-1, 4, self.reg_max + 1, h * w]).permute(0, 2, 3, 1)
            dists.append(self.proj_conv(F.softmax(reg, dim=1)).squeeze(1))
            scores.append(torch.sigmoid(cls_logit).reshape([-1, self.nc, h * w]))
        anchors, strides = make_anchors([f.shape[2:] for f in feats], self.strides)
        lt, rb = torch.cat(dists, 1).split(2, -1)
        points = anchors.transpose(0, 1)
        boxes = torch.cat([points - lt, points + rb], -1) * strides.transpose(0, 1)
        return boxes, torch.cat(scores, -1)


class TinyPPYOLOE(nn.Module):
    """PP-YOLOE-s proportions at small widths: channels (8, 16, 32, 64, 128) * 0.5."""

    def __init__(self, nc=4):
        super().__init__()
        ch = [8, 16, 32, 64, 128]
        self.stem = nn.Sequential(
            ConvBNLayer(3, ch[0] // 2, 3, 2, 1),
            ConvBNLayer(ch[0] // 2, ch[0] // 2, 3, 1, 1),
            ConvBNLayer(ch[0] // 2, ch[0], 3, 1, 1),
        )
        self.stages = nn.ModuleList(CSPResStage(ch[i], ch[i + 1], 1) for i in range(4))
        out = [96, 48, 24]  # fpn widths, deep to shallow
        self.fpn = nn.ModuleList(
            [
                CSPStage(ch[4], out[0], 1, spp=True),
                CSPStage(ch[3] + out[0] // 2, out[1], 1),
                CSPStage(ch[2] + out[1] // 2, out[2], 1),
            ]
        )
        self.fpn_route = nn.ModuleList(ConvBNLayer(out[i], out[i] // 2, 1) for i in range(2))
        self.pan_route = nn.ModuleList(
            ConvBNLayer(out[2 - i], out[2 - i], 3, 2, 1) for i in range(2)
        )
        self.pan = nn.ModuleList(
            CSPStage(out[2 - i] + out[1 - i] // 2 * 2, out[1 - i], 1) for i in range(2)
        )
        self.head = PPYOLOEHead([out[2], out[1], out[0]], nc)

    def forward(self, x):
        x, feats = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        block, fpn = None, []
        for i, feat in enumerate(feats[1:][::-1]):
            block = feat if i == 0 else torch.cat([block, feat], 1)
            block = self.fpn[i](block)
            fpn.append(block)
            if i < 2:
                block = F.interpolate(self.fpn_route[i](block), scale_factor=2.0)
        pan = [fpn[-1]]
        for i in range(2):
            route = self.pan_route[i](pan[-1])
            pan.append(self.pan[i](torch.cat([route, fpn[1 - i]], 1)))
        return self.head(pan)


def ppyoloe(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyPPYOLOE(), size, 11, seed, dynamo)
