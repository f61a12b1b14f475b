"""More small segmenters written the way their projects compute them.

- ``pspnet``: hszhao/semseg's PSPNet: a dilated ResNet (output stride 8), the pyramid
  pooling module (``AdaptiveAvgPool2d(bin)`` for bins 1, 2, 3, 6, a 1x1 conv + BN + ReLU
  each, ``F.interpolate(size=x.size()[2:], align_corners=True)``, concatenated with the
  input), a 3x3 classifier and the zoom back to ``(H - 1) / 8 * 8 + 1``; opset 11;
- ``bisenetv2``: CoinCheung/BiSeNet's BiSeNetV2: a detail branch of strided 3x3 convs, a
  semantic branch (stem with a conv and a max-pool branch concatenated; gather-expansion
  layers whose depthwise convs expand each channel six times, ``groups=in`` with ``6 * in``
  outputs; the context embedding ``x.mean((2, 3))`` -> BN -> 1x1 added back to ``x``), the
  bilateral guided aggregation (each branch gated by ``sigmoid`` of the other, upsampled
  by 4) and the segment head; exported in ``aux_mode='eval'`` (logits) at opset 11;
- ``dbnet``: MhLiao/DB's ``SegDetector`` on a ResNet-style backbone: 1x1 lateral convs,
  top-down nearest upsampling and adds, per-level 3x3 convs upsampled by 8/4/2 and
  concatenated, and the binarisation head (3x3 conv + BN + ReLU, two
  ``ConvTranspose2d(2, 2)`` with BN + ReLU between, sigmoid); opset 11.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from segment_torch import DilatedResNet
from torch import nn

# ---- PSPNet (hszhao/semseg model/pspnet.py) ------------------------------------------------


class PPM(nn.Module):
    def __init__(self, in_dim, reduction_dim, bins):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x):
        x_size = x.size()
        out = [x]
        for f in self.features:
            out.append(F.interpolate(f(x), x_size[2:], mode="bilinear", align_corners=True))
        return torch.cat(out, 1)


class PSPNet(nn.Module):
    def __init__(self, bins=(1, 2, 3, 6), classes=5, zoom_factor=8):
        super().__init__()
        self.zoom_factor = zoom_factor
        self.backbone = DilatedResNet()
        fea_dim = 32
        self.ppm = PPM(fea_dim, fea_dim // len(bins), bins)
        self.cls = nn.Sequential(
            nn.Conv2d(fea_dim * 2, 24, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(24, classes, kernel_size=1),
        )

    def forward(self, x):
        x_size = x.size()
        h = int((x_size[2] - 1) / 8 * self.zoom_factor + 1)
        w = int((x_size[3] - 1) / 8 * self.zoom_factor + 1)
        x = self.cls(self.ppm(self.backbone(x)["out"]))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


# ---- BiSeNetV2 (CoinCheung/BiSeNet lib/models/bisenetv2.py) -------------------------------


class ConvBNReLU(nn.Module):
    def __init__(self, in_chan, out_chan, ks=3, stride=1, padding=1, groups=1, bias=False):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride, padding, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chan)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class DetailBranch(nn.Module):
    def __init__(self, c=(8, 8, 16)):
        super().__init__()
        self.S1 = nn.Sequential(ConvBNReLU(3, c[0], 3, 2), ConvBNReLU(c[0], c[0], 3, 1))
        self.S2 = nn.Sequential(
            ConvBNReLU(c[0], c[1], 3, 2), ConvBNReLU(c[1], c[1]), ConvBNReLU(c[1], c[1])
        )
        self.S3 = nn.Sequential(
            ConvBNReLU(c[1], c[2], 3, 2), ConvBNReLU(c[2], c[2]), ConvBNReLU(c[2], c[2])
        )

    def forward(self, x):
        return self.S3(self.S2(self.S1(x)))


class StemBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = ConvBNReLU(3, c, 3, stride=2)
        self.left = nn.Sequential(ConvBNReLU(c, c // 2, 1, 1, 0), ConvBNReLU(c // 2, c, 3, 2))
        self.right = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False)
        self.fuse = ConvBNReLU(2 * c, c, 3, stride=1)

    def forward(self, x):
        feat = self.conv(x)
        return self.fuse(torch.cat([self.left(feat), self.right(feat)], dim=1))


class CEBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv_gap = ConvBNReLU(c, c, 1, stride=1, padding=0)
        self.conv_last = ConvBNReLU(c, c, 3, stride=1)

    def forward(self, x):
        feat = self.conv_gap(self.bn(torch.mean(x, dim=(2, 3), keepdim=True)))
        return self.conv_last(feat + x)


class GELayerS1(nn.Module):
    def __init__(self, in_chan, out_chan, exp_ratio=6):
        super().__init__()
        mid_chan = in_chan * exp_ratio
        self.conv1 = ConvBNReLU(in_chan, in_chan, 3, stride=1)
        self.dwconv = nn.Sequential(
            nn.Conv2d(in_chan, mid_chan, 3, 1, 1, groups=in_chan, bias=False),
            nn.BatchNorm2d(mid_chan),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_chan, out_chan, 1, bias=False), nn.BatchNorm2d(out_chan)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        feat = self.conv2(self.dwconv(self.conv1(x)))
        return self.relu(feat + x)


class GELayerS2(nn.Module):
    def __init__(self, in_chan, out_chan, exp_ratio=6):
        super().__init__()
        mid_chan = in_chan * exp_ratio
        self.conv1 = ConvBNReLU(in_chan, in_chan, 3, stride=1)
        self.dwconv1 = nn.Sequential(
            nn.Conv2d(in_chan, mid_chan, 3, 2, 1, groups=in_chan, bias=False),
            nn.BatchNorm2d(mid_chan),
        )
        self.dwconv2 = nn.Sequential(
            nn.Conv2d(mid_chan, mid_chan, 3, 1, 1, groups=mid_chan, bias=False),
            nn.BatchNorm2d(mid_chan),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_chan, out_chan, 1, bias=False), nn.BatchNorm2d(out_chan)
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_chan, in_chan, 3, 2, 1, groups=in_chan, bias=False),
            nn.BatchNorm2d(in_chan),
            nn.Conv2d(in_chan, out_chan, 1, bias=False),
            nn.BatchNorm2d(out_chan),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        feat = self.conv2(self.dwconv2(self.dwconv1(self.conv1(x))))
        return self.relu(feat + self.shortcut(x))


class SegmentBranch(nn.Module):
    def __init__(self, c=(8, 8, 12, 16)):
        super().__init__()
        self.S1S2 = StemBlock(c[0])
        self.S3 = nn.Sequential(GELayerS2(c[0], c[1]), GELayerS1(c[1], c[1]))
        self.S4 = nn.Sequential(GELayerS2(c[1], c[2]), GELayerS1(c[2], c[2]))
        self.S5_4 = nn.Sequential(GELayerS2(c[2], c[3]), GELayerS1(c[3], c[3]))
        self.S5_5 = CEBlock(c[3])

    def forward(self, x):
        return self.S5_5(self.S5_4(self.S4(self.S3(self.S1S2(x)))))


class BGALayer(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.left1 = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, bias=False),
        )
        self.left2 = nn.Sequential(
            nn.Conv2d(c, c, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False),
        )
        self.right1 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.right2 = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, bias=False),
        )
        self.up1 = nn.Upsample(scale_factor=4)
        self.up2 = nn.Upsample(scale_factor=4)
        self.conv = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )

    def forward(self, x_d, x_s):
        left1, left2 = self.left1(x_d), self.left2(x_d)
        right1, right2 = self.up1(self.right1(x_s)), self.right2(x_s)
        left = left1 * torch.sigmoid(right1)
        right = self.up2(left2 * torch.sigmoid(right2))
        return self.conv(left + right)


class SegmentHead(nn.Module):
    def __init__(self, in_chan, mid_chan, n_classes, up_factor=8):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan, 3, stride=1)
        self.drop = nn.Dropout(0.1)
        self.conv_out = nn.Sequential(
            nn.Identity(),
            nn.Conv2d(mid_chan, n_classes, 1, 1, 0, bias=True),
            nn.Upsample(scale_factor=up_factor, mode="bilinear", align_corners=False),
        )

    def forward(self, x):
        return self.conv_out(self.drop(self.conv(x)))


class BiSeNetV2(nn.Module):
    def __init__(self, n_classes=5):
        super().__init__()
        self.detail = DetailBranch()
        self.segment = SegmentBranch()
        self.bga = BGALayer()
        self.head = SegmentHead(16, 32, n_classes, up_factor=8)

    def forward(self, x):
        return self.head(self.bga(self.detail(x), self.segment(x)))


# ---- DBNet (MhLiao/DB decoders/seg_detector.py) --------------------------------------------


def _stage(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegDetector(nn.Module):
    def __init__(self, in_channels=(8, 16, 24, 32), inner_channels=32):
        super().__init__()
        self.up5 = nn.Upsample(scale_factor=2, mode="nearest")
        self.up4 = nn.Upsample(scale_factor=2, mode="nearest")
        self.up3 = nn.Upsample(scale_factor=2, mode="nearest")
        self.in5, self.in4, self.in3, self.in2 = (
            nn.Conv2d(c, inner_channels, 1, bias=False) for c in in_channels[::-1]
        )
        q = inner_channels // 4

        def out(scale):
            conv = nn.Conv2d(inner_channels, q, 3, padding=1, bias=False)
            return nn.Sequential(conv, nn.Upsample(scale_factor=scale, mode="nearest"))

        self.out5, self.out4, self.out3 = out(8), out(4), out(2)
        self.out2 = nn.Conv2d(inner_channels, q, 3, padding=1, bias=False)
        self.binarize = nn.Sequential(
            nn.Conv2d(inner_channels, q, 3, padding=1, bias=False),
            nn.BatchNorm2d(q),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(q, q, 2, 2),
            nn.BatchNorm2d(q),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(q, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, features):
        c2, c3, c4, c5 = features
        in5, in4, in3, in2 = self.in5(c5), self.in4(c4), self.in3(c3), self.in2(c2)
        out4 = self.up5(in5) + in4
        out3 = self.up4(out4) + in3
        out2 = self.up3(out3) + in2
        fuse = torch.cat((self.out5(in5), self.out4(out4), self.out3(out3), self.out2(out2)), 1)
        return self.binarize(fuse)


class DBNet(nn.Module):
    def __init__(self, widths=(8, 16, 24, 32)):
        super().__init__()
        self.stem = nn.Sequential(_stage(3, widths[0], 2), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.ModuleList(
            _stage(widths[max(i - 1, 0)], w, 1 if i == 0 else 2) for i, w in enumerate(widths)
        )
        self.decoder = SegDetector(widths)

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.decoder(feats)


def pspnet(size: int = 41, seed: int = 0) -> onnx.ModelProto:
    """41 px: 6x6 features, so every pyramid bin divides them (as 473 px gives 60x60)."""
    torch.manual_seed(seed)
    return export_as(PSPNet(), (1, 3, size, size), opset=11, seed=seed)


def bisenetv2(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(BiSeNetV2(), (1, 3, size, size), opset=11, seed=seed)


def dbnet(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(DBNet(), (1, 3, size, size), opset=11, dynamic_batch=True, seed=seed)


# ---- Attention U-Net (LeeJunHyun/Image_Segmentation network.py: AttU_Net) ------------------


class conv_block(nn.Module):
    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch_out, ch_out, 3, 1, 1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.conv(x)


class up_conv(nn.Module):
    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.up(x)


class Attention_block(nn.Module):
    """``x * sigmoid(psi(relu(W_g(g) + W_x(x))))``: a one-channel gate broadcast over x."""

    def __init__(self, F_g, F_l, F_int):
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(F_g, F_int, 1, 1, 0, bias=True), nn.BatchNorm2d(F_int))
        self.W_x = nn.Sequential(nn.Conv2d(F_l, F_int, 1, 1, 0, bias=True), nn.BatchNorm2d(F_int))
        self.psi = nn.Sequential(
            nn.Conv2d(F_int, 1, 1, 1, 0, bias=True), nn.BatchNorm2d(1), nn.Sigmoid()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g, x):
        psi = self.psi(self.relu(self.W_g(g) + self.W_x(x)))
        return x * psi


class AttU_Net(nn.Module):
    def __init__(self, img_ch=3, output_ch=2, w=(8, 16, 32, 64)):
        super().__init__()
        self.Maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.Conv1 = conv_block(img_ch, w[0])
        self.Conv2 = conv_block(w[0], w[1])
        self.Conv3 = conv_block(w[1], w[2])
        self.Conv4 = conv_block(w[2], w[3])
        self.Up4, self.Att4 = up_conv(w[3], w[2]), Attention_block(w[2], w[2], w[1])
        self.Up_conv4 = conv_block(w[3], w[2])
        self.Up3, self.Att3 = up_conv(w[2], w[1]), Attention_block(w[1], w[1], w[0])
        self.Up_conv3 = conv_block(w[2], w[1])
        self.Up2, self.Att2 = up_conv(w[1], w[0]), Attention_block(w[0], w[0], w[0] // 2)
        self.Up_conv2 = conv_block(w[1], w[0])
        self.Conv_1x1 = nn.Conv2d(w[0], output_ch, 1, 1, 0)

    def forward(self, x):
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.Maxpool(x1))
        x3 = self.Conv3(self.Maxpool(x2))
        x4 = self.Conv4(self.Maxpool(x3))
        d4 = self.Up4(x4)
        d4 = self.Up_conv4(torch.cat((self.Att4(g=d4, x=x3), d4), dim=1))
        d3 = self.Up3(d4)
        d3 = self.Up_conv3(torch.cat((self.Att3(g=d3, x=x2), d3), dim=1))
        d2 = self.Up2(d3)
        d2 = self.Up_conv2(torch.cat((self.Att2(g=d2, x=x1), d2), dim=1))
        return self.Conv_1x1(d2)


def attention_unet(size: int = 32, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(AttU_Net(), (1, 3, size, size), opset=11, seed=seed)
