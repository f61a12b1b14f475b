"""Small hybrid vision transformers written the way their projects compute them.

- ``segformer``: SegFormer (NVlabs/SegFormer, mmseg ``mit.py`` + ``segformer_head.py``):
  overlapping patch embeddings (strided conv, ``flatten(2).transpose(1, 2)``, LayerNorm),
  efficient self-attention whose keys and values come from a spatial-reduction conv over
  ``x.permute(0, 2, 1).reshape(B, C, H, W)`` and a ``kv`` Linear split by ``reshape(B, -1,
  2, heads, C // heads).permute(2, 0, 3, 1, 4)``, Mix-FFN (Linear, a depthwise 3x3 conv on
  the tokens folded back to an image, GELU, Linear), stage outputs folded by ``reshape(B,
  H, W, -1).permute(0, 3, 1, 2)``; the all-MLP decoder (a Linear per stage on the
  flattened map, interpolated to the first stage's size, concat, 1x1 conv + BN + ReLU,
  classifier); exported at opset 11 as mmseg's ``pytorch2onnx`` (LayerNorm and GELU
  decomposed);
- ``efficientformer``: EfficientFormer-L1 (snap-research/EfficientFormer): a conv stem,
  Meta4D blocks (``pool(x) - x`` token mixer, 1x1-conv MLP with BN, per-channel layer
  scales ``layer_scale.unsqueeze(-1).unsqueeze(-1)``), strided-conv embeddings, then Meta3D
  blocks on flattened tokens: attention with q/k/v interleaved per head
  (``qkv.reshape(B, N, heads, -1).permute(0, 2, 1, 3).split([kd, kd, d], 3)``) and the
  eval-mode attention bias ``attention_biases[:, idxs]`` (a constant of ``heads x N x N``),
  LayerNorm, and a classifier plus distillation head averaged.
"""

from __future__ import annotations

import itertools

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import randomize_norms
from export_torch import export_as
from torch import nn

# ---- SegFormer (mmseg/models/backbones/mit.py as in NVlabs/SegFormer) -----------------------


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, H, W


class EfficientAttention(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
            x_ = self.sr(x_).reshape(B, C, -1).permute(0, 2, 1)
            x_ = self.norm(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(B, -1, 2, self.num_heads, C // self.num_heads)
        kv = kv.permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = x.transpose(1, 2).view(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, H, W):
        return self.fc2(self.act(self.dwconv(self.fc1(x), H, W)))


class MiTBlock(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x, H, W):
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class MixVisionTransformer(nn.Module):
    def __init__(self, dims=(16, 32, 48, 64), heads=(1, 2, 3, 4), srs=(8, 4, 2, 1)):
        super().__init__()
        ins = (3, *dims[:-1])
        self.patch_embeds = nn.ModuleList(
            OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2, ins[i], dims[i])
            for i in range(4)
        )
        self.blocks = nn.ModuleList(MiTBlock(dims[i], heads[i], srs[i]) for i in range(4))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)

    def forward(self, x):
        B = x.shape[0]
        outs = []
        for embed, block, norm in zip(self.patch_embeds, self.blocks, self.norms, strict=True):
            x, H, W = embed(x)
            x = norm(block(x, H, W))
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


class MLP(nn.Module):
    def __init__(self, input_dim, embed_dim):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))


class SegFormer(nn.Module):
    def __init__(self, dims=(16, 32, 48, 64), embed_dim=32, num_classes=5):
        super().__init__()
        self.backbone = MixVisionTransformer(dims)
        self.linears = nn.ModuleList(MLP(d, embed_dim) for d in dims)
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(4 * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, x):
        feats = self.backbone(x)
        c1 = feats[0]
        n = c1.shape[0]
        outs = []
        for c, linear in reversed(list(zip(feats, self.linears, strict=True))):
            _c = linear(c).permute(0, 2, 1).reshape(n, -1, c.shape[2], c.shape[3])
            if c is not c1:
                _c = F.interpolate(_c, size=c1.size()[2:], mode="bilinear", align_corners=False)
            outs.append(_c)
        return self.linear_pred(self.linear_fuse(torch.cat(outs, dim=1)))


# ---- EfficientFormer (snap-research/EfficientFormer models/efficientformer.py) -------------


class Attention(nn.Module):
    def __init__(self, dim, key_dim=8, num_heads=4, attn_ratio=2, resolution=2):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.nh_kd = nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = int(attn_ratio * key_dim) * num_heads
        self.qkv = nn.Linear(dim, self.dh + nh_kd * 2)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets: dict = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                offsets.setdefault(offset, len(offsets))
                idxs.append(offsets[offset])
        self.attention_biases = nn.Parameter(torch.randn(num_heads, len(offsets)) * 0.5)
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(n, n))

    @torch.no_grad()
    def train(self, mode=True):
        super().train(mode)
        if mode and hasattr(self, "ab"):
            del self.ab
        else:
            self.ab = self.attention_biases[:, self.attention_bias_idxs]
        return self

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x)
        q, k, v = (
            qkv.reshape(B, N, self.num_heads, -1)
            .permute(0, 2, 1, 3)
            .split([self.key_dim, self.key_dim, self.d], dim=3)
        )
        bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.dh)
        return self.proj(x)


class Pooling(nn.Module):
    def __init__(self, pool_size=3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class ConvMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


class Meta4D(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.token_mixer = Pooling()
        self.mlp = ConvMlp(dim, dim * mlp_ratio)
        self.layer_scale_1 = nn.Parameter(torch.rand(dim) + 0.5)
        self.layer_scale_2 = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(x)
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(x)


class Meta3D(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU())
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)
        self.layer_scale_1 = nn.Parameter(torch.rand(dim) + 0.5)
        self.layer_scale_2 = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(0).unsqueeze(0) * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2.unsqueeze(0).unsqueeze(0) * self.fc2(self.mlp(self.norm2(x)))


def _embed(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout))


class EfficientFormer(nn.Module):
    def __init__(self, dims=(8, 16, 24, 32), num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0] // 2, 3, 2, 1),
            nn.BatchNorm2d(dims[0] // 2),
            nn.ReLU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1),
            nn.BatchNorm2d(dims[0]),
            nn.ReLU(),
        )
        stages = []
        for i, d in enumerate(dims[:-1]):
            if i:
                stages.append(_embed(dims[i - 1], d))
            stages.append(Meta4D(d))
        stages.append(_embed(dims[-2], dims[-1]))
        stages.append(Meta4D(dims[-1]))
        self.network = nn.Sequential(*stages)
        self.meta3d = nn.Sequential(Meta3D(dims[-1]), Meta3D(dims[-1]))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.dist_head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.network(self.stem(x))
        x = x.flatten(2).transpose(1, 2)  # Flat()
        x = self.norm(self.meta3d(x))
        return (self.head(x.mean(-2)) + self.dist_head(x.mean(-2))) / 2


def segformer(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(randomize_norms(SegFormer()), (1, 3, size, size), opset=11, seed=seed)


def efficientformer(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(EfficientFormer())
    return export_as(model, (1, 3, size, size), opset=13, dynamic_batch=True, seed=seed)
