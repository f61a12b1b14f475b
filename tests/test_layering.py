"""The layers import only downwards: ir < passes < retrain < cli (plugins and the package
root sit above them); no module of a lower layer imports a higher one, even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["ir", "passes", "retrain", "cli"]
FORBIDDEN = {
    "ir": {"passes", "retrain", "cli", "plugins", "zoo"},
    "passes": {"retrain", "cli"},
    "retrain": {"cli"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """The drpopt subpackages a file imports (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "drpopt" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports drpopt.{pkg}"
        for path in sorted((ROOT / layer).glob("*.py"))
        for pkg, line in imported_packages(path)
        if pkg in FORBIDDEN[layer]
    ]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from drpopt.cli.main import app\n")
    assert ("cli", 2) in imported_packages(bad)


def test_the_api_sits_under_the_cli():
    """``drpopt.api`` is the door the CLI uses: it never imports the CLI back."""
    bad = [f"api.py:{line}" for pkg, line in imported_packages(ROOT / "api.py") if pkg == "cli"]
    assert not bad, "\n".join(bad)


def test_no_module_is_much_over_500_lines():
    """STYLE's ~500-line guide, with a little slack (a module over 550 lines gets split).
    The zoo's example-model builders (``zoo/models.py``, ``zoo/torch_models.py``) are not
    checked yet: they are long lists of architectures and still to be split per family."""
    root = Path(__file__).resolve().parents[1]
    long = {
        str(p.relative_to(root)): n
        for folder in ("ir", "passes", "retrain", "cli", ".")
        for p in (root / folder).glob("*.py")
        if (n := len(p.read_text().splitlines())) > 550
    }
    assert not long, long
