"""Small torch models that reduce over their channels (``test_channel_reductions.py``,
``tests/corpus/test_unseen_reductions.py``): a gate from a mean, max or min over the
channels (and pixels), a max over two pruned axes, a ResNet block with CBAM, a ViT-ish block
with RMSNorm; ``export_dynamo`` writes them as torch's dynamo exporter does."""

from __future__ import annotations

import warnings

import onnx
import torch
import torch.nn.functional as F
from torch import nn


def export_dynamo(model: nn.Module, shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    """``model`` (seeded) as torch's dynamo exporter writes it at ``opset``."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (torch.randn(*shape),), dynamo=True, opset_version=opset, verbose=False
        )
    return program.model_proto


class ChannelReduce(nn.Module):
    """Conv -> Relu -> +0.1 (the pruned channels are not zero there) -> ``how`` over
    ``dims`` (``mean``, ``amax``, ``amin``; ``max``/``min``: ``torch.max(h, 1)[0]``) with
    ``keepdim`` -> a gate of the conv's output (reshaped back when ``keepdim`` is off) ->
    Conv."""

    def __init__(self, how: str, dims: tuple[int, ...] = (1,), keepdim: bool = True):
        super().__init__()
        self.how, self.dims, self.keepdim = how, dims, keepdim
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = F.relu(self.a(x)) + 0.1
        if self.how in ("max", "min"):
            r = getattr(torch, self.how)(h, self.dims[0], keepdim=self.keepdim)[0]
        else:
            r = getattr(torch, self.how)(h, dim=self.dims, keepdim=self.keepdim)
        shape = [1 if i in self.dims else s for i, s in enumerate(h.shape)]
        return self.b(h * torch.sigmoid(r.reshape(shape)))


class SquareExtreme(nn.Module):
    """``-a(x)**2`` and its max over the channels (``a(x)**2`` and its min): a pruned channel
    is 0 there, the largest (least) value any channel can have, so without its mask the
    sparse model's max (min) would be 0 at every pixel."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = self.a(x) ** 2
        if self.how == "amax":
            h = -h
        return self.b(h) + getattr(torch, self.how)(h, 1, keepdim=True)


class TwoAxes(nn.Module):
    """A Conv1d's channels (axis 1) and a Linear's features over the last axis (axis 2) of
    one tensor, both reduced by one max: two groups masked on one reduction (``-z**2``: a
    pruned entry, 0, would win the max unmasked)."""

    def __init__(self):
        super().__init__()
        self.a, self.lin = nn.Conv1d(3, 16, 1), nn.Linear(8, 12)
        self.out, self.mix = nn.Linear(12, 4), nn.Conv1d(16, 5, 1)

    def forward(self, x):
        h = -(self.lin(self.a(x)) ** 2)
        return self.mix(self.out(h)) + h.amax((1, 2), keepdim=True)


class CBAM(nn.Module):
    """CBAM (Woo et al. 2018, as detectors and segmenters copy it): channel attention (a
    shared MLP over the average- and max-pooled channels), then spatial attention (the mean
    and the max over the channels, concatenated, a 7x7 conv)."""

    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, c // r, 1), nn.ReLU(), nn.Conv2d(c // r, c, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        avg, peak = F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(peak))
        s = torch.cat([torch.mean(x, 1, keepdim=True), torch.max(x, 1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(self.spatial(s))


class ResNetCBAM(nn.Module):
    """Stem conv, one basic residual block with CBAM before the addition, pooled head."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.cbam, self.fc = CBAM(c), nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.cbam(self.conv2(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class T5Norm(nn.Module):
    """T5's and LLaMA's RMSNorm written out: ``w * x * rsqrt(mean(x**2) + eps)``."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class RMSBlock(nn.Module):
    """A ViT-ish block: patch embedding, RMSNorm -> MLP (32 hidden) with a residual,
    RMSNorm, mean over the tokens, classes. ``written``: T5's RMSNorm instead of
    ``nn.RMSNorm`` (which the TorchScript exporter cannot export)."""

    def __init__(self, written: bool = False, d: int = 16):
        super().__init__()
        norm = T5Norm if written else nn.RMSNorm
        self.embed, self.norm1, self.norm2 = nn.Conv2d(3, d, 4, stride=4), norm(d), norm(d)
        self.fc1, self.fc2, self.head = nn.Linear(d, 32), nn.Linear(32, d), nn.Linear(d, 5)
        if not written:
            for n in (self.norm1, self.norm2):
                nn.init.uniform_(n.weight, 0.5, 1.5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(F.gelu(self.fc1(self.norm1(t))))
        return self.head(self.norm2(t).mean(1))
