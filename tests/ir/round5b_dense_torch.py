"""Dense-prediction heads of round 5b of the unseen-architecture battery (more in
``round5b_seg_torch.py``, ``round5b_bilateral_torch.py``):

- ``yolact``: YOLACT (dbolya/yolact ``yolact.py``) as its ONNX exports keep the mask assembly:
  a ResNet-FPN (``round5b_det_torch``'s), ``ProtoNet`` (3x3 convs on P3, bilinear x2, a 1x1 conv
  to ``k`` prototypes, ReLU), one ``PredictionModule`` shared by the levels (an upfeature conv,
  then bbox / conf / mask-coefficient 3x3 convs, each ``permute(0, 2, 3, 1).reshape(N, -1,
  d)``), softmax of the confidences, ``tanh`` of the coefficients, and the masks of every
  prior ``sigmoid(proto.permute(0, 2, 3, 1).view(N, HW, k) @ coeffs.transpose(1, 2))``: the
  prototypes' channels contract against the coefficients the head's reshape merged with the
  priors; opset 11.
- ``fastscnn``: Fast-SCNN (Tramac/Fast-SCNN-pytorch ``models/fast_scnn.py``): learning to
  downsample (a conv, two depthwise-separable convs), the global feature extractor (inverted
  residual bottlenecks, ``PyramidPooling`` with adaptive pools of 1, 2, 3 and 6 bins, each a
  1x1 conv to ``in / 4`` upsampled bilinearly, ``align_corners=True``, concat with the input),
  ``FeatureFusionModule`` (the low-resolution branch upsampled x4, a depthwise conv and a 1x1
  conv added to the high-resolution 1x1 conv), the classifier; 192x192 input, opset 11.
- ``upernet``: UPerNet as mmsegmentation's ``UPerHead`` writes it (``decode_heads/uper_head.py``,
  ``psp_head.py``): PPM on the last level (pool scales 1, 2, 3, 6, ``resize`` back, concat, a 3x3
  bottleneck), 1x1 laterals, the top-down path ``laterals[i - 1] + resize(laterals[i], size=
  prev_shape)``, 3x3 FPN convs, every level resized to the finest and concatenated, the 3x3
  ``fpn_bottleneck``, ``cls_seg``; on a ResNet, 64x64 input, as its ``pytorch2onnx.py`` exports
  (opset 11).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from round5b_det_torch import TinyResNet
from round5b_seg_torch import cbr
from torch import nn

# ---- YOLACT -----------------------------------------------------------------------------------


class PredictionModule(nn.Module):
    def __init__(self, c, priors=3, nc=5, k=8):
        super().__init__()
        self.upfeature = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(c, priors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(c, priors * nc, 3, padding=1)
        self.mask_layer = nn.Conv2d(c, priors * k, 3, padding=1)
        self.nc, self.k = nc, k

    def forward(self, x):
        x = self.upfeature(x)
        n = x.size(0)
        bbox = self.bbox_layer(x).permute(0, 2, 3, 1).contiguous().view(n, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).contiguous().view(n, -1, self.nc)
        mask = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).contiguous().view(n, -1, self.k))
        return bbox, conf, mask


class TinyYOLACT(nn.Module):
    def __init__(self, c=16, k=8):
        super().__init__()
        self.backbone = TinyResNet()
        self.lat = nn.ModuleList(nn.Conv2d(w, c, 1) for w in (16, 32, 64))
        self.pred = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(3))
        self.downsample = nn.Conv2d(c, c, 3, 2, 1)
        self.proto_net = nn.Sequential(
            *(m for _ in range(3) for m in (nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)))
        )
        self.proto_out = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, k, 1),
            nn.ReLU(inplace=True),
        )
        self.prediction = PredictionModule(c, k=k)

    def forward(self, x):
        _, c3, c4, c5 = self.backbone(x)
        x = self.lat[2](c5)
        outs = [x]
        for i, feat in ((1, c4), (0, c3)):
            x = F.interpolate(
                x, size=feat.shape[2:], mode="bilinear", align_corners=False
            ) + self.lat[i](feat)
            outs.insert(0, x)
        outs = [F.relu(p(o)) for p, o in zip(self.pred, outs, strict=True)]
        outs.append(self.downsample(outs[-1]))
        proto = self.proto_net(outs[0])
        proto = F.interpolate(proto, scale_factor=2.0, mode="bilinear", align_corners=False)
        proto = self.proto_out(proto).permute(0, 2, 3, 1).contiguous()
        preds = [self.prediction(o) for o in outs]
        loc, conf, coef = (torch.cat([p[i] for p in preds], 1) for i in range(3))
        n, h, w, k = proto.shape
        masks = torch.sigmoid(proto.view(n, h * w, k) @ coef.transpose(1, 2)).view(n, h, w, -1)
        return loc, F.softmax(conf, -1), masks


def yolact(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyYOLACT(), size, 11, seed, dynamo)


# ---- Fast-SCNN --------------------------------------------------------------------------------


def _dsconv(cin, cout, stride=1):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(True),
        cbr(cin, cout, 1),
    )


class LinearBottleneck(nn.Module):
    def __init__(self, cin, cout, t=6, stride=2):
        super().__init__()
        self.use_shortcut = stride == 1 and cin == cout
        self.block = nn.Sequential(
            cbr(cin, cin * t, 1),
            nn.Sequential(
                nn.Conv2d(cin * t, cin * t, 3, stride, 1, groups=cin * t, bias=False),
                nn.BatchNorm2d(cin * t),
                nn.ReLU(True),
            ),
            nn.Conv2d(cin * t, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_shortcut else out


class PyramidPooling(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        inter = cin // 4
        self.convs = nn.ModuleList(cbr(cin, inter, 1) for _ in range(4))
        self.out = cbr(cin * 2, cout, 1)

    def forward(self, x):
        size = x.size()[2:]
        feats = [x] + [
            F.interpolate(
                conv(F.adaptive_avg_pool2d(x, s)), size, mode="bilinear", align_corners=True
            )
            for conv, s in zip(self.convs, (1, 2, 3, 6), strict=True)
        ]
        return self.out(torch.cat(feats, dim=1))


class TinyFastSCNN(nn.Module):
    """Fast-SCNN at a quarter of its widths (32/48/64 -> 8/12/16, 64/96/128 -> 16/24/32)."""

    def __init__(self, nc=4):
        super().__init__()
        self.lds = nn.Sequential(cbr(3, 8, 3, 2), _dsconv(8, 12, 2), _dsconv(12, 16, 2))
        stages, cin = [], 16
        for cout, stride in ((16, 2), (24, 2), (32, 1)):
            stages += [
                LinearBottleneck(cin, cout, stride=stride),
                LinearBottleneck(cout, cout, stride=1),
            ]
            cin = cout
        self.bottleneck = nn.Sequential(*stages)
        self.ppm = PyramidPooling(32, 32)
        self.dwconv = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(True)
        )
        self.conv_lower_res = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
        self.conv_higher_res = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32))
        self.classifier = nn.Sequential(
            _dsconv(32, 32), _dsconv(32, 32), nn.Dropout(0.1), nn.Conv2d(32, nc, 1)
        )

    def forward(self, x):
        size = x.size()[2:]
        higher = self.lds(x)
        lower = self.ppm(self.bottleneck(higher))
        lower = F.interpolate(lower, scale_factor=4.0, mode="bilinear", align_corners=True)
        fused = F.relu(self.conv_higher_res(higher) + self.conv_lower_res(self.dwconv(lower)))
        return F.interpolate(self.classifier(fused), size, mode="bilinear", align_corners=True)


def fastscnn(size: int = 192, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyFastSCNN(), size, 11, seed, dynamo)


# ---- UPerNet ----------------------------------------------------------------------------------


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    def __init__(self, in_channels=(8, 16, 32, 64), c=24, nc=4, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.pool_scales = pool_scales
        self.psp_modules = nn.ModuleList(cbr(in_channels[-1], c, 1) for _ in pool_scales)
        self.bottleneck = cbr(in_channels[-1] + len(pool_scales) * c, c, 3)
        self.lateral_convs = nn.ModuleList(cbr(w, c, 1) for w in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(cbr(c, c, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = cbr(len(in_channels) * c, c, 3)
        self.conv_seg = nn.Conv2d(c, nc, 1)

    def psp_forward(self, x):
        outs = [x] + [
            resize(conv(F.adaptive_avg_pool2d(x, s)), x.shape[2:])
            for conv, s in zip(self.psp_modules, self.pool_scales, strict=True)
        ]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        outs = [outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class TinyUPerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.decode_head = TinyResNet(), UPerHead()

    def forward(self, x):
        return resize(self.decode_head(self.backbone(x)), x.shape[2:])


def upernet(size: int = 192, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyUPerNet(), size, 11, seed, dynamo)
