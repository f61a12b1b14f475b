"""A small RT-DETR-style detector whose decoder samples the encoder's feature maps with
multi-scale deformable attention, written the way lyuwenyu/RT-DETR
(``rtdetr_pytorch/src/zoo/rtdetr/rtdetr_decoder.py``, ``utils.py``) computes it; exported at
opset 16 (the first with GridSample), as its ``tools/export_onnx.py`` does.

- a conv backbone giving two levels, 1x1 ``input_proj`` convs + BN, each level flattened
  ``flatten(2).permute(0, 2, 1)`` and concatenated into the memory;
- learned queries and reference boxes (``sigmoid`` of a learned embedding), a self-attention
  (``nn.MultiheadAttention``), then ``MSDeformableAttention``: ``value_proj`` reshaped into
  heads, ``sampling_offsets`` and softmaxed ``attention_weights`` from the queries, the value
  split per level and folded to ``(bs * heads, head_dim, h, w)``, ``F.grid_sample`` at
  ``2 * locations - 1``, stacked, weighted, summed and ``reshape(bs, heads * head_dim, Lq)``,
  ``output_proj``; a ReLU FFN, LayerNorms after each;
- class logits (Linear) and boxes (a 3-layer MLP + ``inverse_sigmoid`` of the references,
  sigmoid).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import randomize_norms
from export_torch import export_as
from torch import nn


def inverse_sigmoid(x, eps=1e-5):
    x = x.clip(min=0.0, max=1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def deformable_attention_core_func(value, value_spatial_shapes, sampling_locations, weights):
    bs, _, n_head, c = value.shape
    _, Len_q, _, n_levels, n_points, _ = sampling_locations.shape
    split_shape = [h * w for h, w in value_spatial_shapes]
    value_list = value.split(split_shape, dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(value_spatial_shapes):
        value_l_ = value_list[level].flatten(2).permute(0, 2, 1).reshape(bs * n_head, c, h, w)
        grid_l_ = sampling_grids[:, :, :, level].permute(0, 2, 1, 3, 4).flatten(0, 1)
        sampling_value_list.append(
            F.grid_sample(
                value_l_, grid_l_, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    weights = weights.permute(0, 2, 1, 3, 4).reshape(bs * n_head, 1, Len_q, n_levels * n_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * weights).sum(-1)
    return output.reshape(bs, n_head * c, Len_q).permute(0, 2, 1)


class MSDeformableAttention(nn.Module):
    def __init__(self, embed_dim=32, num_heads=4, num_levels=2, num_points=2):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.total_points = num_heads * num_levels * num_points
        self.head_dim = embed_dim // num_heads
        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query, reference_points, value, value_spatial_shapes):
        bs, Len_q = query.shape[:2]
        Len_v = value.shape[1]
        value = self.value_proj(value).reshape(bs, Len_v, self.num_heads, self.head_dim)
        offsets = self.sampling_offsets(query).reshape(
            bs, Len_q, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).reshape(
            bs, Len_q, self.num_heads, self.num_levels * self.num_points
        )
        weights = F.softmax(weights, dim=-1).reshape(
            bs, Len_q, self.num_heads, self.num_levels, self.num_points
        )
        locations = (
            reference_points[:, :, None, :, None, :2]
            + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
        )
        output = deformable_attention_core_func(value, value_spatial_shapes, locations, weights)
        return self.output_proj(output)


class DecoderLayer(nn.Module):
    def __init__(self, d_model=32, n_head=4, dim_feedforward=64):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, reference_points, memory, spatial_shapes, query_pos_embed):
        q = k = tgt + query_pos_embed
        tgt = self.norm1(tgt + self.self_attn(q, k, value=tgt)[0])
        tgt2 = self.cross_attn(tgt + query_pos_embed, reference_points, memory, spatial_shapes)
        tgt = self.norm2(tgt + tgt2)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim, *h], [*h, output_dim], strict=True)
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def _conv_bn(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DeformableDETR(nn.Module):
    def __init__(self, d_model=32, num_queries=10, num_classes=5):
        super().__init__()
        self.backbone = nn.ModuleList(
            [
                nn.Sequential(_conv_bn(3, 8, 2), _conv_bn(8, 16, 2), _conv_bn(16, 24, 2)),
                _conv_bn(24, 32, 2),
            ]
        )
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d_model, 1, bias=False), nn.BatchNorm2d(d_model))
            for c in (24, 32)
        )
        self.tgt_embed = nn.Parameter(torch.randn(1, num_queries, d_model))
        self.query_pos_head = MLP(4, 2 * d_model, d_model, 2)
        self.refpoint = nn.Parameter(torch.randn(1, num_queries, 4))
        self.decoder = DecoderLayer(d_model)
        self.score_head = nn.Linear(d_model, num_classes)
        self.bbox_head = MLP(d_model, d_model, 4, 3)

    def forward(self, x):
        feats = []
        for stage in self.backbone:
            x = stage(x)
            feats.append(x)
        memory, spatial_shapes = [], []
        for feat, proj in zip(feats, self.input_proj, strict=True):
            feat = proj(feat)
            _, _, h, w = feat.shape
            memory.append(feat.flatten(2).permute(0, 2, 1))
            spatial_shapes.append([h, w])
        memory = torch.concat(memory, 1)
        bs = memory.shape[0]
        ref = F.sigmoid(self.refpoint).repeat(bs, 1, 1)
        tgt = self.tgt_embed.repeat(bs, 1, 1)
        out = self.decoder(tgt, ref.unsqueeze(2), memory, spatial_shapes, self.query_pos_head(ref))
        boxes = F.sigmoid(self.bbox_head(out) + inverse_sigmoid(ref))
        return self.score_head(out), boxes


def deformable_detr(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_norms(DeformableDETR())
    return export_as(model, (1, 3, size, size), opset=16, seed=seed)
