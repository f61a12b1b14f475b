"""Real inputs for verification: an ``.npz`` of arrays, or a folder of images with a stated
preprocessing.

Rules:
- an ``.npz`` holds one array per model input, by name; when every array has one more dim
  than its input, the first axis enumerates samples (one run each);
- a folder gives one sample per image (sorted by name, at most ``limit``) for a model with
  one rank-4 float input: decoded (PNG built in; ``.npy`` arrays HxWxC; JPEG and others
  through Pillow when it is installed), converted to RGB (or BGR), resized (bilinear) to
  ``size`` or the input's fixed height and width, scaled by ``scale``, normalised with
  ``mean``/``std`` per channel and laid out NCHW or NHWC (default: from the input's shape);
- every failure is a ``BadInputError`` naming the file; the returned description says what
  was fed, for reports.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from drpopt.errors import BadInputError

# what a folder of images may hold (``--inputs`` and ``calibrate``): PNG and ``.npy`` are
# read here, the others through Pillow
IMAGE_SUFFIXES = (".png", ".npy", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


@dataclass
class ImagePreprocess:
    """How images become an input tensor (stated in every report that uses them)."""

    size: tuple[int, int] | None = None  # (height, width); None: the input's fixed dims
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    layout: str | None = None  # "nchw" | "nhwc"; None: from the input's shape
    channels: str = "rgb"  # "rgb" | "bgr"

    def describe(self, size: tuple[int, int], layout: str) -> str:
        nums = lambda xs: ",".join(f"{x:g}" for x in xs)  # noqa: E731
        return (
            f"resized to {size[0]}x{size[1]} (bilinear), {self.channels.upper()}, "
            f"x{self.scale:g}, mean {nums(self.mean)}, std {nums(self.std)}, {layout.upper()}"
        )


def load_samples(
    path: str | os.PathLike,
    model: onnx.ModelProto,
    preprocess: ImagePreprocess | None = None,
    limit: int = 16,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """(input samples, what they are) from an ``.npz`` or a folder of images."""
    from drpopt.ir.input_shapes import graph_inputs
    from drpopt.passes.feeds import load_inputs

    path = Path(path)
    names = [i.name for i in graph_inputs(model)]
    if path.is_dir():
        return _image_samples(path, model, preprocess or ImagePreprocess(), limit)
    arrays = load_inputs(path, names)
    ranks = _ranks(model)
    if names and all(ranks.get(n) is not None and arrays[n].ndim == ranks[n] + 1 for n in names):
        counts = {arrays[n].shape[0] for n in names}
        if len(counts) != 1:
            raise BadInputError(f"{path}: the arrays hold different numbers of samples {counts}")
        count = counts.pop()
        samples = [{n: arrays[n][i] for n in names} for i in range(count)]
        return samples, f"{count} sample(s) from {path}"
    return [arrays], f"the inputs in {path}"


def _ranks(model: onnx.ModelProto) -> dict[str, int | None]:
    from drpopt.ir.input_shapes import input_dims

    return {n: (len(d) if d is not None else None) for n, d in input_dims(model).items()}


def _image_samples(
    folder: Path, model: onnx.ModelProto, pre: ImagePreprocess, limit: int
) -> tuple[list[dict[str, np.ndarray]], str]:
    from drpopt.ir.input_shapes import graph_inputs, input_dims

    inputs = graph_inputs(model)
    dims = input_dims(model)
    if len(inputs) != 1 or dims[inputs[0].name] is None or len(dims[inputs[0].name]) != 4:
        raise BadInputError(
            f"{folder}: a folder of images feeds a model with one 4-D image input; this model "
            f"has {len(inputs)} input(s); give an .npz with one array per input instead"
        )
    name = inputs[0].name
    d = dims[name]
    layout = pre.layout or ("nhwc" if d[3] in (1, 3, 4) and d[1] not in (1, 3, 4) else "nchw")
    if layout not in ("nchw", "nhwc"):
        raise BadInputError(f"--layout {layout!r}: choose nchw or nhwc")
    hw = (d[2], d[3]) if layout == "nchw" else (d[1], d[2])
    channels = d[1] if layout == "nchw" else d[3]
    size = pre.size or (hw if all(isinstance(x, int) for x in hw) else None)
    if size is None:
        raise BadInputError(
            f"{folder}: the input '{name}' has no fixed height and width; give --image-size "
            "H,W or --input-shape"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(
            f"{folder}: holds no image ({', '.join(IMAGE_SUFFIXES)}); give a folder of images "
            "or an .npz"
        )
    n_ch = channels if isinstance(channels, int) else 3
    mean = _per_channel(pre.mean, n_ch, "mean")
    std = _per_channel(pre.std, n_ch, "std")
    if any(s == 0 for s in std):
        raise BadInputError("--std: a channel's std is 0")
    samples = []
    for f in files[:limit]:
        img = image_array(f, n_ch, size, bgr=pre.channels == "bgr") * pre.scale
        img = (img - np.asarray(mean)) / np.asarray(std)
        arr = img.transpose(2, 0, 1) if layout == "nchw" else img
        samples.append({name: arr[None].astype(np.float32)})
    desc = f"{len(samples)} image(s) from {folder} ({pre.describe(size, layout)})"
    return samples, desc


def _per_channel(values: tuple[float, ...], n: int, what: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values) * n
    if len(values) != n:
        raise BadInputError(f"--{what}: {len(values)} values for {n} channels")
    return tuple(values)


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWxC to ``size`` (height, width), bilinear with half-pixel centres."""
    out = img.astype(np.float64)
    for axis, new in ((0, size[0]), (1, size[1])):
        old = out.shape[axis]
        if old == new:
            continue
        pos = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, old - 1)
        w = (pos - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def image_array(path: Path, channels: int, size: tuple[int, int], bgr: bool = False) -> np.ndarray:
    """The image file ``path`` as an HxWxC float64 array in the file's range (0-255 for
    8-bit images; an ``.npy`` as it is stored): alpha dropped, grey repeated to three
    channels or RGB averaged to one as ``channels`` asks, reversed to BGR with ``bgr``, and
    resized (bilinear) to ``size`` (height, width)."""
    img = _read_image(path)
    img = img[..., :3] if img.shape[2] >= 3 else img
    if channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif channels == 1 and img.shape[2] == 3:
        img = img.mean(axis=2, keepdims=True)
    if bgr and img.shape[2] == 3:
        img = img[..., ::-1]
    return resize_bilinear(img, size)


def _read_image(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".png":
            arr = read_png(path.read_bytes())
        else:
            arr = _read_with_pillow(path)
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(
            f"{path}: not a readable image ({' '.join(str(err).split())[:120]})"
        ) from err
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.dtype.kind not in "uif":
        raise BadInputError(f"{path}: expected an HxWxC image, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float64)


def _read_with_pillow(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as err:
        raise BadInputError(
            f"{path}: reading {path.suffix} images needs Pillow (pip install pillow); "
            "PNG and .npy need nothing"
        ) from err
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_png(data: bytes) -> np.ndarray:
    """An 8-bit, non-interlaced PNG (gray, RGB, palette, with or without alpha) as HxWxC."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, palette = 8, [], None
    width = height = depth = ctype = interlace = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or interlace or channels is None or not width or not height:
        raise ValueError(f"PNG bit depth {depth}, colour type {ctype}, interlace {interlace}")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    stride = width * channels
    raw = raw[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    for y in range(height):
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        if f == 0:
            cur = row
        elif f == 2:
            cur = (row + prev) & 255
        elif f == 1:
            cur = (np.cumsum(row.reshape(width, channels), axis=0) & 255).ravel()
        elif f in (3, 4):
            cur = np.zeros(stride, np.int32)
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b = prev[x]
                c = prev[x - channels] if x >= channels else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (row[x] + pred) & 255
        else:
            raise ValueError(f"PNG filter {f}")
        out[y] = cur
    img = out.astype(np.uint8).reshape(height, width, channels)
    if ctype == 3:
        if palette is None:
            raise ValueError("palette PNG without PLTE")
        img = palette[img[..., 0]]
    return img


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Writes an HxWx3 (or HxW) uint8 array as a PNG (filter 0); for tests and examples."""
    img = np.asarray(img, np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    ctype = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)
