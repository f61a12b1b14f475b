"""Face detectors, written the way their projects write them.

- ``retinaface``: biubug6/Pytorch_Retinaface (``models/net.py``, ``retinaface.py``) with
  the MobileNet-0.25 backbone: depthwise-separable convs with LeakyReLU(0.1), the FPN
  (1x1 laterals, ``F.interpolate(size=..., mode="nearest")`` adds, 3x3 merges), SSH context
  modules (a 3x3 branch of C/2 and chained 3x3 branches of C/4 concatenated, ReLU), and
  class / box / landmark heads ``conv1x1 -> permute(0, 2, 3, 1).contiguous().view(N, -1,
  k)`` concatenated over the levels, the classes softmaxed (``phase="test"``);
- ``blazeface``: hollance/BlazeFace-PyTorch (MediaPipe's front model): BlazeBlocks whose
  residual is widened by ``F.pad(x, (0, 0, 0, 0, 0, channel_pad))`` (a Pad of the channel
  axis: the new channels are zeros plus the conv branch only), stride-2 blocks with a
  max-pooled residual and ``F.pad(h, (0, 2, 0, 2))`` before the depthwise conv, the
  classifier and regressor heads ``permute(0, 2, 3, 1).reshape(b, -1, k)`` of two levels;
- ``scrfd``: insightface's SCRFD-style head (``scrfd.py`` exports): per-stride shared
  3x3 conv stacks with GroupNorm, score / bbox / kps convs flattened with
  ``permute(2, 3, 0, 1).reshape(-1, k)`` (the batch folded away, as its ONNX export
  writes it), a learned ``Scale`` on the boxes.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn

# ---- RetinaFace (biubug6/Pytorch_Retinaface) ----------------------------------------------


def conv_bn(inp, oup, stride=1, leaky=0.0):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp, oup, stride):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp, oup, stride, leaky=0.0):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp, oup, stride, leaky=0.1):
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class SSH(nn.Module):
    def __init__(self, in_channel, out_channel):
        super().__init__()
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, input):
        conv3X3 = self.conv3X3(input)
        conv5X5_1 = self.conv5X5_1(input)
        conv5X5 = self.conv5X5_2(conv5X5_1)
        conv7X7_2 = self.conv7X7_2(conv5X5_1)
        conv7X7 = self.conv7x7_3(conv7X7_2)
        return F.relu(torch.cat([conv3X3, conv5X5, conv7X7], dim=1))


class FPN(nn.Module):
    def __init__(self, in_channels_list, out_channels):
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, input):
        output1 = self.output1(input[0])
        output2 = self.output2(input[1])
        output3 = self.output3(input[2])
        up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]


class MobileNetV1(nn.Module):
    """MobileNet-0.25 with two of stage 2's five repeated blocks (the rest are the same)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), conv_dw(128, 128, 1))
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))


class Head(nn.Module):
    """``ClassHead`` (k=2), ``BboxHead`` (k=4) and ``LandmarkHead`` (k=10)."""

    def __init__(self, inchannels, num_anchors, k):
        super().__init__()
        self.k = k
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * k, kernel_size=(1, 1), stride=1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.k)


class RetinaFace(nn.Module):
    def __init__(self, in_channel=32, out_channel=64, anchors=2):
        super().__init__()
        self.body = MobileNetV1()
        in_list = [in_channel * 2, in_channel * 4, in_channel * 8]
        self.fpn = FPN(in_list, out_channel)
        self.ssh1 = SSH(out_channel, out_channel)
        self.ssh2 = SSH(out_channel, out_channel)
        self.ssh3 = SSH(out_channel, out_channel)
        self.ClassHead = nn.ModuleList(Head(out_channel, anchors, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(out_channel, anchors, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(out_channel, anchors, 10) for _ in range(3))

    def forward(self, inputs):
        c1 = self.body.stage1(inputs)  # IntermediateLayerGetter
        c2 = self.body.stage2(c1)
        c3 = self.body.stage3(c2)
        fpn = self.fpn([c1, c2, c3])
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        bbox = torch.cat([self.BboxHead[i](f) for i, f in enumerate(features)], dim=1)
        cls = torch.cat([self.ClassHead[i](f) for i, f in enumerate(features)], dim=1)
        ldm = torch.cat([self.LandmarkHead[i](f) for i, f in enumerate(features)], dim=1)
        return bbox, F.softmax(cls, dim=-1), ldm


def retinaface(size: int = 64, seed: int = 0, opset: int = 11) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(RetinaFace(), (1, 3, size, size), opset=opset, seed=seed)


# ---- BlazeFace (hollance/BlazeFace-PyTorch blazeface.py) -----------------------------------


class BlazeBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__()
        self.stride = stride
        self.channel_pad = out_channels - in_channels
        if stride == 2:
            self.max_pool = nn.MaxPool2d(kernel_size=stride, stride=stride)
            padding = 0
        else:
            padding = (kernel_size - 1) // 2
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels),
            nn.Conv2d(in_channels, out_channels, 1, 1, 0),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.stride == 2:
            h = F.pad(x, (0, 2, 0, 2), "constant", 0)
            x = self.max_pool(x)
        else:
            h = x
        if self.channel_pad > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channel_pad), "constant", 0)
        return self.act(self.convs(h) + x)


class BlazeFace(nn.Module):
    """The front model's layout with fewer of its repeated same-width blocks."""

    def __init__(self):
        super().__init__()
        self.backbone1 = nn.Sequential(
            nn.Conv2d(3, 24, 5, 2, 0),
            nn.ReLU(inplace=True),
            BlazeBlock(24, 24),
            BlazeBlock(24, 28),
            BlazeBlock(28, 32, stride=2),
            BlazeBlock(32, 36),
            BlazeBlock(36, 42),
            BlazeBlock(42, 48, stride=2),
            BlazeBlock(48, 56),
            BlazeBlock(56, 64),
            BlazeBlock(64, 88),
        )
        self.backbone2 = nn.Sequential(BlazeBlock(88, 96, stride=2), BlazeBlock(96, 96))
        self.classifier_8 = nn.Conv2d(88, 2, 1)
        self.classifier_16 = nn.Conv2d(96, 6, 1)
        self.regressor_8 = nn.Conv2d(88, 32, 1)
        self.regressor_16 = nn.Conv2d(96, 96, 1)

    def forward(self, x):
        x = F.pad(x, (1, 2, 1, 2), "constant", 0)
        b = x.shape[0]
        x = self.backbone1(x)
        h = self.backbone2(x)
        c1 = self.classifier_8(x).permute(0, 2, 3, 1).reshape(b, -1, 1)
        c2 = self.classifier_16(h).permute(0, 2, 3, 1).reshape(b, -1, 1)
        c = torch.cat((c1, c2), dim=1)
        r1 = self.regressor_8(x).permute(0, 2, 3, 1).reshape(b, -1, 16)
        r2 = self.regressor_16(h).permute(0, 2, 3, 1).reshape(b, -1, 16)
        r = torch.cat((r1, r2), dim=1)
        return [r, c]


def blazeface(size: int = 64, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(BlazeFace(), (1, 3, size, size), opset=opset, seed=seed)


# ---- SCRFD-style head (deepinsight/insightface detection/scrfd mmdet/models) ---------------


class Scale(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


class SCRFD(nn.Module):
    """A small ResNet-ish body, a PAFPN-lite neck and the SCRFD head with stacked 3x3
    convs + GroupNorm shared by the strides (``share_conv``), per-stride ``Scale``."""

    def __init__(self, width=16, feat=16, anchors=2):
        super().__init__()

        def cbr(cin, cout, s=1):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.stem = nn.Sequential(cbr(3, width, 2), cbr(width, width, 2))
        self.c3 = cbr(width, width * 2, 2)
        self.c4 = cbr(width * 2, width * 4, 2)
        self.lat3 = nn.Conv2d(width * 2, feat, 1)
        self.lat4 = nn.Conv2d(width * 4, feat, 1)
        self.down = nn.Conv2d(feat, feat, 3, 2, 1)
        self.stacked = nn.Sequential(
            nn.Conv2d(feat, feat, 3, 1, 1, bias=False), nn.GroupNorm(4, feat), nn.ReLU()
        )
        self.anchors = anchors
        self.cls = nn.Conv2d(feat, anchors, 3, 1, 1)
        self.reg = nn.Conv2d(feat, anchors * 4, 3, 1, 1)
        self.kps = nn.Conv2d(feat, anchors * 10, 3, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(2))

    def forward(self, x):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        p4 = self.lat4(c4)
        p3 = self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        p4 = p4 + self.down(p3)
        scores, boxes, kpss = [], [], []
        for i, feat in enumerate((p3, p4)):
            t = self.stacked(feat)
            cls = self.cls(t).sigmoid().permute(2, 3, 0, 1).reshape(-1, 1)
            box = self.scales[i](self.reg(t)).permute(2, 3, 0, 1).reshape(-1, 4)
            kps = self.kps(t).permute(2, 3, 0, 1).reshape(-1, 10)
            scores.append(cls)
            boxes.append(box)
            kpss.append(kps)
        return (*scores, *boxes, *kpss)


def scrfd(size: int = 64, seed: int = 0, opset: int = 11) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = SCRFD()
    with torch.no_grad():
        for s in model.scales:
            s.scale.uniform_(0.5, 1.5)
    return export_as(model, (1, 3, size, size), opset=opset, seed=seed)
