"""Example models as plain :class:`torch.nn.Module` (random init, no download).

The PyTorch twins of :mod:`drpopt.zoo.models`, for the torch side of drpopt (FX / export
front ends, retraining). Layouts and attribute names follow the originals, so state-dict keys
read like torchvision's and Megvii YOLOX's:

=================  ===========================================================================
model              key modules
=================  ===========================================================================
resnet18, 50       ``conv1``, ``bn1``, ``relu``, ``maxpool``; ``layer{1-4}.{j}.conv1|bn1|conv2|
                   bn2`` (+ ``conv3|bn3`` in Bottleneck), ``layerX.0.downsample.{0,1}``
                   (conv, BN); ``avgpool``, ``fc``
mobilenetv2        ``features.0`` (ConvBNReLU6: ``.0`` conv, ``.1`` BN, ``.2`` ReLU6);
                   ``features.{i}.conv`` (InvertedResidual; ``use_res_connect``);
                   ``features.18`` (last 1x1); ``classifier.0`` Dropout, ``classifier.1``
yolox_s_like       ``backbone.backbone.stem.conv`` (Focus), ``backbone.backbone.dark{2-5}``;
                   ``backbone.lateral_conv0``, ``backbone.C3_p4``, ``backbone.reduce_conv1``,
                   ``backbone.C3_p3``, ``backbone.bu_conv2``, ``backbone.C3_n3``,
                   ``backbone.bu_conv1``, ``backbone.C3_n4``; ``head.stems.{k}``,
                   ``head.cls_convs.{k}``, ``head.reg_convs.{k}``, ``head.cls_preds.{k}``,
                   ``head.reg_preds.{k}``, ``head.obj_preds.{k}``. BaseConv = ``.conv``,
                   ``.bn``, ``.act`` (SiLU)
se                 ``conv1``, ``bn1``, ``relu1``; ``se.pool|fc1|relu|fc2|sigmoid``;
                   ``conv2``, ``bn2``, ``relu2``, ``avgpool``, ``fc``
digits_cnn         ``conv1..4``, ``bn1..4``, ``relu1..4``, ``maxpool`` (after relu2), residual
                   add around ``conv3|bn3`` (before ``relu3``), ``avgpool``, ``fc1``,
                   ``relu_fc1``, ``fc2``
=================  ===========================================================================

Weights come from torch's global RNG: call ``torch.manual_seed`` first for reproducible models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TORCH_MODELS",
    "YOLOX",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "digits_cnn",
    "example_input",
    "mobilenetv2_like",
    "resnet18_like",
    "resnet50_like",
    "se_model",
    "yolox_s",
    "yolox_s_like",
]


def _conv_bn(
    in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """Conv (no bias, ``k // 2`` padding) and the BatchNorm that follows it."""
    conv = nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


def _kaiming_init(model: nn.Module) -> None:
    """torchvision's init: convs kaiming-normal (fan_out), BN weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- ResNet (torchvision layout) ----------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(inplanes, planes, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5: stride on the 3x3): 1x1, 3x3, 1x1 x4, add, ReLU."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(inplanes, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ResNet with base width ``width`` (64 in torchvision) instead of 64.

    Stem conv7x7/2-BN-ReLU-maxpool 3x3/2, four stages of ``layers[i]`` blocks with
    ``width * 2**i`` planes (stride 2 from stage 2 on), a ``downsample = Sequential(conv1x1,
    BN)`` shortcut where stride or width changes, adaptive average pool, flatten, ``fc``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        width: int = 16,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1, self.bn1 = _conv_bn(3, width, 7, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        _kaiming_init(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        out_ch = planes * block.expansion
        if stride != 1 or self.inplanes != out_ch:
            downsample = nn.Sequential(*_conv_bn(self.inplanes, out_ch, 1, stride))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_ch
        layers += [block(out_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_like(width: int = 16, num_classes: int = 10) -> ResNet:
    """ResNet-18 (BasicBlock, depths [2, 2, 2, 2]) with base width ``width``."""
    return ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes)


def resnet50_like(width: int = 16, num_classes: int = 10) -> ResNet:
    """ResNet-50 (Bottleneck, depths [3, 4, 6, 3]); ``(64, 1000)`` is torchvision's 25.56M."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes)


# ---- MobileNetV2 (torchvision layout) -----------------------------------------------------
def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, >= 90% of v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) - BN - ReLU6 as one Sequential (torchvision's Conv2dNormActivation)."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(*_conv_bn(in_ch, out_ch, k, stride, groups), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand (unless t == 1), 3x3 depthwise, 1x1 linear project; add if stride 1, in==out."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, k=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            *_conv_bn(hidden, oup, 1),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


_MBV2_SETTINGS: list[tuple[int, int, int, int]] = [
    # t (expansion), c (out channels), n (repeats), s (first stride)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2: ``features`` Sequential, adaptive pool, ``classifier``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in _MBV2_SETTINGS:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(ConvBNReLU6(in_ch, self.last_channel, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        _kaiming_init(self)
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenetv2_like(width_mult: float = 0.5, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 scaled by ``width_mult`` (torchvision's table and rounding)."""
    return MobileNetV2(width_mult, num_classes)


# ---- YOLOX (Megvii YOLOX 0.3.0 layout) ----------------------------------------------------
class BaseConv(nn.Module):
    """YOLOX BaseConv: Conv (no bias, pad (k-1)//2) + BN + SiLU."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, ksize, stride, (ksize - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    """YOLOX Bottleneck: 1x1 then 3x3 BaseConv, add the input when shortcut and in == out."""

    def __init__(
        self, in_ch: int, out_ch: int, shortcut: bool = True, expansion: float = 0.5
    ) -> None:
        super().__init__()
        hidden = int(out_ch * expansion)
        self.conv1 = BaseConv(in_ch, hidden, 1)
        self.conv2 = BaseConv(hidden, out_ch, 3)
        self.use_add = shortcut and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class SPPBottleneck(nn.Module):
    """YOLOX SPP: conv1 to half the channels, max pools 5/9/13 (stride 1), cat, conv2."""

    def __init__(self, in_ch: int, out_ch: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = in_ch // 2
        self.conv1 = BaseConv(in_ch, hidden, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], dim=1))


class CSPLayer(nn.Module):
    """YOLOX CSPLayer: conv1 -> n Bottlenecks, conv2 alongside, cat, conv3 (expansion 0.5)."""

    def __init__(self, in_ch: int, out_ch: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = int(out_ch * 0.5)
        self.conv1 = BaseConv(in_ch, hidden, 1)
        self.conv2 = BaseConv(in_ch, hidden, 1)
        self.conv3 = BaseConv(2 * hidden, out_ch, 1)
        self.m = nn.Sequential(*(YoloBottleneck(hidden, hidden, shortcut, 1.0) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class Focus(nn.Module):
    """YOLOX Focus: space-to-depth (four step-2 slices, cat) then a BaseConv."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int = 1) -> None:
        super().__init__()
        self.conv = BaseConv(in_ch * 4, out_ch, ksize)

    def forward(self, x: Tensor) -> Tensor:
        top_left = x[..., ::2, ::2]
        top_right = x[..., ::2, 1::2]
        bot_left = x[..., 1::2, ::2]
        bot_right = x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bot_left, top_right, bot_right), dim=1))


class CSPDarknet(nn.Module):
    """YOLOX CSPDarknet; ``forward`` returns ``{"dark3", "dark4", "dark5"}`` features."""

    def __init__(self, depth: float, width: float) -> None:
        super().__init__()
        ch = int(width * 64)
        n = max(round(depth * 3), 1)
        self.stem = Focus(3, ch, ksize=3)
        self.dark2 = nn.Sequential(BaseConv(ch, ch * 2, 3, 2), CSPLayer(ch * 2, ch * 2, n))
        self.dark3 = nn.Sequential(BaseConv(ch * 2, ch * 4, 3, 2), CSPLayer(ch * 4, ch * 4, n * 3))
        self.dark4 = nn.Sequential(BaseConv(ch * 4, ch * 8, 3, 2), CSPLayer(ch * 8, ch * 8, n * 3))
        self.dark5 = nn.Sequential(
            BaseConv(ch * 8, ch * 16, 3, 2),
            SPPBottleneck(ch * 16, ch * 16),
            CSPLayer(ch * 16, ch * 16, n, shortcut=False),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        dark3 = self.dark3(self.dark2(self.stem(x)))
        dark4 = self.dark4(dark3)
        return {"dark3": dark3, "dark4": dark4, "dark5": self.dark5(dark4)}


class YOLOPAFPN(nn.Module):
    """YOLOX PAFPN: top-down (lateral 1x1, nearest x2 upsample, cat, CSP) then bottom-up."""

    def __init__(self, depth: float = 1.0, width: float = 1.0) -> None:
        super().__init__()
        self.backbone = CSPDarknet(depth, width)
        self.in_features = ("dark3", "dark4", "dark5")
        c0, c1, c2 = (int(c * width) for c in (256, 512, 1024))
        n = round(3 * depth)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c2, c1, 1)
        self.C3_p4 = CSPLayer(2 * c1, c1, n, False)
        self.reduce_conv1 = BaseConv(c1, c0, 1)
        self.C3_p3 = CSPLayer(2 * c0, c0, n, False)
        self.bu_conv2 = BaseConv(c0, c0, 3, 2)
        self.C3_n3 = CSPLayer(2 * c0, c1, n, False)
        self.bu_conv1 = BaseConv(c1, c1, 3, 2)
        self.C3_n4 = CSPLayer(2 * c1, c2, n, False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.backbone(x)
        x2, x1, x0 = (feats[f] for f in self.in_features)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise IoU of two ``[K, 4]`` box sets in (cx, cy, w, h)."""
    tl = torch.max(a[:, :2] - a[:, 2:] / 2, b[:, :2] - b[:, 2:] / 2)
    br = torch.min(a[:, :2] + a[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2)
    inter = (br - tl).clamp(min=0).prod(1)
    return inter / (a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter + 1e-16)


class YOLOXHead(nn.Module):
    """YOLOX decoupled head: per level a 1x1 stem, two 3x3 cls and reg convs, 1x1 preds.

    Inference output: ``cat([reg, obj.sigmoid(), cls.sigmoid()])`` per level, flattened,
    concatenated over levels and transposed to ``[N, anchors, 5 + num_classes]``
    (``decode_in_inference=False``: raw reg offsets, no grid decode).
    """

    def __init__(
        self, num_classes: int, width: float = 1.0, strides: tuple[int, ...] = (8, 16, 32)
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        hidden = int(256 * width)
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for in_ch in (256, 512, 1024):
            self.stems.append(BaseConv(int(in_ch * width), hidden, 1))
            self.cls_convs.append(
                nn.Sequential(BaseConv(hidden, hidden, 3), BaseConv(hidden, hidden, 3))
            )
            self.reg_convs.append(
                nn.Sequential(BaseConv(hidden, hidden, 3), BaseConv(hidden, hidden, 3))
            )
            self.cls_preds.append(nn.Conv2d(hidden, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(hidden, 4, 1))
            self.obj_preds.append(nn.Conv2d(hidden, 1, 1))
        self.bce = nn.BCEWithLogitsLoss(reduction="none")

    def initialize_biases(self, prior_prob: float) -> None:
        """YOLOX's prior: cls and obj biases start at ``logit(prior_prob)``."""
        for conv in (*self.cls_preds, *self.obj_preds):
            nn.init.constant_(conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(
        self, xin: tuple[Tensor, ...], labels: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        with_loss = self.training and labels is not None
        outputs: list[Tensor] = []
        for k, x in enumerate(xin):
            x = self.stems[k](x)
            cls_out = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            reg_out, obj_out = self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat)
            if with_loss:  # raw logits; the loss applies the sigmoids
                outputs.append(torch.cat([reg_out, obj_out, cls_out], 1))
            else:
                outputs.append(torch.cat([reg_out, obj_out.sigmoid(), cls_out.sigmoid()], 1))
        if with_loss:
            return self.get_losses(outputs, labels)
        return torch.cat([o.flatten(start_dim=2) for o in outputs], dim=2).permute(0, 2, 1)

    def _decode(self, raw: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Training decode: ``[N, A, 5 + nc]`` (pixel boxes), anchor grid ``[A, 2]``, strides."""
        outs, grids, strides = [], [], []
        for out, stride in zip(raw, self.strides, strict=True):
            n, c, h, w = out.shape
            yv, xv = torch.meshgrid(
                torch.arange(h, device=out.device),
                torch.arange(w, device=out.device),
                indexing="ij",
            )
            grid = torch.stack((xv, yv), 2).view(-1, 2).to(out)
            out = out.permute(0, 2, 3, 1).reshape(n, h * w, c)
            xy = (out[..., :2] + grid) * stride
            wh = torch.exp(out[..., 2:4]) * stride
            outs.append(torch.cat([xy, wh, out[..., 4:]], dim=-1))
            grids.append(grid)
            strides.append(out.new_full((h * w,), float(stride)))
        return torch.cat(outs, 1), torch.cat(grids), torch.cat(strides)

    def get_losses(self, raw: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """A simplified YOLOX loss (center-prior assignment instead of SimOTA).

        ``labels`` is ``[N, max_objects, 5]`` of (class, cx, cy, w, h) in input pixels, valid
        rows first and padding rows all zero (as YOLOX). Anchors whose center lies within 2.5
        strides of a ground-truth center are positives (matched to the nearest such center;
        every object gets at least its nearest anchor). Losses as YOLOX: IoU loss
        ``1 - iou**2`` (weight 5), objectness BCE over all anchors, class BCE against
        ``one_hot * iou``, each summed and divided by the number of positives.
        Like YOLOX's ``get_losses`` it branches in Python on the per-image object count.
        """
        outputs, grids, strides = self._decode(raw)
        centers = (grids + 0.5) * strides[:, None]
        nlabel = (labels.sum(dim=2) > 0).sum(dim=1)  # valid objects per image
        cls_targets, reg_targets, obj_targets, fg_masks = [], [], [], []
        for batch_idx, num_gt in enumerate(nlabel.tolist()):
            fg = torch.zeros(outputs.shape[1], dtype=torch.bool, device=outputs.device)
            if num_gt == 0:
                cls_targets.append(outputs.new_zeros((0, self.num_classes)))
                reg_targets.append(outputs.new_zeros((0, 4)))
            else:
                gt = labels[batch_idx, :num_gt]
                dist = (centers[None] - gt[:, None, 1:3]).abs() / strides[None, :, None]
                in_center = (dist < 2.5).all(-1)  # [G, A]
                cost = dist.sum(-1) + 1e5 * (~in_center)
                matched = cost.argmin(0)
                fg = in_center.any(0)
                nearest = cost.argmin(1)
                fg[nearest] = True
                matched[nearest] = torch.arange(num_gt, device=outputs.device)
                boxes = gt[matched[fg], 1:5]
                iou = _box_iou(outputs[batch_idx, fg, :4].detach(), boxes)
                one_hot = F.one_hot(gt[matched[fg], 0].long(), self.num_classes)
                cls_targets.append(one_hot.to(outputs) * iou[:, None])
                reg_targets.append(boxes)
            obj_targets.append(fg.to(outputs))
            fg_masks.append(fg)
        fg_mask = torch.cat(fg_masks)
        num_fg = max(int(fg_mask.sum()), 1)
        flat = outputs.reshape(-1, outputs.shape[-1])
        iou = _box_iou(flat[fg_mask, :4], torch.cat(reg_targets))
        loss_iou = (1 - iou**2).sum() / num_fg
        loss_obj = self.bce(flat[:, 4], torch.cat(obj_targets)).sum() / num_fg
        loss_cls = self.bce(flat[fg_mask, 5:], torch.cat(cls_targets)).sum() / num_fg
        loss_l1 = outputs.new_zeros(())
        return {
            "total_loss": 5.0 * loss_iou + loss_obj + loss_cls + loss_l1,
            "iou_loss": loss_iou,
            "l1_loss": loss_l1,
            "conf_loss": loss_obj,
            "cls_loss": loss_cls,
            "num_fg": torch.tensor(num_fg / max(int(nlabel.sum()), 1)),
        }


class YOLOX(nn.Module):
    """YOLOX = YOLOPAFPN ``backbone`` + YOLOXHead ``head``.

    ``forward(x)`` (eval mode, or no targets) returns ``[N, anchors, 5 + num_classes]``;
    ``forward(x, targets)`` in training mode returns YOLOX's loss dict (``total_loss``,
    ``iou_loss``, ``l1_loss``, ``conf_loss``, ``cls_loss``, ``num_fg``).
    """

    def __init__(self, backbone: YOLOPAFPN, head: YOLOXHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        fpn_outs = self.backbone(x)
        if self.training and targets is not None:
            return self.head(fpn_outs, targets)
        return self.head(fpn_outs)


def yolox_s_like(width: float = 0.25, depth: float = 0.33, num_classes: int = 20) -> YOLOX:
    """YOLOX scaled by width/depth, initialised as YOLOX's ``Exp.get_model`` does.

    BN ``eps=1e-3``, ``momentum=0.03``; cls/obj biases at prior 0.01. Inputs must be a
    multiple of 32 on each side.
    """
    model = YOLOX(YOLOPAFPN(depth, width), YOLOXHead(num_classes, width))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
    model.head.initialize_biases(1e-2)
    return model


def yolox_s(num_classes: int = 80) -> YOLOX:
    """The full-size YOLOX-s (width 0.50, depth 0.33, ~8.97M parameters)."""
    return yolox_s_like(width=0.50, depth=0.33, num_classes=num_classes)


# ---- SE -----------------------------------------------------------------------------------
class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: pool, 1x1 reduce, ReLU, 1x1 expand, Sigmoid, ``scale * x``."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return scale * x


class SEModel(nn.Module):
    """conv-BN-ReLU, an SE block, conv-BN-ReLU, adaptive average pool, ``fc``."""

    def __init__(self, channels: int = 32, reduction: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, channels, 3)
        self.relu1 = nn.ReLU()
        self.se = SqueezeExcitation(channels, max(channels // reduction, 1))
        self.conv2, self.bn2 = _conv_bn(channels, channels, 3)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def se_model(channels: int = 32, reduction: int = 4, num_classes: int = 10) -> SEModel:
    """The SE example model (see :class:`SEModel`)."""
    return SEModel(channels, reduction, num_classes)


# ---- digits -------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """A small residual CNN for 8x8 grey images (scikit-learn's digits).

    conv3x3 1->32, conv3x3 32->64 (each BN + ReLU), maxpool 2 to 4x4, a residual
    conv3x3 64->64 + BN added to its input before ReLU (couples conv2 and conv3 channels),
    conv3x3 64->128 + BN + ReLU, global average pool, Linear 128->64, ReLU, Linear.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(1, 32, 3)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(32, 64, 3)
        self.relu2 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.conv3, self.bn3 = _conv_bn(64, 64, 3)
        self.relu3 = nn.ReLU()
        self.conv4, self.bn4 = _conv_bn(64, 128, 3)
        self.relu4 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(128, 64)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.maxpool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)) + x)
        x = self.relu4(self.bn4(self.conv4(x)))
        x = self.relu_fc1(self.fc1(torch.flatten(self.avgpool(x), 1)))
        return self.fc2(x)


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    """The digits example model (see :class:`DigitsCNN`); input ``[N, 1, 8, 8]``."""
    return DigitsCNN(num_classes)


# ---- registry -----------------------------------------------------------------------------
TORCH_MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": resnet18_like,
    "resnet50": resnet50_like,
    "mobilenetv2": mobilenetv2_like,
    "yolox_s_like": yolox_s_like,
    "se": se_model,
    "digits_cnn": digits_cnn,
}
"""The torch example models by name, each a no-argument constructor with the default sizes."""

_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 3, 64, 64),
    "resnet50": (1, 3, 64, 64),
    "mobilenetv2": (1, 3, 64, 64),
    "yolox_s_like": (1, 3, 128, 128),
    "se": (1, 3, 32, 32),
    "digits_cnn": (1, 1, 8, 8),
}


def example_input(name: str, batch: int = 1, seed: int = 0) -> Tensor:
    """A seeded standard-normal input for :data:`TORCH_MODELS` ``[name]`` (batch ``batch``).

    Raises ``KeyError`` listing the valid names.
    """
    try:
        shape = _INPUT_SHAPES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(_INPUT_SHAPES)}") from None
    return torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(seed))
