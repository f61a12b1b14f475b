"""Faithful small-config definitions of the architectures the public recipes prune.

torchvision, timm and ultralytics cannot be installed beside the CPU torch here, so the
recipe tests use these: the same module structure, forward code and parameter names as the
originals (timm ``VisionTransformer``, ultralytics ``DetectionModel`` v8 with its loss,
TopFormer's token pyramid + attention blocks), at widths and depths that run in seconds.
ResNet-50 and YOLOX-s come from ``drpopt.zoo.torch_models``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---- timm VisionTransformer (vit_base_patch16_224 layout) ---------------------------------


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed``: a stride-``patch`` conv, then tokens as ``[B, N, C]``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, dim: int = 768) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        return self.norm(x)


class Attention(nn.Module):
    """timm ``Attention``: one qkv Linear, heads by reshape/permute, then proj."""

    def __init__(self, dim: int, num_heads: int = 12, fused_attn: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return self.proj_drop(x)


class Mlp(nn.Module):
    """timm ``Mlp``: fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))


class Block(nn.Module):
    """timm ``Block``: pre-norm attention and MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, fused: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, fused)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """timm ``VisionTransformer`` with a class token, learned position embedding, token pool."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, fused_attn) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        x = x[:, 0]  # class token
        x = self.head_drop(self.fc_norm(x))
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def vit_b_16_like(
    img_size: int = 32, patch: int = 16, dim: int = 48, depth: int = 2, heads: int = 3, **kw
) -> VisionTransformer:
    """ViT-B/16's layout at a small width and depth (``vit_b_16_like(224, 16, 768, 12, 12)``
    is vit_base_patch16_224)."""
    return VisionTransformer(
        img_size, patch, embed_dim=dim, depth=depth, num_heads=heads, num_classes=10, **kw
    )


# ---- ultralytics YOLOv8 (DetectionModel, yolov8.yaml layout) ------------------------------
def autopad(k: int, p: int | None = None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """ultralytics ``Conv``: Conv2d (no bias), BatchNorm2d, SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 3, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """ultralytics ``C2f``: split in two, a chain of bottlenecks on the second half, concat."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = int(c2 * 0.5)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: a fixed 1x1 conv over ``reg_max`` bins."""

    def __init__(self, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        x = torch.arange(c1, dtype=torch.float)
        self.conv.weight.data[:] = nn.Parameter(x.view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x: Tensor) -> Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list[Tensor], strides: list[int], offset: float = 0.5):
    points, stride_t = [], []
    for f, s in zip(feats, strides, strict=True):
        _, _, h, w = f.shape
        sx = torch.arange(w, dtype=f.dtype) + offset
        sy = torch.arange(h, dtype=f.dtype) + offset
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), s, dtype=f.dtype))
    return torch.cat(points), torch.cat(stride_t)


class Detect(nn.Module):
    """ultralytics ``Detect`` (v8): decoupled box (DFL) and class branches per level."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides=(8, 16, 32)) -> None:
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        self.no = nc + self.reg_max * 4
        self.stride = list(strides)
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
            for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch
        )
        self.dfl = DFL(self.reg_max)

    def forward(self, x: list[Tensor]):
        for i in range(self.nl):
            x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
        if self.training:
            return x
        anchors, strides = make_anchors(x, self.stride)
        shape = x[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        a = anchors.transpose(0, 1).unsqueeze(0)
        dbox = torch.cat(((a - lt + a + rb) / 2, rb + lt), 1) * strides.transpose(0, 1)
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    """``DetectionModel('yolov8n.yaml')``'s layers, widths scaled by ``w``, depths by ``d``."""

    def __init__(self, nc: int = 80, w: float = 0.25, d: float = 0.33) -> None:
        super().__init__()
        c = [int(x * w) for x in (64, 128, 256, 512, 1024)]
        n = [max(round(x * d), 1) for x in (3, 6, 6, 3)]
        self.model = nn.ModuleList(
            [
                Conv(3, c[0], 3, 2),  # 0
                Conv(c[0], c[1], 3, 2),  # 1
                C2f(c[1], c[1], n[0], True),  # 2
                Conv(c[1], c[2], 3, 2),  # 3
                C2f(c[2], c[2], n[1], True),  # 4 P3
                Conv(c[2], c[3], 3, 2),  # 5
                C2f(c[3], c[3], n[2], True),  # 6 P4
                Conv(c[3], c[4], 3, 2),  # 7
                C2f(c[4], c[4], n[3], True),  # 8
                SPPF(c[4], c[4], 5),  # 9 P5
                nn.Upsample(scale_factor=2.0, mode="nearest"),  # 10
                C2f(c[4] + c[3], c[3], n[0]),  # 12 (after concat 11)
                C2f(c[3] + c[2], c[2], n[0]),  # 15 P3 out
                Conv(c[2], c[2], 3, 2),  # 16
                C2f(c[2] + c[3], c[3], n[0]),  # 18 P4 out
                Conv(c[3], c[3], 3, 2),  # 19
                C2f(c[3] + c[4], c[4], n[0]),  # 21 P5 out
                Detect(nc, (c[2], c[3], c[4])),  # 22
            ]
        )

    def forward(self, x: Tensor):
        m = self.model
        x = m[1](m[0](x))
        p3 = m[4](m[3](m[2](x)))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        h4 = m[11](torch.cat([m[10](p5), p4], 1))
        o3 = m[12](torch.cat([m[10](h4), p3], 1))
        o4 = m[14](torch.cat([m[13](o3), h4], 1))
        o5 = m[16](torch.cat([m[15](o4), p5], 1))
        return m[17]([o3, o4, o5])


def yolov8_loss(model: YOLOv8, preds: list[Tensor], targets: Tensor) -> Tensor:
    """v8DetectionLoss's terms with a simpler assignment: each target box takes the anchors
    whose centres fall inside it; BCE over classes for all anchors, distribution focal loss
    over the ltrb distances of assigned anchors. ``targets``: ``[N, 6]`` (image, class,
    x1, y1, x2, y2) in pixels."""
    det = model.model[-1]
    b = preds[0].shape[0]
    feats = torch.cat([p.view(b, det.no, -1) for p in preds], 2)
    dist, scores = feats.split((det.reg_max * 4, det.nc), 1)
    anchors, strides = make_anchors(preds, det.stride)
    centres = anchors * strides
    target_cls = torch.zeros_like(scores)
    dfl = scores.new_zeros(())
    count = 0
    for img, cls, x1, y1, x2, y2 in targets.tolist():
        inside = (
            (centres[:, 0] > x1)
            & (centres[:, 0] < x2)
            & (centres[:, 1] > y1)
            & (centres[:, 1] < y2)
        )
        idx = inside.nonzero().flatten()
        if idx.numel() == 0:
            continue
        target_cls[int(img), int(cls), idx] = 1.0
        c, s = centres[idx], strides[idx, 0:1]
        ltrb = torch.stack([c[:, 0] - x1, c[:, 1] - y1, x2 - c[:, 0], y2 - c[:, 1]], 1) / s
        ltrb = ltrb.clamp(0, det.reg_max - 1.01)
        logits = dist[int(img), :, idx].T.reshape(-1, det.reg_max)
        tl = ltrb.reshape(-1).long()
        wl = tl + 1 - ltrb.reshape(-1)
        dfl = (
            dfl
            + (
                F.cross_entropy(logits, tl, reduction="none") * wl
                + F.cross_entropy(logits, tl + 1, reduction="none") * (1 - wl)
            ).mean()
        )
        count += 1
    bce = F.binary_cross_entropy_with_logits(scores, target_cls, reduction="sum")
    return bce / max(target_cls.sum(), 1.0) + dfl / max(count, 1)


# ---- TopFormer (token pyramid + attention blocks + semantic injection) -------------------
class Conv2dBN(nn.Sequential):
    """TopFormer's ``Conv2d_BN``: conv ``c`` (no bias) and ``bn``."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, ks: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [Conv2dBN(inp, hidden, 1), nn.ReLU()]
        layers += [Conv2dBN(hidden, hidden, ks, stride, ks // 2, groups=hidden), nn.ReLU()]
        layers += [Conv2dBN(hidden, oup, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class TopAttention(nn.Module):
    """TopFormer ``Attention``: 1x1 conv q/k/v, heads by reshape/permute, ReLU6 + proj."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: int = 2) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim**-0.5
        self.nh_kd = key_dim * num_heads
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads
        self.to_q = Conv2dBN(dim, self.nh_kd, 1)
        self.to_k = Conv2dBN(dim, self.nh_kd, 1)
        self.to_v = Conv2dBN(dim, self.dh, 1)
        self.proj = nn.Sequential(nn.ReLU6(), Conv2dBN(self.dh, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, _C, H, W = x.shape
        qq = self.to_q(x).reshape(B, self.num_heads, self.key_dim, H * W).permute(0, 1, 3, 2)
        kk = self.to_k(x).reshape(B, self.num_heads, self.key_dim, H * W)
        vv = self.to_v(x).reshape(B, self.num_heads, self.d, H * W).permute(0, 1, 3, 2)
        attn = torch.matmul(qq, kk).softmax(dim=-1)
        xx = torch.matmul(attn, vv)
        xx = xx.permute(0, 1, 3, 2).reshape(B, self.dh, H, W)
        return self.proj(xx)


class TopMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Conv2dBN(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.ReLU6()
        self.fc2 = Conv2dBN(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class TopBlock(nn.Module):
    def __init__(self, dim: int, key_dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.attn = TopAttention(dim, key_dim, heads)
        self.mlp = TopMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class InjectionMultiSum(nn.Module):
    """Semantic injection: local features scaled by sigmoid of global ones, plus them."""

    def __init__(self, inp: int, oup: int, global_inp: int) -> None:
        super().__init__()
        self.local_embedding = Conv2dBN(inp, oup)
        self.global_embedding = Conv2dBN(global_inp, oup)
        self.global_act = Conv2dBN(global_inp, oup)
        self.act = nn.Hardsigmoid()

    def forward(self, x_l: Tensor, x_g: Tensor) -> Tensor:
        H, W = x_l.shape[2:]
        local = self.local_embedding(x_l)
        sig = F.interpolate(self.act(self.global_act(x_g)), size=(H, W), mode="bilinear")
        glob = F.interpolate(self.global_embedding(x_g), size=(H, W), mode="bilinear")
        return local * sig + glob


class TopFormer(nn.Module):
    """TopFormer-style segmenter: token pyramid (MobileNetV2 blocks), pooled tokens through
    attention blocks, semantic injection into each scale, a simple fused head."""

    def __init__(self, num_classes: int = 19, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(Conv2dBN(3, w, 3, 2, 1), nn.ReLU())
        cfg = [(w, w, 1, 1), (w, 2 * w, 2, 4), (2 * w, 2 * w, 1, 3), (2 * w, 4 * w, 2, 3),
               (4 * w, 4 * w, 1, 3), (4 * w, 6 * w, 2, 3)]  # fmt: skip
        self.tpm = nn.ModuleList(InvertedResidual(i, o, 3, s, e) for i, o, s, e in cfg)
        self.out_idx = (2, 4, 5)
        self.channels = [2 * w, 4 * w, 6 * w]
        dim = sum(self.channels)
        self.trans = nn.Sequential(*[TopBlock(dim, 8, 4) for _ in range(depth)])
        embed = 4 * w  # every scale is injected into this many channels
        self.sim = nn.ModuleList(InjectionMultiSum(c, embed, c) for c in self.channels)
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(embed, embed, 1, bias=False), nn.BatchNorm2d(embed), nn.ReLU()
        )
        self.conv_seg = nn.Conv2d(embed, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.tpm):
            x = block(x)
            if i in self.out_idx:
                outs.append(x)
        H, W = outs[-1].shape[2:]
        pooled = torch.cat([F.adaptive_avg_pool2d(o, (H, W)) for o in outs], 1)
        tokens = self.trans(pooled).split(self.channels, dim=1)
        feats = [sim(o, t) for sim, o, t in zip(self.sim, outs, tokens, strict=True)]
        size = feats[0].shape[2:]
        fused = feats[0]
        for f in feats[1:]:
            fused = fused + F.interpolate(f, size=size, mode="bilinear")
        return self.conv_seg(self.linear_fuse(fused))
