"""Segmenters of round 5b of the unseen-architecture battery (CRAFT, DeepLabV3+ and SVTR in
``round5b_ocr_torch.py``; detectors in ``round5b_torch.py``, ``round5b_det_torch.py``), small
widths, blocks as their projects write them:

- ``enet``: ENet (davidtvs/PyTorch-ENet ``models/enet.py``): the initial block (strided conv
  concatenated with a max pool), ``DownsamplingBottleneck`` (max pool with indices, the pooled
  main branch padded with zero channels to the extension's width), ``RegularBottleneck``
  (dilated and asymmetric 5x1 / 1x5 convs), ``UpsamplingBottleneck`` (``MaxUnpool2d`` with the
  indices of the matching downsampling), PReLU per channel, a final transposed conv. The
  TorchScript exporter has no ``max_unpool2d``: exported by dynamo (ScatterND of the
  flattened indices, channel offsets as a constant).
- ``ddrnet``: DDRNet-23-slim (ydhongHIT/DDRNet ``DDRNet_23_slim.py``): a high-resolution branch
  beside the low one with bilateral fusion (``x + down3(relu(x_))``, ``x_ + interpolate(
  compression3(relu(x)))``), Bottleneck ``layer5`` pair, ``DAPPM`` (pre-activation BN-ReLU-conv
  scales over average pools of 5/9/17 and a global pool, each added to the previous branch),
  the segment head; opset 11.
- ``u2net``: U^2-Net (xuebinqin/U-2-Net ``model/u2net.py``, U2NETP widths halved): nested
  ``RSU7`` ... ``RSU4F`` blocks (REBNCONV with dilation, ceil-mode pools, ``_upsample_like``
  to the size of another tensor), six side outputs upsampled and fused, seven sigmoids; opset 11.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from torch import nn


def cbr(cin, cout, k=3, stride=1, dilation=1, relu=True, bias=False):
    pad = dilation * (k // 2)
    layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation, bias=bias), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


# ---- ENet -------------------------------------------------------------------------------------


class InitialBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.main_branch = nn.Conv2d(cin, cout - 3, 3, 2, 1, bias=False)
        self.ext_branch = nn.MaxPool2d(3, 2, 1)
        self.batch_norm, self.out_activation = nn.BatchNorm2d(cout), nn.PReLU(cout)

    def forward(self, x):
        out = torch.cat((self.main_branch(x), self.ext_branch(x)), 1)
        return self.out_activation(self.batch_norm(out))


def _cba(cin, cout, k, stride=1, padding=0, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    )


class RegularBottleneck(nn.Module):
    def __init__(self, channels, k=3, padding=1, dilation=1, asymmetric=False):
        super().__init__()
        internal = channels // 4
        self.ext_conv1 = _cba(channels, internal, 1)
        if asymmetric:
            self.ext_conv2 = nn.Sequential(
                _cba(internal, internal, (k, 1), padding=(padding, 0)),
                _cba(internal, internal, (1, k), padding=(0, padding)),
            )
        else:
            self.ext_conv2 = _cba(internal, internal, k, padding=padding, dilation=dilation)
        self.ext_conv3 = _cba(internal, channels, 1)
        self.out_activation = nn.PReLU(channels)

    def forward(self, x):
        return self.out_activation(x + self.ext_conv3(self.ext_conv2(self.ext_conv1(x))))


class DownsamplingBottleneck(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        internal = cin // 4
        self.main_max1 = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.ext_conv1 = _cba(cin, internal, 2, stride=2)
        self.ext_conv2 = _cba(internal, internal, 3, padding=1)
        self.ext_conv3 = _cba(internal, cout, 1)
        self.out_activation = nn.PReLU(cout)

    def forward(self, x):
        main, max_indices = self.main_max1(x)
        ext = self.ext_conv3(self.ext_conv2(self.ext_conv1(x)))
        n, ch_ext, h, w = ext.size()
        padding = torch.zeros(n, ch_ext - main.size()[1], h, w)
        main = torch.cat((main, padding), 1)
        return self.out_activation(main + ext), max_indices


class UpsamplingBottleneck(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        internal = cin // 4
        self.main_conv1 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.main_unpool1 = nn.MaxUnpool2d(kernel_size=2)
        self.ext_conv1 = _cba(cin, internal, 1)
        self.ext_tconv1 = nn.ConvTranspose2d(internal, internal, 2, stride=2, bias=False)
        self.ext_tconv1_bnorm, self.ext_tconv1_activation = (
            nn.BatchNorm2d(internal),
            nn.PReLU(internal),
        )
        self.ext_conv2 = nn.Sequential(
            nn.Conv2d(internal, cout, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.out_activation = nn.PReLU(cout)

    def forward(self, x, max_indices, output_size):
        main = self.main_unpool1(self.main_conv1(x), max_indices, output_size=output_size)
        ext = self.ext_tconv1_activation(self.ext_tconv1_bnorm(self.ext_tconv1(self.ext_conv1(x))))
        return self.out_activation(main + self.ext_conv2(ext))


class TinyENet(nn.Module):
    """ENet at half its widths (16/64/128 -> 8/32/64), stage 3 as stage 2 without the
    downsampling, two bottlenecks of each kind where ENet repeats them."""

    def __init__(self, nc=4, w=8):
        super().__init__()
        self.initial_block = InitialBlock(3, 2 * w)
        self.downsample1_0 = DownsamplingBottleneck(2 * w, 4 * w)
        self.regular1 = nn.Sequential(RegularBottleneck(4 * w), RegularBottleneck(4 * w))
        self.downsample2_0 = DownsamplingBottleneck(4 * w, 8 * w)
        c = 8 * w
        self.stage2 = nn.Sequential(
            RegularBottleneck(c),
            RegularBottleneck(c, dilation=2, padding=2),
            RegularBottleneck(c, k=5, padding=2, asymmetric=True),
            RegularBottleneck(c, dilation=4, padding=4),
        )
        self.upsample4_0 = UpsamplingBottleneck(8 * w, 4 * w)
        self.regular4_1 = RegularBottleneck(4 * w)
        self.upsample5_0 = UpsamplingBottleneck(4 * w, 2 * w)
        self.regular5_1 = RegularBottleneck(2 * w)
        self.transposed_conv = nn.ConvTranspose2d(2 * w, nc, 3, 2, 1, bias=False)

    def forward(self, x):
        input_size = x.size()
        x = self.initial_block(x)
        stage1_input_size = x.size()
        x, max_indices1_0 = self.downsample1_0(x)
        x = self.regular1(x)
        stage2_input_size = x.size()
        x, max_indices2_0 = self.downsample2_0(x)
        x = self.stage2(x)
        x = self.regular4_1(self.upsample4_0(x, max_indices2_0, output_size=stage2_input_size))
        x = self.regular5_1(self.upsample5_0(x, max_indices1_0, output_size=stage1_input_size))
        return self.transposed_conv(x, output_size=input_size)


def enet(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    """ENet by dynamo (the TorchScript exporter cannot write ``max_unpool2d``)."""
    model = TinyENet()
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.05, 0.5)
    return export(model, size, 18, seed, True)


# ---- DDRNet-23-slim ---------------------------------------------------------------------------


class DBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1, self.conv2 = cbr(cin, planes, 3, stride), cbr(planes, planes, relu=False)
        self.downsample, self.no_relu = downsample, no_relu

    def forward(self, x):
        out = self.conv2(self.conv1(x)) + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else F.relu(out)


class DBottleneck(nn.Module):
    expansion = 2

    def __init__(self, cin, planes, stride=1, downsample=None, no_relu=True):
        super().__init__()
        self.conv1, self.conv2 = cbr(cin, planes, 1), cbr(planes, planes, 3, stride)
        self.conv3 = cbr(planes, planes * 2, 1, relu=False)
        self.downsample, self.no_relu = downsample, no_relu

    def forward(self, x):
        out = self.conv3(self.conv2(self.conv1(x)))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else F.relu(out)


def make_layer(block, cin, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or cin != planes * block.expansion:
        downsample = cbr(cin, planes * block.expansion, 1, stride, relu=False)
    layers = [block(cin, planes, stride, downsample)]
    for i in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, 1, None, no_relu=i == blocks - 1))
    return nn.Sequential(*layers)


def _bn_relu_conv(cin, cout, k=1):
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
    )


def pooled_scales(cin, branch) -> nn.ModuleList:
    """DAPPM's (and PAPPM's) scales: average pools 5/2, 9/4, 17/8 and a global one, each
    followed by BN-ReLU-conv 1x1."""
    pools = [nn.AvgPool2d(k, s, s) for k, s in ((5, 2), (9, 4), (17, 8))]
    pools.append(nn.AdaptiveAvgPool2d((1, 1)))
    return nn.ModuleList(nn.Sequential(p, _bn_relu_conv(cin, branch)) for p in pools)


class DAPPM(nn.Module):
    def __init__(self, cin, branch, cout):
        super().__init__()
        self.scales, self.scale0 = pooled_scales(cin, branch), _bn_relu_conv(cin, branch)
        self.process = nn.ModuleList(_bn_relu_conv(branch, branch, 3) for _ in range(4))
        self.compression = _bn_relu_conv(branch * 5, cout)
        self.shortcut = _bn_relu_conv(cin, cout)

    def forward(self, x):
        h, w = x.shape[-2:]
        x_list = [self.scale0(x)]
        for scale, process in zip(self.scales, self.process, strict=True):
            up = F.interpolate(scale(x), size=[h, w], mode="bilinear")
            x_list.append(process(up + x_list[-1]))
        return self.compression(torch.cat(x_list, 1)) + self.shortcut(x)


class TinyDDRNet(nn.Module):
    def __init__(self, nc=4, planes=8, spp_planes=16, head_planes=16):
        super().__init__()
        hr = planes * 2
        self.conv1 = nn.Sequential(cbr(3, planes, 3, 2), cbr(planes, planes, 3, 2))
        self.layer1 = make_layer(DBasicBlock, planes, planes, 2)
        self.layer2 = make_layer(DBasicBlock, planes, planes * 2, 2, 2)
        self.layer3 = make_layer(DBasicBlock, planes * 2, planes * 4, 2, 2)
        self.layer4 = make_layer(DBasicBlock, planes * 4, planes * 8, 2, 2)
        self.compression3 = cbr(planes * 4, hr, 1, relu=False)
        self.compression4 = cbr(planes * 8, hr, 1, relu=False)
        self.down3 = cbr(hr, planes * 4, 3, 2, relu=False)
        self.down4 = nn.Sequential(
            cbr(hr, planes * 4, 3, 2), cbr(planes * 4, planes * 8, 3, 2, relu=False)
        )
        self.layer3_ = make_layer(DBasicBlock, planes * 2, hr, 2)
        self.layer4_ = make_layer(DBasicBlock, hr, hr, 2)
        self.layer5_ = make_layer(DBottleneck, hr, hr, 1)
        self.layer5 = make_layer(DBottleneck, planes * 8, planes * 8, 1, 2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        self.final_layer = nn.Sequential(
            nn.BatchNorm2d(planes * 4),
            nn.ReLU(inplace=True),
            cbr(planes * 4, head_planes, 3),
            nn.Conv2d(head_planes, nc, 1),
        )

    def forward(self, x):
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        x = self.layer1(self.conv1(x))
        l2 = self.layer2(F.relu(x))
        l3 = self.layer3(F.relu(l2))
        x_ = self.layer3_(F.relu(l2))
        x = l3 + self.down3(F.relu(x_))
        x_ = x_ + F.interpolate(self.compression3(F.relu(l3)), size=[h, w], mode="bilinear")
        l4 = self.layer4(F.relu(x))
        x_ = self.layer4_(F.relu(x_))
        x = l4 + self.down4(F.relu(x_))
        x_ = x_ + F.interpolate(self.compression4(F.relu(l4)), size=[h, w], mode="bilinear")
        x_ = self.layer5_(F.relu(x_))
        x = F.interpolate(self.spp(self.layer5(F.relu(x))), size=[h, w], mode="bilinear")
        return self.final_layer(x + x_)


def ddrnet(size: int = 128, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyDDRNet(), size, 11, seed, dynamo)


# ---- U^2-Net ----------------------------------------------------------------------------------


def _upsample_like(src, tar):
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear")


class RSU(nn.Module):
    """RSU-L (``height`` levels; ``dilated``: RSU4F, dilations instead of pools)."""

    def __init__(self, height, cin, mid, cout, dilated=False):
        super().__init__()
        self.height, self.dilated = height, dilated
        self.rebnconvin = cbr(cin, cout)
        self.enc = nn.ModuleList(
            cbr(cout if i == 0 else mid, mid, dilation=2**i if dilated else 1)
            for i in range(height - 1)
        )
        self.bottom = cbr(mid, mid, dilation=2 ** (height - 1) if dilated else 2)
        self.dec = nn.ModuleList(
            cbr(mid * 2, cout if i == 0 else mid, dilation=2**i if dilated else 1)
            for i in range(height - 1)
        )

    def forward(self, x):
        hxin = self.rebnconvin(x)
        hx, skips = hxin, []
        for i, conv in enumerate(self.enc):
            if i and not self.dilated:
                hx = F.max_pool2d(hx, 2, 2, ceil_mode=True)
            hx = conv(hx)
            skips.append(hx)
        d = self.bottom(hx)
        for i in reversed(range(len(self.dec))):
            d = self.dec[i](torch.cat((d, skips[i]), 1))
            if i and not self.dilated:
                d = _upsample_like(d, skips[i - 1])
        return d + hxin


class TinyU2Net(nn.Module):
    def __init__(self, out_ch=1, m=8, c=32):
        super().__init__()
        self.stages = nn.ModuleList(
            [
                RSU(7, 3, m, c),
                RSU(6, c, m, c),
                RSU(5, c, m, c),
                RSU(4, c, m, c),
                RSU(4, c, m, c, True),
                RSU(4, c, m, c, True),
            ]
        )
        self.decs = nn.ModuleList(
            [
                RSU(4, 2 * c, m, c, True),
                RSU(4, 2 * c, m, c),
                RSU(5, 2 * c, m, c),
                RSU(6, 2 * c, m, c),
                RSU(7, 2 * c, m, c),
            ]
        )
        self.sides = nn.ModuleList(nn.Conv2d(c, out_ch, 3, padding=1) for _ in range(6))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x):
        hx, enc = x, []
        for i, stage in enumerate(self.stages):
            if i:
                hx = F.max_pool2d(hx, 2, 2, ceil_mode=True)
            hx = stage(hx)
            enc.append(hx)
        d, decs = enc[-1], [enc[-1]]
        for i, dec in enumerate(self.decs):
            d = dec(torch.cat((_upsample_like(d, enc[-2 - i]), enc[-2 - i]), 1))
            decs.append(d)
        sides = [side(h) for side, h in zip(self.sides, reversed(decs), strict=True)]
        sides = [sides[0]] + [_upsample_like(s, sides[0]) for s in sides[1:]]
        d0 = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(s) for s in [d0, *sides])


def u2net(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyU2Net(), size, 11, seed, dynamo)
