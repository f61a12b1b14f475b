"""A small DETR written the way facebookresearch/detr's ``models/detr.py`` and
``models/transformer.py`` compute it (post-norm layers, no auxiliary losses).

A conv backbone, ``input_proj`` (1x1 conv to ``d_model``), a sine position embedding from
the feature map's shape, ``flatten(2).permute(2, 0, 1)`` into a sequence, encoder layers
(``nn.MultiheadAttention`` with the position added to queries and keys), decoder layers
over learned ``query_embed`` (``unsqueeze(1).repeat(1, bs, 1)``, ``tgt = zeros_like``) with
self- and cross-attention, then ``class_embed`` and a 3-layer ``bbox_embed`` MLP with a
sigmoid. Exported by torch (TorchScript exporter, opset 17).
"""

from __future__ import annotations

import io
import math

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate
from torch import nn


class PositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats=8, temperature=10000):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, x):
        b, _, h, w = x.shape
        not_mask = torch.ones((b, h, w), dtype=x.dtype, device=x.device)
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4)
        pos = torch.cat((pos_y.flatten(3), pos_x.flatten(3)), dim=3).permute(0, 3, 1, 2)
        return pos


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos):
        q = k = src + pos
        src2 = self.self_attn(q, k, value=src)[0]
        src = self.norm1(src + src2)
        src2 = self.linear2(F.relu(self.linear1(src)))
        return self.norm2(src + src2)


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos):
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, value=tgt)[0]
        tgt = self.norm1(tgt + tgt2)
        tgt2 = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory)[0]
        tgt = self.norm2(tgt + tgt2)
        tgt2 = self.linear2(F.relu(self.linear1(tgt)))
        return self.norm3(tgt + tgt2)


class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim, *h], [*h, output_dim], strict=True)
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class TinyDETR(nn.Module):
    def __init__(self, num_classes=5, num_queries=6, d_model=16, nhead=2, ffn=32):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 24, 3, 2, 1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(),
        )
        self.input_proj = nn.Conv2d(24, d_model, 1)
        self.position = PositionEmbeddingSine(d_model // 2)
        self.encoder = nn.ModuleList(TransformerEncoderLayer(d_model, nhead, ffn) for _ in range(1))
        self.decoder = nn.ModuleList(TransformerDecoderLayer(d_model, nhead, ffn) for _ in range(2))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)

    def forward(self, samples):
        features = self.backbone(samples)
        pos = self.position(features)
        src = self.input_proj(features)
        bs = src.shape[0]
        src = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        hs = self.decoder_norm(tgt).transpose(0, 1)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()


def detr(size: int = 32, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = calibrate(TinyDETR(), (1, 3, size, size))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), buf, opset_version=17, dynamo=False
        )
    return onnx.load_from_string(buf.getvalue())
