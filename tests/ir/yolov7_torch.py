"""A small YOLOv7 written the way WongKinYiu/yolov7 computes it (``models/common.py``,
``models/yolo.py``, ``cfg/training/yolov7.yaml`` at reduced width), exported as its
``export.py --grid`` does (TorchScript, opset 12, constant folding, static shape).

- E-ELAN blocks: two 1x1 convs of the input, a chain of 3x3 convs from the second, a concat
  of ``[-1, -3, -5, -6]`` (backbone) or of all six (head, halved widths in the chain), a 1x1;
- MP downsampling: ``cat([conv3x3s2(conv1x1(x)), conv1x1(maxpool(x))])``, in the head with
  the earlier pyramid level concatenated as well;
- SPPCSPC: max-pools 5/9/13 of one branch concatenated, a CSP concat with the other;
- RepConv in its training form (3x3 + BN, 1x1 + BN, summed, SiLU) before each detection
  layer;
- IDetect: ``ImplicitA`` (a learned ``(1, C, 1, 1)`` added to the detection conv's input),
  the conv, ``ImplicitM`` (a learned ``(1, na * no, 1, 1)`` multiplying its output),
  ``view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2)``, sigmoid, xy/wh decoding from slices
  ``y[..., 0:2]``, ``y[..., 2:4]``, ``y[..., 4:]`` with grid and anchor-grid constants, a
  concat and ``view(bs, -1, no)``; the raw maps are outputs too.
"""

from __future__ import annotations

import onnx
import torch
from export_torch import export_as
from torch import nn


def autopad(k, p=None):
    return k // 2 if p is None else p


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ELAN(nn.Module):
    """``[-1, -3, -5, -6]`` concat of the backbone, or all six with ``head=True``."""

    def __init__(self, c1, c_, c2, head=False):
        super().__init__()
        self.head = head
        cm = c_ // 2 if head else c_
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c1, c_, 1)
        self.chain = nn.ModuleList(Conv(c_ if i == 0 else cm, cm, 3) for i in range(4))
        cat = 2 * c_ + 4 * cm if head else 2 * c_ + 2 * cm
        self.out = Conv(cat, c2, 1)

    def forward(self, x):
        y1, y2 = self.cv1(x), self.cv2(x)
        ys = [y1, y2]
        for m in self.chain:
            ys.append(m(ys[-1]))
        parts = ys[::-1] if self.head else [ys[5], ys[3], ys[1], ys[0]]
        return self.out(torch.cat(parts, 1))


class MPDown(nn.Module):
    def __init__(self, c1, c):
        super().__init__()
        self.mp = nn.MaxPool2d(2, 2)
        self.cv1 = Conv(c1, c, 1)
        self.cv2 = Conv(c1, c, 1)
        self.cv3 = Conv(c, c, 3, 2)

    def forward(self, x, previous=None):
        parts = [self.cv3(self.cv2(x)), self.cv1(self.mp(x))]
        return torch.cat(parts if previous is None else [*parts, previous], 1)


class SPPCSPC(nn.Module):
    def __init__(self, c1, c2, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), dim=1))


class RepConv(nn.Module):
    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        self.act = nn.SiLU()
        self.rbr_identity = nn.BatchNorm2d(c1) if c2 == c1 and s == 1 else None
        self.rbr_dense = nn.Sequential(
            nn.Conv2d(c1, c2, k, s, autopad(k), bias=False), nn.BatchNorm2d(c2)
        )
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, bias=False), nn.BatchNorm2d(c2))

    def forward(self, inputs):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.act(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)


class ImplicitA(nn.Module):
    def __init__(self, channel, mean=0.0, std=0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    def __init__(self, channel, mean=1.0, std=0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x):
        return self.implicit * x


ANCHORS = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))


class IDetect(nn.Module):
    def __init__(self, nc=3, anchors=ANCHORS, ch=(), strides=(8.0, 16.0, 32.0)):
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.stride = torch.tensor(strides)
        self.grid = [torch.zeros(1)] * self.nl
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    @staticmethod
    def _make_grid(nx=20, ny=20):
        yv, xv = torch.meshgrid([torch.arange(ny), torch.arange(nx)], indexing="ij")
        return torch.stack((xv, yv), 2).view((1, 1, ny, nx, 2)).float()

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.im[i](self.m[i](self.ia[i](x[i])))
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.grid[i].shape[2:4] != x[i].shape[2:4]:
                self.grid[i] = self._make_grid(nx, ny).to(x[i].device)
            y = x[i].sigmoid()
            xy = (y[..., 0:2] * 2.0 - 0.5 + self.grid[i]) * self.stride[i]
            wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i].data
            y = torch.cat((xy, wh, y[..., 4:]), -1)
            z.append(y.view(bs, -1, self.no))
        return torch.cat(z, 1), x


class TinyYOLOv7(nn.Module):
    def __init__(self, nc=3):
        super().__init__()
        self.stem = nn.Sequential(
            Conv(3, 8, 3), Conv(8, 16, 3, 2), Conv(16, 16, 3), Conv(16, 32, 3, 2)
        )
        self.elan2 = ELAN(32, 16, 64)
        self.down3, self.elan3 = MPDown(64, 32), ELAN(64, 32, 128)
        self.down4, self.elan4 = MPDown(128, 64), ELAN(128, 32, 128)
        self.down5, self.elan5 = MPDown(128, 64), ELAN(128, 32, 128)
        self.sppcspc = SPPCSPC(128, 64)
        self.up = nn.Upsample(None, 2, "nearest")
        self.lat5, self.route4 = Conv(64, 32, 1), Conv(128, 32, 1)
        self.head4 = ELAN(64, 32, 32, head=True)
        self.lat4, self.route3 = Conv(32, 16, 1), Conv(128, 16, 1)
        self.head3 = ELAN(32, 16, 16, head=True)
        self.pan4, self.pan4_elan = MPDown(16, 16), ELAN(64, 32, 32, head=True)
        self.pan5, self.pan5_elan = MPDown(32, 32), ELAN(128, 64, 64, head=True)
        self.rep = nn.ModuleList(RepConv(c, 2 * c) for c in (16, 32, 64))
        self.detect = IDetect(nc, ch=(32, 64, 128))

    def forward(self, x):
        p3 = self.elan3(self.down3(self.elan2(self.stem(x))))
        p4 = self.elan4(self.down4(p3))
        h5 = self.sppcspc(self.elan5(self.down5(p4)))
        h4 = self.head4(torch.cat([self.route4(p4), self.up(self.lat5(h5))], 1))
        h3 = self.head3(torch.cat([self.route3(p3), self.up(self.lat4(h4))], 1))
        o4 = self.pan4_elan(self.pan4(h3, h4))
        o5 = self.pan5_elan(self.pan5(o4, h5))
        return self.detect([rep(t) for rep, t in zip(self.rep, (h3, o4, o5), strict=True)])


def yolov7(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(TinyYOLOv7(), (1, 3, size, size), opset=12, seed=seed)
