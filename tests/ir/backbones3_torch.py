"""Small modern backbones written the way their own projects compute them (round 3b of the
unseen-architecture battery), each exported by the TorchScript exporter.

- ``mobilenetv4``: timm's MobileNetV4 hybrid (``_efficientnet_blocks.py``
  ``UniversalInvertedResidual``: optional depthwise before the expansion, between it and
  the projection, and after the projection, a per-channel layer scale; ``MobileAttention``
  around ``layers/attention2d.py`` ``MultiQueryAttention2d``: one key and one value head
  from a strided depthwise conv + BN + 1x1, queries per head reshaped
  ``(B, heads, key_dim, HW)``, the output reshaped ``(B, H, W, heads * value_dim)`` as timm's
  fused path does; one with queries average-pooled and the output upsampled bilinearly),
  opset 17 with a symbolic batch.
- ``pvtv2``: PVTv2-b0-li (whai362/PVT ``pvt_v2.py``): overlapping patch embeddings (strided
  conv + LayerNorm of the tokens), linear spatial-reduction attention (K/V from an adaptive
  average pool to 7x7, a 1x1 conv, LayerNorm and GELU), Mix-FFN with a ReLU and a depthwise
  conv on the tokens folded to an image, opset 13.
- ``edgenext``: EdgeNeXt (mmaaz60/EdgeNeXt): channels-first LayerNorm written out, ConvNeXt
  encoders, SDTA (``torch.split`` into chunks with cascaded depthwise convs, Fourier position
  encoding, XCA: attention across the channels of each head with L2-normalised q and k and a
  learned per-head temperature), opset 17.
"""

from __future__ import annotations

import itertools
import math

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate, randomize_norms
from export_torch import export_as
from torch import nn


def export(
    model: nn.Module, size: int, opset: int, seed: int, dynamo: bool, **kw
) -> onnx.ModelProto:
    """``export_as`` (TorchScript), or with ``dynamo``: the same calibrated model through
    torch's default (dynamo) exporter, as ``torch.onnx.export(model, args)`` writes it."""
    shape = (1, 3, size, size)
    if not dynamo:
        return export_as(model, shape, opset=opset, seed=seed, **kw)
    torch.manual_seed(seed)
    calibrate(model, shape)
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto


# ---- MobileNetV4 (timm) ---------------------------------------------------------------------


class ConvNormAct(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class LayerScale2d(nn.Module):
    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class UniversalInvertedResidual(nn.Module):
    """``uir``: ``dw_start`` / ``dw_mid`` / ``dw_end`` kernel sizes (0: absent)."""

    def __init__(self, cin, cout, start=0, mid=0, end=0, stride=1, exp=4.0):
        super().__init__()
        mid_chs = int(cin * exp)
        self.has_skip = cin == cout and stride == 1
        s_start = stride if not mid else 1
        self.dw_start = ConvNormAct(cin, cin, start, s_start, cin, act=False) if start else None
        self.pw_exp = ConvNormAct(cin, mid_chs, 1)
        self.dw_mid = ConvNormAct(mid_chs, mid_chs, mid, stride, mid_chs) if mid else None
        self.pw_proj = ConvNormAct(mid_chs, cout, 1, act=False)
        self.dw_end = ConvNormAct(cout, cout, end, 1, cout, act=False) if end else None
        self.layer_scale = LayerScale2d(cout)

    def forward(self, x):
        shortcut = x
        if self.dw_start is not None:
            x = self.dw_start(x)
        x = self.pw_exp(x)
        if self.dw_mid is not None:
            x = self.dw_mid(x)
        x = self.pw_proj(x)
        if self.dw_end is not None:
            x = self.dw_end(x)
        x = self.layer_scale(x)
        return x + shortcut if self.has_skip else x


class MultiQueryAttention2d(nn.Module):
    def __init__(
        self, dim, dim_out, num_heads=4, key_dim=16, value_dim=16, kv_stride=2, q_stride=1
    ):
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.scale = key_dim**-0.5
        self.query_strides = q_stride
        self.query = nn.Sequential()
        if q_stride > 1:
            self.query.add_module("down_pool", nn.AvgPool2d(q_stride))
            self.query.add_module("norm", nn.BatchNorm2d(dim))
        self.query.add_module("proj", nn.Conv2d(dim, num_heads * key_dim, 1, bias=False))
        self.key = nn.Sequential()
        self.value = nn.Sequential()
        for seq, width in ((self.key, key_dim), (self.value, value_dim)):
            seq.add_module(
                "down_conv", nn.Conv2d(dim, dim, 3, kv_stride, 1, groups=dim, bias=False)
            )
            seq.add_module("norm", nn.BatchNorm2d(dim))
            seq.add_module("proj", nn.Conv2d(dim, width, 1, bias=False))
        self.output = nn.Sequential()
        if q_stride > 1:
            self.output.add_module("upsample", nn.Upsample(scale_factor=q_stride, mode="bilinear"))
        self.output.add_module("proj", nn.Conv2d(value_dim * num_heads, dim_out, 1, bias=False))

    def _reshape_input(self, t):
        s = t.shape
        return t.reshape(s[0], s[1], -1).transpose(1, 2).unsqueeze(1)

    def _reshape_projected_query(self, t, num_heads, key_dim):
        s = t.shape
        return t.reshape(s[0], num_heads, key_dim, -1).transpose(-1, -2)

    def _reshape_output(self, t, num_heads, h_px, w_px):
        s = t.shape
        feat_dim = s[-1] * num_heads
        return t.reshape(s[0], h_px, w_px, feat_dim).permute(0, 3, 1, 2)

    def forward(self, x):
        _, _, H, W = x.shape
        q = self._reshape_projected_query(self.query(x), self.num_heads, self.key_dim)
        k = self._reshape_input(self.key(x))
        v = self._reshape_input(self.value(x))
        attn = (q * self.scale) @ k.transpose(-1, -2)
        o = attn.softmax(dim=-1) @ v
        qs = self.query_strides
        return self.output(self._reshape_output(o, self.num_heads, H // qs, W // qs))


class MobileAttention(nn.Module):
    def __init__(self, dim, num_heads=4, key_dim=16, value_dim=16, kv_stride=2, q_stride=1):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.attn = MultiQueryAttention2d(
            dim, dim, num_heads, key_dim, value_dim, kv_stride, q_stride
        )
        self.layer_scale = LayerScale2d(dim)

    def forward(self, x):
        return self.layer_scale(self.attn(self.norm(x))) + x


class FusedIB(nn.Module):
    """``fir``: a full 3x3 expansion conv and a 1x1 projection."""

    def __init__(self, cin, cout, stride, exp=4.0):
        super().__init__()
        self.conv_exp = ConvNormAct(cin, int(cin * exp), 3, stride)
        self.conv_pwl = ConvNormAct(int(cin * exp), cout, 1, act=False)

    def forward(self, x):
        return self.conv_pwl(self.conv_exp(x))


class TinyMobileNetV4Hybrid(nn.Module):
    """``mobilenetv4_hybrid_medium``'s block kinds at small widths."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv_stem = ConvNormAct(3, 16, 3, 2)
        self.blocks = nn.Sequential(
            FusedIB(16, 24, 2),
            UniversalInvertedResidual(24, 32, start=3, mid=5, stride=2),
            UniversalInvertedResidual(32, 32, start=3, mid=0),  # ExtraDW's sibling: ConvNeXt-like
            UniversalInvertedResidual(32, 32, start=0, mid=3),  # inverted bottleneck
            UniversalInvertedResidual(32, 48, start=5, mid=5, stride=2),
            MobileAttention(48, num_heads=4, key_dim=16, value_dim=16, kv_stride=2, q_stride=2),
            UniversalInvertedResidual(48, 48, start=3, mid=0, end=3),  # with the trailing dw
            MobileAttention(48, num_heads=4, key_dim=16, value_dim=16, kv_stride=2),
            UniversalInvertedResidual(48, 48, start=0, mid=0),  # FFN
        )
        self.conv_final = ConvNormAct(48, 96, 1)
        self.conv_head = nn.Conv2d(96, 128, 1)
        self.norm_head = nn.BatchNorm2d(128)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.conv_final(self.blocks(self.conv_stem(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = F.relu(self.norm_head(self.conv_head(x)))
        return self.classifier(x.flatten(1))


def mobilenetv4(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TinyMobileNetV4Hybrid()
    for m in model.modules():
        if isinstance(m, LayerScale2d):
            m.gamma.data.uniform_(0.5, 1.5)  # trained scales, not 1e-5: the branches count
    return export(model, size, 17, seed, dynamo, dynamic_batch=True)


# ---- PVTv2 (whai362/PVT) --------------------------------------------------------------------


class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = x.transpose(1, 2).view(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class PvtMlp(nn.Module):
    def __init__(self, dim, hidden, linear=False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.relu = nn.ReLU() if linear else None

    def forward(self, x, H, W):
        x = self.fc1(x)
        if self.relu is not None:
            x = self.relu(x)
        return self.fc2(self.act(self.dwconv(x, H, W)))


class PvtAttention(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio=1, linear=False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.linear, self.sr_ratio = linear, sr_ratio
        if not linear:
            if sr_ratio > 1:
                self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
                self.norm = nn.LayerNorm(dim)
        else:
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.sr = nn.Conv2d(dim, dim, 1, 1)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        if not self.linear and self.sr_ratio == 1:
            x_ = x
        else:
            x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
            x_ = self.sr(self.pool(x_)) if self.linear else self.sr(x_)
            x_ = self.norm(x_.reshape(B, C, -1).permute(0, 2, 1))
            if self.linear:
                x_ = self.act(x_)
        kv = self.kv(x_).reshape(B, -1, 2, self.num_heads, C // self.num_heads)
        kv = kv.permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class PvtBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, sr_ratio, linear):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PvtAttention(dim, num_heads, sr_ratio, linear)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = PvtMlp(dim, int(dim * mlp_ratio), linear)

    def forward(self, x, H, W):
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size, stride, cin, dim):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class TinyPVTv2(nn.Module):
    def __init__(self, dims=(16, 32, 48), heads=(1, 2, 2), srs=(4, 2, 1), linear=True, nc=10):
        super().__init__()
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = 3
        for i, (dim, h, sr) in enumerate(zip(dims, heads, srs, strict=True)):
            self.embeds.append(OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2, cin, dim))
            self.stages.append(nn.ModuleList(PvtBlock(dim, h, 4, sr, linear) for _ in range(2)))
            self.norms.append(nn.LayerNorm(dim))
            cin = dim
        self.head = nn.Linear(dims[-1], nc)

    def forward(self, x):
        B = x.shape[0]
        for i, (embed, blocks, norm) in enumerate(
            zip(self.embeds, self.stages, self.norms, strict=True)
        ):
            x, H, W = embed(x)
            for blk in blocks:
                x = blk(x, H, W)
            x = norm(x)
            if i != len(self.stages) - 1:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
        return self.head(x.mean(dim=1))


def pvtv2(
    size: int = 112, seed: int = 0, linear: bool = True, dynamo: bool = False
) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(TinyPVTv2(linear=linear))
    return export(model, size, 13, seed, dynamo)


# ---- EdgeNeXt (mmaaz60/EdgeNeXt) ------------------------------------------------------------


class ChannelsFirstLayerNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-0.2, 0.2))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvEncoder(nn.Module):
    def __init__(self, dim, k=7, expan_ratio=4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, expan_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(expan_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))

    def forward(self, x):
        inp = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        return inp + x.permute(0, 3, 1, 2)


class PositionalEncodingFourier(nn.Module):
    def __init__(self, hidden_dim=8, dim=32, temperature=10000):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.scale = 2 * math.pi
        self.temperature, self.hidden_dim = temperature, hidden_dim

    def forward(self, B, H, W):
        mask = torch.zeros(B, H, W).bool()
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.hidden_dim, dtype=torch.float32)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.hidden_dim)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4)
        pos = torch.cat((pos_y.flatten(3), pos_x.flatten(3)), dim=3).permute(0, 3, 1, 2)
        return self.token_projection(pos)


class XCA(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.empty(num_heads, 1, 1).uniform_(0.5, 2.0))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k, v = q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        x = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


class SDTAEncoder(nn.Module):
    def __init__(self, dim, expan_ratio=4, num_heads=2, scales=2, use_pos_emb=True):
        super().__init__()
        width = max(int(math.ceil(dim / scales)), int(math.floor(dim // scales)))
        self.width = width
        self.nums = 1 if scales == 1 else scales - 1
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(self.nums)
        )
        self.pos_embd = PositionalEncodingFourier(dim=dim) if use_pos_emb else None
        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.gamma_xca = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))
        self.xca = XCA(dim, num_heads=num_heads)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, expan_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(expan_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))

    def forward(self, x):
        inp = x
        spx = torch.split(x, self.width, 1)
        sp = out = spx[0]
        for i in range(self.nums):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = self.convs[i](sp)
            out = sp if i == 0 else torch.cat((out, sp), 1)
        x = torch.cat((out, spx[self.nums]), 1)
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).permute(0, 2, 1)
        if self.pos_embd is not None:
            pos = self.pos_embd(B, H, W).reshape(B, -1, x.shape[1]).permute(0, 2, 1)
            x = x + pos
        x = x + self.gamma_xca * self.xca(self.norm_xca(x))
        x = x.reshape(B, H, W, C)
        x = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        return inp + x.permute(0, 3, 1, 2)


class TinyEdgeNeXt(nn.Module):
    def __init__(self, dims=(16, 32, 40), nc=10):
        super().__init__()
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), ChannelsFirstLayerNorm(dims[0]))]
        )
        for a, b in itertools.pairwise(dims):
            self.downsample.append(nn.Sequential(ChannelsFirstLayerNorm(a), nn.Conv2d(a, b, 2, 2)))
        self.stages = nn.ModuleList(
            [
                nn.Sequential(ConvEncoder(dims[0], 3), ConvEncoder(dims[0], 3)),
                nn.Sequential(ConvEncoder(dims[1], 5), SDTAEncoder(dims[1], scales=2)),
                nn.Sequential(ConvEncoder(dims[2], 7), SDTAEncoder(dims[2], scales=3)),
            ]
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], nc)

    def forward(self, x):
        for down, stage in zip(self.downsample, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


def edgenext(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyEdgeNeXt()), size, 17, seed, dynamo)
