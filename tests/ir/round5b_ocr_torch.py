"""A text detector, DeepLabV3+ and a text recogniser of round 5b of the unseen-architecture
battery (``round5b_seg_torch.py`` has the other segmenters), blocks as their projects write them:

- ``craft``: CRAFT (clovaai/CRAFT-pytorch ``craft.py``, ``basenet/vgg16_bn.py``): VGG16-BN
  slices, the dilated fc6/fc7, ``double_conv`` U-net upsampling by interpolation to the skip's
  size, the ``conv_cls`` head and its NHWC output beside the feature; opset 11.
- ``deeplabv3plus``: DeepLabV3+ (VainF/DeepLabV3Plus-Pytorch ``_deeplab.py``): ASPP (1x1, three
  atrous 3x3, image pooling), the low-level 48-channel projection, interpolation to its size,
  concat and the 3x3 classifier, upsampled to the input; a ResNet at output stride 16; opset 11.
- ``svtr``: SVTR-Tiny as PaddleOCR's ``rec_svtrnet.py`` writes it, with the CTC head: a two-conv
  patch embedding, a position embedding, post-norm blocks of local (attention with a
  constant window mask over h*w) and global mixing, ``SubSample`` (strided 3x3 conv over the
  tokens laid back to NCHW, then LayerNorm), the last stage pooled to ``(1, 25)``, a 1x1 conv
  and hardswish, then the CTC Linear and softmax; 32x100 input, opset 11.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from round5b_seg_torch import cbr
from torch import nn

# ---- CRAFT ------------------------------------------------------------------------------------


def _vgg_bn(cfg, cin):
    layers = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    return layers


class Vgg16BN(nn.Module):
    """``basenet/vgg16_bn.py``: torchvision's ``vgg16_bn().features`` cut in slices at relu2_2,
    relu3_2, relu4_3 and relu5_3, then pool5 3x3/1 and the dilated fc6 / 1x1 fc7."""

    def __init__(self, w=8):
        super().__init__()
        feats = _vgg_bn(
            [
                w,
                w,
                "M",
                2 * w,
                2 * w,
                "M",
                4 * w,
                4 * w,
                4 * w,
                "M",
                8 * w,
                8 * w,
                8 * w,
                "M",
                8 * w,
                8 * w,
                8 * w,
            ],
            3,
        )
        self.slice1, self.slice2 = nn.Sequential(*feats[:12]), nn.Sequential(*feats[12:19])
        self.slice3, self.slice4 = nn.Sequential(*feats[19:29]), nn.Sequential(*feats[29:39])
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(8 * w, 16 * w, 3, padding=6, dilation=6),
            nn.Conv2d(16 * w, 16 * w, 1),
        )

    def forward(self, x):
        relu2_2 = self.slice1(x)
        relu3_2 = self.slice2(relu2_2)
        relu4_3 = self.slice3(relu3_2)
        relu5_3 = self.slice4(relu4_3)
        return self.slice5(relu5_3), relu5_3, relu4_3, relu3_2, relu2_2


class DoubleConv(nn.Module):
    def __init__(self, in_ch, mid_ch, out_ch):
        super().__init__()
        self.conv = nn.Sequential(
            cbr(in_ch + mid_ch, mid_ch, 1, bias=True), cbr(mid_ch, out_ch, 3, bias=True)
        )

    def forward(self, x):
        return self.conv(x)


class TinyCRAFT(nn.Module):
    def __init__(self, w=8):
        super().__init__()
        self.basenet = Vgg16BN(w)
        self.upconv1 = DoubleConv(16 * w, 8 * w, 4 * w)
        self.upconv2 = DoubleConv(8 * w, 4 * w, 2 * w)
        self.upconv3 = DoubleConv(4 * w, 2 * w, w)
        self.upconv4 = DoubleConv(2 * w, w, w // 2)
        c = w // 2
        self.conv_cls = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c // 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, 2, 1),
        )

    def forward(self, x):
        sources = self.basenet(x)
        y = self.upconv1(torch.cat([sources[0], sources[1]], dim=1))
        for up, skip in (
            (self.upconv2, sources[2]),
            (self.upconv3, sources[3]),
            (self.upconv4, sources[4]),
        ):
            y = F.interpolate(y, size=skip.size()[2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], dim=1))
        return self.conv_cls(y).permute(0, 2, 3, 1), y


def craft(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyCRAFT(), size, 11, seed, dynamo)


# ---- DeepLabV3+ -------------------------------------------------------------------------------


class ASPP(nn.Module):
    def __init__(self, cin, rates, c=32):
        super().__init__()
        self.convs = nn.ModuleList([cbr(cin, c, 1)] + [cbr(cin, c, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), cbr(cin, c, 1))
        self.project = nn.Sequential(cbr(5 * c, c, 1), nn.Dropout(0.1))

    def forward(self, x):
        res = [conv(x) for conv in self.convs]
        res.append(
            F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        )
        return self.project(torch.cat(res, dim=1))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride=1, dilation=1):
        super().__init__()
        self.conv1, self.conv2 = cbr(cin, planes, 1), cbr(planes, planes, 3, stride, dilation)
        self.conv3 = cbr(planes, planes * 4, 1, relu=False)
        self.downsample = (
            cbr(cin, planes * 4, 1, stride, relu=False)
            if stride != 1 or cin != planes * 4
            else None
        )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + idt)


class TinyDeepLabV3Plus(nn.Module):
    """``deeplabv3plus_resnet50(output_stride=16)``: layer4 dilated instead of strided,
    ASPP rates 6/12/18, the low-level features of layer1."""

    def __init__(self, nc=4, w=4):
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 4 * w, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.layer1 = nn.Sequential(Bottleneck(4 * w, w), Bottleneck(4 * w, w))
        self.layer2 = nn.Sequential(Bottleneck(4 * w, 2 * w, 2), Bottleneck(8 * w, 2 * w))
        self.layer3 = nn.Sequential(Bottleneck(8 * w, 4 * w, 2), Bottleneck(16 * w, 4 * w))
        self.layer4 = nn.Sequential(
            Bottleneck(16 * w, 8 * w, 1, 2), Bottleneck(32 * w, 8 * w, 1, 2)
        )
        self.project = cbr(4 * w, 12, 1)
        self.aspp = ASPP(32 * w, [6, 12, 18])
        self.classifier = nn.Sequential(cbr(12 + 32, 32, 3), nn.Conv2d(32, nc, 1))

    def forward(self, x):
        size = x.shape[-2:]
        low = self.layer1(self.stem(x))
        out = self.aspp(self.layer4(self.layer3(self.layer2(low))))
        low = self.project(low)
        out = F.interpolate(out, size=low.shape[2:], mode="bilinear", align_corners=False)
        out = self.classifier(torch.cat([low, out], dim=1))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def deeplabv3plus(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyDeepLabV3Plus(), size, 11, seed, dynamo)


# ---- SVTR (PaddleOCR) -------------------------------------------------------------------------


class SvtrAttention(nn.Module):
    def __init__(self, dim, heads, hw=None, local_k=(7, 11)):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.register_buffer("mask", None)
        if hw is not None:  # Local mixer: each token attends to a local_k window around it
            h, w = hw
            mask = torch.ones(h * w, h + local_k[0] - 1, w + local_k[1] - 1)
            for i in range(h):
                for j in range(w):
                    mask[i * w + j, i : i + local_k[0], j : j + local_k[1]] = 0.0
            inner = mask[
                :, local_k[0] // 2 : h + local_k[0] // 2, local_k[1] // 2 : w + local_k[1] // 2
            ]
            self.register_buffer(
                "mask", torch.where(inner.flatten(1) == 1, float("-inf"), 0.0)[None, None]
            )

    def forward(self, x):
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape((-1, n, 3, self.heads, c // self.heads)).permute((2, 0, 3, 1, 4))
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q.matmul(k.permute((0, 1, 3, 2)))
        if self.mask is not None:
            attn = attn + self.mask
        attn = F.softmax(attn, dim=-1)
        return self.proj(attn.matmul(v).permute((0, 2, 1, 3)).reshape((-1, n, c)))


class SvtrBlock(nn.Module):
    def __init__(self, dim, heads, hw=None, mlp_ratio=4.0):
        super().__init__()
        self.mixer, self.norm1 = SvtrAttention(dim, heads, hw), nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):  # prenorm=False: post-norm, as SVTR's recognisers use
        x = self.norm1(x + self.mixer(x))
        return self.norm2(x + self.mlp(x))


class SubSample(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(cin, cout, 3, (2, 1), 1), nn.LayerNorm(cout)

    def forward(self, x):
        return self.norm(self.conv(x).flatten(2).permute((0, 2, 1)))


class TinySVTR(nn.Module):
    """SVTR-Tiny's layout at small widths: dims (16, 32, 48), heads (2, 2, 4), depths (1, 2, 1),
    mixers Local, Local | Local, Global | Global; 25 output steps, 37 classes."""

    def __init__(self, dims=(16, 32, 48), heads=(2, 2, 4), out_channels=48, n_class=37):
        super().__init__()
        d0, d1, d2 = self.dims = dims
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, d0 // 2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(d0 // 2),
            nn.GELU(),
            nn.Conv2d(d0 // 2, d0, 3, 2, 1, bias=False),
            nn.BatchNorm2d(d0),
            nn.GELU(),
        )
        self.pos_embed = nn.Parameter(torch.randn(1, 8 * 25, d0) * 0.02)
        self.blocks1 = nn.ModuleList([SvtrBlock(d0, heads[0], (8, 25))])
        self.sub1 = SubSample(d0, d1)
        self.blocks2 = nn.ModuleList([SvtrBlock(d1, heads[1], (4, 25)), SvtrBlock(d1, heads[1])])
        self.sub2 = SubSample(d1, d2)
        self.blocks3 = nn.ModuleList([SvtrBlock(d2, heads[2])])
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 25))
        self.last_conv = nn.Conv2d(d2, out_channels, 1, bias=False)
        self.fc = nn.Linear(out_channels, n_class)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).permute((0, 2, 1)) + self.pos_embed
        h = 8
        stages = ((self.blocks1, self.sub1), (self.blocks2, self.sub2), (self.blocks3, None))
        for dim, (blocks, sub) in zip(self.dims, stages, strict=True):
            for blk in blocks:
                x = blk(x)
            x = x.permute((0, 2, 1)).reshape((-1, dim, h, 25))  # paddle: reshape([0, dim, h, w])
            if sub is not None:
                x, h = sub(x), h // 2
        x = F.hardswish(self.last_conv(self.avg_pool(x)))
        return F.softmax(self.fc(x.squeeze(2).permute((0, 2, 1))), dim=2)


def svtr(seed: int = 0) -> onnx.ModelProto:
    from export_torch import export_as

    model = randomize_norms(TinySVTR())
    return export_as(model, (1, 3, 32, 100), opset=11, seed=seed)
