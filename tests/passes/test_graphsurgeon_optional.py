"""onnx-graphsurgeon is optional: only ``passes/interop.py`` imports it (a graphsurgeon
``Graph`` in and out of ``drpopt.api``); ``cleanup`` works without it, and asking for a
graphsurgeon model without it is one clear error."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from deadchannels import random_feeds, run_model

from drpopt.errors import BadInputError
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.to_onnx import to_onnx
from drpopt.passes.cleanup import CleanupPass
from drpopt.passes.interop import from_proto
from drpopt.zoo import build

ROOT = Path(__file__).resolve().parents[2]


def _imports_graphsurgeon(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] == "onnx_graphsurgeon" for n in names):
            return True
    return False


def test_only_interop_imports_graphsurgeon():
    packages = ["ir", "passes", "retrain", "cli", "zoo"]
    files = [ROOT / "api.py", *(p for pkg in packages for p in (ROOT / pkg).glob("*.py"))]
    users = sorted(str(p.relative_to(ROOT)) for p in files if _imports_graphsurgeon(p))
    assert users == ["passes/interop.py"]


@pytest.fixture
def no_graphsurgeon(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_graphsurgeon", None)  # import now raises


def test_cleanup_runs_without_graphsurgeon(no_graphsurgeon):
    model = build("resnet18")
    graph = from_onnx(model)
    graph.value("spare", const=np.ones(3, np.float32))  # an initializer nothing reads
    result = CleanupPass()(graph)
    assert result.modified and "spare" not in result.model.values
    feeds = random_feeds(model)
    for a, b in zip(run_model(to_onnx(result.model), feeds), run_model(model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_graphsurgeon_model_without_graphsurgeon_is_one_clear_error(no_graphsurgeon):
    with pytest.raises(BadInputError, match="onnx-graphsurgeon is not installed; pip install"):
        from_proto(build("resnet18"), "graphsurgeon")
