"""The package imports without cycles: every module's imports (at any depth, function-level ones included) form a
graph with no loop.

A cycle works until someone moves one import line or imports the modules in another order, and then fails with a
half-initialised module ("cannot import name ..."). Edges follow what Python executes: `from pkg import name`
runs pkg/__init__.py (so a re-export there counts as importing pkg), `from pkg import submodule` imports the
submodule. A package is not an edge of its own submodules: Python imports a submodule of a package that is still
initialising without running the package again.
"""
from __future__ import annotations

import ast
from pathlib import Path

import ood_lightning

PACKAGE_DIR = Path(ood_lightning.__file__).resolve().parent


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package (packages by their __init__.py)."""
    root = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` (whose source is `path`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = module_files(package_dir)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The loops (a -> b -> ... -> a) a depth-first walk meets, one per edge back into its current path: empty
    exactly when the graph has no cycle."""
    cycles, visited = [], set()
    for start in sorted(graph):
        if start in visited:
            continue
        path, on_path, stack = [start], {start}, [iter(sorted(graph[start]))]
        visited.add(start)
        while stack:
            target = next(stack[-1], None)
            if target is None:
                stack.pop()
                on_path.discard(path.pop())
            elif target in on_path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in visited:
                visited.add(target)
                path.append(target)
                on_path.add(target)
                stack.append(iter(sorted(graph[target])))
    return cycles


def describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_DIR)
    assert "ood_lightning.detectors.lfdn.module" in graph, "the walk must see the subpackages"
    cycles = find_cycles(graph)
    assert not cycles, f"modules that import each other (break each loop):\n{describe(cycles)}"


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "pkg"


def test_a_cycle_through_a_function_level_relative_import_is_found(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "plots.py": "from .report import table\n",
        "report.py": "from pkg.sub import report\n",
        "sub/__init__.py": "",
        "sub/report.py": "def table():\n    from ..plots import draw\n",  # resolves to pkg.plots
    })
    assert find_cycles(import_graph(package)) == [["pkg.plots", "pkg.report", "pkg.sub.report", "pkg.plots"]]


def test_a_cycle_through_a_package_reexport_is_found(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "from pkg.detector import Detector\n",
        "detector.py": "import pkg.helpers\n",
        "helpers.py": "from pkg import Detector\n",  # a name re-exported by __init__: runs pkg/__init__.py
    })
    assert describe(find_cycles(import_graph(package))) == "pkg -> pkg.detector -> pkg.helpers -> pkg"


def test_submodule_imports_of_a_package_are_no_cycle(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "from .a import A\nfrom . import b\n",
        "a.py": "from pkg import b\nfrom . import c\nimport os\n",  # submodules, not the package
        "b.py": "from .c import C\n",
        "c.py": "C = 1\n",
    })
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert find_cycles(graph) == []
