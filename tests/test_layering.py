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


# ---- function size -----------------------------------------------------------------------
# STYLE's "no function over ~60 lines", made precise: a function's length is its lines from
# the ``def`` line to the last line of its body, both included (decorators not counted; a
# signature spread over many lines counts in full). A nested function counts inside its
# parent and again on its own. The zoo's example-model builders are exempt, as they are
# from the module-size check.
MAX_FUNCTION_LINES = 60
LIBRARY_FOLDERS = ("ir", "passes", "retrain", "cli", ".")

# Functions still over the limit in modules other engineers were editing when the rule
# came in (issue 10); remove an entry once its function is split. An entry whose function
# is gone or short again fails the check below, so the list only shrinks.
LONG_FUNCTIONS_ALLOWED: set[str] = set()  # none left


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``{qualified name: lines}`` of the functions of ``path`` longer than ``limit``."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found[name] = lines
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def library_long_functions() -> dict[str, int]:
    return {
        f"{path.relative_to(ROOT).as_posix()}:{name}": lines
        for folder in LIBRARY_FOLDERS
        for path in sorted((ROOT / folder).glob("*.py"))
        for name, lines in long_functions(path).items()
    }


def test_no_library_function_is_over_60_lines():
    long = {k: v for k, v in library_long_functions().items() if k not in LONG_FUNCTIONS_ALLOWED}
    assert not long, "split these functions (lines from def to the end of the body):\n" + (
        "\n".join(f"{k}: {v}" for k, v in sorted(long.items()))
    )


def test_the_allowlist_only_names_long_functions():
    stale = LONG_FUNCTIONS_ALLOWED - set(library_long_functions())
    assert not stale, f"no longer over the limit, remove from LONG_FUNCTIONS_ALLOWED: {stale}"


def test_the_size_check_sees_a_long_function(tmp_path):
    def lines(n: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    src = tmp_path / "m.py"
    src.write_text(
        # 60 lines from def to the last body line, under a decorator: allowed
        "@decorator\ndef ok(\n    a,\n):\n" + lines(57, "    ") + "\n"
        # 61 lines, counting the nested function's: too long (the nested one is short)
        "class C:\n    def long(self):\n"
        + lines(58, "        ")
        + "        def inner():\n            pass\n"
    )
    assert long_functions(src) == {"C.long": 61}
    assert long_functions(src, limit=59) == {"ok": 60, "C.long": 61}
