"""The conformance checks on architectures the corpus lacks, written the way their own
projects write them (tests/ir/yolov8_torch.py, segment_torch.py) and exported by torch, and
on the PP-OCR models rapidocr ships (when installed).

Per model: the analysis names every lock; rate 0 is bit-identical; every plan of ``CONFIGS``
gives compact outputs equal to the sparse ones (1e-4 of the spread) with the parameters and
MACs the plan says; the dead-channel check holds on every prunable group; and the model's
coverage (share of prunable parameters, what stays locked) is what the architecture allows.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from unseen_battery import OUTPUT, battery

from drpopt.ir.input_shapes import fix_input_shapes


def _yolov8(split: bool, dry_run: bool, seg: bool = False) -> onnx.ModelProto:
    from yolov8_torch import export

    return export(split=split, dry_run=dry_run, seg=seg)


def _yolov8_dynamic() -> onnx.ModelProto:
    """``export format=onnx dynamic=True``: batch, height and width symbolic, the anchors
    recomputed in the graph from the feature maps' shapes; analysed at 64x96."""
    import io

    import torch
    from yolov8_torch import C2f, TinyYOLOv8, calibrate

    torch.manual_seed(0)
    model = calibrate(TinyYOLOv8(), (1, 3, 64, 64))
    for m in model.modules():
        if isinstance(m, C2f):
            m.forward = m.forward_split
    buf = io.BytesIO()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "n"}}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 64),),
            buf,
            opset_version=17,
            dynamo=False,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes=axes,
        )
    return fix_input_shapes(onnx.load_from_string(buf.getvalue()), {None: [1, 3, 64, 96]})


def _detr() -> onnx.ModelProto:
    from detr_torch import detr

    return detr()


def _mobilevit() -> onnx.ModelProto:
    from mobilevit_torch import mobilevit

    return mobilevit()


def _detector(name: str) -> onnx.ModelProto:
    import detect_torch

    return getattr(detect_torch, name)()


def _crnn() -> onnx.ModelProto:
    from ocr_torch import crnn

    return crnn()


def _segmenter(name: str) -> onnx.ModelProto:
    import segment_torch

    if name == "unet_bilinear":
        return segment_torch.unet(bilinear=True)
    return getattr(segment_torch, name)()


# the PP-OCR models rapidocr ships (paddle2onnx exports: Constant weights, dynamic dims);
# found without importing the package (it needs OpenCV)
_SPEC = importlib.util.find_spec("rapidocr_onnxruntime")
OCR_DIR = Path(_SPEC.origin).parent / "models" if _SPEC and _SPEC.origin else None


def _ocr(name: str, shape: list[int], logits: bool = False) -> onnx.ModelProto:
    if OCR_DIR is None or not (OCR_DIR / f"{name}.onnx").exists():
        pytest.skip(f"{name}.onnx not installed (pip install rapidocr_onnxruntime)")
    model = fix_input_shapes(onnx.load(str(OCR_DIR / f"{name}.onnx")), {None: shape})
    if logits:  # DBNet's probability map saturates on synthetic input: compare its logits
        for node in model.graph.node:
            if node.output[0] == model.graph.output[0].name and node.op_type == "Sigmoid":
                node.op_type = "Identity"
    return model


def _text_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """White page with dark striped blocks, normalised as PaddleOCR's preprocessing does."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 255.0)
    for _ in range(12):
        y, x = rng.integers(0, height - 12), rng.integers(0, width - 40)
        img[y : y + rng.integers(6, 12) : 2, x : x + rng.integers(10, 40)] = 0
    return ((img / 255.0 - 0.485) / 0.229)[None, None].repeat(3, 1).astype(np.float32)


def _einsum_vit() -> onnx.ModelProto:
    from einsum_torch import export

    return export()


def _torch_model(module: str, name: str) -> onnx.ModelProto:
    return getattr(importlib.import_module(module), name)()


def _caffe2(name: str) -> onnx.ModelProto:
    from caffe2_models import available, caffe2_model

    if not available():
        pytest.skip("this onnx package ships no backend test data")
    return caffe2_model(name)


DFL = "dfl/conv/Conv"  # DFL's fixed conv reads the 4 box sides of every level as one axis
CAFFE2 = {"Softmax", OUTPUT}  # the classifier's softmax and the prediction output

# name -> (builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    "yolov8_split": (lambda: _yolov8(True, True), 0.99, 0.3, {DFL, OUTPUT}),
    "yolov8_chunk_anchors": (lambda: _yolov8(False, False), 0.99, 0.3, {DFL, OUTPUT}),
    "yolov8_dynamic": (_yolov8_dynamic, 0.99, 0.3, {DFL, OUTPUT}),
    # DETR: the sine position embedding interleaves sin/cos by strided slices (locked);
    # the transformer width, heads and FFNs prune
    "detr": (_detr, 0.97, 0.45, {"strided slice", OUTPUT}),
    "yolov8_seg": (lambda: _yolov8(True, True, seg=True), 0.99, 0.3, {DFL, OUTPUT}),
    "yolov5": (lambda: _detector("yolov5"), 0.99, 0.3, {OUTPUT}),
    # the head towers (GroupNorm: whole groups) run over all five levels: one tensor,
    # tied channels, one compact copy
    "fcos": (lambda: _detector("fcos"), 0.99, 0.3, {OUTPUT}),
    # patches unfolded by reshape(B * C * n_h, ...) and folded back: the transformer width
    # maps through them as blocks of the channels
    "mobilevit": (_mobilevit, 0.99, 0.3, {OUTPUT}),
    "deeplabv3": (lambda: _segmenter("deeplabv3"), 0.99, 0.3, {OUTPUT}),
    "lraspp": (lambda: _segmenter("lraspp"), 0.99, 0.35, {OUTPUT}),
    "unet": (lambda: _segmenter("unet"), 0.99, 0.3, {OUTPUT}),
    "unet_bilinear": (lambda: _segmenter("unet_bilinear"), 0.99, 0.3, {OUTPUT}),
    # EasyOCR's CRNN: the LSTMs' hidden units prune (ir/rules_rnn.py), the same unit in
    # both directions; the directions axis itself stays (a locked group of no parameters)
    # (the LSTM's output Reshape merges its directions with their channels)
    "crnn_bilstm": (_crnn, 0.99, 0.27, {"prune its directions", "merges axis 2", OUTPUT}),
    "ppocr_cls": (
        lambda: _ocr("ch_ppocr_mobile_v2.0_cls_infer", [1, 3, 48, 192]),
        0.99,
        0.35,
        {"Softmax", OUTPUT},
    ),
    "ppocr_rec": (
        lambda: _ocr("ch_PP-OCRv4_rec_infer", [1, 3, 48, 320]),
        0.99,
        0.4,
        {"ReduceMean", "Softmax", OUTPUT},  # LayerNorm statistics; the CTC softmax
    ),
    "ppocr_det": (
        lambda: _ocr("ch_PP-OCRv4_det_infer", [1, 3, 96, 160], logits=True),
        0.99,
        0.3,
        set(),
    ),
    # attention, MLP and q/k/v written with torch.einsum (Einsum nodes): heads, hidden
    # and width prune through them
    "einsum_vit": (lambda: _einsum_vit(), 0.99, 0.3, {OUTPUT}),
    # onnx-caffe2's exports (the onnx package's test data): LRN sums over neighbouring
    # channels (locked); the classifier weight is reshaped at run time before its Gemm
    "caffe2_inception_v1": (lambda: _caffe2("inception_v1"), 0.99, 0.3, {"LRN", *CAFFE2}),
    # the final conv is the classifier (keep_last): as torchvision's SqueezeNet, 0.357
    "caffe2_squeezenet": (lambda: _caffe2("squeezenet"), 0.99, 0.36, {*CAFFE2}),
    # ShuffleNet v1: its shuffles of 4 groups prune position by position in every group;
    # only the blocks a grouped conv cuts at its group boundaries stay (0.369 kept at rate
    # 0.5; with the shuffles locked, 0.527)
    "caffe2_shufflenet": (
        lambda: _caffe2("shufflenet"),
        0.99,
        0.4,
        {"Reshape", "removing it would leave", *CAFFE2},
    ),
    "caffe2_resnet50": (lambda: _caffe2("resnet50"), 0.99, 0.3, {*CAFFE2}),
    "caffe2_densenet121": (lambda: _caffe2("densenet121"), 0.99, 0.35, {*CAFFE2}),
    "caffe2_inception_v2": (lambda: _caffe2("inception_v2"), 0.99, 0.3, {*CAFFE2}),
    "caffe2_bvlc_alexnet": (lambda: _caffe2("bvlc_alexnet"), 0.99, 0.3, {"LRN", *CAFFE2}),
    "caffe2_zfnet512": (lambda: _caffe2("zfnet512"), 0.99, 0.3, {"LRN", *CAFFE2}),
    "caffe2_vgg19": (lambda: _caffe2("vgg19"), 0.99, 0.3, {*CAFFE2}),
    # Res2Net's hierarchical split: each 3x3 conv's input is its own part of the 1x1 conv
    # plus the previous 3x3's output (tied); parts of 3 channels keep 2 at rate 0.5
    "res2net": (lambda: _torch_model("multibranch_torch", "res2net"), 0.99, 0.33, {OUTPUT}),
    # ResNeSt's split attention: channel c of every radix block (reshape to (B, radix, C)),
    # the radix softmax's (view(B, card, radix, -1)) and fc2's prune together
    "resnest": (lambda: _torch_model("multibranch_torch", "resnest"), 0.99, 0.3, {OUTPUT}),
    # HRNetV2: branches fused by 1x1 + interpolate up and strided 3x3 chains down, summed
    "hrnet": (lambda: _torch_model("multibranch_torch", "hrnet"), 0.99, 0.3, {OUTPUT}),
    # SegFormer (opset 11: LayerNorm and GELU decomposed): kv split by reshape + Gather,
    # spatial-reduction conv and Mix-FFN's depthwise conv on tokens folded to images
    "segformer": (
        lambda: _torch_model("vision_transformers_torch", "segformer"),
        0.99,
        0.3,
        {OUTPUT},
    ),
    # EfficientFormer: q/k/v interleaved per head, a constant heads x N x N attention bias
    "efficientformer": (
        lambda: _torch_model("vision_transformers_torch", "efficientformer"),
        0.99,
        0.3,
        {OUTPUT},
    ),
    # YOLOv7 (export.py --grid, opset 12): E-ELAN concats, SPPCSPC, training-form RepConv,
    # IDetect's ImplicitA/ImplicitM around the detection convs, slice decoding
    "yolov7": (lambda: _torch_model("yolov7_torch", "yolov7"), 0.99, 0.3, {OUTPUT}),
    # EfficientDet (zylo117, opset 11): same-padding from the input's shape, BiFPN's learned
    # fusion weights, separable-conv heads shared by the levels with a BN per level; the
    # headers' anchors are merged with the pixels into the prediction list (locked)
    "efficientdet": (
        lambda: _torch_model("efficientdet_torch", "efficientdet"),
        0.99,
        0.3,
        {"merges axis 1", OUTPUT},
    ),
    # tf2onnx's layout: NHWC activations, Transposes around each Conv, folded BN, SE and
    # Dense layers as MatMul over the last axis, a channels-last concat
    "keras_nhwc": (
        lambda: _torch_model("tf_layout_torch", "keras_nhwc"),
        0.99,
        0.3,
        {"Softmax", OUTPUT},
    ),
    # PoolFormer: GroupNorm(1, C) (InstanceNormalization over the merged C*H*W axis)
    # prunes with its masked form (ir/rules_norm.py): 0.265 kept at rate 0.5 (0.71 locked)
    "poolformer": (lambda: _torch_model("norm_blocks_torch", "poolformer"), 0.99, 0.3, {OUTPUT}),
    # ConvNeXt V2: the channels-first LayerNorm written out (x.mean(1)) and GRN's mean
    # over the hidden channels prune with their masked forms: 0.294 kept (0.70 locked)
    "convnextv2": (lambda: _torch_model("norm_blocks_torch", "convnextv2"), 0.99, 0.3, {OUTPUT}),
    # PP-HGNetV2 (RT-DETR's, PP-OCRv4 server's backbone): padded stem with a ceil-mode pool
    # branch, dense concat blocks with SE or ESE aggregation, scalar learnable affines
    "hgnetv2": (lambda: _torch_model("hgnet_torch", "hgnetv2"), 0.99, 0.3, {OUTPUT}),
    # PSPNet: adaptive pools of 1/2/3/6 bins, interpolated back and concatenated
    "pspnet": (lambda: _torch_model("segment2_torch", "pspnet"), 0.99, 0.3, {OUTPUT}),
    # BiSeNetV2: depthwise convs expanding each channel 6 times, context embedding, the
    # two branches gating each other
    "bisenetv2": (lambda: _torch_model("segment2_torch", "bisenetv2"), 0.99, 0.3, {OUTPUT}),
    # DBNet's SegDetector: FPN adds, upsampled concat, ConvTranspose binarisation head
    "dbnet": (lambda: _torch_model("segment2_torch", "dbnet"), 0.99, 0.3, {OUTPUT}),
    # Attention U-Net: skips gated by a one-channel sigmoid map broadcast over them
    "attention_unet": (
        lambda: _torch_model("segment2_torch", "attention_unet"),
        0.99,
        0.3,
        {OUTPUT},
    ),
    # RTMDet as mmdeploy exports it end to end (opset 11): CSPNeXt with channel attention,
    # level-shared head convs with a BN per level, box decoding and NonMaxSuppression in
    # the graph (the class axis the NMS reads and the box sides stay)
    "rtmdet": (
        lambda: _torch_model("rtmdet_torch", "rtmdet"),
        0.99,
        0.3,
        {"NonMaxSuppression", "a single channel", "repeated or computed indices", OUTPUT},
    ),
    # EfficientViT (MIT): ReLU linear attention, a row of ones padded onto v divides the
    # rest; the multi-scale aggregation's grouped conv ties dim p of every q/k/v block, so
    # the dims inside the heads prune (the same in every head), not whole heads
    "efficientvit": (
        lambda: _torch_model("efficientvit_torch", "efficientvit"),
        0.99,
        0.33,
        {OUTPUT},
    ),
    # RT-DETR-style decoder: multi-scale deformable attention (value folded per head into
    # (bs * heads, head_dim, h, w), F.grid_sample at learned offsets): whole heads prune;
    # the sampling coordinates' axis (x, y) stays
    "deformable_detr": (
        lambda: _torch_model("deformable_torch", "deformable_detr"),
        0.99,
        0.3,
        {"GridSample", "sampling_offsets", OUTPUT},
    ),
    # wav2vec 2.0 (HF, opset 14, LayerNorm written out): Conv1d feature encoder with a
    # per-channel GroupNorm, weight-normed grouped positional conv, post-LN encoder, CTC head
    "wav2vec2": (lambda: _torch_model("audio_torch", "wav2vec2"), 0.99, 0.3, {OUTPUT}),
    # QuartzNet (NeMo): time-channel separable Conv1d blocks, 1x1 residuals, log_softmax;
    # the first conv is depthwise over the mel features (the graph input's channels stay)
    "quartznet": (
        lambda: _torch_model("audio_torch", "quartznet"),
        0.99,
        0.33,
        {"graph input", "LogSoftmax", OUTPUT},
    ),
    # Conformer (torchaudio): nn.MultiheadAttention's packed in_proj, GLU(dim=1) pairing
    # channel c with c + D, depthwise Conv1d + BatchNorm1d, half-step FFNs
    "conformer": (lambda: _torch_model("audio_torch", "conformer"), 0.99, 0.3, {OUTPUT}),
    # R(2+1)D-18 (torchvision video): (1, 3, 3) + (3, 1, 1) Conv3d pairs, 3-D BatchNorm
    "r2plus1d": (lambda: _torch_model("video_torch", "r2plus1d"), 0.99, 0.3, {OUTPUT}),
    # X3D (pytorchvideo): depthwise 3x3x3 convs, 3-D squeeze-excitation, Swish
    "x3d": (lambda: _torch_model("video_torch", "x3d"), 0.99, 0.35, {OUTPUT}),
    # YOLOv8-pose: keypoints decoded per (x, y, visibility) column of a view(bs, 17, 3, -1)
    "yolov8_pose": (lambda: _torch_model("heads_torch", "yolov8_pose"), 0.99, 0.3, {DFL, OUTPUT}),
    # CenterNet: ConvTranspose upsampling, heads, the peak NMS (hmax == heat) in the graph
    "centernet": (lambda: _torch_model("heads_torch", "centernet"), 0.99, 0.3, {OUTPUT}),
    # SSDLite: per-level view(N, A, K, H, W).permute.reshape: the anchor axis of the
    # prediction convs merges with H and W (their outputs stay whole anyway)
    "ssdlite": (
        lambda: _torch_model("heads_torch", "ssdlite"),
        0.99,
        0.4,
        {"merges axis 1", OUTPUT},
    ),
    # LeViT (timm): BatchNorm1d over tokens flattened with the batch, per-head interleaved
    # q/k/v, gathered attention biases, a strided-subsampling attention, two heads averaged
    "levit": (lambda: _torch_model("attention2_torch", "levit"), 0.99, 0.3, {OUTPUT}),
    # RT-DETR's hybrid encoder: AIFI (nn.MultiheadAttention with the sin-cos position added
    # to queries and keys only) and the CCFM's RepVGG CSP blocks; its three outputs stay
    "rtdetr_encoder": (
        lambda: _torch_model("attention2_torch", "rtdetr_encoder"),
        0.99,
        0.4,
        {OUTPUT},
    ),
    # MobileViT-v2 (opset 18): F.unfold / F.fold (Col2Im) patches, separable self-attention,
    # GroupNorm(1, d) (masked form); it kept 0.476 while Col2Im had no rule
    "mobilevitv2": (
        lambda: _torch_model("attention2_torch", "mobilevitv2"),
        0.99,
        0.3,
        {"a single channel", OUTPUT},
    ),
    # Swin V2 (timm): scaled cosine attention, the continuous position bias MLP, q/v bias
    # cat, res-post-norm, space-to-depth patch merging (reshape/permute/flatten)
    "swinv2": (lambda: _torch_model("swinv2_torch", "swinv2"), 0.98, 0.3, {OUTPUT}),
    # YOLO11: C3k2, C2PSA's per-head interleaved q/k/v conv with a depthwise positional
    # conv on v, the depthwise class branch of the head
    "yolo11": (lambda: _torch_model("yolo11_torch", "yolo11"), 0.99, 0.3, {DFL, OUTPUT}),
}
# the large caffe2 models run with -m slow (the default run keeps three small ones)
SLOW: set[str] = {f"caffe2_{n}" for n in ("resnet50", "densenet121", "inception_v2")}
SLOW |= {f"caffe2_{n}" for n in ("bvlc_alexnet", "zfnet512", "vgg19")}
SLOW |= {"efficientdet"}  # 3k nodes of same-padding arithmetic: 22 s
SLOW |= {"mobilevitv2", "yolo11"}  # their exports alone take 5 s


BATTERY = battery(
    MODELS,
    lambda name: MODELS[name][0](),
    slow=SLOW,
    # PP-OCR's text detector is fed a page of text (``_text_image``), not noise
    feeds={"ppocr_det": lambda model: {model.graph.input[0].name: _text_image(96, 160)}},
)
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests
