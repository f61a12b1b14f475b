"""Restoration and super-resolution networks, written the way their projects write them.

- ``rrdbnet``: Real-ESRGAN's ``RRDBNet`` (basicsr ``rrdbnet_arch.py``) in its x2 form: the
  input folded by basicsr's ``pixel_unshuffle`` (``view(b, c, h, 2, w, 2).permute(0, 1, 3,
  5, 2, 4).reshape(b, 4c, h, w)``), residual-in-residual dense blocks (each conv reads the
  concat of all earlier outputs, LeakyReLU(0.2), ``x5 * 0.2 + x``), two nearest x2
  upsamplings;
- ``edsr``: basicsr's ``EDSR``: mean shift and image range around the network, residual
  blocks without BN scaled by ``res_scale``, the x4 ``Upsample`` of two conv +
  ``nn.PixelShuffle(2)`` (DepthToSpace, channel c reads conv channels 4c..4c+3);
- ``nafnet``: megvii's ``NAFNet``: ``LayerNorm2d`` written out over the channel axis,
  ``SimpleGate`` (``x1, x2 = x.chunk(2, 1); x1 * x2``: channel c of each half pairs), the
  simplified channel attention, learned ``beta``/``gamma`` residual scales, strided 2x2
  downsampling, 1x1 + PixelShuffle upsampling, the input padded to a multiple and the
  output cropped;
- ``restormer``: Restormer's MDTA (attention across the channels of each head:
  ``q @ k^T`` over the pixels, a learned temperature per head, softmax over k's channels)
  and GDFN (depthwise-gated ``gelu(x1) * x2``), the channels-last LayerNorm written out
  (``to_3d``/``to_4d``), PixelUnshuffle downsampling, concat skips.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from export_torch import export_as
from torch import nn

# ---- Real-ESRGAN RRDBNet (basicsr/archs/rrdbnet_arch.py) -----------------------------------


def pixel_unshuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    b, c, hh, hw = x.size()
    h, w = hh // scale, hw // scale
    x_view = x.view(b, c, h, scale, w, scale)
    return x_view.permute(0, 1, 3, 5, 2, 4).reshape(b, c * scale**2, h, w)


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat=16, num_grow_ch=8):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch=8):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, scale=2, num_feat=16, num_block=2, grow=8):
        super().__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, grow) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        if self.scale == 2:
            feat = pixel_unshuffle(x, scale=2)
        elif self.scale == 1:
            feat = pixel_unshuffle(x, scale=4)
        else:
            feat = x
        feat = self.conv_first(feat)
        body_feat = self.conv_body(self.body(feat))
        feat = feat + body_feat
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def rrdbnet(size: int = 16, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(RRDBNet(), (1, 3, size, size), opset=opset, seed=seed)


# ---- EDSR (basicsr/archs/edsr_arch.py, arch_util.py) ---------------------------------------


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat=16, res_scale=1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.conv2(self.relu(self.conv1(x)))
        return identity + out * self.res_scale


class Upsample(nn.Sequential):
    def __init__(self, scale, num_feat):
        m = []
        if (scale & (scale - 1)) == 0:  # 2^n
            for _ in range(scale.bit_length() - 1):
                m.append(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1))
                m.append(nn.PixelShuffle(2))
        elif scale == 3:
            m.append(nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1))
            m.append(nn.PixelShuffle(3))
        super().__init__(*m)


class EDSR(nn.Module):
    def __init__(self, num_feat=16, num_block=3, upscale=4, res_scale=0.1, img_range=255.0):
        super().__init__()
        self.img_range = img_range
        self.mean = torch.Tensor((0.4488, 0.4371, 0.4040)).view(1, 3, 1, 1)
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block))
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x))
        res += x
        x = self.conv_last(self.upsample(res))
        return x / self.img_range + self.mean


def edsr(size: int = 12, seed: int = 0, opset: int = 11, upscale: int = 4) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(EDSR(upscale=upscale), (1, 3, size, size), opset=opset, seed=seed)


# ---- NAFNet (megvii-research/NAFNet basicsr/models/archs/NAFNet_arch.py) -------------------


class LayerNorm2d(nn.Module):
    """``LayerNormFunction.forward`` (a custom autograd function) computed inline."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        _, c, _, _ = x.size()
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, c, 1, 1) * y + self.bias.view(1, c, 1, 1)


class SimpleGate(nn.Module):
    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class NAFBlock(nn.Module):
    def __init__(self, c, dw_expand=2, ffn_expand=2):
        super().__init__()
        dw_channel = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw_channel, 1, 1, 0, groups=1, bias=True)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, 3, 1, 1, groups=dw_channel, bias=True)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, 1, 1, 0, groups=1, bias=True)
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw_channel // 2, dw_channel // 2, 1, bias=True)
        )
        self.sg = SimpleGate()
        ffn_channel = ffn_expand * c
        self.conv4 = nn.Conv2d(c, ffn_channel, 1, 1, 0, groups=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, 1, 1, 0, groups=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp):
        x = self.norm1(inp)
        x = self.sg(self.conv2(self.conv1(x)))
        x = x * self.sca(x)
        x = self.conv3(x)
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    def __init__(self, img_channel=3, width=8, middle_blk_num=1, enc=(1, 1), dec=(1, 1)):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, 1, 1, groups=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, 3, 1, 1, groups=1, bias=True)
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc:
            self.encoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(num))))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan = chan * 2
        self.middle_blks = nn.Sequential(*(NAFBlock(chan) for _ in range(middle_blk_num)))
        for num in dec:
            self.ups.append(
                nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2))
            )
            chan = chan // 2
            self.decoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(num))))
        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp):
        _, _, h, w = inp.shape
        inp = self.check_image_size(inp)
        x = self.intro(inp)
        encs = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            encs.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, enc_skip in zip(self.decoders, self.ups, encs[::-1], strict=True):
            x = up(x)
            x = x + enc_skip
            x = decoder(x)
        x = self.ending(x)
        x = x + inp
        return x[:, :, :h, :w]

    def check_image_size(self, x):
        _, _, h, w = x.size()
        mod_pad_h = (self.padder_size - h % self.padder_size) % self.padder_size
        mod_pad_w = (self.padder_size - w % self.padder_size) % self.padder_size
        return F.pad(x, (0, mod_pad_w, 0, mod_pad_h))


def _randomize(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """Learned scales and norm affines away from their identity init (NAFNet's zero
    ``beta``/``gamma`` would make every block the identity), so pruned channels would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] not in names:
                continue
            if name.endswith(("weight", "temperature")):  # scales: around one
                p.uniform_(0.5, 1.5)
            else:
                p.uniform_(-0.5, 0.5)
    return model


def nafnet_module(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = _randomize(NAFNet(), ("beta", "gamma"))
    for m in model.modules():
        if isinstance(m, LayerNorm2d):
            _randomize(m, ("weight", "bias"))
    return model


def nafnet(size: int = 14, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    return export_as(nafnet_module(seed), (1, 3, size, size), opset=opset, seed=seed)


# ---- Restormer (swz30/Restormer basicsr/models/archs/restormer_arch.py) --------------------


def to_3d(x):  # rearrange(x, 'b c h w -> b (h w) c')
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(1, 2)


def to_4d(x, h, w):  # rearrange(x, 'b (h w) c -> b c h w', h=h, w=w)
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, h, w)


class WithBiasLayerNorm(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.body = WithBiasLayerNorm(dim)

    def forward(self, x):
        h, w = x.shape[-2:]
        return to_4d(self.body(to_3d(x)), h, w)


class FeedForward(nn.Module):
    def __init__(self, dim, ffn_expansion_factor=2.0, bias=False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # rearrange(t, 'b (head c) h w -> b head c (h w)', head=self.num_heads)
        q = q.reshape(b, self.num_heads, -1, h * w)
        k = k.reshape(b, self.num_heads, -1, h * w)
        v = v.reshape(b, self.num_heads, -1, h * w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        out = attn @ v
        out = out.reshape(b, -1, h, w)  # 'b head c (h w) -> b (head c) h w'
        return self.project_out(out)


class TransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, ffn_expansion_factor=2.0, bias=False):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Restormer(nn.Module):
    """Two levels of the four (the structure of each level is the same)."""

    def __init__(self, dim=8, heads=(1, 2), blocks=(1, 1), refinement=1):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 3, 1, 1, bias=False)  # OverlapPatchEmbed
        self.encoder_level1 = nn.Sequential(
            *(TransformerBlock(dim, heads[0]) for _ in range(blocks[0]))
        )
        self.down1_2 = nn.Sequential(
            nn.Conv2d(dim, dim // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2)
        )
        self.latent = nn.Sequential(
            *(TransformerBlock(dim * 2, heads[1]) for _ in range(blocks[1]))
        )
        self.up2_1 = nn.Sequential(
            nn.Conv2d(dim * 2, dim * 4, 3, 1, 1, bias=False), nn.PixelShuffle(2)
        )
        self.decoder_level1 = nn.Sequential(
            *(TransformerBlock(dim * 2, heads[0]) for _ in range(blocks[0]))
        )
        self.refinement = nn.Sequential(
            *(TransformerBlock(dim * 2, heads[0]) for _ in range(refinement))
        )
        self.output = nn.Conv2d(dim * 2, 3, 3, 1, 1, bias=False)

    def forward(self, inp_img):
        out_enc_level1 = self.encoder_level1(self.patch_embed(inp_img))
        latent = self.latent(self.down1_2(out_enc_level1))
        inp_dec_level1 = torch.cat([self.up2_1(latent), out_enc_level1], 1)
        out_dec_level1 = self.refinement(self.decoder_level1(inp_dec_level1))
        return self.output(out_dec_level1) + inp_img


def restormer(size: int = 8, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = _randomize(Restormer(), ("temperature",))
    for m in model.modules():
        if isinstance(m, WithBiasLayerNorm):
            _randomize(m, ("weight", "bias"))
    return export_as(model, (1, 3, size, size), opset=opset, seed=seed)


# ---- Real-ESRGAN SRVGGNetCompact (realesrgan/archs/srvgg_arch.py) --------------------------


class SRVGGNetCompact(nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2):
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)])
        self.body.append(nn.PReLU(num_parameters=num_feat))
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(nn.PReLU(num_parameters=num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x):
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        base = F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return out + base


def srvgg(size: int = 16, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = SRVGGNetCompact()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    return export_as(model, (1, 3, size, size), opset=opset, seed=seed)


# ---- MIRNet-v2 (swz30/MIRNetv2 basicsr/models/archs/mirnet_v2_arch.py) ---------------------


class SKFF(nn.Module):
    """Selective kernel feature fusion: the streams stacked by ``view(B, height, C, H, W)``,
    a softmax over the streams, the weighted sum."""

    def __init__(self, in_channels, height=2, reduction=8, bias=False):
        super().__init__()
        self.height = height
        d = max(int(in_channels / reduction), 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(in_channels, d, 1, padding=0, bias=bias), nn.LeakyReLU(0.2)
        )
        self.fcs = nn.ModuleList(nn.Conv2d(d, in_channels, 1, 1, bias=bias) for _ in range(height))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, inp_feats):
        batch_size = inp_feats[0].shape[0]
        n_feats = inp_feats[0].shape[1]
        inp_feats = torch.cat(inp_feats, dim=1)
        inp_feats = inp_feats.view(
            batch_size, self.height, n_feats, inp_feats.shape[2], inp_feats.shape[3]
        )
        feats_u = torch.sum(inp_feats, dim=1)
        feats_z = self.conv_du(self.avg_pool(feats_u))
        attention_vectors = torch.cat([fc(feats_z) for fc in self.fcs], dim=1)
        attention_vectors = attention_vectors.view(batch_size, self.height, n_feats, 1, 1)
        attention_vectors = self.softmax(attention_vectors)
        return torch.sum(inp_feats * attention_vectors, dim=1)


class ContextBlock(nn.Module):
    """GCNet's context block as MIRNet-v2 writes it (softmax over the pixels)."""

    def __init__(self, n_feat, bias=False):
        super().__init__()
        self.conv_mask = nn.Conv2d(n_feat, 1, kernel_size=1, bias=bias)
        self.softmax = nn.Softmax(dim=2)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(n_feat, n_feat, kernel_size=1, bias=bias),
            nn.LeakyReLU(0.2),
            nn.Conv2d(n_feat, n_feat, kernel_size=1, bias=bias),
        )

    def modeling(self, x):
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.conv_mask(x).view(batch, 1, height * width)
        context_mask = self.softmax(context_mask).unsqueeze(3)
        context = torch.matmul(input_x, context_mask)
        return context.view(batch, channel, 1, 1)

    def forward(self, x):
        return x + self.channel_add_conv(self.modeling(x))


class RCB(nn.Module):
    def __init__(self, n_feat, kernel_size=3, groups=1, bias=False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat, kernel_size, 1, 1, bias=bias, groups=groups),
            nn.LeakyReLU(0.2),
            nn.Conv2d(n_feat, n_feat, kernel_size, 1, 1, bias=bias, groups=groups),
        )
        self.act = nn.LeakyReLU(0.2)
        self.gcnet = ContextBlock(n_feat, bias=bias)

    def forward(self, x):
        res = self.act(self.gcnet(self.body(x)))
        return res + x


class MRB(nn.Module):
    """Two resolutions: strided down, bilinear up, fused by SKFF both ways."""

    def __init__(self, n_feat=16, chan_factor=2, bias=False, groups=1):
        super().__init__()
        c2 = int(n_feat * chan_factor)
        self.dau_top = RCB(n_feat, bias=bias, groups=groups)
        self.dau_mid = RCB(c2, bias=bias, groups=groups)
        self.down2 = nn.Sequential(
            nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(n_feat, c2, 1, bias=bias)
        )
        self.up21 = nn.Sequential(
            nn.Conv2d(c2, n_feat, 1, bias=bias),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )
        self.skff_top = SKFF(n_feat, 2)
        self.skff_mid = SKFF(c2, 2)
        self.up_mid = nn.Sequential(
            nn.Conv2d(c2, n_feat, 1, bias=bias),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )
        self.conv_out = nn.Conv2d(n_feat, n_feat, kernel_size=1, padding=0, bias=bias)

    def forward(self, x):
        x_top = x.clone()
        x_mid = self.down2(x_top)
        x_top = self.dau_top(x_top)
        x_mid = self.dau_mid(x_mid)
        x_mid = self.skff_mid([x_mid, self.down2(x_top)])
        x_top = self.skff_top([x_top, self.up21(x_mid)])
        x_top = self.dau_top(x_top)
        x_mid = self.dau_mid(x_mid)
        x_top = self.skff_top([x_top, self.up_mid(x_mid)])
        return self.conv_out(x_top) + x


class MIRNetV2(nn.Module):
    def __init__(self, inp_channels=3, out_channels=3, n_feat=16, n_mrb=1, bias=False):
        super().__init__()
        self.conv_in = nn.Conv2d(inp_channels, n_feat, 3, 1, 1, bias=bias)
        self.body = nn.Sequential(*(MRB(n_feat, bias=bias) for _ in range(n_mrb)))
        self.conv_out = nn.Conv2d(n_feat, out_channels, 3, 1, 1, bias=bias)

    def forward(self, inp_img):
        return self.conv_out(self.body(self.conv_in(inp_img))) + inp_img


def mirnet(size: int = 16, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(MIRNetV2(), (1, 3, size, size), opset=opset, seed=seed)
