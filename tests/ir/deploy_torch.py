"""Models as users hand them over after their own deployment tooling ran (round 4a of the
unseen-architecture battery).

- ``detector_nms``: a small YOLO-style detector (``yolov8_torch``'s ``Conv``/``C2f``, an FPN
  neck, a decoupled head per level) whose export ends as end-to-end exports do (YOLOv8's
  ``end2end``, PaddleDetection, mmdeploy): boxes decoded from the grid in the graph, ``TopK``
  over the best class score, the kept boxes gathered, then ``NonMaxSuppression`` and a
  ``Gather``/``GatherND`` of the selected boxes and scores, appended with ``onnx.helper``
  (torch exports no NMS without torchvision). The thresholds sit in the middle of a wide gap
  of the reference's scores and overlaps, so the selection is not decided by a near-tie.
- ``resnet_qdq`` / ``mobilenetv2_qdq`` (and ``*_qop``): two small CNNs after
  ``onnxruntime.quantization.quantize_static`` (seeded random calibration data): QDQ format
  with per-channel int8 weights, and QOperator format (``QLinearConv``, com.microsoft
  ``QLinearAdd``/``QLinearGlobalAveragePool``).
- ``bert_fused`` / ``bert_ort``: a two-layer BERT encoder (HF ``modeling_bert``'s
  computation) after ``onnxruntime.transformers.optimizer.optimize_model`` (level 0, and
  its default): com.microsoft ``EmbedLayerNormalization``, ``Attention``,
  ``SkipLayerNormalization``, ``BiasGelu``, ``Gelu``.
The standard ops of newer opsets are in ``deploy_ops.py``.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from bn_calibrate import calibrate
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from yolov8_torch import C2f, Conv

# ---- detector with in-graph post-processing ---------------------------------------------------


class TinyDetector(nn.Module):
    """Backbone (strides 8 and 16), FPN top-down neck, decoupled head; returns decoded boxes
    ``(1, k, 4)`` (x1, y1, x2, y2) and class scores ``(1, k, nc)`` of the ``k`` anchors with
    the best class score (``topk`` + ``gather``, as YOLOv8's and mmdeploy's end2end do)."""

    def __init__(self, nc: int = 3, k: int = 24):
        super().__init__()
        self.nc, self.k = nc, k
        self.stem = nn.Sequential(Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), C2f(16, 16, 1, True))
        self.p3 = nn.Sequential(Conv(16, 24, 3, 2), C2f(24, 24, 1, True))
        self.p4 = nn.Sequential(Conv(24, 32, 3, 2), C2f(32, 32, 1, True))
        self.lat = Conv(32, 24, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = C2f(48, 24, 1, False)
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, 16, 3), nn.Conv2d(16, 4, 1)) for c in (24, 32)
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, 16, 3), nn.Conv2d(16, nc, 1)) for c in (24, 32)
        )

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p3 = self.fuse(torch.cat((self.up(self.lat(p4)), p3), 1))
        boxes, scores = [], []
        for i, (f, stride) in enumerate(((p3, 8), (p4, 16))):
            t = self.box[i](f)
            b, _, h, w = t.shape
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack((xs, ys), 0).float().view(1, 2, h, w)
            xy = (t[:, :2].sigmoid() * 2 - 0.5 + grid) * stride
            wh = t[:, 2:].sigmoid() * 4 * stride
            boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), 1).view(b, 4, -1))
            scores.append(self.cls[i](f).sigmoid().view(b, self.nc, -1))
        boxes = torch.cat(boxes, 2).transpose(1, 2)
        scores = torch.cat(scores, 2).transpose(1, 2)
        _, idx = scores.amax(2).topk(self.k, dim=1)
        boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
        scores = scores.gather(1, idx.unsqueeze(-1).expand(-1, -1, self.nc))
        return boxes, scores


def _torch_export(
    model: nn.Module, x: torch.Tensor, names: list[str], opset: int
) -> onnx.ModelProto:
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            buf,
            opset_version=opset,
            dynamo=False,
            input_names=["input"],
            output_names=names,
        )
    return onnx.load_from_string(buf.getvalue())


def _iou(a: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], a[None, :, :2])
    hi = np.minimum(a[:, None, 2:], a[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = (a[:, 2:] - a[:, :2]).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter)


def _mid_of_widest_gap(values: np.ndarray, lo: float, hi: float) -> float:
    """The middle of the widest gap between sorted ``values`` inside (lo, hi)."""
    v = np.sort(np.concatenate(([lo, hi], values[(values > lo) & (values < hi)])))
    i = int(np.argmax(np.diff(v)))
    return float(v[i] + v[i + 1]) / 2


def detector_nms(seed: int = 0, size: int = 64) -> onnx.ModelProto:
    """``TinyDetector`` exported (opset 13), then ``NonMaxSuppression`` over its boxes and
    per-class scores and the gathers of the selected boxes (by ``selected[:, 2]``) and scores
    (``GatherND`` of ``(batch, box, class)``): outputs ``selected`` (int64), ``det_boxes``,
    ``det_scores``. The score and IoU thresholds are the middles of the widest gaps of the
    reference's scores and pairwise IoUs (on ``random_feeds``' input), so no kept or dropped
    box sits near a threshold."""
    torch.manual_seed(seed)
    model = calibrate(TinyDetector(), (1, 3, size, size))
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    )
    m = _torch_export(model, x, ["boxes", "scores"], 13)
    with torch.no_grad():
        boxes, scores = (t.numpy()[0] for t in model(x))
    score_thr = _mid_of_widest_gap(scores.ravel(), 0.3, 0.7)
    ious = _iou(boxes)[np.triu_indices(len(boxes), 1)]
    iou_thr = _mid_of_widest_gap(ious, 0.3, 0.7)
    g = m.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([10], np.int64), "max_per_class"),
            numpy_helper.from_array(np.array([iou_thr], np.float32), "iou_thr"),
            numpy_helper.from_array(np.array([score_thr], np.float32), "score_thr"),
            numpy_helper.from_array(np.array(2, np.int64), "box_col"),
            numpy_helper.from_array(np.array([0, 2, 1], np.int64), "bkc"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Transpose", ["scores"], ["scores_t"], perm=[0, 2, 1], name="post/t"),
            helper.make_node(
                "NonMaxSuppression",
                ["boxes", "scores_t", "max_per_class", "iou_thr", "score_thr"],
                ["selected"],
                name="post/nms",
            ),
            helper.make_node(
                "Gather", ["selected", "box_col"], ["box_idx"], axis=1, name="post/col"
            ),
            helper.make_node("Squeeze", ["boxes"], ["boxes0"], name="post/sq"),  # batch 1
            helper.make_node(
                "Gather", ["boxes0", "box_idx"], ["det_boxes"], axis=0, name="post/gb"
            ),
            helper.make_node("Gather", ["selected", "bkc"], ["sel_bkc"], axis=1, name="post/perm"),
            helper.make_node("GatherND", ["scores", "sel_bkc"], ["det_scores"], name="post/gs"),
        ]
    )
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3]),
            helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["n"]),
        ]
    )
    onnx.checker.check_model(m)
    return m


# ---- QDQ / QOperator quantized CNNs ----------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.c2(self.c1(x)) + self.down(x))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1)
        )
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
            nn.ReLU6(), nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
        )
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)).flatten(1))


def _float_cnn(net: str, size: int = 32) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = calibrate(
        {"resnet": TinyResNet, "mobilenetv2": TinyMobileNetV2}[net](), (1, 3, size, size)
    )
    return _torch_export(model, torch.randn(1, 3, size, size), ["output"], 13)


def quantized(net: str, fmt: str = "qdq") -> onnx.ModelProto:
    """``quantize_static`` of ``net`` ("resnet", "mobilenetv2"): QDQ with per-channel int8
    weights (``fmt="qdq"``) or QOperator (``fmt="qop"``); calibrated on 8 seeded batches."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.data = iter(
                {"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)
            )

        def get_next(self):
            return next(self.data, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "f.onnx"), Path(tmp, "q.onnx")
        onnx.save(_float_cnn(net), src)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=fmt == "qdq",
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(dst)


# ---- onnxruntime transformers optimizer output ------------------------------------------------


class BertLayer(nn.Module):
    """HF ``BertLayer`` (self-attention with an additive mask, output dense + residual +
    LayerNorm, intermediate GELU (erf), output dense + residual + LayerNorm)."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o, self.ln1 = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)
        self.i, self.out, self.ln2 = nn.Linear(d, ff), nn.Linear(ff, d), nn.LayerNorm(d, eps=1e-12)

    def _heads(self, t):
        return t.view(t.size(0), t.size(1), self.h, self.dh).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh) + mask
        ctx = torch.matmul(att.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size(0), ctx.size(1), self.h * self.dh)
        x = self.ln1(self.o(ctx) + x)
        return self.ln2(self.out(nn.functional.gelu(self.i(x))) + x)


class TinyBert(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4, ff: int = 64, seq: int = 8):
        super().__init__()
        self.word, self.pos, self.typ = (
            nn.Embedding(vocab, d),
            nn.Embedding(seq, d),
            nn.Embedding(2, d),
        )
        self.ln = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(d, heads, ff) for _ in range(2))
        self.pool = nn.Linear(d, d)

    def forward(self, input_ids, attention_mask, token_type_ids):
        pos = torch.arange(input_ids.size(1)).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.pos(pos) + self.typ(token_type_ids))
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pool(x[:, 0]))


def bert_fused(seq: int = 8, opt_level: int | None = 0) -> onnx.ModelProto:
    """``TinyBert`` exported (opset 14, batch and sequence fixed) and run through
    ``optimize_model(model_type="bert", num_heads=4, hidden_size=32, opt_level=...)``
    offline: level 0 (its own fusions only) writes com.microsoft ``EmbedLayerNormalization``,
    ``Attention``, ``SkipLayerNormalization`` and ``BiasGelu``; the default (None: onnxruntime's
    basic optimizations first) writes Gemms between 2-D reshapes, ``SkipLayerNormalization``
    and ``Gelu``."""
    from onnxruntime.transformers.optimizer import optimize_model

    torch.manual_seed(0)
    model = TinyBert(seq=seq).eval()
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ids = torch.randint(0, 50, (1, seq))
    args = (ids, torch.ones(1, seq, dtype=torch.int64), torch.zeros(1, seq, dtype=torch.int64))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            buf,
            opset_version=14,
            dynamo=False,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state", "pooler_output"],
        )
    opt = optimize_model(
        onnx.load_from_string(buf.getvalue()),
        model_type="bert",
        num_heads=4,
        hidden_size=32,
        opt_level=opt_level,
    )
    with tempfile.TemporaryDirectory() as tmp:  # saving adds the com.microsoft opset
        opt.save_model_to_file(str(Path(tmp, "bert.onnx")))
        return onnx.load(Path(tmp, "bert.onnx"))


def bert_ort(seq: int = 8) -> onnx.ModelProto:
    return bert_fused(seq, opt_level=None)
