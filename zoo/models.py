"""Bundled example models, built in code with :class:`~drpopt.zoo.builder.OnnxBuilder`.

Every function returns a checked, shape-inferred ``onnx.ModelProto`` (opset 17, seeded random
weights, one float input named ``input`` of batch 1). The models are small enough to run in
onnxruntime in milliseconds, but keep the structure of the real architectures (the coupled
channels, residual adds, concats, group convs, reshapes and splits that structured pruning has
to get right). Convs followed by BatchNorm have no bias, as in the PyTorch originals.

Key node names (value names equal node names; weights are ``<node>.weight``, ``<node>.bias``,
BN stats ``<node>.running_mean`` / ``<node>.running_var``):

=================  ===========================================================================
model              key nodes
=================  ===========================================================================
resnet18           ``stem.conv``, ``stem.bn``, ``stem.relu``, ``stem.maxpool``;
                   ``layer{1-4}.{0,1}.conv1|bn1|relu1|conv2|bn2|add|relu2``;
                   ``layer{2-4}.0.downsample.conv|bn``; ``avgpool``, ``flatten``, ``fc``
resnet50           as resnet18 plus ``layerX.Y.conv3|bn3``, ``relu3`` after the add; depths
                   [3, 4, 6, 3]; ``layer{1-4}.0.downsample.conv|bn`` (stride on conv2, v1.5)
mobilenetv2        ``stem.conv|bn|relu6``; ``blocks.{i}.expand.conv|bn|relu6`` (absent when
                   t == 1), ``blocks.{i}.dw.conv|bn|relu6``, ``blocks.{i}.project.conv|bn``,
                   ``blocks.{i}.add`` (stride 1, in == out); ``last.conv|bn|relu6``;
                   ``avgpool``, ``flatten``, ``fc``
yolox_s_like       ``backbone.stem.slice_tl|slice_bl|slice_tr|slice_br``, ``backbone.stem.cat``,
                   ``backbone.stem.conv.conv|bn|act`` (BaseConv = ``P.conv``, ``P.bn``,
                   ``P.act`` (Mul) with ``P.act.sigmoid``);
                   ``backbone.dark{2-5}.0.conv`` (3x3/2 BaseConv),
                   ``backbone.dark{2-4}.1`` and ``backbone.dark5.2`` CSPLayers
                   (``.conv1``, ``.conv2``, ``.m.{j}.conv1|conv2|add``, ``.cat``, ``.conv3``),
                   ``backbone.dark5.1`` SPP (``.conv1``, ``.m.{0,1,2}`` MaxPool 5/9/13,
                   ``.cat``, ``.conv2``);
                   ``neck.lateral_conv0``, ``neck.upsample0``, ``neck.cat_p4``, ``neck.C3_p4``,
                   ``neck.reduce_conv1``, ``neck.upsample1``, ``neck.cat_p3``, ``neck.C3_p3``,
                   ``neck.bu_conv2``, ``neck.cat_n3``, ``neck.C3_n3``, ``neck.bu_conv1``,
                   ``neck.cat_n4``, ``neck.C3_n4``;
                   per level k: ``head.stems.{k}``, ``head.cls_convs.{k}.{0,1}``,
                   ``head.reg_convs.{k}.{0,1}``, ``head.cls_preds.{k}``,
                   ``head.reg_preds.{k}``, ``head.obj_preds.{k}``, ``head.obj_sigmoid.{k}``,
                   ``head.cls_sigmoid.{k}``, ``head.cat.{k}``, ``head.flatten.{k}`` (Reshape);
                   ``head.concat``, ``head.transpose`` (the output)
se                 ``conv1``, ``bn1``, ``relu1``; ``se.pool``, ``se.fc1``, ``se.relu``,
                   ``se.fc2``, ``se.sigmoid``, ``se.scale`` (Mul(scale, features));
                   ``conv2``, ``bn2``, ``relu2``, ``avgpool``, ``flatten``, ``fc``
densenet           ``stem.conv|bn|relu|maxpool``;
                   ``block{b}.layer{l}.norm1|relu1|conv1|norm2|relu2|conv2|concat``;
                   ``transition{b}.norm|relu|conv|pool``; ``norm5``, ``relu5``, ``avgpool``,
                   ``flatten``, ``fc``
flatten_gemm       ``conv``, ``relu``, ``flatten``, ``fc1``, ``relu_fc1``, ``fc2``
grouped_conv       ``conv1``, ``bn1``, ``relu1``, ``gconv``, ``bn2``, ``relu2``, ``dwconv``,
                   ``bn3``, ``relu3``, ``dwconv_mult``, ``bn4``, ``relu4``, ``pwconv``,
                   ``relu5``, ``avgpool``, ``flatten``, ``fc``
channel_shuffle    ``conv1``, ``bn1``, ``relu1``, ``shuffle.reshape1``, ``shuffle.transpose``,
                   ``shuffle.reshape2``, ``conv2``, ``bn2``, ``relu2``; ``unit.split``
                   (outputs ``unit.split`` and ``unit.split:1``),
                   ``unit.branch2.{0,1,2}.conv|bn`` (+ ``.relu`` on 0 and 2), ``unit.concat``,
                   ``unit.shuffle.reshape1|transpose|reshape2``; ``avgpool``, ``flatten``, ``fc``
=================  ===========================================================================

``yolox_s()`` (the full-size YOLOX-s, ~9M parameters, 640x640) is exported but kept out of
:data:`MODELS` because it is slow to run; it builds in about a second.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from drpopt.zoo.builder import OnnxBuilder

__all__ = [
    "MODELS",
    "build",
    "channel_shuffle_model",
    "densenet_like",
    "flatten_gemm_model",
    "grouped_conv_model",
    "mobilenetv2_like",
    "resnet18_like",
    "resnet50_like",
    "se_model",
    "yolox_s",
    "yolox_s_like",
]

_INT64_MAX = int(np.iinfo(np.int64).max)


# ---- shared pieces ------------------------------------------------------------------------
def _conv_bn(
    b: OnnxBuilder,
    x: str,
    out_ch: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    conv: str = "conv",
    bn: str = "bn",
) -> str:
    """Conv (no bias) + BatchNorm, named ``conv`` and ``bn``."""
    y = b.conv(x, out_ch, k=k, stride=stride, groups=groups, bias=False, name=conv)
    return b.bn(y, name=bn)


def _classifier(b: OnnxBuilder, x: str, num_classes: int) -> str:
    """GlobalAveragePool -> Flatten -> Gemm, named ``avgpool``, ``flatten``, ``fc``."""
    y = b.gap(x, name="avgpool")
    y = b.flatten(y, name="flatten")
    return b.gemm(y, num_classes, name="fc")


def _finish(b: OnnxBuilder, out: str) -> onnx.ModelProto:
    b.output(out)
    return b.build()


# ---- ResNet -------------------------------------------------------------------------------
def _resnet_stem(b: OnnxBuilder, x: str, width: int) -> str:
    y = _conv_bn(b, x, width, 7, stride=2, conv="stem.conv", bn="stem.bn")
    y = b.relu(y, name="stem.relu")
    return b.maxpool(y, 3, stride=2, pad=1, name="stem.maxpool")


def _shortcut(b: OnnxBuilder, x: str, out_ch: int, stride: int, p: str) -> str:
    if stride == 1 and b.shapes[x][1] == out_ch:
        return x
    return _conv_bn(
        b, x, out_ch, 1, stride=stride, conv=f"{p}.downsample.conv", bn=f"{p}.downsample.bn"
    )


def _basic_block(b: OnnxBuilder, x: str, planes: int, stride: int, p: str) -> str:
    y = _conv_bn(b, x, planes, 3, stride=stride, conv=f"{p}.conv1", bn=f"{p}.bn1")
    y = b.relu(y, name=f"{p}.relu1")
    y = _conv_bn(b, y, planes, 3, conv=f"{p}.conv2", bn=f"{p}.bn2")
    y = b.add(y, _shortcut(b, x, planes, stride, p), name=f"{p}.add")
    return b.relu(y, name=f"{p}.relu2")


def _bottleneck(b: OnnxBuilder, x: str, planes: int, stride: int, p: str) -> str:
    out_ch = planes * 4
    y = _conv_bn(b, x, planes, 1, conv=f"{p}.conv1", bn=f"{p}.bn1")
    y = b.relu(y, name=f"{p}.relu1")
    y = _conv_bn(b, y, planes, 3, stride=stride, conv=f"{p}.conv2", bn=f"{p}.bn2")
    y = b.relu(y, name=f"{p}.relu2")
    y = _conv_bn(b, y, out_ch, 1, conv=f"{p}.conv3", bn=f"{p}.bn3")
    y = b.add(y, _shortcut(b, x, out_ch, stride, p), name=f"{p}.add")
    return b.relu(y, name=f"{p}.relu3")


def _resnet(
    name: str,
    block: Callable[[OnnxBuilder, str, int, int, str], str],
    depths: list[int],
    width: int,
    image: int,
    num_classes: int,
) -> onnx.ModelProto:
    b = OnnxBuilder(name)
    x = _resnet_stem(b, b.input("input", (1, 3, image, image)), width)
    for i, depth in enumerate(depths):
        planes = width * 2**i
        for j in range(depth):
            stride = 2 if (i > 0 and j == 0) else 1
            x = block(b, x, planes, stride, f"layer{i + 1}.{j}")
    return _finish(b, _classifier(b, x, num_classes))


def resnet18_like(width: int = 16, image: int = 64, num_classes: int = 10) -> onnx.ModelProto:
    """ResNet-18 (torchvision layout) with base width ``width`` instead of 64.

    Stem conv7x7/2 + BN + ReLU + maxpool 3x3/2, four stages of two BasicBlocks with widths
    ``width * [1, 2, 4, 8]`` (a 1x1 conv + BN projection shortcut where stride or width
    changes, Add then ReLU), GlobalAveragePool, Flatten, Gemm. Output ``[1, num_classes]``.
    """
    return _resnet("resnet18_like", _basic_block, [2, 2, 2, 2], width, image, num_classes)


def resnet50_like(width: int = 16, image: int = 64, num_classes: int = 10) -> onnx.ModelProto:
    """ResNet-50 (torchvision v1.5 layout: stride on the 3x3) with base width ``width``.

    Bottleneck blocks (1x1, 3x3, 1x1 with expansion 4), stage depths [3, 4, 6, 3], the first
    block of every stage has a 1x1 conv + BN projection shortcut. Output ``[1, num_classes]``.
    """
    return _resnet("resnet50_like", _bottleneck, [3, 4, 6, 3], width, image, num_classes)


# ---- MobileNetV2 --------------------------------------------------------------------------
_MBV2_SETTINGS: list[tuple[int, int, int, int]] = [
    # t (expansion), c (out channels), n (repeats), s (first stride)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, >= 90% of v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(
    b: OnnxBuilder, x: str, out_ch: int, k: int, p: str, stride: int = 1, groups: int = 1
) -> str:
    y = _conv_bn(b, x, out_ch, k, stride=stride, groups=groups, conv=f"{p}.conv", bn=f"{p}.bn")
    return b.relu6(y, name=f"{p}.relu6")


def mobilenetv2_like(
    width_mult: float = 0.5, image: int = 64, num_classes: int = 10
) -> onnx.ModelProto:
    """MobileNetV2 (torchvision layout) scaled by ``width_mult``.

    Stem conv3x3/2 + BN + ReLU6; the standard (t, c, n, s) table of inverted residual blocks
    (1x1 expand + BN + ReLU6 unless t == 1, 3x3 depthwise + BN + ReLU6, 1x1 project + BN,
    residual Add when stride 1 and in == out); last 1x1 conv to
    ``_make_divisible(1280 * max(1, width_mult))`` + BN + ReLU6; GAP, Flatten, Gemm.
    """
    b = OnnxBuilder("mobilenetv2_like")
    x = b.input("input", (1, 3, image, image))
    x = _conv_bn_relu6(b, x, _make_divisible(32 * width_mult), 3, "stem", stride=2)
    i = 0
    for t, c, n, s in _MBV2_SETTINGS:
        out_ch = _make_divisible(c * width_mult)
        for j in range(n):
            stride = s if j == 0 else 1
            p = f"blocks.{i}"
            in_ch = b.shapes[x][1]
            hidden = round(in_ch * t)
            y = x
            if t != 1:
                y = _conv_bn_relu6(b, y, hidden, 1, f"{p}.expand")
            y = _conv_bn_relu6(b, y, hidden, 3, f"{p}.dw", stride=stride, groups=hidden)
            y = _conv_bn(b, y, out_ch, 1, conv=f"{p}.project.conv", bn=f"{p}.project.bn")
            if stride == 1 and in_ch == out_ch:
                y = b.add(x, y, name=f"{p}.add")
            x = y
            i += 1
    x = _conv_bn_relu6(b, x, _make_divisible(1280 * max(1.0, width_mult)), 1, "last")
    return _finish(b, _classifier(b, x, num_classes))


# ---- YOLOX --------------------------------------------------------------------------------
def _base_conv(b: OnnxBuilder, x: str, out_ch: int, k: int, p: str, stride: int = 1) -> str:
    """YOLOX BaseConv: Conv (no bias, pad (k-1)//2) + BN + SiLU (Sigmoid*Mul)."""
    y = b.conv(x, out_ch, k=k, stride=stride, pad=(k - 1) // 2, bias=False, name=f"{p}.conv")
    y = b.bn(y, name=f"{p}.bn")
    return b.silu(y, name=f"{p}.act")


def _focus(b: OnnxBuilder, x: str, out_ch: int, p: str) -> str:
    """YOLOX Focus: space-to-depth by four step-2 Slices, Concat, BaseConv 3x3."""
    patches = []
    # torch.cat((top_left, bot_left, top_right, bot_right), dim=1); (h start, w start)
    for tag, (h0, w0) in (("tl", (0, 0)), ("bl", (1, 0)), ("tr", (0, 1)), ("br", (1, 1))):
        patches.append(
            b.slice(
                x,
                starts=[h0, w0],
                ends=[_INT64_MAX, _INT64_MAX],
                axes=[2, 3],
                steps=[2, 2],
                name=f"{p}.slice_{tag}",
            )
        )
    y = b.concat(patches, axis=1, name=f"{p}.cat")
    return _base_conv(b, y, out_ch, 3, f"{p}.conv")


def _yolox_bottleneck(b: OnnxBuilder, x: str, out_ch: int, shortcut: bool, p: str) -> str:
    """YOLOX Bottleneck with expansion 1.0 (as used inside CSPLayer)."""
    y = _base_conv(b, x, out_ch, 1, f"{p}.conv1")
    y = _base_conv(b, y, out_ch, 3, f"{p}.conv2")
    if shortcut and b.shapes[x][1] == out_ch:
        y = b.add(y, x, name=f"{p}.add")
    return y


def _csp_layer(b: OnnxBuilder, x: str, out_ch: int, n: int, shortcut: bool, p: str) -> str:
    """YOLOX CSPLayer: conv1 -> n Bottlenecks, conv2, Concat, conv3 (expansion 0.5)."""
    hidden = int(out_ch * 0.5)
    x1 = _base_conv(b, x, hidden, 1, f"{p}.conv1")
    x2 = _base_conv(b, x, hidden, 1, f"{p}.conv2")
    for j in range(n):
        x1 = _yolox_bottleneck(b, x1, hidden, shortcut, f"{p}.m.{j}")
    y = b.concat([x1, x2], axis=1, name=f"{p}.cat")
    return _base_conv(b, y, out_ch, 1, f"{p}.conv3")


def _spp_bottleneck(b: OnnxBuilder, x: str, out_ch: int, p: str) -> str:
    """YOLOX SPPBottleneck: conv1, MaxPool 5/9/13 (stride 1, same padding), Concat, conv2."""
    hidden = b.shapes[x][1] // 2
    y = _base_conv(b, x, hidden, 1, f"{p}.conv1")
    pools = [
        b.maxpool(y, k, stride=1, pad=k // 2, name=f"{p}.m.{i}") for i, k in enumerate((5, 9, 13))
    ]
    y = b.concat([y, *pools], axis=1, name=f"{p}.cat")
    return _base_conv(b, y, out_ch, 1, f"{p}.conv2")


def _cspdarknet(b: OnnxBuilder, x: str, width: float, depth: float) -> tuple[str, str, str]:
    """YOLOX CSPDarknet; returns the dark3, dark4, dark5 features."""
    base_ch = int(width * 64)
    base_depth = max(round(depth * 3), 1)
    x = _focus(b, x, base_ch, "backbone.stem")
    x = _base_conv(b, x, base_ch * 2, 3, "backbone.dark2.0", stride=2)
    x = _csp_layer(b, x, base_ch * 2, base_depth, True, "backbone.dark2.1")
    x = _base_conv(b, x, base_ch * 4, 3, "backbone.dark3.0", stride=2)
    dark3 = _csp_layer(b, x, base_ch * 4, base_depth * 3, True, "backbone.dark3.1")
    x = _base_conv(b, dark3, base_ch * 8, 3, "backbone.dark4.0", stride=2)
    dark4 = _csp_layer(b, x, base_ch * 8, base_depth * 3, True, "backbone.dark4.1")
    x = _base_conv(b, dark4, base_ch * 16, 3, "backbone.dark5.0", stride=2)
    x = _spp_bottleneck(b, x, base_ch * 16, "backbone.dark5.1")
    dark5 = _csp_layer(b, x, base_ch * 16, base_depth, False, "backbone.dark5.2")
    return dark3, dark4, dark5


def _pafpn(
    b: OnnxBuilder, feats: tuple[str, str, str], width: float, depth: float
) -> tuple[str, str, str]:
    """YOLOX YOLOPAFPN top-down + bottom-up path; returns pan_out2, pan_out1, pan_out0."""
    x2, x1, x0 = feats
    c0, c1, c2 = (int(c * width) for c in (256, 512, 1024))
    n = round(3 * depth)
    fpn_out0 = _base_conv(b, x0, c1, 1, "neck.lateral_conv0")
    f_out0 = b.resize(fpn_out0, 2, name="neck.upsample0")
    f_out0 = b.concat([f_out0, x1], axis=1, name="neck.cat_p4")
    f_out0 = _csp_layer(b, f_out0, c1, n, False, "neck.C3_p4")
    fpn_out1 = _base_conv(b, f_out0, c0, 1, "neck.reduce_conv1")
    f_out1 = b.resize(fpn_out1, 2, name="neck.upsample1")
    f_out1 = b.concat([f_out1, x2], axis=1, name="neck.cat_p3")
    pan_out2 = _csp_layer(b, f_out1, c0, n, False, "neck.C3_p3")
    p_out1 = _base_conv(b, pan_out2, c0, 3, "neck.bu_conv2", stride=2)
    p_out1 = b.concat([p_out1, fpn_out1], axis=1, name="neck.cat_n3")
    pan_out1 = _csp_layer(b, p_out1, c1, n, False, "neck.C3_n3")
    p_out0 = _base_conv(b, pan_out1, c1, 3, "neck.bu_conv1", stride=2)
    p_out0 = b.concat([p_out0, fpn_out0], axis=1, name="neck.cat_n4")
    pan_out0 = _csp_layer(b, p_out0, c2, n, False, "neck.C3_n4")
    return pan_out2, pan_out1, pan_out0


def _yolox_head(b: OnnxBuilder, feats: tuple[str, ...], width: float, num_classes: int) -> str:
    """YOLOXHead (decoupled, inference, decode_in_inference=False): [1, anchors, 5 + nc]."""
    hidden = int(256 * width)
    outs = []
    for k, x in enumerate(feats):
        x = _base_conv(b, x, hidden, 1, f"head.stems.{k}")
        cls_feat = _base_conv(b, x, hidden, 3, f"head.cls_convs.{k}.0")
        cls_feat = _base_conv(b, cls_feat, hidden, 3, f"head.cls_convs.{k}.1")
        cls_out = b.conv(cls_feat, num_classes, k=1, pad=0, name=f"head.cls_preds.{k}")
        reg_feat = _base_conv(b, x, hidden, 3, f"head.reg_convs.{k}.0")
        reg_feat = _base_conv(b, reg_feat, hidden, 3, f"head.reg_convs.{k}.1")
        reg_out = b.conv(reg_feat, 4, k=1, pad=0, name=f"head.reg_preds.{k}")
        obj_out = b.conv(reg_feat, 1, k=1, pad=0, name=f"head.obj_preds.{k}")
        obj_out = b.sigmoid(obj_out, name=f"head.obj_sigmoid.{k}")
        cls_out = b.sigmoid(cls_out, name=f"head.cls_sigmoid.{k}")
        y = b.concat([reg_out, obj_out, cls_out], axis=1, name=f"head.cat.{k}")
        _, c, h, w = b.shapes[y]
        outs.append(b.reshape(y, (1, c, h * w), name=f"head.flatten.{k}"))
    y = b.concat(outs, axis=2, name="head.concat")
    return b.transpose(y, (0, 2, 1), name="head.transpose")


def yolox_s_like(
    width: float = 0.25, depth: float = 0.33, image: int = 128, num_classes: int = 20
) -> onnx.ModelProto:
    """YOLOX (Megvii) with CSPDarknet + PAFPN + decoupled head, scaled by width/depth.

    Structure as in the reference implementation: Focus stem (four step-2 Slices + Concat +
    BaseConv), CSPDarknet (BaseConv = Conv + BN + SiLU, CSPLayers, SPPBottleneck 5/9/13),
    YOLOPAFPN (lateral 1x1, nearest x2 Resize, Concat, CSP without shortcut, 3x3/2
    downsampling), YOLOXHead per stride 8/16/32 with ``Concat([reg, sigmoid(obj),
    sigmoid(cls)])``, Reshape to ``[1, 5 + nc, H*W]``, Concat on axis 2 and Transpose.
    Output ``[1, sum((image / s) ** 2 for s in (8, 16, 32)), 5 + num_classes]``.
    ``image`` must be a multiple of 32.
    """
    if image % 32:
        raise ValueError(f"image must be a multiple of 32, got {image}")
    b = OnnxBuilder("yolox")
    x = b.input("input", (1, 3, image, image))
    feats = _pafpn(b, _cspdarknet(b, x, width, depth), width, depth)
    return _finish(b, _yolox_head(b, feats, width, num_classes))


def yolox_s(image: int = 640, num_classes: int = 80) -> onnx.ModelProto:
    """The full-size YOLOX-s (width 0.5, depth 0.33, ~8.97M parameters) for benchmarks.

    Same code as :func:`yolox_s_like`; slow to run at 640x640, quick to build.
    """
    return yolox_s_like(width=0.5, depth=0.33, image=image, num_classes=num_classes)


# ---- SE -----------------------------------------------------------------------------------
def se_model(
    channels: int = 32, reduction: int = 4, image: int = 32, num_classes: int = 10
) -> onnx.ModelProto:
    """Conv + BN + ReLU, a squeeze-and-excitation block, conv + BN + ReLU, GAP, Flatten, Gemm.

    SE: GlobalAveragePool, 1x1 conv to ``channels // reduction`` + ReLU, 1x1 conv back to
    ``channels`` + Sigmoid, then ``Mul(scale [1,C,1,1], features [1,C,H,W])``
    (torchvision's ``scale * input``).
    """
    b = OnnxBuilder("se_model")
    x = b.input("input", (1, 3, image, image))
    x = b.relu(_conv_bn(b, x, channels, 3, conv="conv1", bn="bn1"), name="relu1")
    s = b.gap(x, name="se.pool")
    s = b.conv(s, max(channels // reduction, 1), k=1, pad=0, name="se.fc1")
    s = b.relu(s, name="se.relu")
    s = b.conv(s, channels, k=1, pad=0, name="se.fc2")
    s = b.sigmoid(s, name="se.sigmoid")
    x = b.mul(s, x, name="se.scale")
    x = b.relu(_conv_bn(b, x, channels, 3, conv="conv2", bn="bn2"), name="relu2")
    return _finish(b, _classifier(b, x, num_classes))


# ---- DenseNet -----------------------------------------------------------------------------
def densenet_like(
    growth: int = 8,
    layers: int = 4,
    blocks: int = 2,
    image: int = 32,
    num_classes: int = 10,
    bn_size: int = 4,
) -> onnx.ModelProto:
    """DenseNet-BC (torchvision layout) with ``blocks`` dense blocks of ``layers`` layers.

    Stem conv7x7/2 (2 * growth channels) + BN + ReLU + maxpool 3x3/2. Each dense layer is
    BN-ReLU-conv1x1(bn_size * growth)-BN-ReLU-conv3x3(growth), and its output is Concat-ed
    onto all previous features (the concat chain). Between blocks a transition
    BN-ReLU-conv1x1(half the channels)-AveragePool 2x2/2. Final BN + ReLU, GAP, Flatten, Gemm.
    """
    b = OnnxBuilder("densenet_like")
    x = b.input("input", (1, 3, image, image))
    x = _conv_bn(b, x, 2 * growth, 7, stride=2, conv="stem.conv", bn="stem.bn")
    x = b.relu(x, name="stem.relu")
    x = b.maxpool(x, 3, stride=2, pad=1, name="stem.maxpool")
    for bi in range(1, blocks + 1):
        for li in range(1, layers + 1):
            p = f"block{bi}.layer{li}"
            y = b.relu(b.bn(x, name=f"{p}.norm1"), name=f"{p}.relu1")
            y = b.conv(y, bn_size * growth, k=1, pad=0, bias=False, name=f"{p}.conv1")
            y = b.relu(b.bn(y, name=f"{p}.norm2"), name=f"{p}.relu2")
            y = b.conv(y, growth, k=3, bias=False, name=f"{p}.conv2")
            x = b.concat([x, y], axis=1, name=f"{p}.concat")
        if bi != blocks:
            p = f"transition{bi}"
            y = b.relu(b.bn(x, name=f"{p}.norm"), name=f"{p}.relu")
            y = b.conv(y, b.shapes[x][1] // 2, k=1, pad=0, bias=False, name=f"{p}.conv")
            x = b.avgpool(y, 2, 2, name=f"{p}.pool")
    x = b.relu(b.bn(x, name="norm5"), name="relu5")
    return _finish(b, _classifier(b, x, num_classes))


# ---- small structural cases ---------------------------------------------------------------
def flatten_gemm_model(
    channels: int = 8, spatial: int = 4, hidden: int = 32, num_classes: int = 10
) -> onnx.ModelProto:
    """Conv3x3 + ReLU to ``[1, C, S, S]``, Flatten, Gemm(hidden), ReLU, Gemm(num_classes).

    Flatten maps channel ``c`` to Gemm input features ``[c * S*S, (c + 1) * S*S)``, so
    pruning a conv channel removes a block of S*S columns of ``fc1.weight``.
    """
    b = OnnxBuilder("flatten_gemm_model")
    x = b.input("input", (1, 3, spatial, spatial))
    x = b.relu(b.conv(x, channels, k=3, name="conv"), name="relu")
    x = b.flatten(x, name="flatten")
    x = b.relu(b.gemm(x, hidden, name="fc1"), name="relu_fc1")
    return _finish(b, b.gemm(x, num_classes, name="fc2"))


def grouped_conv_model(groups: int = 4, image: int = 16, num_classes: int = 10) -> onnx.ModelProto:
    """Group and depthwise convolutions.

    conv 3->16 + BN + ReLU, grouped conv 16->32 (``group=groups``) + BN + ReLU, depthwise
    conv on 32 (group=32) + BN + ReLU, depthwise with channel multiplier 2 (32->64,
    group=32) + BN + ReLU, 1x1 conv 64->32 + ReLU, GAP, Flatten, Gemm.
    """
    if 16 % groups or 32 % groups:
        raise ValueError(f"groups must divide 16 and 32, got {groups}")
    b = OnnxBuilder("grouped_conv_model")
    x = b.input("input", (1, 3, image, image))
    x = b.relu(_conv_bn(b, x, 16, 3, conv="conv1", bn="bn1"), name="relu1")
    x = b.relu(_conv_bn(b, x, 32, 3, groups=groups, conv="gconv", bn="bn2"), name="relu2")
    x = b.relu(_conv_bn(b, x, 32, 3, groups=32, conv="dwconv", bn="bn3"), name="relu3")
    x = b.relu(_conv_bn(b, x, 64, 3, groups=32, conv="dwconv_mult", bn="bn4"), name="relu4")
    x = b.relu(b.conv(x, 32, k=1, pad=0, name="pwconv"), name="relu5")
    return _finish(b, _classifier(b, x, num_classes))


def _channel_shuffle(b: OnnxBuilder, x: str, groups: int, p: str) -> str:
    """torchvision channel_shuffle: view(1, g, C/g, H, W), transpose(1, 2), view(1, C, H, W)."""
    _, c, h, w = b.shapes[x]
    y = b.reshape(x, (1, groups, c // groups, h, w), name=f"{p}.reshape1")
    y = b.transpose(y, (0, 2, 1, 3, 4), name=f"{p}.transpose")
    return b.reshape(y, (1, c, h, w), name=f"{p}.reshape2")


def channel_shuffle_model(
    groups: int = 2, channels: int = 16, image: int = 16, num_classes: int = 10
) -> onnx.ModelProto:
    """ShuffleNet-style channel shuffle followed by a ShuffleNetV2 stride-1 unit.

    conv + BN + ReLU, channel shuffle with ``groups`` (Reshape, Transpose (0,2,1,3,4),
    Reshape), conv + BN + ReLU; then the ShuffleNetV2 unit: Split in two halves on
    channels, branch2 on the second half (1x1 conv+BN+ReLU, 3x3 depthwise+BN,
    1x1 conv+BN+ReLU), Concat(first half, branch2), channel shuffle with 2 groups;
    GAP, Flatten, Gemm.
    """
    if channels % groups or channels % 2:
        raise ValueError(f"channels ({channels}) must be even and divisible by groups ({groups})")
    b = OnnxBuilder("channel_shuffle_model")
    x = b.input("input", (1, 3, image, image))
    x = b.relu(_conv_bn(b, x, channels, 3, conv="conv1", bn="bn1"), name="relu1")
    x = _channel_shuffle(b, x, groups, "shuffle")
    x = b.relu(_conv_bn(b, x, channels, 3, conv="conv2", bn="bn2"), name="relu2")
    half = channels // 2
    x1, x2 = b.split(x, [half, half], axis=1, name="unit.split")
    p = "unit.branch2"
    y = b.relu(_conv_bn(b, x2, half, 1, conv=f"{p}.0.conv", bn=f"{p}.0.bn"), name=f"{p}.0.relu")
    y = _conv_bn(b, y, half, 3, groups=half, conv=f"{p}.1.conv", bn=f"{p}.1.bn")
    y = b.relu(_conv_bn(b, y, half, 1, conv=f"{p}.2.conv", bn=f"{p}.2.bn"), name=f"{p}.2.relu")
    x = b.concat([x1, y], axis=1, name="unit.concat")
    x = _channel_shuffle(b, x, 2, "unit.shuffle")
    return _finish(b, _classifier(b, x, num_classes))


# ---- registry -----------------------------------------------------------------------------
MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet18": resnet18_like,
    "resnet50": resnet50_like,
    "mobilenetv2": mobilenetv2_like,
    "yolox_s_like": yolox_s_like,
    "se": se_model,
    "densenet": densenet_like,
    "flatten_gemm": flatten_gemm_model,
    "grouped_conv": grouped_conv_model,
    "channel_shuffle": channel_shuffle_model,
}
"""The bundled models by name, each a no-argument constructor with the default sizes."""


def build(name: str) -> onnx.ModelProto:
    """Builds the bundled model ``name``; raises ``KeyError`` listing the valid names."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None
    return factory()
