"""The benchmarks' layout: scripts share code through the shared modules only, never through each other, and
every current script can be found (a Make target, the benchmarks README's index, CONTRIBUTING.md)."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
BENCHMARKS = os.path.join(ROOT, "benchmarks")
# Libraries, not benchmarks: bench_common for every script, upstream_corpus (the upstream text) for
# bench_upstream.py; upstream_corpus keeps a command line that says which sources are installed.
SHARED = {"bench_common", "upstream_corpus"}


def _stems(folder):
    return {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}


SCRIPTS = sorted(_stems(BENCHMARKS) - SHARED)
# Superseded and removed (their figures are in benchmarks/archive/results; the scripts at 3b4d9a5).
ARCHIVED = {"bench_bbc_transfer", "bench_calibrated"}


def imported_modules(source: str) -> dict[str, list[str]]:
    """Top-level module -> the names taken from it (``from m import a``; ``m._a`` attribute reads too), for
    every import statement, ``__import__("m")`` and ``importlib.import_module("m")`` in ``source``."""
    tree = ast.parse(source)
    found, aliases = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                found.setdefault(top, [])
                aliases[a.asname or top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module.split(".")[0], []).extend(a.name for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.setdefault(node.args[0].value.split(".")[0], [])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found[aliases[node.value.id]].append(node.attr)
    return found


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(_stems(BENCHMARKS)))
def test_a_benchmark_imports_only_the_shared_modules_and_their_public_names(name):
    modules = imported_modules(_read(os.path.join(BENCHMARKS, name + ".py")))
    others = (_stems(BENCHMARKS) | ARCHIVED) - SHARED - {name}
    assert not others & set(modules), f"{name}.py imports the script(s) {sorted(others & set(modules))}"
    for module in SHARED & set(modules):
        private = [n for n in modules[module] if n.startswith("_")]
        assert not private, f"{name}.py uses private names of {module}: {private}"


def test_no_test_imports_an_archived_script():
    for f in os.listdir(os.path.dirname(__file__)):
        if f.endswith(".py"):
            modules = imported_modules(_read(os.path.join(os.path.dirname(__file__), f)))
            assert not ARCHIVED & set(modules), (
                f"tests/{f} imports archived {sorted(ARCHIVED & set(modules))}"
            )


def test_the_import_check_catches_a_script_importing_a_script():
    modules = imported_modules(
        "import bench_evidence as ev\nfrom bench_common import _spread_tree\nx = __import__('bench_levers')\n"
        "def f():\n    from bench_distill import dense_model\n    return ev._save\n"
    )
    assert {"bench_evidence", "bench_levers", "bench_distill"} <= set(modules)
    assert modules["bench_common"] == ["_spread_tree"] and "_save" in modules["bench_evidence"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_current_script_has_a_make_target_an_index_row_and_a_mention_in_contributing(name):
    path = f"benchmarks/{name}.py"
    assert path in _read(os.path.join(ROOT, "Makefile")), f"no Make target runs {path}"
    readme = _read(os.path.join(BENCHMARKS, "README.md"))
    index = readme.split("\n## ", 1)[0]
    assert f"`{name}.py`" in index, f"{name}.py is not in the index table of benchmarks/README.md"
    benchmarks_paragraph = _read(os.path.join(ROOT, "CONTRIBUTING.md")).split("## Benchmarks", 1)[1]
    assert f"`{name}.py`" in benchmarks_paragraph, (
        f"{name}.py is not in CONTRIBUTING.md's Benchmarks paragraph"
    )
