"""How far a pruned model's outputs drift from the dense model's on held-out data.

Rules:
- both models run on the same batches (onnxruntime, one batch at a time); per output the
  cosine similarity of the flattened outputs over all samples and the relative error
  ``|pruned - dense| / |dense|`` (L2 norms) accumulate across batches;
- an output is *large drift* when cosine < ``min_cosine`` (0.9) or relative error >
  ``max_rel_error`` (0.5); a constant (all-zero) dense output cannot be judged and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from drpopt.passes.activations import run_batches
from drpopt.passes.calibrate import CalibrationData


@dataclass
class OutputDrift:
    """The drift of one output over the data."""

    name: str
    cosine: float
    rel_error: float
    large: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "cosine": self.cosine if math.isfinite(self.cosine) else str(self.cosine),
            "rel_error": self.rel_error if math.isfinite(self.rel_error) else str(self.rel_error),
            "large": self.large,
            "note": self.note,
        }


def output_drift(
    dense: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: CalibrationData,
    min_cosine: float = 0.9,
    max_rel_error: float = 0.5,
) -> list[OutputDrift]:
    """Per output of ``dense`` (matched by name in ``pruned``), cosine and relative error."""
    names = [o.name for o in dense.graph.output if o.name in {p.name for p in pruned.graph.output}]
    dot = dict.fromkeys(names, 0.0)
    nd = dict.fromkeys(names, 0.0)
    npr = dict.fromkeys(names, 0.0)
    diff = dict.fromkeys(names, 0.0)
    for outs_d, outs_p in run_batches([dense, pruned], [names, names], data, "drift"):
        for n in names:
            d = np.asarray(outs_d[n], np.float64).ravel()
            p = np.asarray(outs_p[n], np.float64).ravel()
            dot[n] += float(d @ p)
            nd[n] += float(d @ d)
            npr[n] += float(p @ p)
            diff[n] += float((p - d) @ (p - d))
    out = []
    for n in names:
        if nd[n] <= 0:
            out.append(OutputDrift(n, math.nan, math.nan, False, "dense output is all zero"))
            continue
        cos = dot[n] / math.sqrt(nd[n] * npr[n]) if npr[n] > 0 else 0.0
        rel = math.sqrt(diff[n] / nd[n])
        out.append(OutputDrift(n, cos, rel, cos < min_cosine or rel > max_rel_error))
    return out
