"""The floors of cifarlab and the imports between its modules, read from the source with ``ast``
(nothing is imported). Used by ``test_layers.py`` (the rule) and ``benchmarks/structure.py``
(the numbers: sizes, longest functions, imports running up, cycles).

A module's floor is that of the longest prefix of its name in :data:`LAYERS`. An import may
point to the same floor or below, never above; the module graph has no cycle except the model
registry's (:data:`ALLOWED_CYCLES`). A function-local import is allowed only in the CLI (its
lazy start: ``import cifarlab`` and ``cifarlab --help`` do not import torch), and says so.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest floor first (ARCHITECTURE.md shows the same table). A name is a module and the modules
# under it; "=NAME" is that module alone (a package's __init__).
LAYERS: list[tuple[str, ...]] = [
    # ground: errors, bounds on input, safe reads and writes
    ("cifarlab.errors", "cifarlab.limits", "cifarlab.files"),
    # the data and the networks
    ("cifarlab.data", "cifarlab.models"),
    # a run's settings: TrainConfig and the recipes it is resolved from (config.json holds
    # them, so the run folder's schema checks them with their own rules)
    ("cifarlab.train.config", "cifarlab.train.recipes", "cifarlab.train.recipe_data"),
    # the run folder as files: the file table, schemas, RunFolder, the lock, checkpoints
    ("cifarlab.schemas", "cifarlab.runs", "cifarlab.checkpoint"),
    # the machinery: the training loop and what it is built from; inference, metrics
    ("cifarlab.train", "cifarlab.evaluate"),
    # using a trained run: opening it, train() and evaluate_run() end to end, reports,
    # robustness
    (
        "cifarlab.trained",
        "cifarlab.train.launch",
        "cifarlab.train.group",
        "cifarlab.evaluate.run",
        "cifarlab.report",
        "cifarlab.robustness",
    ),
    # what users run a trained model with
    # and the sweep, which trains many runs with train()
    ("cifarlab.predict", "cifarlab.export", "cifarlab.serve", "cifarlab.sweep"),
    # the doors: the command line and the package's public names (resolved on first use)
    ("cifarlab.cli", "cifarlab.__main__", "=cifarlab", "=cifarlab.train"),
]

# The registry pattern (timm's): the registry imports the model files to fill itself, each
# model file imports the registry's ``register``.
ALLOWED_CYCLES = [
    {
        "cifarlab.models",
        "cifarlab.models.registry",
        "cifarlab.models.fastnet",
        "cifarlab.models.mlp",
        "cifarlab.models.simple_cnn",
        "cifarlab.models.resnet",
    }
]

# Where a function-local import of a cifarlab module is the rule: the CLI's lazy start (its
# commands import the library when they run, so `cifarlab --help` and a Ctrl-C at start-up
# never wait for torch), and the registry filling itself (timm's pattern).
LAZY_OK = ("cifarlab.cli", "cifarlab.models.registry")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "cifarlab").rglob("*.py"))}


def layer_of(module: str) -> int:
    best, floor = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if name.startswith("="):
                hit = module == name[1:]
            else:
                hit = module == name or module.startswith(name + ".")
            if hit and len(name) > best:
                best, floor = len(name), i
    if floor < 0:
        raise KeyError(f"{module} is on no floor: add it to LAYERS")
    return floor


@dataclass
class Import:
    source: str
    target: str
    line: int
    local: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path] | None = None) -> list[Import]:
    """Every import of one cifarlab module by another (``from a import b`` where ``a.b`` is a
    module counts as an import of ``a.b``)."""
    known = known or modules()
    found: list[Import] = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        _visit(tree, name, path.name == "__init__.py", known, found, False, False)
    return found


def _visit(
    node: ast.AST,
    name: str,
    is_package: bool,
    known: dict[str, Path],
    found: list[Import],
    local: bool,
    type_only: bool,
) -> None:
    for child in ast.iter_child_nodes(node):
        in_func = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        tc = type_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
        targets: list[str] = []
        if isinstance(child, ast.Import):
            targets = [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(name, is_package, child)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names
            ]
        resolved = []
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name and t not in resolved:
                resolved.append(t)
        found += [Import(name, t, child.lineno, local, tc) for t in resolved]
        _visit(child, name, is_package, known, found, in_func, tc)


def graph(found: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in found:
        if not imp.type_only:
            edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def upward(found: list[Import]) -> list[Import]:
    """Imports that point to a higher floor (the package ``cifarlab`` itself, the public
    names, is left out as a target: importing ``cifarlab.__version__`` is not going up)."""
    return [
        i
        for i in found
        if not i.type_only and i.target != "cifarlab" and layer_of(i.target) > layer_of(i.source)
    ]


def local_imports(found: list[Import]) -> list[Import]:
    return [i for i in found if i.local and not i.type_only]
