"""The README's Python examples run as written (on a bundled model saved as model.onnx)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from drpopt.zoo import build

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    onnx.save(build("yolox_s_like"), "model.onnx")
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {})
    if "small.onnx" in python_blocks()[index]:
        onnx.checker.check_model(onnx.load("small.onnx"))
