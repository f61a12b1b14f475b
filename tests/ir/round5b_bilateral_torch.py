"""Two-branch real-time segmenters of round 5b of the unseen-architecture battery (more in
``round5b_seg_torch.py``, whose DDRNet blocks they share):

- ``pidnet``: PIDNet-S (XuJiacong/PIDNet ``models/pidnet.py``, ``model_utils.py``): the P, I and
  D branches; ``PagFM`` (``sigmoid(sum(f_x(x) * up(f_y(y)), dim=1))`` gates ``(1 - s) * x + s *
  up(y)``: a reduction over the channels of a product of two convs), ``PAPPM`` (the pooled
  scales added to the first and processed together by a grouped 3x3 conv, ``groups=4``, over
  their concat), ``Light_Bag`` (``sigmoid(d)`` weighs P against I, two 1x1 convs summed), the
  segment head; opset 11, ``align_corners=False``.
- ``stdc``: STDC1-Seg (MichaelFan01/STDC-Seg ``nets/stdcnet.py``, ``models/model_stages.py``):
  ``CatBottleneck`` (a 1x1 conv then a cascade of convs of halving widths, all concatenated;
  where it downsamples, a depthwise stride-2 conv on the cascade and a 3x3 average pool on its
  first output), the context path (``AttentionRefinementModule``: ``feat * sigmoid(bn(conv(
  avg_pool(feat))))``, the global ``avg_pool2d(feat32, feat32.size()[2:])``, nearest
  upsampling), ``FeatureFusionModule`` (``feat * atten + feat``) and the output head,
  upsampled bilinearly with ``align_corners=True``; opset 11.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from round5b_seg_torch import (
    DBasicBlock,
    DBottleneck,
    _bn_relu_conv,
    cbr,
    make_layer,
    pooled_scales,
)
from torch import nn

# ---- PIDNet-S ---------------------------------------------------------------------------------


def _up(x, h, w):
    return F.interpolate(x, size=[h, w], mode="bilinear", align_corners=False)


class PagFM(nn.Module):
    def __init__(self, cin, mid):
        super().__init__()
        self.f_x, self.f_y = cbr(cin, mid, 1, relu=False), cbr(cin, mid, 1, relu=False)

    def forward(self, x, y):
        h, w = x.shape[2], x.shape[3]
        y_q = _up(self.f_y(y), h, w)
        sim_map = torch.sigmoid(torch.sum(self.f_x(x) * y_q, dim=1).unsqueeze(1))
        return (1 - sim_map) * x + sim_map * _up(y, h, w)


class PAPPM(nn.Module):
    def __init__(self, cin, branch, cout):
        super().__init__()
        self.scales, self.scale0 = pooled_scales(cin, branch), _bn_relu_conv(cin, branch)
        self.scale_process = nn.Sequential(
            nn.BatchNorm2d(branch * 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch * 4, branch * 4, 3, padding=1, groups=4, bias=False),
        )
        self.compression = _bn_relu_conv(branch * 5, cout)
        self.shortcut = _bn_relu_conv(cin, cout)

    def forward(self, x):
        h, w = x.shape[-2:]
        x_ = self.scale0(x)
        scales = [_up(s(x), h, w) + x_ for s in self.scales]
        scale_out = self.scale_process(torch.cat(scales, 1))
        return self.compression(torch.cat([x_, scale_out], 1)) + self.shortcut(x)


class LightBag(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_p, self.conv_i = cbr(cin, cout, 1, relu=False), cbr(cin, cout, 1, relu=False)

    def forward(self, p, i, d):
        edge_att = torch.sigmoid(d)
        return self.conv_p((1 - edge_att) * i + p) + self.conv_i(i + edge_att * p)


class TinyPIDNet(nn.Module):
    def __init__(self, nc=4, p=8, ppm=12, head=16):
        super().__init__()
        self.conv1 = nn.Sequential(cbr(3, p, 3, 2), cbr(p, p, 3, 2))
        self.layer1 = make_layer(DBasicBlock, p, p, 2)
        self.layer2 = make_layer(DBasicBlock, p, 2 * p, 2, 2)
        self.layer3 = make_layer(DBasicBlock, 2 * p, 4 * p, 2, 2)
        self.layer4 = make_layer(DBasicBlock, 4 * p, 8 * p, 2, 2)
        self.layer5 = make_layer(DBottleneck, 8 * p, 8 * p, 1, 2)
        self.compression3 = cbr(4 * p, 2 * p, 1, relu=False)
        self.compression4 = cbr(8 * p, 2 * p, 1, relu=False)
        self.pag3, self.pag4 = PagFM(2 * p, p), PagFM(2 * p, p)
        self.layer3_ = make_layer(DBasicBlock, 2 * p, 2 * p, 2)
        self.layer4_ = make_layer(DBasicBlock, 2 * p, 2 * p, 2)
        self.layer5_ = make_layer(DBottleneck, 2 * p, 2 * p, 1)
        self.layer3_d = make_layer(DBasicBlock, 2 * p, p, 1)
        self.layer4_d = make_layer(DBottleneck, p, p, 1)
        self.diff3 = cbr(4 * p, p, 3, relu=False)
        self.diff4 = cbr(8 * p, 2 * p, 3, relu=False)
        self.spp = PAPPM(16 * p, ppm, 4 * p)
        self.dfm = LightBag(4 * p, 4 * p)
        self.layer5_d = make_layer(DBottleneck, 2 * p, 2 * p, 1)
        self.final_layer = nn.Sequential(
            nn.BatchNorm2d(4 * p),
            nn.ReLU(inplace=True),
            cbr(4 * p, head, 3),
            nn.Conv2d(head, nc, 1),
        )

    def forward(self, x):
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        x = F.relu(self.layer2(F.relu(self.layer1(self.conv1(x)))))
        x_, x_d = self.layer3_(x), self.layer3_d(x)
        x = F.relu(self.layer3(x))
        x_ = self.pag3(x_, self.compression3(x))
        x_d = x_d + _up(self.diff3(x), h, w)
        x = F.relu(self.layer4(x))
        x_, x_d = self.layer4_(F.relu(x_)), self.layer4_d(F.relu(x_d))
        x_ = self.pag4(x_, self.compression4(x))
        x_d = x_d + _up(self.diff4(x), h, w)
        x_, x_d = self.layer5_(F.relu(x_)), self.layer5_d(F.relu(x_d))
        x = _up(self.spp(self.layer5(x)), h, w)
        return self.final_layer(self.dfm(x_, x, x_d))


def pidnet(size: int = 128, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyPIDNet(), size, 11, seed, dynamo)


# ---- STDC-Seg ---------------------------------------------------------------------------------


class CatBottleneck(nn.Module):
    def __init__(self, cin, cout, block_num=4, stride=1):
        super().__init__()
        self.stride = stride
        if stride == 2:
            half = cout // 2
            self.avd_layer = nn.Sequential(
                nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False), nn.BatchNorm2d(half)
            )
            self.skip = nn.AvgPool2d(3, 2, 1)
        convs = [cbr(cin, cout // 2, 1)]
        for idx in range(1, block_num):
            if idx < block_num - 1:
                convs.append(cbr(cout // 2**idx, cout // 2 ** (idx + 1)))
            else:
                convs.append(cbr(cout // 2**idx, cout // 2**idx))
        self.conv_list = nn.ModuleList(convs)

    def forward(self, x):
        out1 = self.conv_list[0](x)
        out = self.avd_layer(out1) if self.stride == 2 else out1
        out_list = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            out_list.append(out)
        if self.stride == 2:
            out1 = self.skip(out1)
        return torch.cat([out1, *out_list], dim=1)


class ARM(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = cbr(cin, cout)
        self.conv_atten, self.bn_atten = nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        atten = F.avg_pool2d(feat, feat.size()[2:])
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(atten)))


class FFM(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.convblk = cbr(cin, cout, 1)
        self.conv1, self.conv2 = (
            nn.Conv2d(cout, cout // 4, 1, bias=False),
            nn.Conv2d(cout // 4, cout, 1, bias=False),
        )

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = F.avg_pool2d(feat, feat.size()[2:])
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(atten))))
        return feat * atten + feat


class TinySTDCSeg(nn.Module):
    """STDC1 (``STDCNet813``: layers 2/2/2, ``block_num=4``) at base 16, the context path at 32."""

    def __init__(self, nc=4, base=16, c=32):
        super().__init__()
        self.x2, self.x4 = cbr(3, base // 2, 3, 2), cbr(base // 2, base, 3, 2)
        widths = [base, base * 4, base * 8, base * 16]
        self.stages = nn.ModuleList(
            nn.Sequential(
                CatBottleneck(widths[i], widths[i + 1], 4, 2),
                CatBottleneck(widths[i + 1], widths[i + 1]),
            )
            for i in range(3)
        )
        self.arm16, self.arm32 = ARM(widths[2], c), ARM(widths[3], c)
        self.conv_avg = cbr(widths[3], c, 1)
        self.conv_head32, self.conv_head16 = cbr(c, c), cbr(c, c)
        self.ffm = FFM(widths[1] + c, 2 * c)
        self.conv_out = nn.Sequential(cbr(2 * c, c), nn.Conv2d(c, nc, 1, bias=False))

    def forward(self, x):
        size = x.shape[2:]
        feat8 = self.stages[0](self.x4(self.x2(x)))
        feat16 = self.stages[1](feat8)
        feat32 = self.stages[2](feat16)
        avg = self.conv_avg(F.avg_pool2d(feat32, feat32.size()[2:]))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.size()[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.size()[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.size()[2:], mode="nearest"))
        out = self.conv_out(self.ffm(feat8, feat16_up))
        return F.interpolate(out, size, mode="bilinear", align_corners=True)


def stdc(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinySTDCSeg(), size, 11, seed, dynamo)
