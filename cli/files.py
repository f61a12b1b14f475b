"""Writing outputs safely: atomically (temp file + rename), never over an input."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from drpopt.errors import BadInputError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory; give a file path for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise BadInputError(f"{parent}: the output directory does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_overwrite(output: Path, inputs: list[Path], force: bool = False) -> None:
    """Raises when ``output`` is one of ``inputs`` (unless ``force``)."""
    out = Path(output).resolve()
    for src in inputs:
        if Path(src).resolve() == out and not force:
            raise BadInputError(
                f"{output}: is also the input; choose another output path (or pass --force)"
            )


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Serialises an ONNX model atomically."""
    atomic_write_bytes(Path(path), model.SerializeToString())
