"""The project's layout rules, checked on the source: import arrows point one way, no file is too long, the library
(everything under liftkit/ but the command-line layer liftkit/cli/) neither parses flags nor prints."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "liftkit"
MAX_LINES = 400


def _liftkit_imports(path: Path) -> Set[str]:
    """Every ``liftkit.*`` module imported anywhere in a file (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("liftkit"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("liftkit"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _unit(module: str) -> str:
    """The layer a module belongs to: its sub-package (``weights``) or top-level module (``specs``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "liftkit"


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = path
    return out


def package_graph() -> Dict[str, Set[str]]:
    """unit -> units it imports (the package's own ``__init__`` re-exports are not arrows)."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        if name == "liftkit":
            continue
        src = _unit(name)
        targets = {_unit(t) for t in _liftkit_imports(path) if _unit(t) != "liftkit"}
        graph.setdefault(src, set()).update(t for t in targets if t != src)
    return graph


def _cycle(graph: Dict[str, Set[str]]):
    state: Dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack + [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_arrow_runs_back_up_between_packages():
    graph = package_graph()
    assert "data" in graph and "eval" in graph and "weights" in graph  # the walk saw the package
    assert _cycle(graph) is None, f"import cycle between liftkit packages: {' -> '.join(_cycle(graph))}"
    assert "eval" not in graph["data"] and "backbones" not in graph["weights"]
    # only the command-line layer (and the package's lazy re-exports) sit above the facade
    for unit, targets in graph.items():
        if unit != "cli":
            assert "cli" not in targets, f"liftkit.{unit} imports the command-line layer"
            if unit != "extractor":
                assert "extractor" not in targets, f"liftkit.{unit} imports the facade liftkit.extractor"


def test_no_file_over_the_line_limit():
    files = sorted(PACKAGE.rglob("*.py")) + sorted(ROOT.glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    files += sorted((ROOT / "tests").glob("*.py"))
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert len(files) > 40
    assert long == {}, f"files over {MAX_LINES} lines: {long}"


def test_library_has_no_argparse_and_no_print():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} print")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} argparse")
    assert offenders == []


def test_real_data_tests_skip_without_the_data_and_fail_when_required(tmp_path, monkeypatch):
    from tests.conftest import REQUIRE_DATA_ENV, require_shared_data

    assert require_shared_data(tmp_path) == tmp_path
    monkeypatch.delenv(REQUIRE_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="is missing.*LIFTKIT_REQUIRE_DATA=1 to fail"):
        require_shared_data(tmp_path / "gone")
    monkeypatch.setenv(REQUIRE_DATA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="LIFTKIT_REQUIRE_DATA=1 makes them required"):
        require_shared_data(tmp_path / "gone")
    assert f"export {REQUIRE_DATA_ENV}=1" in (ROOT / ".ci" / "run").read_text()
