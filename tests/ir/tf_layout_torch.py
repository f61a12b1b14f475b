"""A small Keras-style network in the layout tf2onnx writes it (channels last), rebuilt with
torch permutes.

TensorFlow keeps activations NHWC; tf2onnx converts each Conv2D/DepthwiseConv2D to an ONNX
Conv between ``Transpose(perm=[0, 3, 1, 2])`` and ``Transpose(perm=[0, 2, 3, 1])`` and
leaves everything else channels-last: BatchNormalization folded to ``x * scale + shift``
with ``(C,)`` constants broadcast over the last axis, ReLU6 as Clip, residual Adds and a
``Concatenate(axis=-1)`` on NHWC tensors, squeeze-excitation as ``ReduceMean(axes=[1, 2])``
and ``Dense`` layers (MatMul over the last axis + Add), global average pooling and a Dense
classifier with softmax. The input is NHWC.
"""

from __future__ import annotations

import onnx
import torch
from export_torch import export_as
from torch import nn


class Conv2D(nn.Module):
    """``Conv2D``/``DepthwiseConv2D`` + folded ``BatchNormalization`` (+ ReLU6), NHWC in/out."""

    def __init__(self, cin, cout, k=1, s=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        self.scale = nn.Parameter(torch.rand(cout) + 0.5)
        self.shift = nn.Parameter(torch.rand(cout) * 0.4 - 0.2)
        self.act = act

    def forward(self, x):
        y = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = y * self.scale + self.shift
        return torch.clamp(y, 0.0, 6.0) if self.act else y


class Dense(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(cin, cout) / cin**0.5)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        return torch.matmul(x, self.kernel) + self.bias


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.reduce, self.expand = Dense(c, c // r), Dense(c // r, c)

    def forward(self, x):
        s = x.mean((1, 2), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand=4, se=False):
        super().__init__()
        hidden = cin * expand
        self.expand = Conv2D(cin, hidden)
        self.depthwise = Conv2D(hidden, hidden, 3, stride, groups=hidden)
        self.se = SqueezeExcite(hidden) if se else None
        self.project = Conv2D(hidden, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MixedBranches(nn.Module):
    """Two branches concatenated on the channels-last axis (``Concatenate(axis=-1)``)."""

    def __init__(self, cin, c1, c2):
        super().__init__()
        self.a = Conv2D(cin, c1)
        self.b = nn.Sequential(Conv2D(cin, c2), Conv2D(c2, c2, 3))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=-1)


class KerasNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = Conv2D(3, 16, 3, 2)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1),
            InvertedResidual(16, 24, 2, se=True),
            InvertedResidual(24, 24, 1, se=True),
            MixedBranches(24, 16, 16),
            InvertedResidual(32, 32, 2),
        )
        self.top = Conv2D(32, 64)
        self.classifier = Dense(64, num_classes)

    def forward(self, x):
        y = self.top(self.blocks(self.stem(x)))
        return torch.softmax(self.classifier(y.mean((1, 2))), -1)


def keras_nhwc(size: int = 48, seed: int = 0) -> onnx.ModelProto:
    """tf2onnx's default opset (15), NHWC input, symbolic batch (Keras' ``None``)."""
    torch.manual_seed(seed)
    return export_as(KerasNet(), (1, size, size, 3), opset=15, dynamic_batch=True, seed=seed)
