"""Conditional diffusion and recurrent speech models (round 5c of the unseen-architecture
battery, beside ``round5c_torch.py`` and ``round5c_seq_torch.py``), small, with their block
structure and ops intact.

- ``sd_unet``: diffusers ``UNet2DConditionModel`` as Stable Diffusion configures it, at small
  widths: ``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D`` with ``Transformer2DModel``
  (GroupNorm(32), ``proj_in`` Linear over the ``h * w`` tokens, ``BasicTransformerBlock``:
  LayerNorm, self-attention without q/k/v biases, LayerNorm, cross-attention whose keys and
  values project ``encoder_hidden_states`` of another width, LayerNorm, ``FeedForward`` with
  ``GEGLU`` (``proj`` to twice the inner width, ``chunk(2, -1)``, ``h * gelu(gate)``),
  ``proj_out``, the residual), ``ResnetBlock2D`` with the time embedding, the mid block,
  skip concatenations, nearest upsampling.
- ``deepspeech2``: SeanNaren/deepspeech.pytorch ``model.py``: ``MaskConv``'s two Conv2d +
  BatchNorm2d + ``Hardtanh(0, 20)``, the spectrogram's channels and frequencies flattened
  into the features (``view(B, C * F, T)``), time-major, ``BatchRNN`` layers
  (``SequenceWise(BatchNorm1d)`` from the second on, a bidirectional ``nn.LSTM``, the two
  directions summed: ``x.view(T, N, 2, -1).sum(2)``), the ``fc`` of BatchNorm1d + Linear
  without bias, ``InferenceBatchSoftmax``.
- ``gpt2_with_past``: GPT-2 as optimum's ``decoder_with_past`` exports it (a key/value cache
  in and out).
- ``conv_tasnet``: Conv-TasNet (kaituoxu/Conv-TasNet ``conv_tasnet.py``): the Conv1d
  encoder, cLN, the bottleneck, temporal blocks (1x1 conv, PReLU, gLN over channels and
  time, dilated depthwise conv, PReLU, gLN, pointwise conv, residual), the mask conv's
  ``C * N`` outputs viewed as ``(C, N)``, ReLU masks times the encoded mixture, and
  asteroid's ConvTranspose1d decoder over the sources folded into the batch.
- ``gpt2_ort``: GPT-2 (with or without its cache) through onnxruntime's transformers
  optimizer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from bn_calibrate import calibrate
from round5c_torch import (
    Downsample2D,
    ResnetBlock2D,
    UNetStem,
    Upsample2D,
    _randomize,
    export_inputs,
)
from torch import nn

# ---- Stable Diffusion's UNet2DConditionModel ---------------------------------------------------


class CrossAttention(nn.Module):
    """diffusers ``Attention`` (``AttnProcessor2_0``) as a transformer block uses it."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        b, _, c = x.shape
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.view(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return self.to_out[1](self.to_out[0](y))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        h = self.norm3(x)
        for layer in self.ff:
            h = layer(h)
        return h + x


class Transformer2DModel(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)  # use_linear_projection (SD 2.x)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, heads, context_dim)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, context):
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        x = self.proj_out(x).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return x + residual


class UNet2DConditionModel(UNetStem):
    """``block_out_channels=(32, 64)``, ``down_block_types=("CrossAttnDownBlock2D",
    "DownBlock2D")``, ``up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")``,
    ``layers_per_block=1``, ``cross_attention_dim=24``, ``attention_head_dim=8``."""

    def __init__(self, cin: int = 4, widths=(32, 64), context_dim: int = 24, head_dim=8):
        c0, c1 = widths
        super().__init__(cin, c0)
        temb = self.temb
        self.down0 = ResnetBlock2D(c0, c0, temb)
        self.down0_attn = Transformer2DModel(c0, c0 // head_dim, context_dim)
        self.downsample0 = Downsample2D(c0)
        self.down1 = ResnetBlock2D(c0, c1, temb)
        self.mid0, self.mid1 = ResnetBlock2D(c1, c1, temb), ResnetBlock2D(c1, c1, temb)
        self.mid_attn = Transformer2DModel(c1, c1 // head_dim, context_dim)
        self.up0 = nn.ModuleList(
            [ResnetBlock2D(c1 + c1, c1, temb), ResnetBlock2D(c1 + c0, c1, temb)]
        )
        self.upsample0 = Upsample2D(c1)
        self.up1 = nn.ModuleList(
            [ResnetBlock2D(c1 + c0, c0, temb), ResnetBlock2D(c0 + c0, c0, temb)]
        )
        self.up1_attn = nn.ModuleList(
            [Transformer2DModel(c0, c0 // head_dim, context_dim) for _ in range(2)]
        )
        self.conv_norm_out, self.conv_act = nn.GroupNorm(32, c0, eps=1e-5), nn.SiLU()
        self.conv_out = nn.Conv2d(c0, cin, 3, 1, 1)

    def forward(self, sample, timestep, encoder_hidden_states):
        ctx = encoder_hidden_states
        temb, x = self.embed(sample, timestep)
        skips = [x]
        x = self.down0_attn(self.down0(x, temb), ctx)
        skips.append(x)
        x = self.downsample0(x)
        skips.append(x)
        x = self.down1(x, temb)
        skips.append(x)
        x = self.mid1(self.mid_attn(self.mid0(x, temb), ctx), temb)
        for resnet in self.up0:
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
        x = self.upsample0(x)
        for resnet, attn in zip(self.up1, self.up1_attn, strict=True):
            x = attn(resnet(torch.cat([x, skips.pop()], dim=1), temb), ctx)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def sd_unet(size: int = 8, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """optimum's ``UNetOnnxConfig``: ``sample``, ``timestep`` (int64, shape ``(1,)``) and
    ``encoder_hidden_states`` (the text encoder's tokens), opset 14, dynamic batch, size and
    sequence (fixed here)."""
    torch.manual_seed(seed)
    model = _randomize(UNet2DConditionModel(), seed)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    args = (
        torch.randn(1, 4, size, size),
        torch.tensor([500], dtype=torch.int64),
        torch.randn(1, 6, 24),
    )
    names = ["sample", "timestep", "encoder_hidden_states"]
    dynamic = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        "output": {0: "batch"},
    }
    return export_inputs(model, args, names, 14, dynamo, dynamic, seed=seed)


# ---- DeepSpeech2 --------------------------------------------------------------------------------


class SequenceWise(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        t, n = x.size(0), x.size(1)
        return self.module(x.view(t * n, -1)).view(t, n, -1)


class BatchRNN(nn.Module):
    def __init__(self, cin: int, hidden: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.batch_norm = SequenceWise(nn.BatchNorm1d(cin)) if batch_norm else None
        self.rnn = nn.LSTM(cin, hidden, bidirectional=True, bias=True)

    def forward(self, x):
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        x, _ = self.rnn(x)
        return x.view(x.size(0), x.size(1), 2, -1).sum(2).view(x.size(0), x.size(1), -1)


class DeepSpeech2(nn.Module):
    def __init__(self, freq: int = 33, hidden: int = 24, layers: int = 3, labels: int = 29):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, (11, 5), (2, 2), (5, 2)),
            nn.BatchNorm2d(8),
            nn.Hardtanh(0, 20, inplace=True),
            nn.Conv2d(8, 8, (11, 5), (2, 1), (5, 2)),
            nn.BatchNorm2d(8),
            nn.Hardtanh(0, 20, inplace=True),
        )
        rnn_in = 8 * ((((freq + 10 - 11) // 2 + 1) + 10 - 11) // 2 + 1)
        self.rnns = nn.Sequential(
            BatchRNN(rnn_in, hidden, batch_norm=False),
            *(BatchRNN(hidden, hidden) for _ in range(layers - 1)),
        )
        self.fc = SequenceWise(
            nn.Sequential(nn.BatchNorm1d(hidden), nn.Linear(hidden, labels, bias=False))
        )

    def forward(self, x):  # (N, 1, F, T) spectrogram
        x = self.conv(x)
        sizes = x.size()
        x = x.view(sizes[0], sizes[1] * sizes[2], sizes[3]).transpose(1, 2).transpose(0, 1)
        x = self.fc(self.rnns(x)).transpose(0, 1)
        return F.softmax(x, dim=-1)


def deepspeech2(seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """A spectrogram ``(1, 1, 33, 40)``; BatchNorm statistics from random batches, the 1-D
    ones too; opset 11 (the repo's users export at 11)."""
    torch.manual_seed(seed)
    model = DeepSpeech2()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    model = calibrate(model, (1, 1, 33, 40))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    args = (torch.randn(1, 1, 33, 40),)
    return export_inputs(model, args, ["spect"], 11 if not dynamo else 17, dynamo, seed=seed)


# ---- GPT-2 with its key/value cache (optimum's decoder_with_past) ------------------------------


class GPT2WithPast(nn.Module):
    """``GPT2LMHead`` (``round5c_seq_torch.py``) fed ``past_key_values`` (per layer a key and a
    value of ``(batch, heads, past, head_dim)``): each block's new key and value concatenated
    after the past ones on the sequence axis and returned as ``present``; the positions
    start after the past."""

    def __init__(self) -> None:
        super().__init__()
        from round5c_seq_torch import GPT2LMHead

        self.lm = GPT2LMHead()

    def _attn(self, block, x, mask, past_k, past_v):
        q, k, v = block.c_attn(x).split(block.heads * block.head_dim, dim=2)
        q, k, v = block._split_heads(q), block._split_heads(k), block._split_heads(v)
        k, v = torch.cat((past_k, k), dim=-2), torch.cat((past_v, v), dim=-2)
        w = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], v.size(-1) ** 0.5)
        qlen, klen = q.size(-2), k.size(-2)
        causal = block.bias[:, :, klen - qlen : klen, :klen]
        w = torch.where(causal, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
        y = torch.matmul(F.softmax(w + mask, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        y = block.attn_proj(y.view((*y.size()[:-2], block.heads * block.head_dim)))
        return y, k, v

    def forward(self, input_ids, attention_mask, *past):
        lm = self.lm
        start = past[0].size(-2)
        position_ids = torch.arange(start, start + input_ids.size(-1)).unsqueeze(0)
        mask = attention_mask.view(input_ids.size(0), -1)[:, None, None, :].to(torch.float32)
        mask = (1.0 - mask) * torch.finfo(torch.float32).min
        x = lm.wte(input_ids) + lm.wpe(position_ids)
        present = []
        for i, block in enumerate(lm.h):
            y, k, v = self._attn(block, block.ln_1(x), mask, past[2 * i], past[2 * i + 1])
            x = x + y
            x = x + block.mlp_proj(F.gelu(block.c_fc(block.ln_2(x)), approximate="tanh"))
            present += [k, v]
        return (lm.lm_head(lm.ln_f(x)), *present)


def gpt2_with_past(past: int = 7, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """optimum's ``decoder_with_past_model.onnx`` (opset 13): ``input_ids`` of one new token,
    ``attention_mask`` over past and new, ``past_key_values.{i}.key/value``; outputs
    ``logits`` and ``present.{i}.key/value``; batch, sequence and past axes dynamic (fixed
    here)."""
    torch.manual_seed(seed)
    model = _randomize(GPT2WithPast(), seed)
    layers, heads, head_dim = len(model.lm.h), model.lm.h[0].heads, model.lm.h[0].head_dim
    kv = [torch.randn(1, heads, past, head_dim) for _ in range(2 * layers)]
    args = (torch.randint(0, 96, (1, 1)), torch.ones(1, past + 1, dtype=torch.int64), *kv)
    past_names = [f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    names = ["input_ids", "attention_mask", *past_names]
    outputs = ["logits"] + [n.replace("past_key_values", "present") for n in past_names]
    dynamic = {"input_ids": {0: "batch_size", 1: "sequence_length"}}
    dynamic["attention_mask"] = {0: "batch_size", 1: "past_sequence_length + 1"}
    for n in past_names:
        dynamic[n] = {0: "batch_size", 2: "past_sequence_length"}
    return export_inputs(model, args, names, 13, dynamo, dynamic, seed=seed, output_names=outputs)


# ---- Conv-TasNet (kaituoxu/Conv-TasNet conv_tasnet.py; asteroid's ConvTranspose1d decoder) ----


class GlobalLayerNorm(nn.Module):
    """gLN: statistics over the channels and the time steps of each utterance."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(1, dim, 1) + 0.5)
        self.beta = nn.Parameter(0.4 * torch.rand(1, dim, 1) - 0.2)

    def forward(self, y):
        mean = y.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
        var = (torch.pow(y - mean, 2)).mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
        return self.gamma * (y - mean) / torch.pow(var + 1e-8, 0.5) + self.beta


class ChannelwiseLayerNorm(nn.Module):
    """cLN: statistics over the channels of each time step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(1, dim, 1) + 0.5)
        self.beta = nn.Parameter(0.4 * torch.rand(1, dim, 1) - 0.2)

    def forward(self, y):
        mean = torch.mean(y, dim=1, keepdim=True)
        var = torch.var(y, dim=1, keepdim=True, unbiased=False)
        return self.gamma * (y - mean) / torch.pow(var + 1e-8, 0.5) + self.beta


class TemporalBlock(nn.Module):
    def __init__(self, b: int, h: int, p: int, dilation: int) -> None:
        super().__init__()
        self.conv1x1, self.prelu, self.norm = (
            nn.Conv1d(b, h, 1, bias=False),
            nn.PReLU(),
            GlobalLayerNorm(h),
        )
        pad = (p - 1) * dilation // 2
        self.depthwise = nn.Conv1d(h, h, p, padding=pad, dilation=dilation, groups=h, bias=False)
        self.prelu2, self.norm2 = nn.PReLU(), GlobalLayerNorm(h)
        self.pointwise = nn.Conv1d(h, b, 1, bias=False)

    def forward(self, x):
        y = self.norm(self.prelu(self.conv1x1(x)))
        y = self.pointwise(self.norm2(self.prelu2(self.depthwise(y))))
        return x + y


class ConvTasNet(nn.Module):
    """N=32 filters of L=8 samples, B=16, H=32, P=3, X=3 blocks, R=2 repeats, C=2 sources,
    ``norm_type="gLN"``, ``mask_nonlinear="relu"``."""

    def __init__(self, n=32, length=8, b=16, h=32, p=3, x=3, r=2, sources=2) -> None:
        super().__init__()
        self.n, self.sources = n, sources
        self.encoder = nn.Conv1d(1, n, length, stride=length // 2, bias=False)
        blocks = [TemporalBlock(b, h, p, 2**i) for _ in range(r) for i in range(x)]
        self.separator = nn.Sequential(
            ChannelwiseLayerNorm(n), nn.Conv1d(n, b, 1, bias=False), *blocks
        )
        self.mask_conv1x1 = nn.Conv1d(b, sources * n, 1, bias=False)
        self.decoder = nn.ConvTranspose1d(n, 1, length, stride=length // 2, bias=False)

    def forward(self, mixture):  # (M, T)
        m = mixture.size(0)
        mixture_w = F.relu(self.encoder(mixture.unsqueeze(1)))  # (M, N, K)
        k = mixture_w.size(2)
        score = self.mask_conv1x1(self.separator(mixture_w)).view(m, self.sources, self.n, k)
        source_w = F.relu(score) * mixture_w.unsqueeze(1)  # (M, C, N, K)
        out = self.decoder(source_w.view(m * self.sources, self.n, k))
        return out.view(m, self.sources, -1)


def conv_tasnet(seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """A mixture of 256 samples; opset 13 (asteroid's users' export)."""
    torch.manual_seed(seed)
    model = ConvTasNet()
    args = (torch.randn(1, 256),)
    return export_inputs(model, args, ["mixture"], 13 if not dynamo else 17, dynamo, seed=seed)


# ---- GPT-2 through onnxruntime's transformers optimizer -----------------------------------------


def gpt2_ort(opt_level: int | None = 0, with_past: bool = False) -> onnx.ModelProto:
    """``gpt2`` (or ``gpt2_with_past``) run through ``optimize_model(model_type="gpt2",
    num_heads=4, hidden_size=32, opt_level=...)`` offline, as GPT-2 deployments do: level 0
    writes a chain of com.microsoft ``SkipLayerNormalization`` (each reading the previous
    one's sum, output 3: the pre-LN residual stream) and ``FastGelu`` with the fc bias;
    the default (None: onnxruntime's basic optimizations first) also a
    ``LayerNormalization`` in the opset-13 model (onnxruntime registers it there)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from round5c_seq_torch import gpt2

    model = gpt2_with_past() if with_past else gpt2()
    opt = optimize_model(model, model_type="gpt2", num_heads=4, hidden_size=32, opt_level=opt_level)
    with tempfile.TemporaryDirectory() as tmp:  # saving adds the com.microsoft opset
        opt.save_model_to_file(str(Path(tmp, "gpt2.onnx")))
        return onnx.load(Path(tmp, "gpt2.onnx"))
