"""Small conv/attention hybrids written the way their own projects compute them (round 3b of
the unseen-architecture battery), exported by the TorchScript exporter.

- ``fastvit``: FastViT (apple/ml-fastvit ``fastvit.py``, ``mobileone.py``) in its training
  form: MobileOne blocks (BN skip, 1x1 scale and k x k conv branches summed), the stem's and
  patch embedding's large-kernel convs with ``groups=in_channels`` doubling the channels,
  RepMixer (``x + layer_scale * (mixer(x) - norm(x))``), ConvFFN, a conditional positional
  encoding (``RepCPE``: a 7x7 depthwise conv added to its input), an attention stage, and the
  head's expanding grouped conv with MobileOne's SE (``view(-1, c, 1, 1)``). Opset 17.
- ``efficientformerv2``: EfficientFormerV2 (snap-research ``efficientformer_v2.py``):
  ``Attention4D`` with q/k/v 1x1 conv + BN heads, a depthwise local term on v, a learned
  attention bias gathered from relative offsets, and the talking-head 1x1 convs that mix the
  heads of the attention map before and after the softmax; FFNs of 1x1 / depthwise / 1x1
  conv + BN with layer scales; the classifier and distillation heads averaged. Opset 13.
"""

from __future__ import annotations

import itertools

import onnx
import torch
import torch.nn.functional as F
from backbones3_torch import export
from bn_calibrate import randomize_norms
from torch import nn

# ---- FastViT (apple/ml-fastvit) -------------------------------------------------------------


def conv_bn(cin, cout, k, stride, groups):
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class SEBlock(nn.Module):
    def __init__(self, cin, rd_ratio=0.0625):
        super().__init__()
        self.reduce = nn.Conv2d(cin, int(cin * rd_ratio), 1, bias=True)
        self.expand = nn.Conv2d(int(cin * rd_ratio), cin, 1, bias=True)

    def forward(self, inputs):
        _, c, h, w = inputs.size()
        x = F.avg_pool2d(inputs, kernel_size=[h, w])
        x = torch.sigmoid(self.expand(F.relu(self.reduce(x))))
        return inputs * x.view(-1, c, 1, 1)


class MobileOneBlock(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, use_se=False, use_act=True,
                 use_scale_branch=True, num_conv_branches=1):  # fmt: skip
        super().__init__()
        self.se = SEBlock(cout) if use_se else nn.Identity()
        self.activation = nn.GELU() if use_act else nn.Identity()
        self.rbr_skip = nn.BatchNorm2d(cin) if cout == cin and stride == 1 else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(cin, cout, k, stride, groups) for _ in range(num_conv_branches)
        )
        self.rbr_scale = (
            conv_bn(cin, cout, 1, stride, groups) if k > 1 and use_scale_branch else None
        )

    def forward(self, x):
        out = self.rbr_scale(x) if self.rbr_scale is not None else 0
        if self.rbr_skip is not None:
            out = out + self.rbr_skip(x)
        for conv in self.rbr_conv:
            out = out + conv(x)
        return self.activation(self.se(out))


class ReparamLargeKernelConv(nn.Module):
    def __init__(self, cin, cout, k, stride, groups, small_kernel=3):
        super().__init__()
        self.lkb_origin = conv_bn(cin, cout, k, stride, groups)
        self.small_conv = conv_bn(cin, cout, small_kernel, stride, groups)
        self.activation = nn.GELU()

    def forward(self, x):
        return self.activation(self.lkb_origin(x) + self.small_conv(x))


class PatchEmbed(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(cin, dim, 7, 2, groups=cin),
            MobileOneBlock(dim, dim, 1),
        )

    def forward(self, x):
        return self.proj(x)


class RepMixer(nn.Module):
    def __init__(self, dim, k=3):
        super().__init__()
        self.norm = MobileOneBlock(dim, dim, k, 1, dim, use_act=False, use_scale_branch=False,
                                   num_conv_branches=0)  # fmt: skip
        self.mixer = MobileOneBlock(dim, dim, k, 1, dim, use_act=False)
        self.layer_scale = nn.Parameter(torch.empty(dim, 1, 1).uniform_(0.5, 1.5))

    def forward(self, x):
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))


class ConvFFN(nn.Module):
    def __init__(self, cin, hidden):
        super().__init__()
        self.conv = conv_bn(cin, cin, 7, 1, cin)
        self.fc1 = nn.Conv2d(cin, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, cin, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=3.0):
        super().__init__()
        self.token_mixer = RepMixer(dim)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale = nn.Parameter(torch.empty(dim, 1, 1).uniform_(0.5, 1.5))

    def forward(self, x):
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


class FastVitAttention(nn.Module):
    def __init__(self, dim, head_dim=16):
        super().__init__()
        self.head_dim, self.num_heads = head_dim, dim // head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        x = torch.flatten(x, start_dim=2).transpose(-2, -1)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        return x.transpose(-2, -1).reshape(B, C, H, W)


class AttentionBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=3.0):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.token_mixer = FastVitAttention(dim)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.empty(dim, 1, 1).uniform_(0.5, 1.5))
        self.layer_scale_2 = nn.Parameter(torch.empty(dim, 1, 1).uniform_(0.5, 1.5))

    def forward(self, x):
        x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2 * self.convffn(x)


class RepCPE(nn.Module):
    def __init__(self, dim, spatial=7):
        super().__init__()
        self.pe = nn.Conv2d(dim, dim, spatial, 1, spatial // 2, bias=True, groups=dim)

    def forward(self, x):
        return self.pe(x) + x


class TinyFastViT(nn.Module):
    """``fastvit_sa12``'s stage kinds at small widths: two RepMixer stages, then a RepCPE
    and an attention stage."""

    def __init__(self, dims=(16, 32, 64), nc=10):
        super().__init__()
        d0, d1, d2 = dims
        self.stem = nn.Sequential(
            MobileOneBlock(3, d0, 3, 2),
            MobileOneBlock(d0, d0, 3, 2, groups=d0),
            MobileOneBlock(d0, d0, 1),
        )
        self.network = nn.Sequential(
            RepMixerBlock(d0),
            PatchEmbed(d0, d1),
            RepMixerBlock(d1),
            RepMixerBlock(d1),
            PatchEmbed(d1, d2),
            RepCPE(d2),
            AttentionBlock(d2),
        )
        self.conv_exp = MobileOneBlock(d2, 2 * d2, 3, 1, groups=d2, use_se=True)
        self.head = nn.Linear(2 * d2, nc)

    def forward(self, x):
        x = self.conv_exp(self.network(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


def fastvit(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(TinyFastViT(), size, 17, seed, dynamo)


# ---- EfficientFormerV2 (snap-research) ------------------------------------------------------


class Attention4D(nn.Module):
    def __init__(self, dim, key_dim=8, num_heads=4, attn_ratio=2, resolution=4):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim**-0.5
        self.resolution = resolution
        self.N = resolution**2
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        nh_kd = key_dim * num_heads
        self.q = nn.Sequential(nn.Conv2d(dim, nh_kd, 1), nn.BatchNorm2d(nh_kd))
        self.k = nn.Sequential(nn.Conv2d(dim, nh_kd, 1), nn.BatchNorm2d(nh_kd))
        self.v = nn.Sequential(nn.Conv2d(dim, self.dh, 1), nn.BatchNorm2d(self.dh))
        self.v_local = nn.Sequential(
            nn.Conv2d(self.dh, self.dh, 3, 1, 1, groups=self.dh), nn.BatchNorm2d(self.dh)
        )
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = nn.Sequential(nn.ReLU(), nn.Conv2d(self.dh, dim, 1), nn.BatchNorm2d(dim))
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                offsets.setdefault(off, len(offsets))
                idxs.append(offsets[off])
        self.attention_biases = nn.Parameter(torch.randn(num_heads, len(offsets)) * 0.5)
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(self.N, self.N))

    def forward(self, x):
        B = x.shape[0]
        q = self.q(x).flatten(2).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        k = self.k(x).flatten(2).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 2, 3)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = attn @ v
        out = x.transpose(2, 3).reshape(B, self.dh, self.resolution, self.resolution) + v_local
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


class FFN(nn.Module):
    def __init__(self, dim, mlp_ratio=4.0):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = nn.Parameter(
            torch.empty(dim).uniform_(0.5, 1.5).unsqueeze(-1).unsqueeze(-1)
        )

    def forward(self, x):
        return x + self.layer_scale_2 * self.mlp(x)


class AttnFFN(FFN):
    def __init__(self, dim, mlp_ratio=4.0, resolution=4):
        super().__init__(dim, mlp_ratio)
        self.token_mixer = Attention4D(dim, resolution=resolution)
        self.layer_scale_1 = nn.Parameter(
            torch.empty(dim).uniform_(0.5, 1.5).unsqueeze(-1).unsqueeze(-1)
        )

    def forward(self, x):
        x = x + self.layer_scale_1 * self.token_mixer(x)
        return x + self.layer_scale_2 * self.mlp(x)


def embedding(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout))


class TinyEfficientFormerV2(nn.Module):
    def __init__(self, dims=(16, 24, 32), nc=10):
        super().__init__()
        d0, d1, d2 = dims
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, d0 // 2, 3, 2, 1), nn.BatchNorm2d(d0 // 2), nn.ReLU(),
            nn.Conv2d(d0 // 2, d0, 3, 2, 1), nn.BatchNorm2d(d0), nn.ReLU(),
        )  # fmt: skip
        self.network = nn.Sequential(
            FFN(d0), embedding(d0, d1), FFN(d1), embedding(d1, d2), AttnFFN(d2), FFN(d2)
        )
        self.norm = nn.BatchNorm2d(d2)
        self.head = nn.Linear(d2, nc)
        self.dist_head = nn.Linear(d2, nc)

    def forward(self, x):
        x = self.norm(self.network(self.patch_embed(x)))
        x = x.flatten(2).mean(-1)
        return (self.head(x) + self.dist_head(x)) / 2


def efficientformerv2(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(TinyEfficientFormerV2(), size, 13, seed, dynamo)


# ---- TinyViT (microsoft/Cream TinyViT ``models/tiny_vit.py``) --------------------------------


class Conv2dBN(nn.Sequential):
    def __init__(self, a, b, ks=1, stride=1, pad=0, groups=1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


class TinyPatchEmbed(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(cin, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand_ratio=4.0):
        super().__init__()
        hidden = int(cin * expand_ratio)
        self.conv1 = Conv2dBN(cin, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, cout, 1)
        self.act = nn.GELU()

    def forward(self, x):
        shortcut = x
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.act(self.conv3(x) + shortcut)


class TinyPatchMerging(nn.Module):
    def __init__(self, input_resolution, dim, out_dim):
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, 2, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x):
        if x.ndim == 3:
            H, W = self.input_resolution
            B = len(x)
            x = x.view(B, H, W, -1).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class TinyAttention(nn.Module):
    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=1, resolution=(7, 7)):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + key_dim * num_heads * 2)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                offsets.setdefault(off, len(offsets))
                idxs.append(offsets[off])
        self.attention_biases = nn.Parameter(torch.randn(num_heads, len(offsets)) * 0.5)
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(n, n))

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(self.norm(x))
        q, k, v = qkv.view(B, N, self.num_heads, -1).split(
            [self.key_dim, self.key_dim, self.d], dim=3
        )
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = (attn + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.dh)
        return self.proj(x)


class TinyMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    def __init__(self, dim, input_resolution, num_heads, window_size=7, mlp_ratio=4.0):
        super().__init__()
        self.input_resolution, self.window_size = input_resolution, window_size
        head_dim = dim // num_heads
        self.attn = TinyAttention(dim, head_dim, num_heads, 1, (window_size, window_size))
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x):
        H, W = self.input_resolution
        B, L, C = x.shape
        res_x = x
        ws = self.window_size
        if ws == H and ws == W:
            x = self.attn(x)
        else:
            x = x.view(B, H, W, C)
            pad_b = (ws - H % ws) % ws
            pad_r = (ws - W % ws) % ws
            padding = pad_b > 0 or pad_r > 0
            if padding:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            pH, pW = H + pad_b, W + pad_r
            nH, nW = pH // ws, pW // ws
            x = x.view(B, nH, ws, nW, ws, C).transpose(2, 3).reshape(B * nH * nW, ws * ws, C)
            x = self.attn(x)
            x = x.view(B, nH, nW, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)
            if padding:
                x = x[:, :H, :W].contiguous()
            x = x.view(B, L, C)
        x = res_x + x
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.local_conv(x)
        x = x.view(B, C, L).transpose(1, 2)
        return x + self.mlp(x)


class TinyTinyViT(nn.Module):
    """TinyViT-5M's stage kinds at small widths: an MBConv stage, then window-attention
    stages whose resolutions (8 and 4) the window (5) does not divide: padded windows."""

    def __init__(self, size=32, dims=(16, 32, 48), heads=(2, 3), nc=10):
        super().__init__()
        r = size // 4
        self.patch_embed = TinyPatchEmbed(3, dims[0])
        self.conv_stage = nn.Sequential(MBConv(dims[0], dims[0]), MBConv(dims[0], dims[0]))
        self.down0 = TinyPatchMerging((r, r), dims[0], dims[1])
        self.stage1 = nn.ModuleList(
            TinyViTBlock(dims[1], (r // 2, r // 2), heads[0], 5) for _ in range(2)
        )
        self.down1 = TinyPatchMerging((r // 2, r // 2), dims[1], dims[2])
        self.stage2 = nn.ModuleList(
            TinyViTBlock(dims[2], (r // 4, r // 4), heads[1], 5) for _ in range(2)
        )
        self.norm_head = nn.LayerNorm(dims[2])
        self.head = nn.Linear(dims[2], nc)

    def forward(self, x):
        x = self.down0(self.conv_stage(self.patch_embed(x)))
        for blk in self.stage1:
            x = blk(x)
        x = self.down1(x)
        for blk in self.stage2:
            x = blk(x)
        return self.head(self.norm_head(x.mean(1)))


def tinyvit(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(TinyTinyViT(size))
    return export(model, size, 17, seed, dynamo)
