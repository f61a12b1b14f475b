"""A small YOLOv6 3.0 written the way meituan/YOLOv6 computes and exports it (round 3b of
the unseen-architecture battery).

``yolov6/layers/common.py``: ``RepVGGBlock`` (3x3 conv + BN, 1x1 conv + BN and an identity
BN summed, ReLU), ``RepBlock``, ``SimSPPF``, ``BiFusion`` (the upper level upsampled by a
2x2 ``ConvTranspose2d``, the same level by a 1x1 conv, the lower level by a 1x1 and a
strided 3x3 conv, concatenated and fused); ``models/efficientrep.py`` (EfficientRep),
``models/reppan.py`` (``RepBiFPANNeck``); ``models/effidehead.py``'s export path: per level a
stem, class and box towers, the box distribution ``reshape([-1, 4, reg_max + 1, l])`` and
``permute``d for ``proj_conv`` (a fixed 1x1 conv over a softmax), the anchors generated from
the feature maps' shapes, ``dist2bbox`` in xywh, and ``cat([boxes, ones, scores], -1)``.
``deploy/ONNX/export_onnx.py`` switches every RepVGG block to its fused 3x3 conv first
(``switch_to_deploy``) and exports at opset 13.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from torch import nn


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k, s=1, act=nn.ReLU, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RepVGGBlock(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.nonlinearity = nn.ReLU()
        self.rbr_identity = nn.BatchNorm2d(cin) if cout == cin and stride == 1 else None
        self.rbr_dense = ConvModule(cin, cout, k, stride, act=None)
        self.rbr_1x1 = ConvModule(cin, cout, 1, stride, act=None)
        self.rbr_reparam = None

    def forward(self, x):
        if self.rbr_reparam is not None:
            return self.nonlinearity(self.rbr_reparam(x))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)

    @staticmethod
    def _fuse(kernel, bn):
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    def switch_to_deploy(self):
        k3, b3 = self._fuse(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = self._fuse(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            ident = torch.zeros(self.cin, self.cin, 3, 3)
            ident[range(self.cin), range(self.cin), 1, 1] = 1
            ki, bi = self._fuse(ident, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        self.rbr_reparam = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=True)
        self.rbr_reparam.weight.data, self.rbr_reparam.bias.data = kernel.detach(), bias.detach()
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity


class RepBlock(nn.Module):
    def __init__(self, cin, cout, n=1):
        super().__init__()
        self.conv1 = RepVGGBlock(cin, cout)
        self.block = (
            nn.Sequential(*(RepVGGBlock(cout, cout) for _ in range(n - 1))) if n > 1 else None
        )

    def forward(self, x):
        x = self.conv1(x)
        return self.block(x) if self.block is not None else x


class SimSPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        c_ = cin // 2
        self.cv1 = ConvModule(cin, c_, 1)
        self.cv2 = ConvModule(c_ * 4, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class BiFusion(nn.Module):
    def __init__(self, in_channels, cout):
        super().__init__()
        self.cv1 = ConvModule(in_channels[0], cout, 1)
        self.cv2 = ConvModule(in_channels[1], cout, 1)
        self.cv3 = ConvModule(cout * 3, cout, 1)
        self.upsample = nn.ConvTranspose2d(cout, cout, 2, 2, bias=True)
        self.downsample = ConvModule(cout, cout, 3, 2)

    def forward(self, x):
        x0 = self.upsample(x[0])
        x1 = self.cv1(x[1])
        x2 = self.downsample(self.cv2(x[2]))
        return self.cv3(torch.cat((x0, x1, x2), 1))


class EfficientRep(nn.Module):
    def __init__(self, ch=(16, 32, 64, 96, 128)):
        super().__init__()
        self.stem = RepVGGBlock(3, ch[0], 3, 2)
        self.ERBlock_2 = nn.Sequential(RepVGGBlock(ch[0], ch[1], 3, 2), RepBlock(ch[1], ch[1], 2))
        self.ERBlock_3 = nn.Sequential(RepVGGBlock(ch[1], ch[2], 3, 2), RepBlock(ch[2], ch[2], 2))
        self.ERBlock_4 = nn.Sequential(RepVGGBlock(ch[2], ch[3], 3, 2), RepBlock(ch[3], ch[3], 2))
        self.ERBlock_5 = nn.Sequential(
            RepVGGBlock(ch[3], ch[4], 3, 2), RepBlock(ch[4], ch[4], 1), SimSPPF(ch[4], ch[4])
        )

    def forward(self, x):
        outputs = []
        x = self.stem(x)
        for block in (self.ERBlock_2, self.ERBlock_3, self.ERBlock_4, self.ERBlock_5):
            x = block(x)
            outputs.append(x)
        return tuple(outputs)


class RepBiFPANNeck(nn.Module):
    def __init__(self, ch=(16, 32, 64, 96, 128), neck=(48, 32, 32, 64)):
        super().__init__()
        self.reduce_layer0 = ConvModule(ch[4], neck[0], 1)
        self.Bifusion0 = BiFusion([ch[3], ch[2]], neck[0])
        self.Rep_p4 = RepBlock(neck[0], neck[0], 1)
        self.reduce_layer1 = ConvModule(neck[0], neck[1], 1)
        self.Bifusion1 = BiFusion([ch[2], ch[1]], neck[1])
        self.Rep_p3 = RepBlock(neck[1], neck[1], 1)
        self.downsample2 = ConvModule(neck[1], neck[1], 3, 2)
        self.Rep_n3 = RepBlock(neck[1] + neck[1], neck[2], 1)
        self.downsample1 = ConvModule(neck[2], neck[2], 3, 2)
        self.Rep_n4 = RepBlock(neck[0] + neck[2], neck[3], 1)

    def forward(self, inputs):
        (x3, x2, x1, x0) = inputs
        fpn_out0 = self.reduce_layer0(x0)
        f_out0 = self.Rep_p4(self.Bifusion0([fpn_out0, x1, x2]))
        fpn_out1 = self.reduce_layer1(f_out0)
        pan_out2 = self.Rep_p3(self.Bifusion1([fpn_out1, x2, x3]))
        down_feat1 = self.downsample2(pan_out2)
        pan_out1 = self.Rep_n3(torch.cat([down_feat1, fpn_out1], 1))
        down_feat0 = self.downsample1(pan_out1)
        pan_out0 = self.Rep_n4(torch.cat([down_feat0, fpn_out0], 1))
        return [pan_out2, pan_out1, pan_out0]


def generate_anchors(feats, fpn_strides, grid_cell_offset=0.5):
    anchor_points, stride_tensor = [], []
    for i, stride in enumerate(fpn_strides):
        _, _, h, w = feats[i].shape
        shift_x = torch.arange(end=w) + grid_cell_offset
        shift_y = torch.arange(end=h) + grid_cell_offset
        shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        anchor_point = torch.stack([shift_x, shift_y], axis=-1).to(torch.float)
        anchor_points.append(anchor_point.reshape([-1, 2]))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=torch.float))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def dist2bbox(distance, anchor_points):
    lt, rb = torch.split(distance, 2, -1)
    x1y1, x2y2 = anchor_points - lt, anchor_points + rb
    return torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)


class Detect(nn.Module):
    def __init__(self, nc=8, ch=(32, 32, 64), reg_max=16, strides=(8, 16, 32)):
        super().__init__()
        self.nc, self.nl, self.reg_max, self.stride = nc, len(ch), reg_max, strides
        self.stems = nn.ModuleList(ConvModule(c, c, 1, act=nn.SiLU) for c in ch)
        self.cls_convs = nn.ModuleList(ConvModule(c, c, 3, act=nn.SiLU) for c in ch)
        self.reg_convs = nn.ModuleList(ConvModule(c, c, 3, act=nn.SiLU) for c in ch)
        self.cls_preds = nn.ModuleList(nn.Conv2d(c, nc, 1) for c in ch)
        self.reg_preds = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + 1), 1) for c in ch)
        self.proj_conv = nn.Conv2d(reg_max + 1, 1, 1, bias=False)
        self.proj_conv.weight = nn.Parameter(
            torch.linspace(0, reg_max, reg_max + 1).view(1, reg_max + 1, 1, 1), requires_grad=False
        )

    def forward(self, x):
        cls_score_list, reg_dist_list = [], []
        for i in range(self.nl):
            b, _, h, w = x[i].shape
            n = h * w
            x[i] = self.stems[i](x[i])
            cls_output = self.cls_preds[i](self.cls_convs[i](x[i]))
            reg_output = self.reg_preds[i](self.reg_convs[i](x[i]))
            reg_output = reg_output.reshape([-1, 4, self.reg_max + 1, n]).permute(0, 2, 1, 3)
            reg_output = self.proj_conv(F.softmax(reg_output, dim=1))
            cls_score_list.append(torch.sigmoid(cls_output).reshape([b, self.nc, n]))
            reg_dist_list.append(reg_output.reshape([b, 4, n]))
        cls_score_list = torch.cat(cls_score_list, axis=-1).permute(0, 2, 1)
        reg_dist_list = torch.cat(reg_dist_list, axis=-1).permute(0, 2, 1)
        anchor_points, stride_tensor = generate_anchors(x, self.stride)
        pred_bboxes = dist2bbox(reg_dist_list, anchor_points) * stride_tensor
        ones = torch.ones((b, pred_bboxes.shape[1], 1), dtype=pred_bboxes.dtype)
        return torch.cat([pred_bboxes, ones, cls_score_list], axis=-1)


class TinyYOLOv6(nn.Module):
    def __init__(self, nc=8):
        super().__init__()
        self.backbone = EfficientRep()
        self.neck = RepBiFPANNeck()
        self.detect = Detect(nc)

    def forward(self, x):
        return self.detect(self.neck(self.backbone(x)))


def yolov6(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """Calibrated in its training form, then ``switch_to_deploy`` as the export script does."""
    from bn_calibrate import calibrate

    torch.manual_seed(seed)
    model = calibrate(TinyYOLOv6(), (1, 3, size, size))
    for m in model.modules():
        if isinstance(m, RepVGGBlock):
            m.switch_to_deploy()
    for m in model.detect.cls_preds:
        m.bias.data[:] = -4.6  # the head's prior bias (initialize_biases): scores not saturated
        m.weight.data.mul_(0.1)
    return export(model, size, 13, seed, dynamo)
