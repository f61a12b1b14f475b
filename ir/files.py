"""Writing outputs safely: atomically (temp file + rename), never over an input."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from drpopt.errors import BadInputError
from drpopt.ir.onnx_scan import read_light


def _output_dir(path: Path) -> Path:
    """The folder an output goes to, after the checks every writer makes."""
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory; give a file path for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise BadInputError(f"{parent}: the output directory does not exist; create it first")
    if not parent.is_dir():
        raise BadInputError(f"{parent}: is not a directory; give a writable output path")
    return parent


def _temp_beside(path: Path, suffix: str) -> tuple[int, str]:
    """A temporary file in the output's folder (so the final rename is atomic)."""
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=_output_dir(path))
    except OSError as err:
        raise BadInputError(
            f"{path}: cannot write there ({err.strerror or err}); choose a writable output path"
        ) from err


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = _temp_beside(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise BadInputError(
                f"{path}: cannot write there ({err.strerror or err}); choose a writable output path"
            ) from err
        raise


def probe_writable(path: Path) -> None:
    """Raises ``BadInputError`` now (before any long work) when ``path`` cannot be written:
    a directory, a missing or read-only folder, a special file system."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise BadInputError(f"{path}: is not a regular file; give a file path for the output")
    fd, tmp = _temp_beside(path, ".probe")
    os.close(fd)
    os.unlink(tmp)


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


def stores_external_data(path: Path) -> bool:
    """Whether the model file keeps its weights beside it (its outputs then do too). Such
    a file holds only the graph, so reading it without the weights is cheap."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > 64_000_000:
            return False
        light = read_light(path, keep=0)  # the weights stay in the file
        model = light[0] if light else onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


EXTERNAL_OVER = 1_800_000_000  # bytes: protobuf cannot hold a model of 2 GB or more


def save_model(model: onnx.ModelProto, path: Path, external: bool | None = None) -> None:
    """Serialises an ONNX model atomically. With ``external`` (default: when the model is
    too large for one protobuf) the weights go to ``<name>.data`` beside it."""
    path = Path(path)
    if external is None:
        external = model.ByteSize() > EXTERNAL_OVER
    if not external:
        atomic_write_bytes(path, model.SerializeToString())
        return
    parent = _output_dir(path)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    try:
        onnx.save_model(
            model,
            str(tmpdir / path.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=1024,
        )
        data = tmpdir / f"{path.name}.data"
        if data.exists():
            os.chmod(data, 0o666 & ~_umask())  # onnx writes it 0600; outputs get the usual mode
            os.replace(data, parent / data.name)
        os.replace(tmpdir / path.name, path)
    finally:
        for leftover in tmpdir.glob("*"):
            leftover.unlink()
        tmpdir.rmdir()
