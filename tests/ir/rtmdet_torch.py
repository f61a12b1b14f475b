"""A small RTMDet written the way mmdetection 3 computes it (``CSPNeXt``, ``CSPNeXtPAFPN``,
``RTMDetSepBNHead``) and exported the way mmdeploy's ONNX Runtime end-to-end config does
(opset 11): box decoding and ``multiclass_nms`` inside the graph.

- CSPNeXt: a 3-conv stem, stages of a strided 3x3 conv and a CSP layer (1x1 main and short
  convs, CSPNeXt blocks: 3x3 conv then a 5x5 depthwise-separable conv with a residual add,
  the halves concatenated, **channel attention** ``x * hardsigmoid(conv(avgpool(x)))``, a
  1x1), an SPPF bottleneck (three chained 5x5 max-pools concatenated) in the last stage;
- CSPNeXtPAFPN: 1x1 reduce, nearest upsampling, concat, CSP layers top-down and bottom-up
  with strided 3x3 downsampling, 3x3 output convs;
- the head: per level a classification and a regression tower whose **convs are shared by
  the levels** (``cls_convs[n][i].conv = cls_convs[0][i].conv``) with a BatchNorm per level,
  3x3 prediction convs, regression times the stride;
- mmdeploy's rewrite: scores ``permute(0, 2, 3, 1).reshape(B, -1, C).sigmoid()``, distances
  to boxes around constant priors, ``NonMaxSuppression`` (mmdeploy's ``ONNXNMSop``
  symbolic), the selected boxes gathered with their scores and labels, padded and sorted by
  ``TopK`` into ``dets (B, keep_top_k, 5)`` and ``labels (B, keep_top_k)``.
"""

from __future__ import annotations

import onnx
import torch
from export_torch import export_as
from torch import nn


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k=1, s=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.SiLU()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, k, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class CSPNeXtBlock(nn.Module):
    def __init__(self, cin, cout, expansion=0.5, add_identity=True, kernel_size=5):
        super().__init__()
        hidden = int(cout * expansion)
        self.conv1 = ConvModule(cin, hidden, 3)
        self.conv2 = DepthwiseSeparableConvModule(hidden, cout, kernel_size)
        self.add_identity = add_identity and cin == cout

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Hardsigmoid(inplace=True)

    def forward(self, x):
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPLayer(nn.Module):
    def __init__(self, cin, cout, num_blocks=1, add_identity=True, channel_attention=True):
        super().__init__()
        mid = int(cout * 0.5)
        self.main_conv = ConvModule(cin, mid, 1)
        self.short_conv = ConvModule(cin, mid, 1)
        self.final_conv = ConvModule(2 * mid, cout, 1)
        self.blocks = nn.Sequential(
            *(CSPNeXtBlock(mid, mid, 1.0, add_identity) for _ in range(num_blocks))
        )
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x):
        x_final = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        if self.attention is not None:
            x_final = self.attention(x_final)
        return self.final_conv(x_final)


class SPPFBottleneck(nn.Module):
    def __init__(self, cin, cout, kernel_size=5):
        super().__init__()
        mid = cin // 2
        self.conv1 = ConvModule(cin, mid, 1)
        self.poolings = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)
        self.conv2 = ConvModule(mid * 4, cout, 1)

    def forward(self, x):
        x = self.conv1(x)
        y1 = self.poolings(x)
        y2 = self.poolings(y1)
        return self.conv2(torch.cat([x, y1, y2, self.poolings(y2)], dim=1))


class CSPNeXt(nn.Module):
    def __init__(self, widths=(16, 16, 24, 32, 48)):
        super().__init__()
        c = widths[0]
        self.stem = nn.Sequential(
            ConvModule(3, c // 2, 3, 2), ConvModule(c // 2, c // 2, 3), ConvModule(c // 2, c, 3)
        )
        stages = []
        for i, w in enumerate(widths[1:]):
            layers = [ConvModule(widths[i], w, 3, 2)]
            if i == len(widths) - 2:
                layers.append(SPPFBottleneck(w, w))
            layers.append(CSPLayer(w, w))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs  # strides 4 (dropped), 8, 16, 32 -> the last three


class CSPNeXtPAFPN(nn.Module):
    def __init__(self, in_channels=(24, 32, 48), out_channels=24):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce_layers = nn.ModuleList(
            ConvModule(in_channels[i], in_channels[i - 1], 1) for i in (2, 1)
        )
        self.top_down_blocks = nn.ModuleList(
            CSPLayer(in_channels[i - 1] * 2, in_channels[i - 1], add_identity=False) for i in (2, 1)
        )
        self.downsamples = nn.ModuleList(
            ConvModule(in_channels[i], in_channels[i], 3, 2) for i in (0, 1)
        )
        self.bottom_up_blocks = nn.ModuleList(
            CSPLayer(in_channels[i] * 2, in_channels[i + 1], add_identity=False) for i in (0, 1)
        )
        self.out_convs = nn.ModuleList(ConvModule(c, out_channels, 3) for c in in_channels)

    def forward(self, inputs):
        inner_outs = [inputs[-1]]
        for k, idx in enumerate((2, 1)):
            feat_high = self.reduce_layers[k](inner_outs[0])
            inner_outs[0] = feat_high
            upsample_feat = self.upsample(feat_high)
            inner_out = self.top_down_blocks[k](torch.cat([upsample_feat, inputs[idx - 1]], 1))
            inner_outs.insert(0, inner_out)
        outs = [inner_outs[0]]
        for idx in range(2):
            downsample_feat = self.downsamples[idx](outs[-1])
            outs.append(
                self.bottom_up_blocks[idx](torch.cat([downsample_feat, inner_outs[idx + 1]], 1))
            )
        return [conv(o) for conv, o in zip(self.out_convs, outs, strict=True)]


class RTMDetSepBNHead(nn.Module):
    def __init__(
        self, num_classes=3, in_channels=24, feat_channels=24, stacked_convs=2, strides=(8, 16, 32)
    ):
        super().__init__()
        self.num_classes, self.strides = num_classes, strides

        def tower():
            return nn.ModuleList(
                nn.Sequential(
                    *(
                        ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3)
                        for i in range(stacked_convs)
                    )
                )
                for _ in strides
            )

        self.cls_convs, self.reg_convs = tower(), tower()
        self.rtm_cls = nn.ModuleList(
            nn.Conv2d(feat_channels, num_classes, 3, padding=1) for _ in strides
        )
        self.rtm_reg = nn.ModuleList(nn.Conv2d(feat_channels, 4, 3, padding=1) for _ in strides)
        for n in range(1, len(strides)):  # share_conv=True: one conv, a BN per level
            for i in range(stacked_convs):
                self.cls_convs[n][i].conv = self.cls_convs[0][i].conv
                self.reg_convs[n][i].conv = self.reg_convs[0][i].conv

    def forward(self, feats):
        cls_scores, bbox_preds = [], []
        for idx, x in enumerate(feats):
            cls_scores.append(self.rtm_cls[idx](self.cls_convs[idx](x)))
            bbox_preds.append(self.rtm_reg[idx](self.reg_convs[idx](x)) * self.strides[idx])
        return cls_scores, bbox_preds


class ONNXNMSop(torch.autograd.Function):
    """mmdeploy's ``mmcv/ops/nms.py``: ``NonMaxSuppression`` in the graph; the eager
    forward (only traced) returns the first ten boxes of every class as selected."""

    @staticmethod
    def forward(ctx, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        batch, classes = scores.shape[0], scores.shape[1]
        rows = [[b, c, i] for b in range(batch) for c in range(classes) for i in range(10)]
        return torch.tensor(rows, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            max_output_boxes_per_class,
            iou_threshold,
            score_threshold,
        )


def multiclass_nms(boxes, scores, max_per_class=20, iou=0.5, score_thr=0.05, keep_top_k=30):
    """mmdeploy's ``_multiclass_nms`` + ``_select_nms_index`` (no pre_top_k)."""
    batch_size = scores.shape[0]
    scores = scores.permute(0, 2, 1)
    selected = ONNXNMSop.apply(
        boxes,
        scores,
        torch.LongTensor([max_per_class]),
        torch.tensor([iou], dtype=torch.float32),
        torch.tensor([score_thr], dtype=torch.float32),
    )
    batch_inds, cls_inds, box_inds = selected[:, 0], selected[:, 1], selected[:, 2]
    sel_scores = scores[batch_inds, cls_inds, box_inds].unsqueeze(1)
    dets = torch.cat([boxes[batch_inds, box_inds, ...], sel_scores], dim=1)
    batched_dets = dets.unsqueeze(0).repeat(batch_size, 1, 1)
    template = torch.arange(0, batch_size, dtype=batch_inds.dtype)
    same = batch_inds == template.unsqueeze(1)
    batched_dets = batched_dets.where(same.unsqueeze(-1), batched_dets.new_zeros(1))
    batched_labels = cls_inds.unsqueeze(0).repeat(batch_size, 1)
    batched_labels = batched_labels.where(same, batched_labels.new_ones(1) * -1)
    N = batched_dets.shape[0]
    batched_dets = torch.cat((batched_dets, batched_dets.new_zeros((N, 1, 5))), 1)
    batched_labels = torch.cat((batched_labels, batched_labels.new_zeros((N, 1))), 1)
    _, topk_inds = batched_dets[:, :, -1].topk(keep_top_k, dim=1)
    topk_batch_inds = torch.arange(batch_size, dtype=topk_inds.dtype).view(-1, 1)
    return batched_dets[topk_batch_inds, topk_inds, ...], batched_labels[topk_batch_inds, topk_inds]


class RTMDet(nn.Module):
    def __init__(self, size=64):
        super().__init__()
        self.backbone = CSPNeXt()
        self.neck = CSPNeXtPAFPN()
        self.bbox_head = RTMDetSepBNHead()
        priors = []
        for s in self.bbox_head.strides:  # MlvlPointGenerator, offset 0
            n = size // s
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            priors.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() * s)
        self.register_buffer("priors", torch.cat(priors))

    def forward(self, x):
        cls_scores, bbox_preds = self.bbox_head(self.neck(self.backbone(x)[1:]))
        b = x.shape[0]
        nc = self.bbox_head.num_classes
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1, nc) for c in cls_scores], 1)
        dist = torch.cat([d.permute(0, 2, 3, 1).reshape(b, -1, 4) for d in bbox_preds], 1)
        p = self.priors[None]
        boxes = torch.stack(
            [
                p[..., 0] - dist[..., 0],
                p[..., 1] - dist[..., 1],
                p[..., 0] + dist[..., 2],
                p[..., 1] + dist[..., 3],
            ],
            -1,
        )
        return multiclass_nms(boxes, scores.sigmoid())


def rtmdet(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_as(RTMDet(size), (1, 3, size, size), opset=11, seed=seed)
