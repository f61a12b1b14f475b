"""More attention networks written the way their projects write them.

- ``levit``: timm's LeViT: a stem of strided ``Conv2d`` + BN with Hardswish, ``LinearNorm``
  layers (a bias-free ``Linear`` and a ``BatchNorm1d`` over the tokens flattened with the
  batch, ``bn(x.flatten(0, 1)).reshape_as(x)``), attention whose q/k/v are interleaved per
  head (``view(B, N, heads, -1).split([key_dim, key_dim, d], 3)``) with a learned bias
  gathered per head and position pair (``attention_biases[:, attention_bias_idxs]``),
  ``AttentionSubsample`` (queries from ``x.view(B, r, r, C)[:, ::2, ::2]``), Hardswish
  MLPs, and the distillation head pair averaged (``NormLinear``: BN1d + Linear);
- ``rtdetr_encoder``: RT-DETR's ``HybridEncoder`` (lyuwenyu/RT-DETR rtdetr_pytorch): the
  AIFI layer (S5 flattened to tokens, a 2-D sin-cos position embedding added to queries and
  keys but not values of an ``nn.MultiheadAttention``, post-norm FFN, folded back to an
  image) and the CCFM (1x1 lateral convs, nearest upsampling, ``CSPRepLayer`` s of
  ``RepVggBlock`` s, strided downsample convs) on a small ResNet's three levels;
- ``mobilevitv2``: MobileViT-v2 (HF ``MobileViTV2Layer``): patches unfolded by ``F.unfold``
  and folded back by ``F.fold`` (Col2Im), ``GroupNorm(1, d)`` norms, separable
  self-attention (``qkv_proj`` to ``1 + 2d`` channels split ``[1, d, d]``, a softmax over
  the patches of the one query channel, ``relu(value) * context.expand_as(value)``).
"""

from __future__ import annotations

import itertools

import onnx
import torch
import torch.nn.functional as F
from audio_torch import calibrate_1d
from export_torch import export_as
from torch import nn

# ---- LeViT (timm models/levit.py) ----------------------------------------------------------


class ConvNorm(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1, pad=0):
        super().__init__()
        self.linear = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.linear(x))


class LinearNorm(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class NormLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return self.linear(self.bn(x))


def _bias_idxs(resolution, q_resolution=None, stride=1):
    q_resolution = q_resolution or resolution
    k_pos = list(itertools.product(range(resolution), range(resolution)))
    q_pos = list(itertools.product(range(0, resolution, stride), range(0, resolution, stride)))
    offsets, idxs = {}, []
    for p1 in q_pos:
        for p2 in k_pos:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return len(offsets), torch.LongTensor(idxs).view(len(q_pos), len(k_pos))


class Attention(nn.Module):
    def __init__(self, dim, key_dim, num_heads=2, attn_ratio=2, resolution=4):
        super().__init__()
        self.num_heads, self.key_dim, self.scale = num_heads, key_dim, key_dim**-0.5
        self.val_dim = int(attn_ratio * key_dim)
        self.qkv = LinearNorm(dim, (self.val_dim + 2 * key_dim) * num_heads)
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(self.val_dim * num_heads, dim))
        n, idxs = _bias_idxs(resolution)
        self.attention_biases = nn.Parameter(torch.randn(num_heads, n) * 0.2)
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (
            self.qkv(x)
            .view(B, N, self.num_heads, -1)
            .split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        )
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        attn = q @ k * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class AttentionSubsample(nn.Module):
    def __init__(self, in_dim, out_dim, key_dim, num_heads, attn_ratio, resolution):
        super().__init__()
        self.num_heads, self.key_dim, self.scale = num_heads, key_dim, key_dim**-0.5
        self.val_dim = int(attn_ratio * key_dim)
        self.resolution = resolution
        self.kv = LinearNorm(in_dim, (self.val_dim + key_dim) * num_heads)
        self.q = LinearNorm(in_dim, key_dim * num_heads)
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(self.val_dim * num_heads, out_dim))
        n, idxs = _bias_idxs(resolution, stride=2)
        self.attention_biases = nn.Parameter(torch.randn(num_heads, n) * 0.2)
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x):
        B, N, C = x.shape
        k, v = self.kv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.val_dim], 3)
        k, v = k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        r = self.resolution
        sub = x.view(B, r, r, C)[:, ::2, ::2].reshape(B, -1, C)  # Subsample
        q = self.q(sub).view(B, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        attn = q @ k * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, -1, self.val_dim * self.num_heads)
        return self.proj(x)


class LevitMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.ln1, self.act, self.ln2 = (
            LinearNorm(dim, hidden),
            nn.Hardswish(),
            LinearNorm(hidden, dim),
        )

    def forward(self, x):
        return self.ln2(self.act(self.ln1(x)))


class TinyLeViT(nn.Module):
    def __init__(self, dims=(32, 48), num_classes=10):
        super().__init__()
        d = dims[0]
        self.stem = nn.Sequential(
            ConvNorm(3, d // 4, 3, 2, 1), nn.Hardswish(),
            ConvNorm(d // 4, d // 2, 3, 2, 1), nn.Hardswish(),
            ConvNorm(d // 2, d, 3, 2, 1),
        )  # fmt: skip
        self.attn1, self.mlp1 = Attention(d, 8, 2, 2, 4), LevitMlp(d, 2 * d)
        self.down = AttentionSubsample(d, dims[1], 8, 4, 2, 4)
        self.down_mlp = LevitMlp(dims[1], 2 * dims[1])
        self.attn2, self.mlp2 = Attention(dims[1], 8, 3, 2, 2), LevitMlp(dims[1], 2 * dims[1])
        self.head = NormLinear(dims[1], num_classes)
        self.head_dist = NormLinear(dims[1], num_classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = x + self.attn1(x)
        x = x + self.mlp1(x)
        x = self.down(x)
        x = x + self.down_mlp(x)
        x = x + self.attn2(x)
        x = x + self.mlp2(x)
        x = x.mean(1)
        return (self.head(x) + self.head_dist(x)) / 2


# ---- RT-DETR HybridEncoder (rtdetr_pytorch src/zoo/rtdetr/hybrid_encoder.py) --------------


class ConvNormLayer(nn.Module):
    def __init__(self, ch_in, ch_out, kernel_size, stride=1, act=None):
        super().__init__()
        self.conv = nn.Conv2d(
            ch_in, ch_out, kernel_size, stride, (kernel_size - 1) // 2, bias=False
        )
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = nn.Identity() if act is None else nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class RepVggBlock(nn.Module):
    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    def __init__(self, in_channels, out_channels, num_blocks=2, expansion=1.0):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, act="silu")
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, act="silu")
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden) for _ in range(num_blocks)])
        self.conv3 = nn.Identity()
        if hidden != out_channels:
            self.conv3 = ConvNormLayer(hidden, out_channels, 1, act="silu")

    def forward(self, x):
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos_embed):
        q = k = src + pos_embed
        src2, _ = self.self_attn(q, k, value=src)
        src = self.norm1(src + src2)
        src2 = self.linear2(F.gelu(self.linear1(src)))
        return self.norm2(src + src2)


def build_2d_sincos_position_embedding(w, h, embed_dim=256, temperature=10000.0):
    grid_w = torch.arange(int(w), dtype=torch.float32)
    grid_h = torch.arange(int(h), dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = grid_w.flatten()[..., None] @ omega[None]
    out_h = grid_h.flatten()[..., None] @ omega[None]
    return torch.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None, :, :]


class TinyRTDETREncoder(nn.Module):
    def __init__(self, hidden_dim=32, in_channels=(16, 32, 48)):
        super().__init__()
        self.backbone = nn.ModuleList()
        cin = 3
        for i, c in enumerate(in_channels):
            stride = 8 if i == 0 else 2
            self.backbone.append(
                nn.Sequential(ConvNormLayer(cin, c, 3, 2, "relu"), nn.MaxPool2d(stride // 2 or 1))
                if stride == 8
                else ConvNormLayer(cin, c, 3, 2, "relu")
            )
            cin = c
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim))
            for c in in_channels
        )
        self.hidden_dim = hidden_dim
        self.encoder = TransformerEncoderLayer(hidden_dim, 4, 2 * hidden_dim)
        self.lateral_convs = nn.ModuleList(
            ConvNormLayer(hidden_dim, hidden_dim, 1, 1, "silu") for _ in range(2)
        )
        self.fpn_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, 1) for _ in range(2)
        )
        self.downsample_convs = nn.ModuleList(
            ConvNormLayer(hidden_dim, hidden_dim, 3, 2, "silu") for _ in range(2)
        )
        self.pan_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, 1) for _ in range(2)
        )

    def forward(self, x):
        feats = []
        for stage in self.backbone:
            x = stage(x)
            feats.append(x)
        proj = [self.input_proj[i](f) for i, f in enumerate(feats)]
        h, w = proj[2].shape[2:]
        src = proj[2].flatten(2).permute(0, 2, 1)
        pos = build_2d_sincos_position_embedding(w, h, self.hidden_dim).to(src.device)
        memory = self.encoder(src, pos)
        proj[2] = memory.permute(0, 2, 1).reshape(-1, self.hidden_dim, h, w).contiguous()
        inner_outs = [proj[-1]]
        for idx in range(2, 0, -1):
            feat_high = self.lateral_convs[2 - idx](inner_outs[0])
            inner_outs[0] = feat_high
            up = F.interpolate(feat_high, scale_factor=2.0, mode="nearest")
            inner_outs.insert(0, self.fpn_blocks[2 - idx](torch.concat([up, proj[idx - 1]], 1)))
        outs = [inner_outs[0]]
        for idx in range(2):
            down = self.downsample_convs[idx](outs[-1])
            outs.append(self.pan_blocks[idx](torch.concat([down, inner_outs[idx + 1]], 1)))
        return outs


# ---- MobileViT-v2 (HF transformers models/mobilevitv2, apple/ml-cvnets) -------------------


def _conv_bn(cin, cout, k=1, s=1, groups=1, act=True):
    layers = [
        nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class LinearSelfAttention(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.qkv_proj = nn.Conv2d(embed_dim, 1 + 2 * embed_dim, 1, bias=True)
        self.out_proj = nn.Conv2d(embed_dim, embed_dim, 1, bias=True)
        self.embed_dim = embed_dim

    def forward(self, hidden_states):
        qkv = self.qkv_proj(hidden_states)
        query, key, value = torch.split(
            qkv, split_size_or_sections=[1, self.embed_dim, self.embed_dim], dim=1
        )
        context_scores = F.softmax(query, dim=-1)
        context_vector = key * context_scores
        context_vector = torch.sum(context_vector, dim=-1, keepdim=True)
        out = F.relu(value) * context_vector.expand_as(value)
        return self.out_proj(out)


class MobileViTV2FFN(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.conv1 = nn.Conv2d(d, h, 1)
        self.conv2 = nn.Conv2d(h, d, 1)

    def forward(self, x):
        return self.conv2(F.silu(self.conv1(x)))


class MobileViTV2Transformer(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.layernorm_before = nn.GroupNorm(1, d)
        self.attention = LinearSelfAttention(d)
        self.layernorm_after = nn.GroupNorm(1, d)
        self.ffn = MobileViTV2FFN(d, h)

    def forward(self, x):
        x = x + self.attention(self.layernorm_before(x))
        return x + self.ffn(self.layernorm_after(x))


class MobileViTV2Layer(nn.Module):
    def __init__(self, cin, d, n=2, patch=2):
        super().__init__()
        self.conv_kxk = _conv_bn(cin, cin, 3, groups=cin)
        self.conv_1x1 = nn.Conv2d(cin, d, 1, bias=False)
        self.transformer = nn.Sequential(*[MobileViTV2Transformer(d, 2 * d) for _ in range(n)])
        self.layernorm = nn.GroupNorm(1, d)
        self.conv_projection = _conv_bn(d, cin, 1, act=False)
        self.patch = patch

    def unfolding(self, feature_map):
        b, c, h, w = feature_map.shape
        patches = F.unfold(
            feature_map, kernel_size=(self.patch, self.patch), stride=(self.patch, self.patch)
        )
        return patches.reshape(b, c, self.patch * self.patch, -1), (int(h), int(w))

    def folding(self, patches, output_size):
        b, c, p, n = patches.shape
        patches = patches.reshape(b, c * p, n)
        return F.fold(patches, output_size=output_size, kernel_size=self.patch, stride=self.patch)

    def forward(self, x):
        f = self.conv_1x1(self.conv_kxk(x))
        p, size = self.unfolding(f)
        p = self.layernorm(self.transformer(p))
        return self.conv_projection(self.folding(p, size))


class InvRes(nn.Module):
    def __init__(self, cin, cout, s, e=2):
        super().__init__()
        h = cin * e
        self.b = nn.Sequential(
            _conv_bn(cin, h), _conv_bn(h, h, 3, s, groups=h), _conv_bn(h, cout, act=False)
        )
        self.res = s == 1 and cin == cout

    def forward(self, x):
        return x + self.b(x) if self.res else self.b(x)


class TinyMobileViTV2(nn.Module):
    def __init__(self, nc=10):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)
        self.l1 = InvRes(16, 24, 2)
        self.l2 = nn.Sequential(InvRes(24, 32, 2), MobileViTV2Layer(32, 32))
        self.l3 = nn.Sequential(InvRes(32, 48, 2), MobileViTV2Layer(48, 48))
        self.fc = nn.Linear(48, nc)

    def forward(self, x):
        x = self.l3(self.l2(self.l1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _export(model: nn.Module, shape: tuple[int, ...], seed: int, **kw) -> onnx.ModelProto:
    torch.manual_seed(seed)
    calibrate_1d(model, shape)
    return export_as(model, shape, seed=seed, **kw)


def levit(size: int = 32, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyLeViT(), (1, 3, size, size), seed, opset=13)


def rtdetr_encoder(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyRTDETREncoder(), (1, 3, size, size), seed, opset=16)


def mobilevitv2(size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Opset 18 (``F.fold`` is Col2Im); the fold's output size is static (``int(h)``)."""
    torch.manual_seed(seed)
    return _export(TinyMobileViTV2(), (1, 3, size, size), seed, opset=18)
