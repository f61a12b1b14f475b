"""Calibration data: model inputs streamed in batches, from an ``.npz`` or a folder of images.

``calibrate`` puts a :class:`CalibrationData` in the pipeline context's ``calibration`` (the
graph is unchanged); the data-aware passes (``score:criterion=activation`` and
``reconstruction``, ``bias-correct``, ``reconstruct``) read it from there. From Python,
give ``PassManager(...)(graph, context=PipelineContext(calibration=CalibrationData(...)))``.

Rules:
- ``.npz``: one array per model input, named like the input, the first axis being samples
  (a single array feeds a model with a single input whatever its name);
- a folder: every image file in it (``passes/inputs.IMAGE_SUFFIXES``, sorted by name, not
  recursive), read as ``--inputs`` reads one (``inputs.image_array``: PNG and ``.npy``
  built in, the other formats through Pillow; an ``.npy`` is an HxWxC array in [0, 255]),
  resized (bilinear) to ``size`` (H, W; default: the model input's), scaled by ``scale``
  (default 1/255), normalised as ``(x - mean) / std`` per channel in ``order``
  (``rgb``/``bgr``) and laid out as ``nchw`` or ``nhwc``; a model input with one channel
  gets grey images;
- batches are read lazily (images are decoded one batch at a time); ``holdout`` keeps the
  last share of the samples aside (``CalibrationData.split``) for drift reports.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.core import Graph
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.context import context_of
from drpopt.passes.inputs import IMAGE_SUFFIXES, image_array

log = logging.getLogger(__name__)


@dataclass
class Preprocess:
    """How an image becomes a model input: resize, scale, normalise, channel order, layout."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"

    def __post_init__(self) -> None:
        if self.order not in ("rgb", "bgr"):
            raise BadInputError(f"calibration order {self.order!r} is not rgb or bgr")
        if self.layout not in ("nchw", "nhwc"):
            raise BadInputError(f"calibration layout {self.layout!r} is not nchw or nhwc")
        if any(s == 0 for s in self.std):
            raise BadInputError("calibration std must not contain 0")

    def __call__(self, path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
        img = image_array(path, channels, size, bgr=self.order == "bgr") * self.scale
        img = (img - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "nchw":
            img = np.transpose(img, (2, 0, 1))
        return np.ascontiguousarray(img, dtype=np.float32)


@dataclass
class InputSpec:
    """One model input: its name, shape (ints or None/str for unknown) and dtype."""

    name: str
    shape: tuple
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))


def model_inputs(graph: Graph) -> list[InputSpec]:
    """The non-constant graph inputs of ``graph``."""
    return [
        InputSpec(v.name, tuple(v.shape or ()), np.dtype(v.dtype or np.float32))
        for v in graph.inputs
        if v.const is None
    ]


class CalibrationData:
    """Model inputs in batches: ``batches()`` yields ``{input name: array}`` dicts.

    ``indices`` selects (and orders) the samples this view covers; ``split`` makes two views.
    """

    def __init__(
        self,
        source: str | os.PathLike | dict[str, np.ndarray],
        batch_size: int = 16,
        preprocess: Preprocess | None = None,
        limit: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"calibration batch size {batch_size} must be at least 1")
        self.batch_size = batch_size
        self.preprocess = preprocess or Preprocess()
        self.arrays: dict[str, np.ndarray] | None = None
        self.files: list[Path] | None = None
        self.source = source if isinstance(source, dict) else Path(source)
        if isinstance(source, dict):
            self.arrays = {k: np.asarray(v) for k, v in source.items()}
        else:
            path = Path(source)
            if path.is_dir():
                self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if not self.files:
                    raise BadInputError(
                        f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"
                    )
            elif path.is_file():
                from drpopt.passes.feeds import load_inputs

                self.arrays = load_inputs(path)
            else:
                raise BadInputError(
                    f"{path}: no such calibration data; give an .npz of input batches "
                    "(np.savez(path, <input name>=array)) or a folder of images"
                )
        n = self._count()
        if n == 0:
            raise BadInputError(f"{self.source}: the calibration data holds no samples")
        if limit:
            n = min(n, limit)
        self.indices = list(range(n)) if indices is None else list(indices)

    def _count(self) -> int:
        if self.files is not None:
            return len(self.files)
        assert self.arrays is not None
        sizes = {k: int(v.shape[0]) if v.ndim else 0 for k, v in self.arrays.items()}
        if len(set(sizes.values())) > 1:
            raise BadInputError(
                f"{self.source}: arrays have different sample counts {sizes}; "
                "the first axis of every array is the sample axis"
            )
        return next(iter(sizes.values()), 0)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def view(self, indices: Sequence[int]) -> CalibrationData:
        """The same source restricted to ``indices`` (positions in the source)."""
        out = object.__new__(CalibrationData)
        out.__dict__.update(self.__dict__)
        out.indices = list(indices)
        return out

    def split(self, holdout: float) -> tuple[CalibrationData, CalibrationData | None]:
        """(fit part, held-out part): the last ``holdout`` share of samples, at least one
        batch when ``holdout`` > 0 and the data has two batches or more."""
        if holdout <= 0 or len(self.indices) < 2:
            return self, None
        n_hold = max(1, int(round(len(self.indices) * holdout)))
        n_hold = min(n_hold, len(self.indices) - 1)
        return self.view(self.indices[:-n_hold]), self.view(self.indices[-n_hold:])

    def batches(self, inputs: list[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        """The samples in batches of ``batch_size``, one array per model input."""
        for lo in range(0, len(self.indices), self.batch_size):
            idx = self.indices[lo : lo + self.batch_size]
            yield self._batch(idx, inputs)

    def _batch(self, idx: list[int], inputs: list[InputSpec]) -> dict[str, np.ndarray]:
        if self.files is not None:
            if len(inputs) != 1:
                raise BadInputError(
                    f"a folder of images feeds a model with one input; this one has "
                    f"{len(inputs)} ({', '.join(i.name for i in inputs)}); give an .npz"
                )
            spec = inputs[0]
            channels, size = self._image_geometry(spec)
            arr = np.stack([self.preprocess(self.files[i], channels, size) for i in idx])
            return {spec.name: arr.astype(spec.dtype)}
        assert self.arrays is not None
        arrays = self.arrays
        if len(arrays) == 1 and len(inputs) == 1 and inputs[0].name not in arrays:
            arrays = {inputs[0].name: next(iter(arrays.values()))}
        out = {}
        for spec in inputs:
            if spec.name not in arrays:
                raise BadInputError(
                    f"{self.source}: no array for model input '{spec.name}' (it holds: "
                    f"{', '.join(arrays)}); save one array per input under the input's name"
                )
            out[spec.name] = np.asarray(arrays[spec.name][idx]).astype(spec.dtype, copy=False)
        return out

    def _image_geometry(self, spec: InputSpec) -> tuple[int, tuple[int, int]]:
        shape = spec.shape
        if len(shape) != 4:
            raise BadInputError(
                f"model input '{spec.name}' has rank {len(shape)}; images feed 4-D inputs"
            )
        nhwc = self.preprocess.layout == "nhwc"
        c = shape[3] if nhwc else shape[1]
        hw = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        size = self.preprocess.size or hw
        if not all(isinstance(d, int) and d > 0 for d in size):
            raise BadInputError(
                f"model input '{spec.name}' has no fixed height and width; "
                "give the calibration size (calibrate:size=H|W, or --calib-size H,W)"
            )
        channels = c if isinstance(c, int) else 3
        return channels, (int(size[0]), int(size[1]))


def require_calibration(graph: Graph, what: str) -> CalibrationData:
    """The calibration data attached to ``graph``, or a BadInputError naming the fix."""
    data = context_of(graph).calibration
    if data is None:
        raise BadInputError(
            f"{what} needs calibration data: run 'calibrate:data=DATA' before it "
            "(an .npz of input batches or a folder of images), or give --calib DATA"
        )
    return data


@dataclass
class CalibratePass(Pass):
    """Attach calibration inputs (an .npz or a folder of images) for the data-aware passes."""

    name: ClassVar[str] = "calibrate"
    data: str = ""
    batch: int = 16
    limit: int = 0
    holdout: float = 0.0
    size: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    scale: float = 1.0 / 255.0
    order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"

    def __post_init__(self) -> None:
        if not self.data:
            raise BadInputError("calibrate needs data=PATH (an .npz or a folder of images)")
        if self.size and len(self.size) != 2:
            raise BadInputError(f"calibrate:size takes H|W, got {self.size}")
        if not 0.0 <= self.holdout < 1.0:
            raise BadInputError(f"calibrate:holdout {self.holdout} is outside [0, 1)")

    def call(self, model: Graph) -> PassResult:
        pre = Preprocess(
            size=(self.size[0], self.size[1]) if self.size else None,
            mean=tuple(self.mean) or (0.0,),
            std=tuple(self.std) or (1.0,),
            scale=self.scale,
            order=self.order,
            layout=self.layout,
        )
        data = CalibrationData(self.data, self.batch, pre, self.limit)
        fit, held = data.split(self.holdout)
        context = context_of(model)
        context.calibration = fit
        context.calibration_holdout = held
        log.info("calibration: %d samples (%d held out)", len(fit), len(held) if held else 0)
        return PassResult(model, False)
