"""Target profiles: what a device wants from a sparsity plan.

A profile fixes the alignment of kept channel counts, the minimum channels a group keeps,
which layers stay dense, the recommended rate, a per-group cap, and which form of ONNX the
device's compiler takes. The DRP-AI3 block parameters are not public: the ``drpai`` numbers
below are documented defaults, and every one can be overridden per run (``mask:align=16``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drpopt.errors import BadInputError


@dataclass(frozen=True)
class TargetProfile:
    """What a target wants. ``align``: kept channel counts are a multiple of it (a group
    smaller than ``align`` stays dense); ``min_channels``: the fewest channels a pruned group
    keeps; ``max_rate``: the most any one group is pruned; ``keep_first`` / ``keep_last``:
    leave the first layer and the final prediction layers dense; ``output``: ``sparse``
    (dense shapes with zeros) or ``compact`` (channels removed)."""

    name: str
    description: str
    align: int = 1
    min_channels: int = 1
    max_rate: float = 0.95
    default_rate: float = 0.5
    keep_first: bool = True
    keep_last: bool = True
    output: Literal["sparse", "compact"] = "compact"


TARGETS: dict[str, TargetProfile] = {
    "generic": TargetProfile(
        "generic",
        "channels only, any runtime: compact ONNX with pruned channels removed",
    ),
    "cpu": TargetProfile(
        "cpu",
        "onnxruntime on x86 CPUs: compact ONNX with kept channel counts a multiple of 16, the "
        "block of its fast NCHWc convolutions (unaligned counts fall back to a slower path)",
        align=16,
        min_channels=16,
    ),
    "drpai": TargetProfile(
        "drpai",
        "Renesas DRP-AI (RZ/V2H): sparse ONNX (dense shapes, zeros) for the DRP-AI compiler's "
        "sparse mode; kept channels a multiple of 8 (a documented default, not a published "
        "figure); Renesas recommends pruning at least 70%",
        align=8,
        min_channels=8,
        max_rate=0.95,
        default_rate=0.7,
        output="sparse",
    ),
}


def get_target(name: str) -> TargetProfile:
    """The profile called ``name`` (BadInputError listing the valid ones otherwise)."""
    if name not in TARGETS:
        raise BadInputError(f"unknown target '{name}'; valid targets: {', '.join(TARGETS)}")
    return TARGETS[name]
