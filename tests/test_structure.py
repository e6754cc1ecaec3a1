"""The code's shape: packages never import the top-level scripts, internal imports form no cycle, and
no function outside the tests is longer than MAX_FUNCTION_LINES.

`python tests/test_structure.py` prints the figures (scripts' lines, longest functions, import edges).
Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
SKIP = {".venv", "tests", ".git", "data/corpora"}


def sources() -> dict[str, Path]:
    """module name -> file, for every Python file of the project outside the tests."""
    files = [p for p in ROOT.rglob("*.py") if not any(part in SKIP or part.startswith(".")
                                                      for part in p.relative_to(ROOT).parts[:-1])]
    mods = {}
    for p in files:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def scripts(mods: dict[str, Path]) -> set[str]:
    """Top-level entry points: files at the root (or in scripts/) run as `python FILE`."""
    return {m for m, p in mods.items() if (p.parent == ROOT or p.parent.name == "scripts")
            and "__main__" in p.read_text()}


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (absolute imports; `from a import b` may name a module)."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for m, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {r for n in names if (r := resolve(n)) and r != m}
        edges[m] = deps
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = "open"
        for v in sorted(edges.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [u, v] if v in stack else [u, v])
            elif v not in state:
                visit(v, stack + [u])
        state[u] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    return found


def function_lengths(mods: dict[str, Path]) -> list[tuple[int, str]]:
    out = []
    for p in mods.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{p.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_packages_never_import_scripts():
    mods = sources()
    entry = scripts(mods)
    bad = [f"{m} imports {d}" for m, deps in imports(mods).items() if m not in entry for d in deps & entry]
    assert not bad, "a package imports a script; move what it needs into a package: " + "; ".join(bad)


def test_no_import_cycles():
    found = cycles(imports(sources()))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_functions_are_short():
    long = [f"{where} ({n} lines)" for n, where in function_lengths(sources()) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_the_checks_catch_what_they_claim():
    """The cycle finder finds a planted cycle, and the import reader sees a lazy import of a script."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert not cycles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}})
    mods = sources()
    assert "train" in scripts(mods) and "config" not in scripts(mods)
    assert "engine.evaluation" in imports(mods)["reporting.inference"]  # an import inside a function counts


def main() -> None:
    mods = sources()
    entry, edges = scripts(mods), imports(mods)
    for name in ("train", "eval", "study", "sample", "bench"):
        print(f"{name}.py: {len(mods[name].read_text().splitlines())} lines")
    print(f"package->script imports: {sum(len(d & entry) for m, d in edges.items() if m not in entry)}; "
          f"import cycles: {len(cycles(edges))}")
    for n, where in function_lengths(mods)[:5]:
        print(f"{n:4d} lines  {where}")


if __name__ == "__main__":
    sys.exit(main())
