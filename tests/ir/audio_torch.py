"""Small speech networks written the way their projects write them (1-D convolutions).

- ``wav2vec2``: HF transformers' ``Wav2Vec2Model`` (``feat_extract_norm="group"``): the
  feature encoder (``Conv1d(1, C, 10, 5)`` + ``GroupNorm(C, C)`` + GELU, then strided
  convs of kernels 3 and 2), the feature projection (LayerNorm + Linear), the positional
  conv embedding (grouped ``Conv1d`` of a wide kernel under ``weight_norm(dim=2)``, the
  ``SamePad`` that drops the last step, GELU, added back) and post-LN encoder layers
  (q/k/v projections reshaped into heads, ``out_proj``, a GELU feed-forward) and
  ``Wav2Vec2ForCTC``'s ``lm_head``;
- ``quartznet``: NVIDIA NeMo's ``JasperBlock`` as QuartzNet uses it: time-channel separable
  convs (depthwise ``Conv1d`` + pointwise ``Conv1d`` + BN), a 1x1 conv + BN residual added
  before the last ReLU, a dilated epilog and the ``log_softmax`` CTC decoder;
- ``conformer``: torchaudio's ``ConformerLayer``: half-step feed-forward modules, an
  ``nn.MultiheadAttention`` (packed ``in_proj_weight``) and the convolution module
  (pointwise conv to ``2 * D``, ``GLU(dim=1)``, depthwise conv, BatchNorm, SiLU, pointwise).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn


def calibrate_1d(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``bn_calibrate.calibrate`` for every BatchNorm dimension and LayerNorm: statistics
    from a few random batches, affine parameters away from the identity."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *shape[1:]))
    kinds = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for m in model.modules():
        if isinstance(m, kinds) and m.weight is not None:
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


# ---- wav2vec 2.0 (transformers models/wav2vec2/modeling_wav2vec2.py) ------------------------


class Wav2Vec2FeatureEncoder(nn.Module):
    def __init__(self, dim=32, kernels=(10, 3, 3, 2), strides=(5, 2, 2, 2)):
        super().__init__()
        layers = []
        for i, (k, s) in enumerate(zip(kernels, strides, strict=True)):
            conv = nn.Conv1d(1 if i == 0 else dim, dim, k, stride=s, bias=False)
            if i == 0:  # Wav2Vec2GroupNormConvLayer: one group per channel
                layers.append(nn.Sequential(conv, nn.GroupNorm(dim, dim, affine=True), nn.GELU()))
            else:  # Wav2Vec2NoLayerNormConvLayer
                layers.append(nn.Sequential(conv, nn.GELU()))
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, input_values):
        hidden_states = input_values[:, None]
        for conv_layer in self.conv_layers:
            hidden_states = conv_layer(hidden_states)
        return hidden_states


class Wav2Vec2FeatureProjection(nn.Module):
    def __init__(self, conv_dim, hidden):
        super().__init__()
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.projection = nn.Linear(conv_dim, hidden)

    def forward(self, hidden_states):
        norm_hidden_states = self.layer_norm(hidden_states)
        return self.projection(norm_hidden_states)


class Wav2Vec2PositionalConvEmbedding(nn.Module):
    def __init__(self, hidden, kernel=16, groups=4):
        super().__init__()
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(self.conv, name="weight", dim=2)
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0  # Wav2Vec2SamePadLayer

    def forward(self, hidden_states):
        hidden_states = hidden_states.transpose(1, 2)
        hidden_states = self.conv(hidden_states)
        if self.num_pad_remove > 0:
            hidden_states = hidden_states[:, :, : -self.num_pad_remove]
        hidden_states = F.gelu(hidden_states)
        return hidden_states.transpose(1, 2)


class Wav2Vec2Attention(nn.Module):
    def __init__(self, embed_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, hidden_states):
        bsz, tgt_len, _ = hidden_states.size()
        shape = (bsz, -1, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attn = torch.matmul(query, key.transpose(2, 3)) * self.scaling
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, value).transpose(1, 2)
        out = out.reshape(bsz, tgt_len, -1)
        return self.out_proj(out)


class Wav2Vec2EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.attention = Wav2Vec2Attention(hidden, heads)
        self.layer_norm = nn.LayerNorm(hidden)
        self.intermediate_dense = nn.Linear(hidden, ffn)
        self.output_dense = nn.Linear(ffn, hidden)
        self.final_layer_norm = nn.LayerNorm(hidden)

    def forward(self, hidden_states):
        hidden_states = hidden_states + self.attention(hidden_states)
        hidden_states = self.layer_norm(hidden_states)
        ff = self.output_dense(F.gelu(self.intermediate_dense(hidden_states)))
        return self.final_layer_norm(hidden_states + ff)


class TinyWav2Vec2(nn.Module):
    def __init__(self, conv_dim=32, hidden=32, heads=4, ffn=64, layers=2, vocab=32):
        super().__init__()
        self.feature_extractor = Wav2Vec2FeatureEncoder(conv_dim)
        self.feature_projection = Wav2Vec2FeatureProjection(conv_dim, hidden)
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(hidden)
        self.layer_norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(Wav2Vec2EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.lm_head = nn.Linear(hidden, vocab)

    def forward(self, input_values):
        features = self.feature_extractor(input_values).transpose(1, 2)
        hidden_states = self.feature_projection(features)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        hidden_states = self.layer_norm(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.lm_head(hidden_states)  # Wav2Vec2ForCTC


# ---- QuartzNet (NeMo collections/asr/parts/submodules/jasper.py) ----------------------------


def _sep_conv_bn(cin, cout, k, stride=1, dilation=1):
    pad = dilation * (k - 1) // 2
    return [
        nn.Conv1d(
            cin, cin, k, stride=stride, padding=pad, dilation=dilation, groups=cin, bias=False
        ),
        nn.Conv1d(cin, cout, 1, bias=False),
        nn.BatchNorm1d(cout, eps=1e-3),
    ]


class JasperBlock(nn.Module):
    def __init__(self, cin, cout, k, repeat=3):
        super().__init__()
        mconv = []
        for i in range(repeat):
            mconv += _sep_conv_bn(cin if i == 0 else cout, cout, k)
            if i < repeat - 1:
                mconv += [nn.ReLU(), nn.Dropout(0.0)]
        self.mconv = nn.Sequential(*mconv)
        self.res = nn.Sequential(
            nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout, eps=1e-3)
        )
        self.mout = nn.Sequential(nn.ReLU(), nn.Dropout(0.0))

    def forward(self, x):
        return self.mout(self.mconv(x) + self.res(x))


class TinyQuartzNet(nn.Module):
    def __init__(self, feats=16, vocab=29):
        super().__init__()
        self.prolog = nn.Sequential(*_sep_conv_bn(feats, 32, 11, stride=2), nn.ReLU())
        self.blocks = nn.Sequential(JasperBlock(32, 32, 13), JasperBlock(32, 48, 15))
        self.epilog = nn.Sequential(
            *_sep_conv_bn(48, 64, 7, dilation=2),
            nn.ReLU(),
            nn.Conv1d(64, 96, 1, bias=False),
            nn.BatchNorm1d(96, eps=1e-3),
            nn.ReLU(),
        )
        self.decoder = nn.Conv1d(96, vocab, 1)  # ConvASRDecoder

    def forward(self, audio_signal):
        x = self.epilog(self.blocks(self.prolog(audio_signal)))
        return F.log_softmax(self.decoder(x).transpose(1, 2), dim=-1)


# ---- Conformer (torchaudio models/conformer.py) ---------------------------------------------


class _ConvolutionModule(nn.Module):
    def __init__(self, input_dim, num_channels, depthwise_kernel_size):
        super().__init__()
        self.layer_norm = nn.LayerNorm(input_dim)
        self.sequential = nn.Sequential(
            nn.Conv1d(input_dim, 2 * num_channels, 1),
            nn.GLU(dim=1),
            nn.Conv1d(
                num_channels,
                num_channels,
                depthwise_kernel_size,
                padding=(depthwise_kernel_size - 1) // 2,
                groups=num_channels,
            ),
            nn.BatchNorm1d(num_channels),
            nn.SiLU(),
            nn.Conv1d(num_channels, input_dim, 1),
        )

    def forward(self, input):
        x = self.layer_norm(input).transpose(1, 2)
        return self.sequential(x).transpose(1, 2)


class _FeedForwardModule(nn.Sequential):
    def __init__(self, input_dim, hidden_dim):
        super().__init__(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, input_dim),
        )


class ConformerLayer(nn.Module):
    def __init__(self, input_dim, ffn_dim, num_attention_heads, kernel):
        super().__init__()
        self.ffn1 = _FeedForwardModule(input_dim, ffn_dim)
        self.self_attn_layer_norm = nn.LayerNorm(input_dim)
        self.self_attn = nn.MultiheadAttention(input_dim, num_attention_heads)
        self.conv_module = _ConvolutionModule(input_dim, input_dim, kernel)
        self.ffn2 = _FeedForwardModule(input_dim, ffn_dim)
        self.final_layer_norm = nn.LayerNorm(input_dim)

    def forward(self, input):  # (T, B, D) as torchaudio
        x = input + 0.5 * self.ffn1(input)
        y = self.self_attn_layer_norm(x)
        y, _ = self.self_attn(query=y, key=y, value=y, need_weights=False)
        x = x + y
        x = x + self.conv_module(x.transpose(0, 1)).transpose(0, 1)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x)


class TinyConformer(nn.Module):
    """torchaudio's Conformer behind a Conv2d subsampling front end (as its RNN-T recipe)."""

    def __init__(self, feats=16, dim=32, layers=2, vocab=20):
        super().__init__()
        self.subsample = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 8, 3, 2), nn.ReLU()
        )
        self.input_linear = nn.Linear(8 * (((feats - 1) // 2 - 1) // 2), dim)
        self.layers = nn.ModuleList(ConformerLayer(dim, 2 * dim, 4, 7) for _ in range(layers))
        self.output_linear = nn.Linear(dim, vocab)

    def forward(self, x):  # (B, T, F)
        x = self.subsample(x[:, None])
        b, c, t, f = x.shape
        x = self.input_linear(x.transpose(1, 2).reshape(b, t, c * f)).transpose(0, 1)
        for layer in self.layers:
            x = layer(x)
        return self.output_linear(x.transpose(0, 1))


def _export(model: nn.Module, shape: tuple[int, ...], seed: int, **kw) -> onnx.ModelProto:
    torch.manual_seed(seed)
    calibrate_1d(model, shape)
    return export_as(model, shape, seed=seed, **kw)


def wav2vec2(samples: int = 400, seed: int = 0, half: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyWav2Vec2(), (1, samples), seed, opset=14, half=half)


def quartznet(frames: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyQuartzNet(), (1, 16, frames), seed, opset=13)


def conformer(frames: int = 48, seed: int = 0, half: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return _export(TinyConformer(), (1, frames, 16), seed, opset=17, half=half)
