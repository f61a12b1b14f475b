"""Small detectors written the way their own projects compute and export them (round 3b of
the unseen-architecture battery).

- ``yolov10``: ultralytics' YOLOv10 (``yolov10n.yaml``): ``SCDown`` (1x1 conv then a strided
  depthwise conv), ``C2fCIB`` (compact inverted blocks, one with ``RepVGGDW``'s parallel
  7x7 and 3x3 depthwise convs), ``PSA`` (half the channels through attention and an FFN,
  split and concatenated back), and ``v10Detect``'s end-to-end export: only the one-to-one
  branch runs, and ``postprocess`` selects the top anchors (``topk``, ``gather``) and the
  top (anchor, class) pairs in the graph. Opset 17 (``format=onnx``'s default for v10).
- ``nanodet_plus``: NanoDet-Plus (RangiLu/nanodet): a ShuffleNetV2 backbone (``chunk`` and
  ``channel_shuffle``), ``GhostPAN`` (ghost bottlenecks on bilinear-upsampled concats,
  depthwise downsampling, an extra level summed from two strided depthwise modules) and
  ``NanoDetPlusHead._forward_onnx`` (depthwise conv modules per level, one 1x1 conv giving
  classes and the GFL distribution, ``split``, ``sigmoid`` on the classes, flattened and
  concatenated). ``integral=True`` also decodes the distribution in the graph as
  ``Integral`` does (softmax over ``reg_max + 1`` bins, ``F.linear`` with the bin positions).
  Opset 11 (``tools/export_onnx.py``).
"""

from __future__ import annotations

import copy
import math

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from torch import nn
from yolo11_torch import Attention
from yolov8_torch import SPPF, C2f, Concat, Conv, Detect, dist2bbox, make_anchors

# ---- YOLOv10 (ultralytics) ------------------------------------------------------------------


class SCDown(nn.Module):
    def __init__(self, c1, c2, k, s):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, 1)
        self.cv2 = Conv(c2, c2, k=k, s=s, g=c2, act=False)

    def forward(self, x):
        return self.cv2(self.cv1(x))


class RepVGGDW(nn.Module):
    def __init__(self, ed):
        super().__init__()
        self.conv = Conv(ed, ed, 7, 1, 3, g=ed, act=False)
        self.conv1 = Conv(ed, ed, 3, 1, 1, g=ed, act=False)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv(x) + self.conv1(x))


class CIB(nn.Module):
    def __init__(self, c1, c2, shortcut=True, e=0.5, lk=False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = nn.Sequential(
            Conv(c1, c1, 3, g=c1),
            Conv(c1, 2 * c_, 1),
            RepVGGDW(2 * c_) if lk else Conv(2 * c_, 2 * c_, 3, g=2 * c_),
            Conv(2 * c_, c2, 1),
            Conv(c2, c2, 3, g=c2),
        )
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv1(x) if self.add else self.cv1(x)


class C2fCIB(C2f):
    def __init__(self, c1, c2, n=1, shortcut=False, lk=False, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(CIB(self.c, self.c, shortcut, e=1.0, lk=lk) for _ in range(n))


class PSA(nn.Module):
    def __init__(self, c1, c2, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.attn = Attention(self.c, attn_ratio=0.5, num_heads=self.c // 64)
        self.ffn = nn.Sequential(
            Conv(self.c, self.c * 2, 1), Conv(self.c * 2, self.c, 1, act=False)
        )

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class v10Detect(Detect):
    def __init__(self, nc=80, ch=(), max_det=300):
        super().__init__(nc, ch)
        self.max_det = max_det
        c3 = max(ch[0], min(self.nc, 100))
        self.cv3 = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(Conv(x, x, 3, g=x), Conv(x, c3, 1)),
                nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3, 1)),
                nn.Conv2d(c3, self.nc, 1),
            )
            for x in ch
        )
        self.one2one_cv2 = copy.deepcopy(self.cv2)
        self.one2one_cv3 = copy.deepcopy(self.cv3)

    def _inference(self, x):
        shape = x[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        if self.shape != shape:
            self.anchors, self.strides = (
                t.transpose(0, 1) for t in make_anchors(x, self.stride, 0.5)
            )
            self.shape = shape
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=False, dim=1)
        return torch.cat((dbox * self.strides, cls.sigmoid()), 1)

    @staticmethod
    def postprocess(preds, max_det, nc=80):
        batch_size, anchors, _ = preds.shape
        boxes, scores = preds.split([4, nc], dim=-1)
        index = scores.amax(dim=-1).topk(min(max_det, anchors))[1].unsqueeze(-1)
        boxes = boxes.gather(dim=1, index=index.repeat(1, 1, 4))
        scores = scores.gather(dim=1, index=index.repeat(1, 1, nc))
        scores, index = scores.flatten(1).topk(min(max_det, anchors))
        i = torch.arange(batch_size)[..., None]
        return torch.cat(
            [boxes[i, index // nc], scores[..., None], (index % nc)[..., None].float()], dim=-1
        )

    def forward(self, x):
        one2one = [
            torch.cat((self.one2one_cv2[i](x[i]), self.one2one_cv3[i](x[i])), 1)
            for i in range(self.nl)
        ]
        y = self._inference(one2one)
        return self.postprocess(y.permute(0, 2, 1), self.max_det, self.nc)


class TinyYOLOv10(nn.Module):
    """yolov10n.yaml's layer graph at small widths (P5 128 wide: PSA's one 64-channel head)."""

    def __init__(self, nc: int = 8, w: int = 16) -> None:
        super().__init__()
        p5 = 8 * w
        self.layers = nn.ModuleList(
            [
                Conv(3, w, 3, 2),  # 0
                Conv(w, 2 * w, 3, 2),  # 1
                C2f(2 * w, 2 * w, 1, True),  # 2
                Conv(2 * w, 4 * w, 3, 2),  # 3
                C2f(4 * w, 4 * w, 1, True),  # 4
                SCDown(4 * w, 4 * w, 3, 2),  # 5
                C2f(4 * w, 4 * w, 1, True),  # 6
                SCDown(4 * w, p5, 3, 2),  # 7
                C2fCIB(p5, p5, 1, True, True),  # 8
                SPPF(p5, p5, 5),  # 9
                PSA(p5, p5),  # 10
                nn.Upsample(None, 2, "nearest"),  # 11
                Concat(1),  # 12 cat P4
                C2f(p5 + 4 * w, 4 * w, 1),  # 13
                nn.Upsample(None, 2, "nearest"),  # 14
                Concat(1),  # 15 cat P3
                C2f(8 * w, 2 * w, 1),  # 16
                Conv(2 * w, 2 * w, 3, 2),  # 17
                Concat(1),  # 18 cat 13
                C2f(6 * w, 4 * w, 1),  # 19
                SCDown(4 * w, 4 * w, 3, 2),  # 20
                Concat(1),  # 21 cat 10
                C2fCIB(4 * w + p5, p5, 1, True, True),  # 22
                v10Detect(nc, (2 * w, 4 * w, p5)),  # 23
            ]
        )
        self.froms = {12: (-1, 6), 15: (-1, 4), 18: (-1, 13), 21: (-1, 10), 23: (16, 19, 22)}

    def forward(self, x):
        y = []
        for i, m in enumerate(self.layers):
            f = self.froms.get(i, -1)
            if f != -1:
                x = [x if j == -1 else y[j] for j in f]
            x = m(x)
            y.append(x)
        return x


def yolov10(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TinyYOLOv10()
    head = model.layers[-1]
    for last, stride in zip((s[-1] for s in head.one2one_cv3), (8, 16, 32), strict=True):
        # Detect.bias_init's class prior, and small weights: sigmoid scores that do not
        # saturate to 1.0, whose ties topk would order arbitrarily
        last.bias.data[:] = math.log(5 / head.nc / (640 / stride) ** 2)
        last.weight.data.mul_(0.1)
    for m in model.modules():
        if isinstance(m, C2f):
            m.forward = m.forward_split
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))  # the dry run caches the anchors
    return export(model, size, 17, seed, dynamo)


# ---- NanoDet-Plus (RangiLu/nanodet) ---------------------------------------------------------


def act():
    return nn.LeakyReLU(negative_slope=0.1)


def channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ShuffleV2Block(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, bias=False),
                nn.BatchNorm2d(branch_features),
                act(),
            )
        cin = inp if stride > 1 else branch_features
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features),
            act(),
            nn.Conv2d(
                branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False
            ),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features),
            act(),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(16, 32, 64, 96)):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), act()
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, cin = [], widths[0]
        for cout in widths[1:]:
            stages.append(
                nn.Sequential(ShuffleV2Block(cin, cout, 2), ShuffleV2Block(cout, cout, 1))
            )
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.act = act()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class DepthwiseConvModule(nn.Module):
    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False)
        self.dwnorm = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.pwnorm = nn.BatchNorm2d(cout)
        self.act = act()

    def forward(self, x):
        x = self.act(self.dwnorm(self.depthwise(x)))
        return self.act(self.pwnorm(self.pointwise(x)))


class GhostModule(nn.Module):
    def __init__(self, inp, oup, kernel_size=1, ratio=2, dw_size=3, relu=True):
        super().__init__()
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, 1, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels),
            act() if relu else nn.Sequential(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(
                init_channels,
                new_channels,
                dw_size,
                1,
                dw_size // 2,
                groups=init_channels,
                bias=False,
            ),
            nn.BatchNorm2d(new_channels),
            act() if relu else nn.Sequential(),
        )

    def forward(self, x):
        x1 = self.primary_conv(x)
        return torch.cat([x1, self.cheap_operation(x1)], dim=1)


class GhostBottleneck(nn.Module):
    def __init__(self, cin, mid, cout, dw_kernel_size=3):
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, relu=True)
        self.ghost2 = GhostModule(mid, cout, relu=False)
        k = dw_kernel_size
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, cin, k, 1, (k - 1) // 2, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


class GhostBlocks(nn.Module):
    def __init__(self, cin, cout, expand=1, kernel_size=5, use_res=False):
        super().__init__()
        self.use_res = use_res
        if use_res:
            self.reduce_conv = ConvModule(cin, cout, 1)
        self.blocks = nn.Sequential(GhostBottleneck(cin, int(cout * expand), cout, kernel_size))

    def forward(self, x):
        out = self.blocks(x)
        return out + self.reduce_conv(x) if self.use_res else out


class GhostPAN(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=5, expand=1, num_extra_level=1):
        super().__init__()
        self.in_channels = in_channels
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.reduce_layers = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        n = len(in_channels)
        self.top_down_blocks = nn.ModuleList(
            GhostBlocks(out_channels * 2, out_channels, expand, kernel_size, use_res=i == 0)
            for i in range(n - 1)
        )
        self.downsamples = nn.ModuleList(
            DepthwiseConvModule(out_channels, out_channels, kernel_size, 2) for _ in range(n - 1)
        )
        self.bottom_up_blocks = nn.ModuleList(
            GhostBlocks(out_channels * 2, out_channels, expand, kernel_size) for _ in range(n - 1)
        )
        self.extra_lvl_in_conv = nn.ModuleList(
            DepthwiseConvModule(out_channels, out_channels, kernel_size, 2)
            for _ in range(num_extra_level)
        )
        self.extra_lvl_out_conv = nn.ModuleList(
            DepthwiseConvModule(out_channels, out_channels, kernel_size, 2)
            for _ in range(num_extra_level)
        )

    def forward(self, inputs):
        inputs = [reduce(x) for x, reduce in zip(inputs, self.reduce_layers, strict=True)]
        inner_outs = [inputs[-1]]
        for idx in range(len(self.in_channels) - 1, 0, -1):
            feat_heigh, feat_low = inner_outs[0], inputs[idx - 1]
            upsample_feat = self.upsample(feat_heigh)
            block = self.top_down_blocks[len(self.in_channels) - 1 - idx]
            inner_outs.insert(0, block(torch.cat([upsample_feat, feat_low], 1)))
        outs = [inner_outs[0]]
        for idx in range(len(self.in_channels) - 1):
            downsample_feat = self.downsamples[idx](outs[-1])
            block = self.bottom_up_blocks[idx]
            outs.append(block(torch.cat([downsample_feat, inner_outs[idx + 1]], 1)))
        for extra_in, extra_out in zip(
            self.extra_lvl_in_conv, self.extra_lvl_out_conv, strict=True
        ):
            outs.append(extra_in(inputs[-1]) + extra_out(outs[-1]))
        return outs


class NanoDetPlusHead(nn.Module):
    def __init__(self, num_classes=8, in_channels=32, feat_channels=32, stacked_convs=2,
                 kernel_size=5, strides=(8, 16, 32, 64), reg_max=7):  # fmt: skip
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        self.cls_convs = nn.ModuleList(
            nn.ModuleList(
                DepthwiseConvModule(
                    in_channels if i == 0 else feat_channels, feat_channels, kernel_size
                )
                for i in range(stacked_convs)
            )
            for _ in strides
        )
        self.gfl_cls = nn.ModuleList(
            nn.Conv2d(feat_channels, num_classes + 4 * (reg_max + 1), 1) for _ in strides
        )

    def forward(self, feats):
        outputs = []
        for feat, cls_convs, gfl_cls in zip(feats, self.cls_convs, self.gfl_cls, strict=True):
            for conv in cls_convs:
                feat = conv(feat)
            output = gfl_cls(feat)
            cls_pred, reg_pred = output.split([self.num_classes, 4 * (self.reg_max + 1)], dim=1)
            out = torch.cat([cls_pred.sigmoid(), reg_pred], dim=1)
            outputs.append(out.flatten(start_dim=2))
        return torch.cat(outputs, dim=2).permute(0, 2, 1)


class Integral(nn.Module):
    def __init__(self, reg_max=7):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x):
        shape = x.size()
        x = F.softmax(x.reshape(*shape[:-1], 4, self.reg_max + 1), dim=-1)
        return F.linear(x, self.project.type_as(x)).reshape(*shape[:-1], 4)


class TinyNanoDetPlus(nn.Module):
    def __init__(self, nc=8, integral=False):
        super().__init__()
        self.nc = nc
        self.backbone = ShuffleNetV2()
        self.fpn = GhostPAN((32, 64, 96), 32)
        self.head = NanoDetPlusHead(nc)
        self.integral = Integral(7) if integral else None

    def forward(self, x):
        out = self.head(self.fpn(self.backbone(x)))
        if self.integral is None:
            return out
        cls, reg = out.split([self.nc, 32], dim=-1)
        return torch.cat([cls, self.integral(reg)], dim=-1)


def nanodet_plus(
    size: int = 64, seed: int = 0, integral: bool = False, dynamo: bool = False
) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TinyNanoDetPlus(integral=integral)
    return export(model, size, 11, seed, dynamo)


def nanodet_plus_integral() -> onnx.ModelProto:
    return nanodet_plus(integral=True)
