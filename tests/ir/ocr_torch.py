"""A small CRNN recogniser written the way EasyOCR's ``model.py`` computes it: a VGG
feature extractor, ``AdaptiveAvgPool2d((None, 1))`` over the permuted map, ``squeeze(3)``,
two bidirectional LSTMs each followed by a Linear, and the CTC classifier. Exported by
torch (TorchScript exporter, opset 17), as EasyOCR's users export it for deployment."""

from __future__ import annotations

import io

import onnx
import torch
from bn_calibrate import calibrate
from torch import nn


class BidirectionalLSTM(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, input):
        recurrent, _ = self.rnn(input)
        return self.linear(recurrent)


class VGGFeatureExtractor(nn.Module):
    def __init__(self, input_channel, output_channel=32):
        super().__init__()
        oc = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, oc[0], 3, 1, 1),
            nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[0], oc[1], 3, 1, 1),
            nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[1], oc[2], 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(oc[2], oc[2], 3, 1, 1),
            nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[2], oc[3], 3, 1, 1, bias=False),
            nn.BatchNorm2d(oc[3]),
            nn.ReLU(True),
            nn.Conv2d(oc[3], oc[3], 3, 1, 1, bias=False),
            nn.BatchNorm2d(oc[3]),
            nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[3], oc[3], 2, 1, 0),
            nn.ReLU(True),
        )

    def forward(self, input):
        return self.ConvNet(input)


class CRNN(nn.Module):
    def __init__(self, input_channel=1, output_channel=32, hidden_size=16, num_class=12):
        super().__init__()
        self.FeatureExtraction = VGGFeatureExtractor(input_channel, output_channel)
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))
        self.SequenceModeling = nn.Sequential(
            BidirectionalLSTM(output_channel, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size),
        )
        self.Prediction = nn.Linear(hidden_size, num_class)

    def forward(self, input):
        visual_feature = self.FeatureExtraction(input)
        visual_feature = self.AdaptiveAvgPool(visual_feature.permute(0, 3, 1, 2))
        visual_feature = visual_feature.squeeze(3)
        contextual_feature = self.SequenceModeling(visual_feature)
        return self.Prediction(contextual_feature.contiguous())


def crnn(height: int = 32, width: int = 100, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = calibrate(CRNN(), (1, 1, height, width))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.randn(1, 1, height, width),), buf, opset_version=17, dynamo=False
        )
    return onnx.load_from_string(buf.getvalue())
