"""The layering of the two packages, enforced: ``lis`` never imports training code, and no import circles.

``lis`` is the evaluator a data team runs on logs alone, so it must not need ``align`` or the
deep-learning stack (transformers, peft, accelerate, deepspeed). Checked twice: statically,
every import statement anywhere in ``lis/**.py`` (inside functions too); and at run time,
importing every ``lis`` module in a fresh interpreter and looking at ``sys.modules``.

An import circle is two modules that import each other, directly or through others; counted
over every import statement of a module (also those inside functions: a lazy import still ties
the two modules' designs together), within each package.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_LIS = ("align", "transformers", "peft", "accelerate", "deepspeed")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Absolute dotted names of everything ``path`` imports (``from x import y`` gives ``x`` and ``x.y``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def package_modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO / package).rglob("*.py"))}


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (a name that is a module's attribute counts as the module)."""
    modules = package_modules(package)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(path):
            # `from align import strict_json` names a module; `from align.x import f` names x.
            if imported in modules:
                targets.add(imported)
            elif imported.rpartition(".")[0] in modules:
                targets.add(imported.rpartition(".")[0])
        targets.discard(name)
        # A package's __init__ is imported with every submodule: an edge to it is no circle of design.
        graph[name] = {t for t in targets if not (modules[t].name == "__init__.py" and name.startswith(t + "."))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def forbidden_imports(package: str, forbidden=FORBIDDEN_IN_LIS) -> list[str]:
    hits = []
    for name, path in package_modules(package).items():
        for imported in sorted(imported_names(path)):
            if imported.split(".")[0] in forbidden:
                hits.append(f"{path.relative_to(REPO)} imports {imported}")
    return hits


def test_lis_source_imports_no_training_code():
    assert forbidden_imports("lis") == []


def test_importing_every_lis_module_loads_no_training_code():
    modules = [name for name in package_modules("lis") if not name.endswith("__main__")]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(FORBIDDEN_IN_LIS)!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("package", ["align", "lis"])
def test_no_import_circle(package):
    assert find_cycle(import_graph(package)) is None


# --- the checks themselves find what they look for ----------------------------------------------
def test_cycle_finder_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_names_cover_lazy_relative_and_from_imports(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n    import transformers.trainer\n")
    (package / "b.py").write_text("from pkg.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert find_cycle(import_graph("pkg")) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    assert forbidden_imports("pkg") == ["pkg/a.py imports transformers.trainer"]
