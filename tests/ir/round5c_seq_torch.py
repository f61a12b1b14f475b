"""Depth, optical-flow, language and speech models written the way their projects write them
(round 5c of the unseen-architecture battery; the generative ones are in
``round5c_torch.py``), small, with their block structure and ops intact.

- ``dpt``: DPT / MiDaS v3 (isl-org/MiDaS ``midas/dpt_depth.py``, ``blocks.py``,
  ``backbones/vit.py``): a ViT whose blocks 1..4 are tapped, ``readout="project"`` (the
  class token concatenated to every patch token, Linear + GELU), tokens unflattened to maps,
  1x1 convs, ``ConvTranspose2d`` / strided conv to four scales, ``scratch.layerN_rn`` 3x3
  convs without bias, ``FeatureFusionBlock_custom`` (two ``ResidualConvUnit_custom``:
  ReLU, conv, ReLU, conv, skip add; bilinear x2 upsampling with ``align_corners=True``,
  1x1 ``out_conv``) and the depth head (conv, bilinear x2, conv, ReLU, 1x1 conv, ReLU).
- ``raft``: RAFT-small (princeton-vl/RAFT ``core/raft.py``, ``extractor.py``
  ``SmallEncoder``, ``corr.py`` ``CorrBlock``, ``update.py`` ``SmallUpdateBlock``): both
  images through one instance-normed feature encoder (``cat`` on the batch, ``split``),
  the context encoder (no norm) split into ``tanh`` hidden and ``relu`` input, the
  all-pairs correlation ``fmap1^T @ fmap2 / sqrt(D)`` and its avg-pooled pyramid, lookups by
  ``grid_sample`` around the current coordinates, the motion encoder and the ConvGRU
  (``sigmoid`` z and r gates over ``cat(h, x)``, ``tanh`` of ``cat(r * h, x)``), the flow
  head; two iterations.
- ``gpt2``: HF transformers ``GPT2LMHeadModel`` (eager attention): token and position
  embeddings, ``Conv1D`` layers (``addmm`` of a ``(in, out)`` weight), the fused ``c_attn``
  split into q, k, v and heads, the causal mask by ``torch.where`` on a ``tril`` buffer and
  the padding mask ``(1 - mask) * finfo.min``, ``NewGELUActivation`` (tanh form), the
  ``lm_head`` tied to ``wte`` (``x @ wte.weight.T``); exported as optimum does
  (``input_ids``, ``attention_mask``; batch and sequence axes dynamic).
- ``whisper_encoder``: HF ``WhisperEncoder``: two ``Conv1d`` stems with GELU (the second
  strided), the sinusoidal ``embed_positions`` added, pre-LN layers (q scaled, k without
  bias), ``fc1``-GELU-``fc2``, the final LayerNorm.
- ``tc_resnet``: TC-ResNet8 (hyperconnect/TC-ResNet): MFCC coefficients as channels of a
  ``(B, F, T, 1)`` map, temporal ``(9, 1)`` convs, residual blocks with strided 1x1
  shortcuts, average pooling, a 1x1 conv classifier, softmax.
"""

from __future__ import annotations

import itertools
import math

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate
from round5c_torch import _randomize, export_inputs
from torch import nn


def _block_ln(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


# ---- DPT / MiDaS ------------------------------------------------------------------------------


class VitBlock(nn.Module):
    """timm ``Block`` (the MiDaS ViT backbone): fused qkv, heads, GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = (
            _block_ln(dim),
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
        )
        self.norm2 = _block_ln(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, c = x.shape
        qkv = (
            self.qkv(self.norm1(x))
            .reshape(b, n, 3, self.heads, c // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class ProjectReadout(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x):
        readout = x[:, 0].unsqueeze(1).expand_as(x[:, 1:])
        return self.project(torch.cat((x[:, 1:], readout), -1))


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1, bias=True)
        self.activation = nn.ReLU(False)

    def forward(self, x):
        out = self.conv2(self.activation(self.conv1(self.activation(x))))
        return out + x  # skip_add (FloatFunctional.add)


class FeatureFusionBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(dim), ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, *xs):
        output = xs[0]
        if len(xs) == 2:
            output = output + self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        output = F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(output)


class DPT(nn.Module):
    def __init__(self, size=32, patch=4, dim=32, heads=4, feats=(16, 32, 48, 64), features=32):
        super().__init__()
        self.grid = size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, self.grid**2 + 1, dim))
        self.blocks = nn.ModuleList([VitBlock(dim, heads) for _ in range(4)])
        self.readout = nn.ModuleList([ProjectReadout(dim) for _ in range(4)])
        resize = [
            nn.ConvTranspose2d(feats[0], feats[0], 4, 4),
            nn.ConvTranspose2d(feats[1], feats[1], 2, 2),
            nn.Identity(),
            nn.Conv2d(feats[3], feats[3], 3, 2, 1),
        ]
        self.act_postprocess = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(dim, f, 1), r) for f, r in zip(feats, resize, strict=True)]
        )
        self.layer_rn = nn.ModuleList([nn.Conv2d(f, features, 3, 1, 1, bias=False) for f in feats])
        self.refinenet = nn.ModuleList([FeatureFusionBlock(features) for _ in range(4)])
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, 1, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 16, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(16, 1, 1),
            nn.ReLU(True),
        )

    def forward(self, x):
        b = x.shape[0]
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat((self.cls_token.expand(b, -1, -1), t), dim=1) + self.pos_embed
        layers = []
        for blk, readout, post in zip(self.blocks, self.readout, self.act_postprocess, strict=True):
            t = blk(t)
            m = readout(t).transpose(1, 2).unflatten(2, (self.grid, self.grid))
            layers.append(post(m))
        rn = [conv(m) for conv, m in zip(self.layer_rn, layers, strict=True)]
        path = self.refinenet[3](rn[3])
        for i in (2, 1, 0):
            path = self.refinenet[i](path, rn[i])
        return self.output_conv(path).squeeze(dim=1)


def dpt(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """Exported as MiDaS's ``run.py`` users do for ONNX (opset 13 for its
    ``export_onnx``; 17 for dynamo)."""
    torch.manual_seed(seed)
    model = _randomize(DPT(size), seed)
    model.output_conv[4].bias.data.fill_(0.5)  # the depth mostly above the final ReLU's zero
    return export_inputs(
        model, (torch.randn(1, 3, size, size),), ["input"], 13 if not dynamo else 17, dynamo
    )


# ---- RAFT-small ---------------------------------------------------------------------------------


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes // 4, 1)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, 3, stride, 1)
        self.conv3 = nn.Conv2d(planes // 4, planes, 1)
        self.relu = nn.ReLU(True)

        def n(c):
            return nn.InstanceNorm2d(c) if norm == "instance" else nn.Sequential()

        self.norm1, self.norm2, self.norm3 = n(planes // 4), n(planes // 4), n(planes)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride), n(planes))

    def forward(self, x):
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class SmallEncoder(nn.Module):
    def __init__(self, output_dim: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3)
        self.norm1 = nn.InstanceNorm2d(16) if norm == "instance" else nn.Sequential()
        self.relu1 = nn.ReLU(True)
        self.layer1 = nn.Sequential(BottleneckBlock(16, 16, norm), BottleneckBlock(16, 16, norm))
        self.layer2 = nn.Sequential(BottleneckBlock(16, 24, norm, 2), BottleneckBlock(24, 24, norm))
        self.layer3 = nn.Sequential(BottleneckBlock(24, 32, norm, 2), BottleneckBlock(32, 32, norm))
        self.conv2 = nn.Conv2d(32, output_dim, 1)

    def forward(self, x):
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


def bilinear_sampler(img, coords):
    h, w = img.shape[-2:]
    xgrid, ygrid = coords.split([1, 1], dim=-1)
    xgrid = 2 * xgrid / (w - 1) - 1
    ygrid = 2 * ygrid / (h - 1) - 1
    return F.grid_sample(img, torch.cat([xgrid, ygrid], dim=-1), align_corners=True)


class CorrBlock:
    def __init__(self, fmap1, fmap2, num_levels: int = 2, radius: int = 2) -> None:
        self.num_levels, self.radius = num_levels, radius
        b, d, h, w = fmap1.shape
        corr = torch.matmul(fmap1.view(b, d, h * w).transpose(1, 2), fmap2.view(b, d, h * w))
        corr = (corr / torch.sqrt(torch.tensor(d).float())).reshape(b * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)

    def __call__(self, coords):
        r = self.radius
        coords = coords.permute(0, 2, 3, 1)
        b, h, w, _ = coords.shape
        out = []
        for i, corr in enumerate(self.pyramid):
            d = torch.linspace(-r, r, 2 * r + 1)
            delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)
            centroid = coords.reshape(b * h * w, 1, 1, 2) / 2**i
            corr = bilinear_sampler(corr, centroid + delta.view(1, 2 * r + 1, 2 * r + 1, 2))
            out.append(corr.view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()


class ConvGRU(nn.Module):
    def __init__(self, hidden: int, inp: int) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden + inp, hidden, 3, padding=1)
        self.convr = nn.Conv2d(hidden + inp, hidden, 3, padding=1)
        self.convq = nn.Conv2d(hidden + inp, hidden, 3, padding=1)

    def forward(self, h, x):
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class SmallUpdateBlock(nn.Module):
    def __init__(self, cor_planes: int, hidden: int = 24, context: int = 16) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(cor_planes, 32, 1)
        self.convf1 = nn.Conv2d(2, 16, 7, padding=3)
        self.convf2 = nn.Conv2d(16, 8, 3, padding=1)
        self.conv = nn.Conv2d(32 + 8, 30, 3, padding=1)  # SmallMotionEncoder: 80 - 2 in the repo
        self.gru = ConvGRU(hidden, 30 + 2 + context)
        self.flow_head = nn.Sequential(
            nn.Conv2d(hidden, 32, 3, padding=1), nn.ReLU(True), nn.Conv2d(32, 2, 3, padding=1)
        )

    def forward(self, net, inp, corr, flow):
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        motion = torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, self.flow_head(net)


class RAFTSmall(nn.Module):
    def __init__(self, hidden: int = 24, context: int = 16, iters: int = 2) -> None:
        super().__init__()
        self.hidden, self.context, self.iters = hidden, context, iters
        self.fnet = SmallEncoder(32, "instance")
        self.cnet = SmallEncoder(hidden + context, "none")
        self.update_block = SmallUpdateBlock(2 * (2 * 2 + 1) ** 2, hidden, context)

    def forward(self, image1, image2):
        image1, image2 = 2 * (image1 / 255.0) - 1.0, 2 * (image2 / 255.0) - 1.0
        fmap1, fmap2 = torch.split(self.fnet(torch.cat([image1, image2], dim=0)), [1, 1], dim=0)
        corr_fn = CorrBlock(fmap1, fmap2)
        net, inp = torch.split(self.cnet(image1), [self.hidden, self.context], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        b, _, h, w = fmap1.shape
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords0 = torch.stack([xs, ys], dim=0).float()[None].repeat(b, 1, 1, 1)
        coords1 = coords0
        for _ in range(self.iters):
            corr = corr_fn(coords1)
            net, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta
        return coords1 - coords0


def raft(size: int = 64, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """Two images (0..255), opset 16 (``grid_sample``), as RAFT's ONNX exports do."""
    torch.manual_seed(seed)
    model = _randomize(RAFTSmall(), seed)
    args = tuple(255 * torch.rand(1, 3, size, size) for _ in range(2))
    return export_inputs(model, args, ["image1", "image2"], 16 if not dynamo else 17, dynamo)


# ---- GPT-2 ------------------------------------------------------------------------------------


class Conv1D(nn.Module):
    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.2 * torch.randn(nx, nf))
        self.bias = nn.Parameter(0.1 * torch.randn(nf))

    def forward(self, x):
        size_out = (*x.size()[:-1], self.weight.shape[-1])
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def new_gelu(x):
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int, ctx: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.attn_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)
        self.c_fc, self.mlp_proj = Conv1D(4 * dim, dim), Conv1D(dim, 4 * dim)
        self.register_buffer(
            "bias",
            torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)).view(1, 1, ctx, ctx),
            persistent=False,
        )

    def _split_heads(self, x):
        return x.view((*x.size()[:-1], self.heads, self.head_dim)).permute(0, 2, 1, 3)

    def attn(self, x, mask):
        q, k, v = self.c_attn(x).split(self.heads * self.head_dim, dim=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        w = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], v.size(-1) ** 0.5, dtype=q.dtype)
        qlen, klen = q.size(-2), k.size(-2)
        causal = self.bias[:, :, klen - qlen : klen, :klen]
        w = torch.where(causal, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
        w = nn.functional.softmax(w + mask, dim=-1)
        y = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous()
        return self.attn_proj(y.view((*y.size()[:-2], self.heads * self.head_dim)))

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp_proj(new_gelu(self.c_fc(self.ln_2(x))))


class GPT2LMHead(nn.Module):
    def __init__(
        self, vocab: int = 96, dim: int = 32, heads: int = 4, layers: int = 2, ctx: int = 32
    ):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        self.h = nn.ModuleList([GPT2Block(dim, heads, ctx) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tie_weights

    def forward(self, input_ids, attention_mask):
        position_ids = torch.arange(0, input_ids.size(-1), dtype=torch.long).unsqueeze(0)
        mask = attention_mask.view(input_ids.size(0), -1)[:, None, None, :].to(torch.float32)
        mask = (1.0 - mask) * torch.finfo(torch.float32).min
        x = self.wte(input_ids) + self.wpe(position_ids)
        for block in self.h:
            x = block(x, mask)
        return self.lm_head(self.ln_f(x))


def gpt2(seq: int = 8, seed: int = 0, dynamo: bool = False, fix: bool = True) -> onnx.ModelProto:
    """optimum's ``GPT2OnnxConfig`` (opset 13): ``input_ids`` and ``attention_mask`` with
    dynamic batch and sequence axes (fixed to ``(1, seq)`` unless ``fix`` is off)."""
    torch.manual_seed(seed)
    model = _randomize(GPT2LMHead(), seed)
    ids = torch.randint(0, 96, (1, seq))
    axes = {0: "batch_size", 1: "sequence_length"}
    dynamic = {"input_ids": axes, "attention_mask": axes, "output": axes}
    args = (ids, torch.ones(1, seq, dtype=torch.int64))
    return export_inputs(model, args, ["input_ids", "attention_mask"], 13, dynamo, dynamic, fix)


# ---- Whisper encoder, TC-ResNet -----------------------------------------------------------------


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class WhisperLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def _shape(self, t, b, n):
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, x):
        b, n, d = x.shape
        h = self.self_attn_layer_norm(x)
        q = self._shape(self.q_proj(h) * self.head_dim**-0.5, b, n)
        k, v = self._shape(self.k_proj(h), b, n), self._shape(self.v_proj(h), b, n)
        w = torch.softmax(q @ k.transpose(2, 3), dim=-1)
        y = (w @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.out_proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    def __init__(
        self, mels: int = 16, dim: int = 32, heads: int = 4, layers: int = 2, frames: int = 64
    ):
        super().__init__()
        self.conv1 = nn.Conv1d(mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(frames // 2, dim)
        self.embed_positions.weight.data.copy_(sinusoids(frames // 2, dim))
        self.layers = nn.ModuleList([WhisperLayer(dim, heads) for _ in range(layers)])
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, input_features):
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        x = x + self.embed_positions.weight
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


def whisper_encoder(seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """optimum's ``WhisperOnnxConfig`` encoder (opset 14; ``input_features`` batch dynamic)."""
    torch.manual_seed(seed)
    model = _randomize(WhisperEncoder(), seed)
    args = (torch.randn(1, 16, 64),)
    dynamic = {"input_features": {0: "batch_size"}, "output": {0: "batch_size"}}
    return export_inputs(model, args, ["input_features"], 14, dynamo, dynamic)


class TCResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, (9, 1), (stride, 1), (4, 0), bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, (9, 1), 1, (4, 0), bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, (stride, 1), bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class TCResNet8(nn.Module):
    def __init__(self, mfcc: int = 40, classes: int = 12, k: float = 1.0) -> None:
        super().__init__()
        w = [int(c * k) for c in (16, 24, 32, 48)]
        self.conv = nn.Conv2d(mfcc, w[0], (3, 1), 1, (1, 0), bias=False)
        self.blocks = nn.Sequential(*(TCResBlock(a, b, 2) for a, b in itertools.pairwise(w)))
        self.fc = nn.Conv2d(w[-1], classes, 1)

    def forward(self, x):  # x: (B, T, F) MFCCs
        x = x.permute(0, 2, 1).unsqueeze(-1)
        x = F.adaptive_avg_pool2d(self.blocks(self.conv(x)), 1)
        return F.softmax(self.fc(x).flatten(1), dim=-1)


def tc_resnet(seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """MFCCs ``(1, 49, 40)``; BatchNorm statistics from random batches (``calibrate``)."""
    torch.manual_seed(seed)
    model = calibrate(TCResNet8(), (1, 49, 40))
    args = (torch.randn(1, 49, 40),)
    return export_inputs(model, args, ["input"], 11 if not dynamo else 17, dynamo)
