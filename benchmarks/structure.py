"""How the house looks: module sizes, the longest functions and classes, imports running up a
floor, import cycles, function-local imports and ``# fmt: skip`` lines.

    python benchmarks/structure.py [--src PATH/TO/src] [--top 15]

``--src`` reads another checkout (e.g. a ``git worktree`` of an older commit) with the floors
of ``tests/layering.py``; modules that are on no floor there are counted on the floor of their
nearest named parent.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import layering  # noqa: E402


def spans(path: Path) -> list[tuple[int, str, str]]:
    """(lines, kind, qualified name) of every function and class in ``path``."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "def"
                name = f"{prefix}{child.name}"
                out.append((child.end_lineno - child.lineno + 1, kind, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def all_local_imports(path: Path) -> int:
    """Import statements inside functions (any module, not only cifarlab's)."""
    tree = ast.parse(path.read_text())
    seen: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    seen.add(id(inner))
    return len(seen)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=layering.SRC)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    layering.SRC = args.src.resolve()
    mods = layering.modules()
    found = layering.imports(mods)
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in mods.items()), reverse=True)
    print(f"## modules: {len(mods)}, {sum(s for s, _ in sizes):,} lines; the largest")
    for n, m in sizes[: args.top]:
        print(f"  {n:>5}  {m}")
    items = []
    for m, path in mods.items():
        items += [(n, kind, f"{m}.{name}") for n, kind, name in spans(path)]
    items.sort(reverse=True)
    print(f"\n## the {args.top} longest functions and classes")
    for n, kind, name in items[: args.top]:
        print(f"  {n:>5}  {kind:<5}  {name}")
    longest_defs = [x for x in items if x[1] == "def"][: args.top]
    print(f"\n## the {args.top} longest functions")
    for n, _, name in longest_defs:
        print(f"  {n:>5}  {name}")

    exact = layering.layer_of

    def floor(m: str) -> int:
        while True:
            try:
                return exact(m)
            except KeyError:
                if "." not in m:
                    raise
                m = m.rsplit(".", 1)[0]

    layering.layer_of = floor  # tolerate an older tree's modules
    edges = layering.graph(found)
    arrows = sum(len(t) for t in edges.values())
    up = layering.upward(found)
    cyc = layering.cycles(edges)
    local = layering.local_imports(found)
    layering.layer_of = exact
    print(f"\n## imports: {arrows} arrows between modules ({len(found)} import statements)")
    print(f"  running up a floor: {len(up)}")
    for i in up:
        print(f"    {i.source}:{i.line} → {i.target}{' (in a function)' if i.local else ''}")
    print(f"  cycles: {len(cyc)}")
    for c in cyc:
        allowed = any(c <= a for a in layering.ALLOWED_CYCLES)
        print(f"    {' ↔ '.join(sorted(c))}{'  (the registry pattern)' if allowed else ''}")
    print(f"  function-local imports of cifarlab modules: {len(local)}")
    for i in local:
        print(f"    {i.source}:{i.line} → {i.target}")
    total_local = sum(all_local_imports(p) for p in mods.values())
    skips = sum(p.read_text().count("# fmt: skip") for p in mods.values())
    print(f"  function-local imports of any module: {total_local}")
    print(f"\n## `# fmt: skip` in src: {skips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
