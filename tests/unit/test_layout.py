"""The shape of the tree: import names under `svdq.`, every sub-package installed, and no import
cycle anywhere (function-level imports included: hiding a cycle inside a function still makes
two modules that cannot be understood, tested or changed apart)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"shared": "svdq.shared", "producer": "svdq.producer", "worker": "svdq.worker"}


def _modules() -> dict[str, Path]:
    """Every module of ours, by its import name."""
    found = {}
    for folder, name in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((name, *parts))] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The modules of ours that `module` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    deps = set()
    for name in names:
        # `from svdq.worker import metrics` imports svdq.worker.metrics; `import a.b.c` imports a.b.
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            deps.add(name)
    return deps


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _edge_example(cycle: list[str]) -> str:
    members = set(cycle)
    return "; ".join(f"{m} -> {', '.join(sorted(GRAPH[m] & members))}" for m in cycle)


def test_the_walk_finds_the_modules() -> None:
    assert {"svdq.shared.spec", "svdq.producer.cli", "svdq.worker.tasks"} <= set(MODULES)
    assert "svdq.shared.constants" in GRAPH["svdq.shared.spec"] or GRAPH["svdq.shared.spec"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "package",
    [
        "svdq.shared",
        "svdq.producer",
        "svdq.worker",
    ],
)
def test_no_import_cycle(package: str) -> None:
    cycles = [c for c in _cycles(GRAPH) if any(_package_of(m) == package for m in c)]
    assert not cycles, "import cycles: " + " | ".join(_edge_example(c) for c in cycles)


def test_shared_imports_nothing_of_ours_outside_shared() -> None:
    bad = {
        m: sorted(d for d in deps if not d.startswith("svdq.shared"))
        for m, deps in GRAPH.items()
        if m.startswith("svdq.shared")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_the_producer_imports_the_worker_only_lazily() -> None:
    """`svdq[producer]` has no worker extra: a module-level import of svdq.worker would break
    every producer command; the worker-side commands import it inside a function."""
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith("svdq.producer"):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("svdq.worker"):
                offenders.append(f"{module}: from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{module}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("svdq.worker")
                ]
    assert not offenders


# --- import names --------------------------------------------------------------------------

_BARE = re.compile(r"^\s*(from|import)\s+(shared|producer|worker)\b", re.M)
_BARE_COMMAND = re.compile(r"(-A|-m)\s+[\"']?(shared|producer|worker)\.")


def _sources() -> list[Path]:
    roots = [REPO / name for name in (*FOLDERS, "tests", "bench", "deploy")]
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    files += [REPO / "Makefile", REPO / "README.md", *REPO.glob("docker-compose*.yml")]
    return [p for p in files if p.suffix in {".py", ".yml", ".yaml", ".md", ""} and p.is_file()]


def test_nothing_imports_a_bare_top_level_name() -> None:
    """`shared`, `producer` and `worker` are other projects' names too: ours are `svdq.*`."""
    offenders = []
    for path in _sources():
        text = path.read_text(errors="replace")
        if path.suffix == ".py":
            offenders += [f"{path}: {m.group(0).strip()}" for m in _BARE.finditer(text)]
        offenders += [f"{path}: {m.group(0)}" for m in _BARE_COMMAND.finditer(text)]
        offenders += [
            f"{path}: {m.group(0)}"
            for m in re.finditer(r"[\"'](shared|producer|worker)\.[a-z_]+[\"']", text)
            if m.group(0)[1:-1].replace("/", ".") in {k.split(".", 1)[1] for k in MODULES}
        ]
    assert not offenders, "\n".join(offenders)


def test_every_sub_package_is_installed() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"] == FOLDERS_TO_DIRS
    packages = {
        m for m, p in MODULES.items() if p.name == "__init__.py"
    }  # every folder with an __init__.py
    assert set(setuptools["packages"]) == packages
    assert project["project"]["scripts"]["svdq"] == "svdq.producer.cli:main"


FOLDERS_TO_DIRS = {name: folder for folder, name in FOLDERS.items()}
