"""Small networks whose normalisations read across the channels, written the way their
projects compute them.

- ``convnextv2``: ConvNeXt V2 (facebookresearch/ConvNeXt-V2 ``models/convnextv2.py``): the
  channels-first LayerNorm written out (``x.mean(1)``, ``(x - u).pow(2).mean(1)``, ``/
  sqrt``, ``weight[:, None, None] * x + bias[:, None, None]``) in the stem and the
  downsampling layers, blocks of depthwise 7x7 conv, ``permute(0, 2, 3, 1)``, LayerNorm,
  Linear, GELU, **GRN** (``Gx = norm(x, p=2, dim=(1, 2))``, ``Nx = Gx / (Gx.mean(-1) +
  1e-6)``, ``gamma * (x * Nx) + beta + x``: the mean runs over the hidden channels), Linear,
  permute back and the residual add; a LayerNorm + Linear head on the pooled features;
- ``poolformer``: PoolFormer (sail-sg/poolformer ``models/poolformer.py``): ``GroupNorm(1,
  C)`` norms (statistics over every channel), ``pool(x) - x`` token mixer, 1x1-conv MLP
  with GELU, per-channel layer scales, strided-conv patch embeddings.

Both exported as timm's ``onnx_export`` does (torch's default opset, symbolic batch).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import randomize_norms
from export_torch import export_as
from torch import nn

# ---- ConvNeXt V2 ---------------------------------------------------------------------------


class LayerNorm(nn.Module):
    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(normalized_shape) + 0.5)
        self.bias = nn.Parameter(torch.rand(normalized_shape) * 0.4 - 0.2)
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(1, 1, 1, dim) * 0.3)
        self.beta = nn.Parameter(torch.randn(1, 1, 1, dim) * 0.1)

    def forward(self, x):
        Gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        Nx = Gx / (Gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * Nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, dims=(8, 16, 32, 48), num_classes=10):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
                    LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
                )
            ]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        self.stages = nn.ModuleList(Block(d) for d in dims)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


# ---- PoolFormer ----------------------------------------------------------------------------


class GroupNorm(nn.GroupNorm):
    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)


class Pooling(nn.Module):
    def __init__(self, pool_size=3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PoolFormerBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.norm1 = GroupNorm(dim)
        self.token_mixer = Pooling()
        self.norm2 = GroupNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.layer_scale_1 = nn.Parameter(torch.rand(dim) + 0.5)
        self.layer_scale_2 = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(self.norm2(x))


class PoolFormer(nn.Module):
    def __init__(self, dims=(8, 16, 32, 48), num_classes=10):
        super().__init__()
        layers = [nn.Conv2d(3, dims[0], 7, 4, 2)]
        for i, d in enumerate(dims):
            if i:
                layers.append(nn.Conv2d(dims[i - 1], d, 3, 2, 1))
            layers.append(PoolFormerBlock(d))
        self.network = nn.Sequential(*layers)
        self.norm = GroupNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.head(self.norm(self.network(x)).mean([-2, -1]))


def convnextv2(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(ConvNeXtV2(), (nn.GroupNorm, nn.LayerNorm))
    return export_as(model, (1, 3, size, size), opset=17, dynamic_batch=True, seed=seed)


def poolformer(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(PoolFormer(), (nn.GroupNorm, nn.LayerNorm))
    return export_as(model, (1, 3, size, size), opset=17, dynamic_batch=True, seed=seed)
