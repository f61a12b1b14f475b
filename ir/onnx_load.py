"""Reading an ONNX model file: the checks every reader makes, and the two ways to read.

Rules:
- the file is checked before parsing (missing, a directory, empty) and a parse failure or a
  model with no graph becomes a ``BadInputError`` that names the file and the fix;
- ``load_model`` reads the whole model (``onnx.load``), with its external data beside the
  file unless asked not to;
- ``read_for_analysis`` reads what ``from_onnx`` needs: never the external data, and from a
  path not the large weights either (``ir/onnx_scan.py``: they are read from the file when
  a pass needs them);
- an external tensor's file must be beside the model (it is read only when needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from drpopt.errors import BadInputError
from drpopt.ir.fold import MAX_ELEMENTS
from drpopt.ir.onnx_scan import FileWeights, read_light


def load_model(
    source: str | os.PathLike | onnx.ModelProto, external_data: bool = True
) -> onnx.ModelProto:
    """Reads an ONNX model from a path (with its external data unless ``external_data`` is
    False: then tensors stored beside the file stay there until read), or returns a given
    proto."""
    if isinstance(source, onnx.ModelProto):
        return source
    path = _checked_path(source)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning and others
        raise BadInputError(
            f"{path}: not a readable ONNX model (truncated or another format: {_short(err)}); "
            "export it again with torch.onnx.export or check the path"
        ) from err
    _check_graph(model, path)
    if external_data and _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as err:
            raise BadInputError(
                f"{path}: its external weight data could not be read ({_short(err)}); "
                "keep the .data file beside the model"
            ) from err
    return model


def _checked_path(source: str | os.PathLike) -> Path:
    path = Path(source)
    if not path.exists():
        raise BadInputError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory; give the path of an .onnx model file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: the file is empty; export the model again")
    return path


def _check_graph(model: onnx.ModelProto, path: Path) -> None:
    if not model.graph.node and not model.graph.output:
        raise BadInputError(
            f"{path}: holds no ONNX graph (is it really an .onnx file?); export the model again"
        )


def read_for_analysis(
    source: str | os.PathLike | onnx.ModelProto,
) -> tuple[onnx.ModelProto, FileWeights | None]:
    """The model without its external data, and from a path also without its large
    weights (``ir/onnx_scan.py``: read from the file when a pass needs them)."""
    if not isinstance(source, onnx.ModelProto):
        light = read_light(_checked_path(source), keep=MAX_ELEMENTS)
        if light is not None:
            _check_graph(light[0], Path(source))
            return light
    return load_model(source, external_data=False), None


def check_external(tensor: onnx.TensorProto, base_dir: str) -> None:
    """The file holding an external tensor must be there (it is read only when needed)."""
    location = next((e.value for e in tensor.external_data if e.key == "location"), None)
    path = Path(base_dir or ".") / (location or "")
    if not location or not path.is_file():
        raise BadInputError(
            f"the external weight data of '{tensor.name}' is stored outside the model in "
            f"'{location}', which is not beside it ({path}); keep the .data file beside "
            "the model"
        )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text or type(err).__name__)[:160]


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
