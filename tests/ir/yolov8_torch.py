"""A small YOLOv8 detector written the way ultralytics 8.x computes it (``nn/modules``).

``Conv`` is Conv2d + BatchNorm2d + SiLU; ``C2f`` splits ``cv1``'s output in two (``chunk(2, 1)``
in training, ``split((c, c), 1)`` as the exporter switches it to ``forward_split``), appends
each bottleneck's output to the list and concatenates it; ``SPPF`` chains one MaxPool three
times; the neck upsamples with ``nn.Upsample`` and concatenates; ``Detect`` has a box branch
(``4 * reg_max`` channels) and a class branch per level, flattens each level with
``view(shape[0], no, -1)``, decodes the boxes with ``DFL`` (a fixed 1x1 conv over a softmax
of ``view(b, 4, 16, a).transpose(2, 1)``) and ``dist2bbox`` over the anchors of
``make_anchors`` (computed from the feature maps' shapes), and returns
``cat((dbox, cls.sigmoid()), 1)`` as the export does.
"""

from __future__ import annotations

import io

import onnx
import torch
from bn_calibrate import calibrate
from torch import nn


def autopad(k, p=None, d=1):
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n)
        )

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def forward_split(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class DFL(nn.Module):
    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        x = torch.arange(c1, dtype=torch.float)
        self.conv.weight.data[:] = nn.Parameter(x.view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, grid_cell_offset=0.5):
    anchor_points, stride_tensor = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for i, stride in enumerate(strides):
        _, _, h, w = feats[i].shape
        sx = torch.arange(end=w, device=device, dtype=dtype) + grid_cell_offset
        sy = torch.arange(end=h, device=device, dtype=dtype) + grid_cell_offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def dist2bbox(distance, anchor_points, xywh=True, dim=-1):
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        c_xy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        return torch.cat((c_xy, wh), dim)
    return torch.cat((x1y1, x2y2), dim)


class Detect(nn.Module):
    def __init__(self, nc=80, ch=(), strides=(8.0, 16.0, 32.0)):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        self.stride = torch.tensor(strides)
        self.shape = None
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
            for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, self.nc, 1)) for x in ch
        )
        self.dfl = DFL(self.reg_max)

    def forward(self, x):
        for i in range(self.nl):
            x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
        shape = x[0].shape  # BCHW
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        if self.shape != shape:
            self.anchors, self.strides = (
                t.transpose(0, 1) for t in make_anchors(x, self.stride, 0.5)
            )
            self.shape = shape
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=True, dim=1)
        return torch.cat((dbox * self.strides, cls.sigmoid()), 1)


class Proto(nn.Module):
    def __init__(self, c1, c_=256, c2=32):
        super().__init__()
        self.cv1 = Conv(c1, c_, k=3)
        self.upsample = nn.ConvTranspose2d(c_, c_, 2, 2, 0, bias=True)
        self.cv2 = Conv(c_, c_, k=3)
        self.cv3 = Conv(c_, c2)

    def forward(self, x):
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class Segment(Detect):
    """YOLOv8-seg's head: Detect plus mask coefficients per level and a prototype branch;
    the export returns ``(cat([y, mc], 1), p)``."""

    def __init__(self, nc=80, nm=32, npr=256, ch=()):
        super().__init__(nc, ch)
        self.nm, self.npr = nm, npr
        self.proto = Proto(ch[0], self.npr, self.nm)
        c4 = max(ch[0] // 4, self.nm)
        self.cv4 = nn.ModuleList(
            nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3), nn.Conv2d(c4, self.nm, 1)) for x in ch
        )

    def forward(self, x):
        p = self.proto(x[0])
        bs = p.shape[0]
        mc = torch.cat([self.cv4[i](x[i]).view(bs, self.nm, -1) for i in range(self.nl)], 2)
        x = Detect.forward(self, x)
        return torch.cat([x, mc], 1), p


class TinyYOLOv8(nn.Module):
    """yolov8.yaml's layer graph (backbone 0-9, head 10-22) at widths 8-64, one bottleneck
    per C2f, ``nc`` classes."""

    def __init__(self, nc: int = 8, w: int = 16, seg: bool = False) -> None:
        super().__init__()
        chans = (2 * w, 4 * w, 4 * w)
        head = Segment(nc, 8, 2 * w, chans) if seg else Detect(nc, chans)
        self.layers = nn.ModuleList(
            [
                Conv(3, w // 2, 3, 2),  # 0 P1/2
                Conv(w // 2, w, 3, 2),  # 1 P2/4
                C2f(w, w, 1, True),  # 2
                Conv(w, 2 * w, 3, 2),  # 3 P3/8
                C2f(2 * w, 2 * w, 1, True),  # 4
                Conv(2 * w, 4 * w, 3, 2),  # 5 P4/16
                C2f(4 * w, 4 * w, 1, True),  # 6
                Conv(4 * w, 4 * w, 3, 2),  # 7 P5/32
                C2f(4 * w, 4 * w, 1, True),  # 8
                SPPF(4 * w, 4 * w, 5),  # 9
                nn.Upsample(None, 2, "nearest"),  # 10
                Concat(1),  # 11 cat backbone P4
                C2f(8 * w, 4 * w, 1),  # 12
                nn.Upsample(None, 2, "nearest"),  # 13
                Concat(1),  # 14 cat backbone P3
                C2f(6 * w, 2 * w, 1),  # 15 (P3/8-small)
                Conv(2 * w, 2 * w, 3, 2),  # 16
                Concat(1),  # 17 cat head P4
                C2f(6 * w, 4 * w, 1),  # 18 (P4/16-medium)
                Conv(4 * w, 4 * w, 3, 2),  # 19
                Concat(1),  # 20 cat head P5
                C2f(8 * w, 4 * w, 1),  # 21 (P5/32-large)
                head,  # 22
            ]
        )
        # (from, index) as in the yaml: -1 is the previous layer
        self.froms = {11: (-1, 6), 14: (-1, 4), 17: (-1, 12), 20: (-1, 9), 22: (15, 18, 21)}

    def forward(self, x):
        y = []
        for i, m in enumerate(self.layers):
            f = self.froms.get(i, -1)
            if f != -1:
                x = [x if j == -1 else y[j] for j in f]
            x = m(x)
            y.append(x)
        return x


def export(
    size: int = 64, seed: int = 0, split: bool = True, dry_run: bool = True, seg: bool = False
) -> onnx.ModelProto:
    """TinyYOLOv8 with seeded weights (BN statistics calibrated: ``bn_calibrate``),
    exported as ultralytics' ``export format=onnx`` does: eval, C2f switched to
    ``forward_split`` (``split=True``), TorchScript exporter, opset 17, static shapes.
    ``dry_run``: run the model once first, as ultralytics does, so the anchors are cached
    constants; without it ``make_anchors`` is traced (Range/meshgrid from the shapes).
    ``seg``: the YOLOv8-seg head (outputs ``output0`` and the prototypes ``output1``)."""
    torch.manual_seed(seed)
    model = calibrate(TinyYOLOv8(seg=seg), (1, 3, size, size))
    for m in model.modules():
        if isinstance(m, C2f) and split:
            m.forward = m.forward_split
    buf = io.BytesIO()
    with torch.no_grad():
        x = torch.randn(1, 3, size, size)
        if dry_run:
            model(x)  # ultralytics runs a dry pass before exporting (anchors cached per shape)
        torch.onnx.export(
            model,
            (x,),
            buf,
            opset_version=17,
            dynamo=False,
            input_names=["images"],
            output_names=["output0", "output1"] if seg else ["output0"],
        )
    return onnx.load_from_string(buf.getvalue())
