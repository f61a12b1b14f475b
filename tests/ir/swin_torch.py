"""A small Swin transformer written the way torchvision's ``swin_t`` computes it.

Window padding from ``x.shape`` (``F.pad`` with ``W % ws`` amounts), cyclic shifts with
``torch.roll``, an attention mask built by slice assignment, q/k/v split into heads with
``reshape(B, N, 3, heads, C // heads)`` where ``C`` is read from the input's shape, patch
merging by strided slices and a concat. Exported by ``torch.onnx.export`` this gives the
shape arithmetic ONNX inference gives up on (Mod, ConstantOfShape, Where, ScatterND), which
is what the corpus' ``swin_t`` contains at 224 px.
"""

from __future__ import annotations

import io

import onnx
import torch
import torch.nn.functional as F
from torch import nn


def window_attention(x, qkv, proj, bias, ws: int, heads: int, shift: int):
    b, h, w, c = x.shape
    pad_r = (ws - w % ws) % ws
    pad_b = (ws - h % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = (ph // ws) * (pw // ws)
    x = x.view(b, ph // ws, ws, pw // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * windows, ws * ws, c)
    t = qkv(x).reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = t[0], t[1], t[2]
    q = q * (c // heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1)) + bias
    if shift:
        mask = x.new_zeros((ph, pw))
        bands = ((0, -ws), (-ws, -shift), (-shift, None))
        count = 0
        for hs in bands:
            for wsl in bands:
                mask[hs[0] : hs[1], wsl[0] : wsl[1]] = count
                count += 1
        mask = mask.view(ph // ws, ws, pw // ws, ws).permute(0, 2, 1, 3).reshape(windows, ws * ws)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        attn = attn.view(x.size(0) // windows, windows, heads, x.size(1), x.size(1))
        attn = attn + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    x = proj(x)
    x = x.view(b, ph // ws, pw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int, shift: int) -> None:
        super().__init__()
        self.heads, self.ws, self.shift = heads, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(1, heads, ws * ws, ws * ws) * 0.1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        a = window_attention(
            self.norm1(x), self.qkv, self.proj, self.bias, self.ws, self.heads, self.shift
        )
        x = x + a
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        parts = [x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :]]
        parts += [x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class TinySwin(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, ws: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm0 = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(Block(dim, heads, ws, 0), Block(dim, heads, ws, ws // 2))
        self.merge = PatchMerging(dim)
        self.stage2 = nn.Sequential(Block(2 * dim, 2 * heads, ws, 0))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x):
        x = self.norm0(self.embed(x).permute(0, 2, 3, 1))
        x = self.stage2(self.merge(self.stage1(x)))
        return self.head(self.norm(x).mean(dim=(1, 2)))


def export(size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """TinySwin with seeded weights, exported as torchvision's models are (TorchScript)."""
    torch.manual_seed(seed)
    model = TinySwin().eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), buf, opset_version=17, dynamo=False
        )
    return onnx.load_from_string(buf.getvalue())
