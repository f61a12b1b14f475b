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


# ---- the README's console commands ------------------------------------------------------
def console_commands() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


BUILDER = """import torch


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1),
    )


yolox_s = build_model
"""


def _setup(root: Path) -> None:
    """The files the README's commands name, small: model.onnx (resnet18-like, 64x64),
    det.onnx (dynamic height and width, weights in Constant nodes), inputs.npz, images/,
    builder modules and a pruned checkpoint."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent / "ir"))
    from dynmodels import dynamic_cnn

    from drpopt.passes.inputs import write_png

    onnx.save(build("resnet18"), str(root / "model.onnx"))
    onnx.save(dynamic_cnn(), str(root / "det.onnx"))
    rng = np.random.default_rng(0)
    np.savez(root / "inputs.npz", input=rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
    calib = rng.standard_normal((16, 3, 64, 64)).astype(np.float32)
    np.savez(root / "calib.npz", input=calib)  # calibration batches for model.onnx
    (root / "images").mkdir()
    for i in range(2):
        write_png(root / "images" / f"{i}.png", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    (root / "mymodels.py").write_text(BUILDER)
    (root / "path" / "to").mkdir(parents=True)
    (root / "path" / "to" / "models.py").write_text(BUILDER)
    import torch

    namespace: dict = {}
    exec(BUILDER, namespace)
    model = namespace["build_model"]()
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].bias[:4] = 0
    torch.save(model.state_dict(), root / "pruned.pt")


def test_readme_console_commands_run_as_written(tmp_path, monkeypatch):
    """Every `$ drpopt ...` line of the README, in order, exits 0 (on small stand-ins)."""
    import shlex

    from typer.testing import CliRunner

    from drpopt.cli.main import app

    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    commands = console_commands()
    assert len(commands) >= 20
    runner = CliRunner()
    for line in commands:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "drpopt", line
        result = runner.invoke(app, argv[1:], env={"COLUMNS": "120"})
        assert result.exit_code == 0, f"$ {line}\n{result.output}\n{result.stderr}"


def test_pytest_m_slow_selects_tests():
    """`pytest -m slow` (the README's Development section) must select something: exit 5
    means no test carries the mark."""
    import subprocess
    import sys

    root = README.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow",
         "-p", "no:cacheprovider"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-500:]
    assert "test_fuzz_corpus_in_real_processes" in done.stdout
