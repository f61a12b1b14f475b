"""Dense-prediction heads of round 5b of the unseen-architecture battery (more in
``round5b_seg_torch.py``, ``round5b_bilateral_torch.py``):

- ``yolact``: YOLACT (dbolya/yolact ``yolact.py``) as its ONNX exports keep the mask assembly:
  a ResNet-FPN (``round5b_det_torch``'s), ``ProtoNet`` (3x3 convs on P3, bilinear x2, a 1x1 conv
  to ``k`` prototypes, ReLU), one ``PredictionModule`` shared by the levels (an upfeature conv,
  then bbox / conf / mask-coefficient 3x3 convs, each ``permute(0, 2, 3, 1).reshape(N, -1,
  d)``), softmax of the confidences, ``tanh`` of the coefficients, and the masks of every
  prior ``sigmoid(proto.permute(0, 2, 3, 1).view(N, HW, k) @ coeffs.transpose(1, 2))``: the
  prototypes' channels contract against the coefficients the head's reshape merged with the
  priors; opset 11.
- ``fastscnn``: Fast-SCNN (Tramac/Fast-SCNN-pytorch ``models/fast_scnn.py``): learning to
  downsample (a conv, two depthwise-separable convs), the global feature extractor (inverted
  residual bottlenecks, ``PyramidPooling`` with adaptive pools of 1, 2, 3 and 6 bins, each a
  1x1 conv to ``in / 4`` upsampled bilinearly, ``align_corners=True``, concat with the input),
  ``FeatureFusionModule`` (the low-resolution branch upsampled x4, a depthwise conv and a 1x1
  conv added to the high-resolution 1x1 conv), the classifier; 192x192 input, opset 11.
- ``upernet``: UPerNet as mmsegmentation's ``UPerHead`` writes it (``decode_heads/uper_head.py``,
  ``psp_head.py``): PPM on the last level (pool scales 1, 2, 3, 6, ``resize`` back, concat, a 3x3
  bottleneck), 1x1 laterals, the top-down path ``laterals[i - 1] + resize(laterals[i], size=
  prev_shape)``, 3x3 FPN convs, every level resized to the finest and concatenated, the 3x3
  ``fpn_bottleneck``, ``cls_seg``; on a ResNet, 64x64 input, as its ``pytorch2onnx.py`` exports
  (opset 11).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from round5b_det_torch import TinyResNet
from round5b_seg_torch import cbr
from torch import nn

# ---- YOLACT -----------------------------------------------------------------------------------


class PredictionModule(nn.Module):
    def __init__(self, c, priors=3, nc=5, k=8):
        super().__init__()
        self.upfeature = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(c, priors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(c, priors * nc, 3, padding=1)
        self.mask_layer = nn.Conv2d(c, priors * k, 3, padding=1)
        self.nc, self.k = nc, k

    def forward(self, x):
        x = self.upfeature(x)
        n = x.size(0)
        bbox = self.bbox_layer(x).permute(0, 2, 3, 1).contiguous().view(n, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).contiguous().view(n, -1, self.nc)
        mask = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).contiguous().view(n, -1, self.k))
        return bbox, conf, mask


class TinyYOLACT(nn.Module):
    def __init__(self, c=16, k=8):
        super().__init__()
        self.backbone = TinyResNet()
        self.lat = nn.ModuleList(nn.Conv2d(w, c, 1) for w in (16, 32, 64))
        self.pred = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(3))
        self.downsample = nn.Conv2d(c, c, 3, 2, 1)
        self.proto_net = nn.Sequential(
            *(m for _ in range(3) for m in (nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)))
        )
        self.proto_out = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, k, 1),
            nn.ReLU(inplace=True),
        )
        self.prediction = PredictionModule(c, k=k)

    def forward(self, x):
        _, c3, c4, c5 = self.backbone(x)
        x = self.lat[2](c5)
        outs = [x]
        for i, feat in ((1, c4), (0, c3)):
            x = F.interpolate(
                x, size=feat.shape[2:], mode="bilinear", align_corners=False
            ) + self.lat[i](feat)
            outs.insert(0, x)
        outs = [F.relu(p(o)) for p, o in zip(self.pred, outs, strict=True)]
        outs.append(self.downsample(outs[-1]))
        proto = self.proto_net(outs[0])
        proto = F.interpolate(proto, scale_factor=2.0, mode="bilinear", align_corners=False)
        proto = self.proto_out(proto).permute(0, 2, 3, 1).contiguous()
        preds = [self.prediction(o) for o in outs]
        loc, conf, coef = (torch.cat([p[i] for p in preds], 1) for i in range(3))
        n, h, w, k = proto.shape
        masks = torch.sigmoid(proto.view(n, h * w, k) @ coef.transpose(1, 2)).view(n, h, w, -1)
        return loc, F.softmax(conf, -1), masks


def yolact(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyYOLACT(), size, 11, seed, dynamo)


# ---- Fast-SCNN --------------------------------------------------------------------------------


def _dsconv(cin, cout, stride=1):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(True),
        cbr(cin, cout, 1),
    )


class LinearBottleneck(nn.Module):
    def __init__(self, cin, cout, t=6, stride=2):
        super().__init__()
        self.use_shortcut = stride == 1 and cin == cout
        self.block = nn.Sequential(
            cbr(cin, cin * t, 1),
            nn.Sequential(
                nn.Conv2d(cin * t, cin * t, 3, stride, 1, groups=cin * t, bias=False),
                nn.BatchNorm2d(cin * t),
                nn.ReLU(True),
            ),
            nn.Conv2d(cin * t, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_shortcut else out


class PyramidPooling(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        inter = cin // 4
        self.convs = nn.ModuleList(cbr(cin, inter, 1) for _ in range(4))
        self.out = cbr(cin * 2, cout, 1)

    def forward(self, x):
        size = x.size()[2:]
        feats = [x] + [
            F.interpolate(
                conv(F.adaptive_avg_pool2d(x, s)), size, mode="bilinear", align_corners=True
            )
            for conv, s in zip(self.convs, (1, 2, 3, 6), strict=True)
        ]
        return self.out(torch.cat(feats, dim=1))


class TinyFastSCNN(nn.Module):
    """Fast-SCNN at a quarter of its widths (32/48/64 -> 8/12/16, 64/96/128 -> 16/24/32)."""

    def __init__(self, nc=4):
        super().__init__()
        self.lds = nn.Sequential(cbr(3, 8, 3, 2), _dsconv(8, 12, 2), _dsconv(12, 16, 2))
        stages, cin = [], 16
        for cout, stride in ((16, 2), (24, 2), (32, 1)):
            stages += [
                LinearBottleneck(cin, cout, stride=stride),
                LinearBottleneck(cout, cout, stride=1),
            ]
            cin = cout
        self.bottleneck = nn.Sequential(*stages)
        self.ppm = PyramidPooling(32, 32)
        self.dwconv = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(True)
        )
        self.conv_lower_res = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
        self.conv_higher_res = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32))
        self.classifier = nn.Sequential(
            _dsconv(32, 32), _dsconv(32, 32), nn.Dropout(0.1), nn.Conv2d(32, nc, 1)
        )

    def forward(self, x):
        size = x.size()[2:]
        higher = self.lds(x)
        lower = self.ppm(self.bottleneck(higher))
        lower = F.interpolate(lower, scale_factor=4.0, mode="bilinear", align_corners=True)
        fused = F.relu(self.conv_higher_res(higher) + self.conv_lower_res(self.dwconv(lower)))
        return F.interpolate(self.classifier(fused), size, mode="bilinear", align_corners=True)


def fastscnn(size: int = 192, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyFastSCNN(), size, 11, seed, dynamo)


# ---- UPerNet ----------------------------------------------------------------------------------


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    def __init__(self, in_channels=(8, 16, 32, 64), c=24, nc=4, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.pool_scales = pool_scales
        self.psp_modules = nn.ModuleList(cbr(in_channels[-1], c, 1) for _ in pool_scales)
        self.bottleneck = cbr(in_channels[-1] + len(pool_scales) * c, c, 3)
        self.lateral_convs = nn.ModuleList(cbr(w, c, 1) for w in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(cbr(c, c, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = cbr(len(in_channels) * c, c, 3)
        self.conv_seg = nn.Conv2d(c, nc, 1)

    def psp_forward(self, x):
        outs = [x] + [
            resize(conv(F.adaptive_avg_pool2d(x, s)), x.shape[2:])
            for conv, s in zip(self.psp_modules, self.pool_scales, strict=True)
        ]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        outs = [outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class TinyUPerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.decode_head = TinyResNet(), UPerHead()

    def forward(self, x):
        return resize(self.decode_head(self.backbone(x)), x.shape[2:])


def upernet(size: int = 192, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyUPerNet(), size, 11, seed, dynamo)


# ---- DBNet++ (PaddleOCR) ----------------------------------------------------------------------


class ASFBlock(nn.Module):
    """PaddleOCR ``necks/db_fpn.py`` ``ASFBlock``: a spatial scale from the mean over the
    channels, added back to the features, a 1x1 conv to one weight per stage, each stage's
    slice ``attention_scores[:, i:i + 1]`` times its features, concatenated."""

    def __init__(self, cin, inter, n=4):
        super().__init__()
        self.conv, self.n = nn.Conv2d(cin, inter, 3, padding=1), n
        self.spatial_scale = nn.Sequential(
            nn.Conv2d(1, 1, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(1, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.channel_scale = nn.Sequential(nn.Conv2d(inter, n, 1, bias=False), nn.Sigmoid())

    def forward(self, fuse, features):
        fuse = self.conv(fuse)
        scores = self.channel_scale(
            self.spatial_scale(torch.mean(fuse, dim=1, keepdim=True)) + fuse
        )
        return torch.cat([scores[:, i : i + 1] * features[i] for i in range(self.n)], dim=1)


class TinyDBNetPP(nn.Module):
    """DBNet++ (``det_r50_db++``): ResNet, ``DBFPN(use_asf=True)``, the DB head's shrink map."""

    def __init__(self, c=32):
        super().__init__()
        self.backbone = TinyResNet()
        self.ins = nn.ModuleList(nn.Conv2d(w, c, 1, bias=False) for w in (8, 16, 32, 64))
        self.ps = nn.ModuleList(nn.Conv2d(c, c // 4, 3, padding=1, bias=False) for _ in range(4))
        self.asf = ASFBlock(c, c // 4)
        self.binarize = nn.Sequential(
            nn.Conv2d(c, c // 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(c // 4),
            nn.ReLU(),
            nn.ConvTranspose2d(c // 4, c // 4, 2, 2),
            nn.BatchNorm2d(c // 4),
            nn.ReLU(),
            nn.ConvTranspose2d(c // 4, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x):
        ins = [conv(f) for conv, f in zip(self.ins, self.backbone(x), strict=True)]
        for i in (2, 1, 0):
            ins[i] = ins[i] + F.interpolate(ins[i + 1], scale_factor=2.0, mode="nearest")
        ps = [conv(f) for conv, f in zip(self.ps, ins, strict=True)]
        ps = [ps[0]] + [
            F.interpolate(p, scale_factor=2.0**i, mode="nearest") for i, p in enumerate(ps[1:], 1)
        ]
        fuse = torch.cat(ps[::-1], dim=1)
        return self.binarize(self.asf(fuse, ps[::-1]))


def dbnetpp(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyDBNetPP(), size, 11, seed, dynamo)


# ---- SOLOv2 (mmdetection) ---------------------------------------------------------------------


def coordinate(x):
    """mmdet ``generate_coordinate``: x and y in [-1, 1] as two channels."""
    n, _, h, w = x.shape
    y_range, x_range = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    yy, xx = torch.meshgrid(y_range, x_range, indexing="ij")
    return torch.cat([xx.expand([n, 1, -1, -1]), yy.expand([n, 1, -1, -1])], 1)


def _cgr(cin, cout, k=3):  # ConvModule with GN
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(4, cout), nn.ReLU(True)
    )


class MaskFeatModule(nn.Module):
    def __init__(self, cin, feat, out):
        super().__init__()
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.levels = nn.ModuleList(
            [
                _cgr(cin, feat),
                nn.Sequential(_cgr(cin, feat), up),
                nn.Sequential(_cgr(cin + 2, feat), up, _cgr(feat, feat), up),
            ]
        )
        self.conv_pred = _cgr(feat, out, 1)

    def forward(self, feats):
        out = self.levels[0](feats[0])
        for i in (1, 2):
            x = torch.cat([feats[i], coordinate(feats[i])], 1) if i == 2 else feats[i]
            out = out + self.levels[i](x)
        return self.conv_pred(out)


class TinySOLOv2(nn.Module):
    """SOLOv2 (mmdet ``solov2_head.py``): CoordConv kernel branch (the coordinates concatenated,
    resized to each level's grid, sliced off ``[:, :-2]`` for the category branch), point NMS of
    the category maps, the dynamic 1x1 conv ``conv2d(mask_feats, kernel_preds.view(-1, E, 1, 1))``
    over every grid cell, sigmoid."""

    def __init__(self, c=16, e=8, nc=3, grids=(8, 6, 4)):
        super().__init__()
        self.backbone, self.grids, self.e = TinyResNet(), grids, e
        self.lat = nn.ModuleList(nn.Conv2d(w, c, 1) for w in (16, 32, 64))
        self.fpn = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(3))
        self.kernel_convs = nn.Sequential(_cgr(c + 2, c), _cgr(c, c))
        self.cls_convs = nn.Sequential(_cgr(c, c), _cgr(c, c))
        self.conv_kernel, self.conv_cls = (
            nn.Conv2d(c, e, 3, padding=1),
            nn.Conv2d(c, nc, 3, padding=1),
        )
        self.mask_feature_head = MaskFeatModule(c, c, e)

    def forward(self, x):
        _, c3, c4, c5 = self.backbone(x)
        p = [self.lat[2](c5)]
        for i, f in ((1, c4), (0, c3)):
            p.insert(0, self.lat[i](f) + F.interpolate(p[0], size=f.shape[2:], mode="nearest"))
        feats = [conv(f) for conv, f in zip(self.fpn, p, strict=True)]
        kernels, cates = [], []
        for feat, grid in zip(feats, self.grids, strict=True):
            feat = torch.cat([feat, coordinate(feat)], 1)
            kernel_feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
            cate = torch.sigmoid(self.conv_cls(self.cls_convs(kernel_feat[:, :-2, :, :])))
            hmax = F.max_pool2d(cate, (2, 2), stride=1, padding=1)
            point_nms = cate * (hmax[:, :, :-1, :-1] == cate).float()
            cates.append(point_nms.permute(0, 2, 3, 1).reshape(-1, grid * grid, cate.shape[1]))
            kernel = self.conv_kernel(self.kernel_convs(kernel_feat))
            kernels.append(kernel.permute(0, 2, 3, 1).reshape(-1, grid * grid, self.e))
        mask_feats = self.mask_feature_head(feats)
        # mmdet's single-image inference: the first image's kernels over its mask features
        kernel = torch.cat(kernels, 1)[0].view(sum(g * g for g in self.grids), self.e, 1, 1)
        return torch.cat(cates, 1), F.conv2d(mask_feats[0:1], kernel).sigmoid()


def solov2(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinySOLOv2(), size, 11, seed, dynamo)


# ---- CondInst (AdelaiDet) ---------------------------------------------------------------------


class TinyCondInst(nn.Module):
    """CondInst's dynamic mask head (AdelaiDet ``dynamic_mask_head.py``): the controller conv's
    outputs at K instance locations split (``split_with_sizes``) into the weights and biases of
    three 1x1 convs per instance, run as grouped convs (``groups`` = K) over the mask branch's
    E channels expanded per instance beside each instance's relative coordinates; the first K
    locations of P3 stand for the selected instances (as an export without the selection)."""

    def __init__(self, e=8, c=8, k=4, nc=3):
        super().__init__()
        self.e, self.c, self.k = e, c, k
        self.weight_nums, self.bias_nums = [(e + 2) * c, c * c, c], [c, c, 1]
        self.backbone, self.lat = TinyResNet(), nn.Conv2d(16, 16, 1)
        self.tower = nn.Sequential(_cgr(16, 16), _cgr(16, 16))
        self.controller = nn.Conv2d(16, sum(self.weight_nums) + sum(self.bias_nums), 3, padding=1)
        self.cls_logits = nn.Conv2d(16, nc, 3, padding=1)
        self.mask_branch = nn.Sequential(_cgr(16, 16), nn.Conv2d(16, e, 1))

    def forward(self, x):
        p3 = self.lat(self.backbone(x)[1])
        t = self.tower(p3)
        n_params, (h, w) = sum(self.weight_nums) + sum(self.bias_nums), p3.shape[2:]
        params = self.controller(t).permute(0, 2, 3, 1).reshape(-1, n_params)[: self.k]
        parts = torch.split(params, self.weight_nums + self.bias_nums, dim=1)
        rows = (self.k * self.c, self.k * self.c, self.k)
        weights = [p.reshape(r, -1, 1, 1) for p, r in zip(parts[:3], rows, strict=True)]
        biases = [p.reshape(r) for p, r in zip(parts[3:], rows, strict=True)]
        ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        locs = torch.stack([xs, ys]).reshape(2, -1)[:, : self.k]  # the instances' locations
        rel = (torch.stack([xs, ys])[None] - locs.t()[:, :, None, None]) / 8.0
        feats = self.mask_branch(p3).expand(self.k, self.e, h, w)
        y = torch.cat([rel, feats], 1).reshape(1, -1, h, w)
        for i, (wt, b) in enumerate(zip(weights, biases, strict=True)):
            y = F.conv2d(y, wt, bias=b, groups=self.k)
            y = F.relu(y) if i < 2 else y
        return torch.sigmoid(self.cls_logits(t)), torch.sigmoid(y.reshape(self.k, h, w))


def condinst(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    return export(TinyCondInst(), size, 11, seed, dynamo)
