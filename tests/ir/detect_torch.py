"""Small detectors written the way their projects compute them, exported by torch.

- ``fcos``: torchvision's FCOS network (no post-processing, as deployments export it): a
  ResNet-style backbone, ``FeaturePyramidNetwork`` (lateral 1x1 convs, top-down
  ``F.interpolate(size=lateral.shape[-2:])`` and add, 3x3 output convs, ``LastLevelP6P7``)
  and the FCOS head (a conv tower with ``GroupNorm`` per branch, shared across levels;
  per level ``view(N, -1, K, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, K)`` and a concat
  over levels), returning class logits, box regression and centerness;
- ``yolov5``: ultralytics YOLOv5's ``Detect`` in export mode on a small CSP backbone (C3
  blocks, SPPF): per level ``view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2)``, sigmoid,
  ``split((2, 2, nc + 1), 4)``, grid and anchor-grid decoding, ``view(bs, na * nx * ny, no)``
  and a concat.
"""

from __future__ import annotations

import io
from collections import OrderedDict

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate
from torch import nn

# ---- FCOS (torchvision.models.detection.fcos, ops.feature_pyramid_network) ----------------


def _block(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Returns C3, C4, C5 (strides 8, 16, 32) as ``IntermediateLayerGetter`` does."""

    def __init__(self, widths=(8, 16, 24, 32)):
        super().__init__()
        self.stem = _block(3, widths[0], 4)
        self.layer2 = _block(widths[0], widths[1], 2)
        self.layer3 = _block(widths[1], widths[2], 2)
        self.layer4 = _block(widths[2], widths[3], 2)

    def forward(self, x):
        c3 = self.layer2(self.stem(x))
        c4 = self.layer3(c3)
        return OrderedDict([("0", c3), ("1", c4), ("2", self.layer4(c4))])


class LastLevelP6P7(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        self.use_P5 = in_channels == out_channels

    def forward(self, p, c, names):
        p5, c5 = p[-1], c[-1]
        x = p5 if self.use_P5 else c5
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


class FeaturePyramidNetwork(nn.Module):
    def __init__(self, in_channels_list, out_channels, extra_blocks=None):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels_list
        )
        self.extra_blocks = extra_blocks

    def forward(self, x):
        names = list(x.keys())
        x = list(x.values())
        last_inner = self.inner_blocks[-1](x[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(x) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](x[idx])
            feat_shape = inner_lateral.shape[-2:]
            inner_top_down = F.interpolate(last_inner, size=feat_shape, mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, x, names)
        return OrderedDict(zip(names, results, strict=True))


def _tower(channels, num_convs, groups):
    layers = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.GroupNorm(groups, channels),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


class FCOSClassificationHead(nn.Module):
    def __init__(self, in_channels, num_anchors, num_classes, num_convs=2, groups=8):
        super().__init__()
        self.num_classes = num_classes
        self.conv = _tower(in_channels, num_convs, groups)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, 1, 1)

    def forward(self, x):
        all_cls_logits = []
        for features in x:
            cls_logits = self.cls_logits(self.conv(features))
            n, _, h, w = cls_logits.shape
            cls_logits = cls_logits.view(n, -1, self.num_classes, h, w)
            cls_logits = cls_logits.permute(0, 3, 4, 1, 2)
            all_cls_logits.append(cls_logits.reshape(n, -1, self.num_classes))
        return torch.cat(all_cls_logits, dim=1)


class FCOSRegressionHead(nn.Module):
    def __init__(self, in_channels, num_anchors, num_convs=2, groups=8):
        super().__init__()
        self.conv = _tower(in_channels, num_convs, groups)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, 1, 1)
        self.bbox_ctrness = nn.Conv2d(in_channels, num_anchors * 1, 3, 1, 1)

    def forward(self, x):
        all_bbox_regression, all_bbox_ctrness = [], []
        for features in x:
            tower = self.conv(features)
            bbox_regression = F.relu(self.bbox_reg(tower))
            bbox_ctrness = self.bbox_ctrness(tower)
            n, _, h, w = bbox_regression.shape
            bbox_regression = bbox_regression.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2)
            all_bbox_regression.append(bbox_regression.reshape(n, -1, 4))
            bbox_ctrness = bbox_ctrness.view(n, -1, 1, h, w).permute(0, 3, 4, 1, 2)
            all_bbox_ctrness.append(bbox_ctrness.reshape(n, -1, 1))
        return torch.cat(all_bbox_regression, dim=1), torch.cat(all_bbox_ctrness, dim=1)


class FCOSNet(nn.Module):
    def __init__(self, num_classes=6, width=16):
        super().__init__()
        self.body = TinyBackbone()
        self.fpn = FeaturePyramidNetwork([16, 24, 32], width, LastLevelP6P7(width, width))
        self.cls = FCOSClassificationHead(width, 1, num_classes)
        self.reg = FCOSRegressionHead(width, 1)

    def forward(self, images):
        features = list(self.fpn(self.body(images)).values())
        box, ctr = self.reg(features)
        return self.cls(features), box, ctr


# ---- YOLOv5 (ultralytics/yolov5 models/common.py, models/yolo.py) ------------------------


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Detect5(nn.Module):
    """YOLOv5's Detect with ``export=True`` (returns the decoded predictions only)."""

    def __init__(self, nc, anchors, ch, strides):
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.stride = torch.tensor(strides)
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def _make_grid(self, nx, ny, i):
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + self.grid[i]) * self.stride[i]
            wh = (wh * 2) ** 2 * self.anchor_grid[i]
            y = torch.cat((xy, wh, conf), 4)
            z.append(y.view(bs, self.na * nx * ny, self.no))
        return torch.cat(z, 1)


class TinyYOLOv5(nn.Module):
    """yolov5s.yaml's graph at widths 8-64, one bottleneck per C3."""

    def __init__(self, nc=4, w=16):
        super().__init__()
        self.b0 = Conv(3, w // 2, 6, 2, 2)
        self.b1 = Conv(w // 2, w, 3, 2)
        self.b2 = C3(w, w)
        self.b3 = Conv(w, 2 * w, 3, 2)
        self.b4 = C3(2 * w, 2 * w)
        self.b5 = Conv(2 * w, 4 * w, 3, 2)
        self.b6 = C3(4 * w, 4 * w)
        self.b7 = Conv(4 * w, 4 * w, 3, 2)
        self.b8 = C3(4 * w, 4 * w)
        self.b9 = SPPF(4 * w, 4 * w)
        self.h10 = Conv(4 * w, 2 * w, 1, 1)
        self.up = nn.Upsample(None, 2, "nearest")
        self.h13 = C3(6 * w, 2 * w, shortcut=False)
        self.h14 = Conv(2 * w, w, 1, 1)
        self.h17 = C3(3 * w, w, shortcut=False)
        self.h18 = Conv(w, w, 3, 2)
        self.h20 = C3(2 * w, 2 * w, shortcut=False)
        self.h21 = Conv(2 * w, 2 * w, 3, 2)
        self.h23 = C3(4 * w, 4 * w, shortcut=False)
        anchors = [
            [10, 13, 16, 30, 33, 23],
            [30, 61, 62, 45, 59, 119],
            [116, 90, 156, 198, 373, 326],
        ]
        self.detect = Detect5(nc, anchors, (w, 2 * w, 4 * w), (8.0, 16.0, 32.0))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        x10 = self.h10(self.b9(self.b8(self.b7(p4))))
        x14 = self.h14(self.h13(torch.cat((self.up(x10), p4), 1)))
        out3 = self.h17(torch.cat((self.up(x14), p3), 1))
        out4 = self.h20(torch.cat((self.h18(out3), x14), 1))
        out5 = self.h23(torch.cat((self.h21(out4), x10), 1))
        return self.detect([out3, out4, out5])


# ---- export ----------------------------------------------------------------------------


def _export(model: nn.Module, size: int, seed: int, **kw) -> onnx.ModelProto:
    torch.manual_seed(seed)
    calibrate(model, (1, 3, size, size))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), buf, opset_version=17, dynamo=False, **kw
        )
    return onnx.load_from_string(buf.getvalue())


def fcos(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(FCOSNet(), size, seed)


def yolov5(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyYOLOv5(), size, seed, input_names=["images"], output_names=["output0"])
