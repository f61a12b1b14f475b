"""Detection heads the battery lacked, written the way their projects write them.

- ``yolov8_pose``: ultralytics' ``Pose`` head on TinyYOLOv8 (``yolov8_torch``): keypoint
  convs per level, and the export-mode ``kpts_decode`` (``view(bs, 17, 3, -1)``, ``[:, :,
  :2] * 2 + (anchors - 0.5)) * strides``, the visibility ``[:, :, 2:3].sigmoid()``,
  concatenated back and viewed as ``(bs, 51, -1)``);
- ``centernet``: xingyizhou/CenterNet's ``msra_resnet`` (a ResNet, three
  ``ConvTranspose2d(4, 2, 1)`` + BN + ReLU upsamplings, heads ``hm``/``wh``/``reg`` of a 3x3
  conv + ReLU + 1x1 conv) exported with the decoder's peak NMS in the graph
  (``hmax = max_pool2d(heat, 3, 1, 1); heat * (hmax == heat).float()``);
- ``ssdlite``: torchvision's ``ssdlite320_mobilenet_v3_large`` structure: inverted residual
  features, ``_extra_block`` s (1x1, depthwise stride-2 3x3, 1x1 with BN + ReLU6), the
  ``SSDLiteHead`` prediction blocks (depthwise 3x3 + BN + ReLU6, then a 1x1 conv) and
  ``_get_result``'s ``view(N, -1, K, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, K)`` per
  level, concatenated.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn
from yolov8_torch import C2f, Conv, Detect, TinyYOLOv8

# ---- YOLOv8-pose (ultralytics nn/modules/head.py Pose) -------------------------------------


class Pose(Detect):
    def __init__(self, nc=1, kpt_shape=(17, 3), ch=()):
        super().__init__(nc, ch)
        self.kpt_shape = kpt_shape
        self.nk = kpt_shape[0] * kpt_shape[1]
        c4 = max(ch[0] // 4, self.nk)
        self.cv4 = nn.ModuleList(
            nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3), nn.Conv2d(c4, self.nk, 1)) for x in ch
        )

    def forward(self, x):
        bs = x[0].shape[0]
        kpt = torch.cat([self.cv4[i](x[i]).view(bs, self.nk, -1) for i in range(self.nl)], -1)
        x = Detect.forward(self, x)
        return torch.cat([x, self.kpts_decode(bs, kpt)], 1)

    def kpts_decode(self, bs, kpts):
        y = kpts.view(bs, *self.kpt_shape, -1)
        a = (y[:, :, :2] * 2.0 + (self.anchors - 0.5)) * self.strides
        a = torch.cat((a, y[:, :, 2:3].sigmoid()), 2)
        return a.view(bs, self.nk, -1)


def yolov8_pose(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TinyYOLOv8(nc=1)
    model.layers[22] = Pose(1, (17, 3), (32, 64, 64))
    for m in model.modules():
        if isinstance(m, C2f):
            m.forward = m.forward_split
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))  # the dry run caches the anchors
    return export_as(model, (1, 3, size, size), opset=17, seed=seed)


# ---- CenterNet (xingyizhou/CenterNet src/lib/models/networks/msra_resnet.py) ---------------


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + residual)


class PoseResNet(nn.Module):
    def __init__(self, heads, head_conv=16, widths=(16, 24, 32, 48), deconv=(32, 32, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(BasicBlock(inplanes, w, 1 if i == 0 else 2))
            inplanes = w
        self.layers = nn.Sequential(*layers)
        ups = []
        for planes in deconv:  # _make_deconv_layer(kernel 4: padding 1, output_padding 0)
            ups += [
                nn.ConvTranspose2d(inplanes, planes, 4, 2, 1, output_padding=0, bias=False),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
            ]
            inplanes = planes
        self.deconv_layers = nn.Sequential(*ups)
        self.heads = heads
        for head, classes in heads.items():
            fc = nn.Sequential(
                nn.Conv2d(inplanes, head_conv, 3, padding=1, bias=True),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_conv, classes, 1),
            )
            self.__setattr__(head, fc)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.deconv_layers(self.layers(x))
        heat = self.hm(x).sigmoid()
        hmax = F.max_pool2d(heat, 3, stride=1, padding=1)  # decode's _nms
        heat = heat * (hmax == heat).float()
        return heat, self.wh(x), self.reg(x)


def centernet(size: int = 64, seed: int = 0, half: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = PoseResNet({"hm": 4, "wh": 2, "reg": 2})
    return export_as(model, (1, 3, size, size), opset=11, seed=seed, half=half)


# ---- SSDLite (torchvision models/detection/ssdlite.py) -------------------------------------


def _conv_bn_relu6(cin, cout, k=1, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.03),
        nn.ReLU6(inplace=True),
    )


def _prediction_block(cin, cout, k=3):
    return nn.Sequential(
        _conv_bn_relu6(cin, cin, k, groups=cin),  # depthwise
        nn.Conv2d(cin, cout, 1),
    )


def _extra_block(cin, cout):
    intermediate = cout // 2
    return nn.Sequential(
        _conv_bn_relu6(cin, intermediate),
        _conv_bn_relu6(intermediate, intermediate, 3, 2, groups=intermediate),
        _conv_bn_relu6(intermediate, cout),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn_relu6(cin, hidden),
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.03),
        )

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class SSDLiteHead(nn.Module):
    def __init__(self, in_channels, num_anchors, num_columns):
        super().__init__()
        self.module_list = nn.ModuleList(
            _prediction_block(c, a * num_columns)
            for c, a in zip(in_channels, num_anchors, strict=True)
        )
        self.num_columns = num_columns

    def forward(self, x):  # SSDScoringHead._get_result_from_module_list + forward
        all_results = []
        for features, module in zip(x, self.module_list, strict=True):
            results = module(features)
            N, _, H, W = results.shape
            results = results.view(N, -1, self.num_columns, H, W)
            results = results.permute(0, 3, 4, 1, 2)
            results = results.reshape(N, -1, self.num_columns)
            all_results.append(results)
        return torch.cat(all_results, dim=1)


class TinySSDLite(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = _conv_bn_relu6(3, 8, 3, 2)
        self.stage1 = nn.Sequential(InvertedResidual(8, 12, 2, 3), InvertedResidual(12, 12, 1, 3))
        self.stage2 = nn.Sequential(InvertedResidual(12, 24, 2, 3), InvertedResidual(24, 24, 1, 3))
        self.c4_expand = _conv_bn_relu6(24, 72)  # the C4 tap: the expansion of the next block
        self.stage3 = nn.Sequential(
            _conv_bn_relu6(72, 72, 3, 2, groups=72),
            nn.Conv2d(72, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            _conv_bn_relu6(32, 64),
        )
        self.extra = nn.ModuleList([_extra_block(64, 32), _extra_block(32, 32)])
        channels, anchors = (72, 64, 32, 32), (6, 6, 6, 6)
        self.bbox = SSDLiteHead(channels, anchors, 4)
        self.cls = SSDLiteHead(channels, anchors, num_classes)

    def forward(self, x):
        c4 = self.c4_expand(self.stage2(self.stage1(self.stem(x))))
        feats = [c4, self.stage3(c4)]
        for block in self.extra:
            feats.append(block(feats[-1]))
        return self.bbox(feats), self.cls(feats).softmax(-1)


def ssdlite(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(TinySSDLite(), (1, 3, size, size), opset=13, seed=seed)
