"""Small segmenters written the way torchvision (``models/segmentation``) and the common
U-Net (milesial/Pytorch-UNet) compute them.

- ``deeplabv3``: a dilated ResNet backbone (BasicBlocks, ``replace_stride_with_dilation``
  in the last stages) with the ``DeepLabHead`` (ASPP: a 1x1 branch, three dilated 3x3
  branches and a pooling branch that is ``AdaptiveAvgPool2d(1)`` then ``F.interpolate`` to
  ``x.shape[-2:]``; concat, 1x1 projection) and the ``FCNHead`` auxiliary classifier; both
  outputs are interpolated to the input's ``x.shape[-2:]``, as ``_SimpleSegmentationModel``;
- ``lraspp``: a MobileNetV3-style backbone (inverted residuals with squeeze-excitation,
  Hardswish) with the ``LRASPPHead`` (a sigmoid gate from a global pool multiplies the
  high-level branch, interpolated to the low-level features' size, then the two
  classifiers add);
- ``unet``: double convs, max-pool downs, ``ConvTranspose2d`` (or bilinear ``nn.Upsample``)
  ups, ``F.pad`` by the size difference read from ``x.size()``, concat of the skip.

Each is exported with the TorchScript exporter at opset 17, seeded, BN statistics
calibrated (``bn_calibrate``).
"""

from __future__ import annotations

import io

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate
from torch import nn

# ---- dilated ResNet backbone (torchvision.models.resnet) -------------------------------


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet with ``replace_stride_with_dilation=[False, True, True]`` (output stride 8),
    returning ``{"aux": layer3, "out": layer4}`` as ``IntermediateLayerGetter`` does."""

    def __init__(self, widths=(8, 16, 24, 32)):
        super().__init__()
        self.inplanes, self.dilation = widths[0], 1
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(widths[0], 1)
        self.layer2 = self._make_layer(widths[1], 1, stride=2)
        self.layer3 = self._make_layer(widths[2], 1, stride=2, dilate=True)
        self.layer4 = self._make_layer(widths[3], 1, stride=2, dilate=True)

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes
        layers += [
            BasicBlock(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        aux = self.layer3(x)
        return {"aux": aux, "out": self.layer4(aux)}


# ---- DeepLabV3 head (torchvision.models.segmentation.deeplabv3) ------------------------


class ASPPConv(nn.Sequential):
    def __init__(self, in_channels, out_channels, dilation):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels, atrous_rates, out_channels=256):
        super().__init__()
        modules = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            )
        ]
        modules += [ASPPConv(in_channels, out_channels, rate) for rate in atrous_rates]
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x):
        res = [conv(x) for conv in self.convs]
        return self.project(torch.cat(res, dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(self, in_channels, num_classes, width=32):
        super().__init__(
            ASPP(in_channels, [12, 24, 36], width),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    def __init__(self, in_channels, channels):
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, channels, 1),
        )


class DeepLabV3(nn.Module):
    def __init__(self, num_classes=5, aux=True):
        super().__init__()
        self.backbone = DilatedResNet()
        self.classifier = DeepLabHead(32, num_classes)
        self.aux_classifier = FCNHead(24, num_classes) if aux else None

    def forward(self, x):
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        out = self.classifier(features["out"])
        out = F.interpolate(out, size=input_shape, mode="bilinear", align_corners=False)
        if self.aux_classifier is None:
            return out
        aux = self.aux_classifier(features["aux"])
        aux = F.interpolate(aux, size=input_shape, mode="bilinear", align_corners=False)
        return out, aux


# ---- LRASPP on a MobileNetV3-style backbone (torchvision lraspp, mobilenetv3) -----------


class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels, squeeze_channels):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.Hardswish, dilation=1):
    pad = (k - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin, expanded, cout, k, use_se, act, stride, dilation=1):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expanded != cin:
            layers.append(conv_bn_act(cin, expanded, 1, act=act))
        stride = 1 if dilation > 1 else stride
        layers.append(conv_bn_act(expanded, expanded, k, stride, expanded, act, dilation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4 // 8 * 8)))
        layers.append(nn.Sequential(nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        return result + x if self.use_res_connect else result


class TinyMobileNetV3(nn.Module):
    """``features`` of a shrunk mobilenet_v3_large; ``low`` is the last stride-8 block,
    ``high`` the last layer (dilated, output stride 16), as ``lraspp_mobilenet_v3_large``
    takes them."""

    def __init__(self):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        self.features = nn.Sequential(
            conv_bn_act(3, 8, 3, 2),
            InvertedResidual(8, 8, 8, 3, False, re, 1),
            InvertedResidual(8, 32, 12, 3, False, re, 2),
            InvertedResidual(12, 36, 12, 3, False, re, 1),
            InvertedResidual(12, 36, 16, 5, True, re, 2),  # low: stride 8
            InvertedResidual(16, 48, 24, 3, False, hs, 2),
            InvertedResidual(24, 64, 24, 3, True, hs, 1),
            InvertedResidual(24, 96, 32, 5, True, hs, 2, dilation=2),
            conv_bn_act(32, 64, 1),
        )
        self.low_index = 4

    def forward(self, x):
        low = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.low_index:
                low = x
        return {"low": low, "high": x}


class LRASPPHead(nn.Module):
    def __init__(self, low_channels, high_channels, num_classes, inter_channels):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features):
        low, high = features["low"], features["high"]
        x = self.cbr(high)
        s = self.scale(high)
        x = x * s
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.backbone = TinyMobileNetV3()
        self.classifier = LRASPPHead(16, 64, num_classes, 32)

    def forward(self, x):
        out = self.classifier(self.backbone(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---- U-Net (milesial/Pytorch-UNet unet_parts.py) -----------------------------------------


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, n_channels=3, n_classes=2, bilinear=False, w=8):
        super().__init__()
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 16 * w // factor)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = nn.Conv2d(w, n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


# ---- export --------------------------------------------------------------------------------


def export_module(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """``model`` in eval mode exported as torchvision's reference scripts do (TorchScript
    exporter, opset 17, static input shape)."""
    torch.manual_seed(seed)
    calibrate(model, shape)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(*shape),), buf, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def deeplabv3(size: int = 48, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_module(DeepLabV3(), (1, 3, size, size), seed)


def lraspp(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_module(LRASPP(), (1, 3, size, size), seed)


def unet(height: int = 40, width: int = 52, bilinear: bool = False, seed: int = 0):
    """Sizes not divisible by 16, so the ups pad (``F.pad`` by computed amounts)."""
    torch.manual_seed(seed)
    return export_module(UNet(bilinear=bilinear), (1, 3, height, width), seed)
