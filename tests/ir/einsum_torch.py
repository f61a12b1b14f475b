"""A small vision transformer whose layers are written with ``torch.einsum`` (as MaxViT's
attention and several research codebases write them): the q/k/v, MLP and head weights as
``"bnc,dc->bnd"``, attention scores as ``"bhid,bhjd->bhij"`` and their use as
``"bhij,bhjd->bhid"``. torch's TorchScript exporter writes each as an ONNX ``Einsum``."""

from __future__ import annotations

import io
import math

import onnx
import torch
from torch import nn


class EinsumBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.w_qkv = nn.Parameter(torch.randn(3 * dim, dim) / math.sqrt(dim))
        self.w_out = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.w1 = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim))
        self.b1 = nn.Parameter(0.1 * torch.randn(hidden))
        self.w2 = nn.Parameter(torch.randn(dim, hidden) / math.sqrt(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = torch.einsum("bnc,dc->bnd", self.norm1(x), self.w_qkv)
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(c // self.heads)
        out = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v)
        x = x + torch.einsum("bnc,dc->bnd", out.transpose(1, 2).reshape(b, n, c), self.w_out)
        h = torch.relu(torch.einsum("bnc,hc->bnh", self.norm2(x), self.w1) + self.b1)
        return x + torch.einsum("bnh,ch->bnc", h, self.w2)


class EinsumViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*[EinsumBlock(dim, heads, hidden) for _ in range(2)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(tokens).mean(1))


def export(size: int = 16) -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            EinsumViT().eval(),
            (torch.randn(1, 3, size, size),),
            buf,
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())
