"""MLP models and conv/attention hybrids (round 4b of the unseen-architecture battery;
shared layers in ``transformers4_torch.py``).

- ``mixer``: MLP-Mixer (timm ``mlp_mixer.py`` ``MixerBlock``): token-mixing MLP over
  ``norm1(x).transpose(1, 2)`` and a channel MLP.
- ``resmlp``: ResMLP (facebookresearch/deit ``resmlp_models.py``): ``Affine`` norms
  (``alpha * x + beta``), a Linear over the patches, LayerScale, mean of the tokens.
- ``gmlp``: gMLP (timm ``mlp_mixer.py`` ``SpatialGatingBlock``, ``GatedMlp``): the spatial
  gating unit ``u, v = x.chunk(2, -1)``, LayerNorm over ``v``, a Linear over the tokens,
  ``u * v``.
- ``focalnet``: FocalNet (microsoft/FocalNet ``classification/focalnet.py``): focal
  modulation (``f`` Linear split into q, context and ``focal_level + 1`` gates, depthwise
  context convs accumulated with per-level gates, a global context, ``h`` 1x1 conv, ``q *
  modulator``), LayerScale, patch-embedding downsamples with LayerNorm.
- ``coatnet``: CoAtNet as timm ``maxxvit.py`` writes it: a two-conv stem, ``MbConvBlock``
  (BatchNorm pre-norm, 1x1 expand, strided depthwise 3x3, SE, 1x1 project; a pooled 1x1 conv
  shortcut where it downsamples), then ``TransformerBlock2d`` on NCHW maps (``LayerNorm2d``
  as permute / ``F.layer_norm`` / permute, a pooled downsample, ``Attention2d`` with the
  heads first: ``qkv(x).view(B, heads, 3 * dim_head, -1).chunk(3, dim=2)``, a relative
  position bias gathered per head, ``ConvMlp``), a final norm and a pooled classifier.

Exported at opset 17 by the TorchScript exporter (``export_as``), or with ``dynamo=True``
by torch's default exporter (``backbones3_torch.export``).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from attention4_torch import relative_position_index
from backbones3_torch import export
from bn_calibrate import randomize_norms
from torch import nn
from transformers4_torch import Mlp, PatchEmbed, _ln

# ---- MLP-Mixer, ResMLP, gMLP ----------------------------------------------------------------


class MixerBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int, mlp_ratio=(0.5, 4.0)) -> None:
        super().__init__()
        tokens_dim, channels_dim = (int(x * dim) for x in mlp_ratio)
        self.norm1, self.mlp_tokens = _ln(dim), Mlp(seq_len, tokens_dim)
        self.norm2, self.mlp_channels = _ln(dim), Mlp(dim, channels_dim)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class Affine(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(dim) + 0.5)
        self.beta = nn.Parameter(torch.rand(dim) * 0.4 - 0.2)

    def forward(self, x):
        return self.alpha * x + self.beta


class ResMLPBlock(nn.Module):
    def __init__(self, dim: int, num_patches: int) -> None:
        super().__init__()
        self.norm1, self.attn = Affine(dim), nn.Linear(num_patches, num_patches)
        self.norm2, self.mlp = Affine(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class SpatialGatingUnit(nn.Module):
    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm, self.proj = _ln(dim // 2), nn.Linear(seq_len, seq_len)

    def forward(self, x):
        u, v = x.chunk(2, dim=-1)
        v = self.norm(v)
        v = self.proj(v.transpose(-1, -2))
        return u * v.transpose(-1, -2)


class GatedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, seq_len: int) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
        self.gate, self.norm = SpatialGatingUnit(hidden, seq_len), nn.Identity()
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x):
        return self.fc2(self.norm(self.gate(self.act(self.fc1(x)))))


class SpatialGatingBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm, self.mlp_channels = _ln(dim), GatedMlp(dim, 4 * dim, seq_len)

    def forward(self, x):
        return x + self.mlp_channels(self.norm(x))


class TinyMlpNet(nn.Module):
    """timm ``MlpMixer`` (also ResMLP and gMLP there): stem, blocks, norm, token mean, head."""

    def __init__(self, kind: str, size=32, patch=4, dim=32, depth=3, classes=10):
        super().__init__()
        seq = (size // patch) ** 2
        self.stem = PatchEmbed(patch, dim)
        block = {"mixer": MixerBlock, "resmlp": ResMLPBlock, "gmlp": SpatialGatingBlock}[kind]
        self.blocks = nn.Sequential(*(block(dim, seq) for _ in range(depth)))
        self.norm = Affine(dim) if kind == "resmlp" else _ln(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.norm(self.blocks(self.stem(x)))
        return self.head(x.mean(dim=1))


def mixer(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyMlpNet("mixer", size)), size, 17, seed, dynamo)


def resmlp(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(TinyMlpNet("resmlp", size), size, 17, seed, dynamo)


def gmlp(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyMlpNet("gmlp", size)), size, 17, seed, dynamo)


# ---- FocalNet (microsoft/FocalNet) ----------------------------------------------------------


class FocalModulation(nn.Module):
    def __init__(self, dim: int, focal_window: int = 3, focal_level: int = 2) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.f = nn.Linear(dim, 2 * dim + (focal_level + 1))
        self.h = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
        self.act, self.proj = nn.GELU(), nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel_size = 2 * k + focal_window
            conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))

    def forward(self, x):
        C = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2).contiguous()
        q, ctx, gates = torch.split(x, (C, C, self.focal_level + 1), 1)
        ctx_all = 0
        for level in range(self.focal_level):
            ctx = self.focal_layers[level](ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        modulator = self.h(ctx_all)
        x_out = (q * modulator).permute(0, 2, 3, 1).contiguous()
        return self.proj(x_out)


class FocalNetBlock(nn.Module):
    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm1, self.modulation = _ln(dim), FocalModulation(dim)
        self.norm2, self.mlp = _ln(dim), Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.5 * (1 + torch.rand(dim)))
        self.gamma_2 = nn.Parameter(0.5 * (1 + torch.rand(dim)))

    def forward(self, x):
        H = W = self.resolution
        B, _, C = x.shape
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        x = self.modulation(x).view(B, H * W, C)
        x = shortcut + self.gamma_1 * x
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class FocalPatchEmbed(nn.Module):
    def __init__(self, patch: int, cin: int, dim: int) -> None:
        super().__init__()
        self.proj, self.norm = nn.Conv2d(cin, dim, patch, patch), _ln(dim)

    def forward(self, x):
        x = self.proj(x)
        H, W = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class TinyFocalNet(nn.Module):
    def __init__(self, size=32, dims=(16, 32), depths=(1, 2), classes=10):
        super().__init__()
        self.embeds = nn.ModuleList(
            [FocalPatchEmbed(4, 3, dims[0]), FocalPatchEmbed(2, dims[0], dims[1])]
        )
        res = (size // 4, size // 8)
        self.stages = nn.ModuleList(
            nn.Sequential(*(FocalNetBlock(d, r) for _ in range(n)))
            for d, r, n in zip(dims, res, depths, strict=True)
        )
        self.norm, self.head = _ln(dims[-1]), nn.Linear(dims[-1], classes)

    def forward(self, x):
        x, H, W = self.embeds[0](x)
        x = self.stages[0](x)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, H, W)  # BasicLayer's downsample
        x, H, W = self.embeds[1](x)
        x = self.norm(self.stages[1](x))
        x = torch.flatten(F.adaptive_avg_pool1d(x.transpose(1, 2), 1), 1)
        return self.head(x)


def focalnet(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyFocalNet(size)), size, 17, seed, dynamo)


# ---- CoAtNet (timm maxxvit.py) --------------------------------------------------------------


class LayerNorm2dPermute(nn.LayerNorm):
    """timm ``layers/norm.py`` ``LayerNorm2d``: a LayerNorm over the channels of NCHW."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Downsample2d(nn.Module):
    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2)
        self.expand = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x):
        return self.expand(self.pool(x))


def _bn_act(c: int, act: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.GELU() if act else nn.Identity())


class SEModule(nn.Module):
    def __init__(self, c: int, rd: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, rd, 1), nn.SiLU(), nn.Conv2d(rd, c, 1)

    def forward(self, x):
        x_se = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * x_se.sigmoid()


class MbConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        mid = int(cin * expand_ratio)
        self.shortcut = Downsample2d(cin, cout) if stride == 2 else nn.Identity()
        self.pre_norm = _bn_act(cin, act=False)
        self.conv1_1x1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = _bn_act(mid)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.norm2 = _bn_act(mid)
        self.se = SEModule(mid, int(0.25 * cin))
        self.conv3_1x1 = nn.Conv2d(mid, cout, 1)

    def forward(self, x):
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.conv3_1x1(x) + shortcut


class RelPosBias(nn.Module):
    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        area = window * window
        self.bias_shape = (area, area, num_heads)
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1) ** 2, num_heads) * 0.5
        )
        index = relative_position_index(window)[1:, 1:].contiguous()  # no class token here
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, attn):
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.bias_shape).permute(2, 0, 1)
        return attn + bias.unsqueeze(0).contiguous()


class Attention2d(nn.Module):
    def __init__(self, dim: int, dim_out: int, window: int, dim_head: int = 8) -> None:
        super().__init__()
        self.num_heads, self.dim_head, self.scale = dim_out // dim_head, dim_head, dim_head**-0.5
        self.qkv = nn.Conv2d(dim, dim_out * 3, 1)
        self.rel_pos = RelPosBias(window, self.num_heads)
        self.proj = nn.Conv2d(dim_out, dim_out, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.qkv(x).view(B, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = self.rel_pos(attn).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, -1, H, W)
        return self.proj(x)


class TransformerBlock2d(nn.Module):
    def __init__(self, dim: int, dim_out: int, stride: int, window: int) -> None:
        super().__init__()
        if stride == 2:
            self.shortcut = Downsample2d(dim, dim_out)
            self.norm1 = nn.Sequential(LayerNorm2dPermute(dim), Downsample2d(dim, dim))
        else:
            self.shortcut, self.norm1 = nn.Identity(), LayerNorm2dPermute(dim)
        self.attn = Attention2d(dim, dim_out, window)
        self.norm2 = LayerNorm2dPermute(dim_out)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim_out, 4 * dim_out, 1), nn.GELU(), nn.Conv2d(4 * dim_out, dim_out, 1)
        )

    def forward(self, x):
        x = self.shortcut(x) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyCoAtNet(nn.Module):
    def __init__(self, size=64, dims=(16, 24, 32, 48), classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 12, 3, 2, 1, bias=False), _bn_act(12), nn.Conv2d(12, 16, 3, 1, 1)
        )
        res = size // 2
        blocks: list[nn.Module] = []
        cin = 16
        for i, d in enumerate(dims):
            res //= 2
            if i < 2:
                blocks += [MbConvBlock(cin, d, 2), MbConvBlock(d, d, 1)]
            else:
                blocks += [TransformerBlock2d(cin, d, 2, res), TransformerBlock2d(d, d, 1, res)]
            cin = d
        self.stages = nn.Sequential(*blocks)
        self.norm, self.head = LayerNorm2dPermute(cin), nn.Linear(cin, classes)

    def forward(self, x):
        x = self.norm(self.stages(self.stem(x)))
        return self.head(x.mean((2, 3)))


def coatnet(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export(randomize_norms(TinyCoAtNet(size)), size, 17, seed, dynamo)
