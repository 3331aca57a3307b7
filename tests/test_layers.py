"""The floors of the house (ARCHITECTURE.md, ``tests/layering.py``): every import points to
its own floor or below, the modules import one another without a cycle (the model registry's
is the one allowed), and a function-local import of a cifarlab module is the CLI's lazy start
or the registry filling itself, nothing else. Read from the source with ``ast``."""

from __future__ import annotations

from pathlib import Path

import layering


def test_every_module_is_on_a_floor() -> None:
    for name in layering.modules():
        layering.layer_of(name)  # KeyError names a module on no floor


def test_imports_only_point_down() -> None:
    up = [
        f"{i.source}:{i.line} imports {i.target} (floor {layering.layer_of(i.target)} above "
        f"floor {layering.layer_of(i.source)})"
        for i in layering.upward(layering.imports())
    ]
    assert up == []


def test_no_import_cycles_but_the_registry() -> None:
    found = layering.cycles(layering.graph(layering.imports()))
    bad = [sorted(c) for c in found if not any(c <= a for a in layering.ALLOWED_CYCLES)]
    assert bad == []


def test_function_local_imports_only_where_the_rule_says() -> None:
    stray = [
        f"{i.source}:{i.line} imports {i.target} inside a function"
        for i in layering.local_imports(layering.imports())
        if i.source not in layering.LAZY_OK
    ]
    assert stray == []


def test_the_rule_catches_what_it_should(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A tree with an upward import, a cycle and a stray local import fails each check."""
    src = tmp_path / "src"
    pkg = src / "cifarlab"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from cifarlab.data import sources\n")  # ground → data: up
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "sources.py").write_text("from cifarlab.data import dataset\n")
    (pkg / "data" / "dataset.py").write_text(
        "from cifarlab.data import sources\n\ndef f():\n    from cifarlab import errors\n"
    )
    monkeypatch.setattr(layering, "SRC", src)
    found = layering.imports()
    assert [(i.source, i.target) for i in layering.upward(found)] == [
        ("cifarlab.errors", "cifarlab.data.sources")
    ]
    assert layering.cycles(layering.graph(found)) == [  # the local import closes one too
        {"cifarlab.errors", "cifarlab.data.sources", "cifarlab.data.dataset"}
    ]
    assert [(i.source, i.line) for i in layering.local_imports(found)] == [
        ("cifarlab.data.dataset", 4)
    ]
