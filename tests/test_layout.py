"""The library stands alone: no module of ``cram_hf/`` imports the recipes' or the benchmarks' code, so what a
user imports never depends on a script folder being on ``sys.path``; and only ``cram_hf/cli.py`` imports the
CLI. Checked on the source with ``ast``, so an import inside a function counts too."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "cram_hf")


def script_modules(folder: str) -> set[str]:
    """The names a file of ``folder`` is imported by when the folder is on ``sys.path``."""
    return {f[:-3] for f in os.listdir(os.path.join(ROOT, folder)) if f.endswith(".py")}


# recipes/ and benchmarks/ themselves, and every module in them (what a sibling import would name).
FORBIDDEN = {"recipes", "benchmarks"} | script_modules("recipes") | script_modules("benchmarks")


def imported_modules(path: str) -> list[tuple[int, str]]:
    """``(line, module)`` for each import of the file; relative imports resolved inside ``cram_hf``."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "cram_hf" if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if node.module is None:  # "from . import x": x is a module of the package
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def layout_violations(path: str) -> list[str]:
    name = os.path.basename(path)
    bad = []
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        if top in FORBIDDEN:
            bad.append(f"cram_hf/{name}:{line} imports {module} (recipes/ or benchmarks/)")
        elif module == "cram_hf.cli" and name != "cli.py":
            bad.append(
                f"cram_hf/{name}:{line} imports cram_hf.cli (the CLI is an entry point, not a library)"
            )
    return bad


def test_the_library_imports_no_recipe_benchmark_or_cli_module():
    assert {"preflight", "train_and_save", "utils_qa", "run_glue"} <= FORBIDDEN  # the scan sees the recipes
    files = sorted(f for f in os.listdir(LIBRARY) if f.endswith(".py"))
    assert "trainer.py" in files
    bad = [v for f in files for v in layout_violations(os.path.join(LIBRARY, f))]
    assert not bad, "\n".join(bad)


def test_the_check_catches_each_kind_of_import(tmp_path):
    lines = [
        "from preflight import preflight",
        "import recipes.run_glue",
        "def f():\n    from benchmarks import bench_step",
        "from .cli import main",
        "from . import cli",
    ]
    path = tmp_path / "sweep.py"
    path.write_text("\n".join(lines) + "\n")
    assert len(layout_violations(str(path))) == len(lines)
    path.write_text("from .pruning import prune\nimport torch\nfrom transformers import Trainer\n")
    assert layout_violations(str(path)) == []
