"""Generative models written the way their projects write them (round 5c of the
unseen-architecture battery), at small widths with their block structure and ops intact;
depth, flow and sequence models are in ``round5c_seq_torch.py``.

- ``diffusion_unet``: diffusers ``UNet2DModel`` (``embeddings.py`` ``Timesteps`` /
  ``TimestepEmbedding``, ``resnet.py`` ``ResnetBlock2D``, ``Downsample2D``,
  ``Upsample2D``, ``attention_processor.py`` ``Attention`` with ``group_norm`` and a
  residual): the sinusoidal time embedding (``flip_sin_to_cos``) through Linear, SiLU,
  Linear, added per channel after GroupNorm(32) + SiLU + conv1 of every resnet; an
  attention down block and a mid block with GroupNorm attention over ``h * w`` tokens; the
  up path concatenates the skips (GroupNorm(32) over ``cat(h, skip)``: groups that straddle
  the two, as ``block_out_channels`` (32, 64) gives), nearest upsampling + conv.
- ``vae_decoder``: diffusers ``AutoencoderKL``'s ``Decoder`` (``post_quant_conv``,
  ``conv_in``, ``UNetMidBlock2D`` with a single-head attention, ``UpDecoderBlock2D``s,
  GroupNorm + SiLU + ``conv_out``), a latent scaled by ``1 / scaling_factor``.
- ``stylegan2``: rosinality/stylegan2-pytorch ``model.py``: the mapping network (PixelNorm,
  ``EqualLinear`` with fused leaky ReLU), ``ModulatedConv2d`` (weights computed at run time:
  ``scale * weight * style``, demodulated by ``rsqrt(sum(w^2))``, reshaped to
  ``(batch * out, in, k, k)``, a grouped conv over the batch folded into the channels),
  ``NoiseInjection``, ``FusedLeakyReLU``, ``ToRGB`` with the upsampled skip (``Blur`` as
  ``upfirdn2d_native`` computes it: channels folded into the batch, a fixed 4x4 kernel).
- ``cyclegan``: junyanz/pytorch-CycleGAN-and-pix2pix ``networks.py`` ``ResnetGenerator``
  (``norm='instance'``: ``InstanceNorm2d`` without affine, convs with biases),
  ``ReflectionPad2d`` around the 7x7 and the resnet block convs, strided downsampling,
  ``ConvTranspose2d(output_padding=1)`` upsampling, Tanh.

Exported by the TorchScript exporter (``export_inputs``) at the opsets the projects' export
paths use, or with ``dynamo=True`` by torch's default exporter.
"""

from __future__ import annotations

import io
import itertools
import math

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from drpopt.ir.input_shapes import fix_input_shapes


def export_inputs(
    model: nn.Module,
    args: tuple,
    names: list[str],
    opset: int = 17,
    dynamo: bool = False,
    dynamic: dict | None = None,
    fix: bool = True,
    seed: int = 0,
    output_names: list[str] | None = None,
) -> onnx.ModelProto:
    """``model(*args)`` exported with named inputs (``names``) and outputs (``output``
    unless ``output_names``); ``dynamic``: the TorchScript exporter's ``dynamic_axes``
    (fixed back to ``args``' shapes when ``fix``, as a user gives ``--input-shape``)."""
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        if dynamo:
            return torch.onnx.export(
                model, args, dynamo=True, verbose=False, input_names=names
            ).model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            args,
            buf,
            opset_version=opset,
            dynamo=False,
            input_names=names,
            output_names=output_names or ["output"],
            dynamic_axes=dynamic,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if dynamic and fix:
        proto = fix_input_shapes(
            proto, {n: list(a.shape) for n, a in zip(names, args, strict=False)}
        )
    return proto


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Norm affines away from the identity, biases nonzero (diffusers zero-inits some)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm | nn.LayerNorm) and m.weight is not None:
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.bias.data = 0.4 * torch.rand(m.bias.shape, generator=g) - 0.2
        elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            m.bias.data = 0.2 * torch.rand(m.bias.shape, generator=g) - 0.1
    return model


# ---- diffusers UNet2DModel, AutoencoderKL decoder ---------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """diffusers ``get_timestep_embedding`` (``flip_sin_to_cos=True``, shift 0)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / half
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=-1)


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int | None, groups: int = 32) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, 1, 1)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2, self.conv2 = (
            nn.GroupNorm(groups, cout, eps=1e-6),
            nn.Conv2d(cout, cout, 3, 1, 1),
        )
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb=None):
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h  # output_scale_factor 1


class AttnBlock(nn.Module):
    """diffusers ``Attention(query_dim=C, heads=C // head_dim, norm_num_groups,
    residual_connection=True)`` on a feature map (``AttnProcessor2_0``)."""

    def __init__(self, dim: int, head_dim: int, groups: int = 32) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.group_norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x):
        residual = x
        b, c, h, w = x.shape
        x = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        q, k, v = (t.view(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(b, -1, c)
        x = self.to_out[1](self.to_out[0](x))
        x = x.transpose(-1, -2).reshape(b, c, h, w)
        return x + residual


class Downsample2D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetStem(nn.Module):
    """What every diffusers UNet starts with: ``time_proj`` (sinusoids), ``time_embedding``
    (Linear, SiLU, Linear to ``4 * c0``) and ``conv_in``."""

    def __init__(self, cin: int, c0: int) -> None:
        super().__init__()
        self.c0, self.temb = c0, 4 * c0
        self.time_embedding = nn.Sequential(
            nn.Linear(c0, self.temb), nn.SiLU(), nn.Linear(self.temb, self.temb)
        )
        self.conv_in = nn.Conv2d(cin, c0, 3, 1, 1)

    def embed(self, sample, timestep):
        return self.time_embedding(timestep_embedding(timestep, self.c0)), self.conv_in(sample)


class UNet2DModel(UNetStem):
    """``block_out_channels=(32, 64)``, ``down_block_types=("DownBlock2D",
    "AttnDownBlock2D")``, ``up_block_types=("AttnUpBlock2D", "UpBlock2D")``,
    ``layers_per_block=1``, ``attention_head_dim=16``."""

    def __init__(self, cin: int = 3, widths=(32, 64), head_dim: int = 16) -> None:
        c0, c1 = widths
        super().__init__(cin, c0)
        temb = self.temb
        self.down0, self.downsample0 = ResnetBlock2D(c0, c0, temb), Downsample2D(c0)
        self.down1, self.down1_attn = ResnetBlock2D(c0, c1, temb), AttnBlock(c1, head_dim)
        self.mid0, self.mid_attn = ResnetBlock2D(c1, c1, temb), AttnBlock(c1, head_dim)
        self.mid1 = ResnetBlock2D(c1, c1, temb)
        # AttnUpBlock2D: resnets over cat(h, skip), attention after each, then upsample
        self.up0 = nn.ModuleList(
            [ResnetBlock2D(c1 + c1, c1, temb), ResnetBlock2D(c1 + c0, c1, temb)]
        )
        self.up0_attn = nn.ModuleList([AttnBlock(c1, head_dim), AttnBlock(c1, head_dim)])
        self.upsample0 = Upsample2D(c1)
        self.up1 = nn.ModuleList(
            [ResnetBlock2D(c1 + c0, c0, temb), ResnetBlock2D(c0 + c0, c0, temb)]
        )
        self.conv_norm_out, self.conv_act = nn.GroupNorm(32, c0, eps=1e-6), nn.SiLU()
        self.conv_out = nn.Conv2d(c0, cin, 3, 1, 1)

    def forward(self, sample, timestep):
        temb, x = self.embed(sample, timestep)
        skips = [x]
        x = self.down0(x, temb)
        skips.append(x)
        x = self.downsample0(x)
        skips.append(x)
        x = self.down1_attn(self.down1(x, temb))
        skips.append(x)
        x = self.mid1(self.mid_attn(self.mid0(x, temb)), temb)
        for resnet, attn in zip(self.up0, self.up0_attn, strict=True):
            x = attn(resnet(torch.cat([x, skips.pop()], dim=1), temb))
        x = self.upsample0(x)
        for resnet in self.up1:
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def diffusion_unet(size: int = 16, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """Exported as optimum's ``UNetOnnxConfig`` does: ``sample`` and ``timestep`` (int64,
    shape ``(1,)``), opset 14, batch and spatial axes dynamic (fixed here)."""
    torch.manual_seed(seed)
    model = _randomize(UNet2DModel(), seed)
    args = (torch.randn(1, 3, size, size), torch.tensor([500], dtype=torch.int64))
    dynamic = {"sample": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}}
    return export_inputs(model, args, ["sample", "timestep"], 14, dynamo, dynamic, seed=seed)


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin, cout, None), ResnetBlock2D(cout, cout, None)]
        )
        self.upsampler = Upsample2D(cout) if upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsampler(x) if self.upsampler is not None else x


class VaeDecoder(nn.Module):
    """``AutoencoderKL.decode``: ``post_quant_conv`` then ``Decoder`` with
    ``block_out_channels=(32, 64)``, ``latent_channels=4``, one attention head over all
    channels (``attention_head_dim = C``)."""

    def __init__(self, latent: int = 4, widths=(32, 64), scaling: float = 0.18215) -> None:
        super().__init__()
        c0, c1 = widths
        self.scaling = scaling
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)
        self.conv_in = nn.Conv2d(latent, c1, 3, 1, 1)
        self.mid0, self.mid_attn = ResnetBlock2D(c1, c1, None), AttnBlock(c1, c1)
        self.mid1 = ResnetBlock2D(c1, c1, None)
        self.up_blocks = nn.ModuleList(
            [UpDecoderBlock2D(c1, c1, True), UpDecoderBlock2D(c1, c0, False)]
        )
        self.conv_norm_out, self.conv_act = nn.GroupNorm(32, c0, eps=1e-6), nn.SiLU()
        self.conv_out = nn.Conv2d(c0, 3, 3, 1, 1)

    def forward(self, latent):
        x = self.conv_in(self.post_quant_conv(latent / self.scaling))
        x = self.mid1(self.mid_attn(self.mid0(x)))
        for up in self.up_blocks:
            x = up(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def vae_decoder(size: int = 8, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """optimum's ``VaeDecoderOnnxConfig``: ``latent_sample``, opset 14."""
    torch.manual_seed(seed)
    model = _randomize(VaeDecoder(), seed)
    args = (torch.randn(1, 4, size, size),)
    dynamic = {"latent_sample": {0: "batch", 2: "height", 3: "width"}}
    return export_inputs(model, args, ["latent_sample"], 14, dynamo, dynamic, seed=seed)


# ---- StyleGAN2 (rosinality/stylegan2-pytorch) -------------------------------------------------


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout).fill_(bias_init) + 0.1 * torch.randn(cout))
        self.scale, self.activation = 1 / math.sqrt(cin), activation

    def forward(self, x):
        if self.activation:  # fused_leaky_relu(x @ (w * scale).T, bias)
            out = F.linear(x, self.weight * self.scale)
            return F.leaky_relu(out + self.bias, 0.2) * math.sqrt(2)
        return F.linear(x, self.weight * self.scale, bias=self.bias)


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """``upfirdn2d_native(x, kernel, pad=pad)`` (up = down = 1): channels folded into the
    batch, padded, one fixed kernel, unfolded."""
    _, c, h, w = x.shape
    out = x.reshape(-1, 1, h, w)
    out = F.pad(out, [pad[0], pad[1], pad[0], pad[1]])
    out = F.conv2d(out, torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape))
    return out.view(-1, c, out.shape[2], out.shape[3])


def make_kernel(k=(1, 3, 3, 1)) -> torch.Tensor:
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


class ModulatedConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, style_dim: int, demodulate: bool = True):
        super().__init__()
        self.cin, self.cout, self.k, self.padding = cin, cout, k, k // 2
        self.scale = 1 / math.sqrt(cin * k * k)
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1)
        self.demodulate = demodulate

    def forward(self, x, style):
        batch, cin, height, width = x.shape
        style = self.modulation(style).view(batch, 1, cin, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.cout, 1, 1, 1)
        weight = weight.view(batch * self.cout, cin, self.k, self.k)
        x = x.view(1, batch * cin, height, width)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.cout, out.shape[2], out.shape[3])


class StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 3, style_dim)
        self.upsample = upsample
        self.noise_weight = nn.Parameter(torch.rand(1) * 0.1)  # NoiseInjection
        self.activate_bias = nn.Parameter(0.1 * torch.randn(cout))  # FusedLeakyReLU

    def forward(self, x, style, noise):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        out = self.conv(x, style) + self.noise_weight * noise
        return F.leaky_relu(out + self.activate_bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(0.1 * torch.randn(1, 3, 1, 1))
        self.register_buffer("kernel", make_kernel() * 4, persistent=False)

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:  # Upsample: zero-stuffed x2 then the blur (upfirdn2d up=2)
            b, c, h, w = skip.shape
            up = torch.zeros(b, c, h, 2, w, 2)
            up[:, :, :, 0, :, 0] = skip
            skip = blur(up.view(b, c, 2 * h, 2 * w), self.kernel, (2, 1))
            out = out + skip
        return out


class StyleGAN2Generator(nn.Module):
    def __init__(self, style_dim: int = 32, mlp: int = 3, widths=(32, 32, 16)) -> None:
        super().__init__()
        self.style = nn.Sequential(
            PixelNorm(), *(EqualLinear(style_dim, style_dim, activation=True) for _ in range(mlp))
        )
        self.input = nn.Parameter(torch.randn(1, widths[0], 4, 4))  # ConstantInput
        self.conv1 = StyledConv(widths[0], widths[0], style_dim)
        self.to_rgb1 = ToRGB(widths[0], style_dim)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for cin, cout in itertools.pairwise(widths):
            self.convs.append(StyledConv(cin, cout, style_dim, upsample=True))
            self.convs.append(StyledConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim))

    def forward(self, z, noise):
        latent = self.style(z)
        x = self.input.repeat(latent.shape[0], 1, 1, 1)
        x = self.conv1(x, latent, noise[..., :4, :4])
        skip = self.to_rgb1(x, latent)
        for i, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * i](x, latent, noise[..., : 8 << i, : 8 << i])
            x = self.convs[2 * i + 1](x, latent, noise[..., : 8 << i, : 8 << i])
            skip = to_rgb(x, latent, skip)
        return skip


def stylegan2(seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    """The generator of a latent ``z`` and one noise map (``randomize_noise=False``),
    exported at opset 17 as the repo's users do (no export script of its own)."""
    torch.manual_seed(seed)
    model = StyleGAN2Generator()
    args = (torch.randn(1, 32), torch.randn(1, 1, 16, 16))
    return export_inputs(model, args, ["z", "noise"], 17, dynamo, seed=seed)


# ---- CycleGAN ResnetGenerator -----------------------------------------------------------------


class ResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, cin: int = 3, cout: int = 3, ngf: int = 16, n_blocks: int = 3) -> None:
        super().__init__()
        layers = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(cin, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            m = 2**i
            layers += [
                nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1),
                nn.InstanceNorm2d(ngf * m * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1),
                nn.InstanceNorm2d(ngf * m // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, cout, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def cyclegan(size: int = 32, seed: int = 0, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = _randomize(ResnetGenerator(), seed)
    args = (torch.randn(1, 3, size, size),)
    return export_inputs(model, args, ["input"], 11 if not dynamo else 17, dynamo, seed=seed)
