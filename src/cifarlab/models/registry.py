"""Models by name: ``create_model("fastnet_m", num_classes=10)``.

A model registers a builder only (``builder(num_classes=..., **options) -> nn.Module``) and the
name of the recipe it trains with when no recipe is named; the training settings themselves
live in the recipes (``train/recipes.py``), nowhere else. Models of your own:

- ``@cifarlab.register_model("my_net")`` on a builder, then ``TrainConfig(model="my_net")``;
- or an import path ``"my_package.nets:build"`` wherever a model name goes (``--model`` too):
  the module is imported and the callable called with ``num_classes``. A run folder records
  that path, so ``evaluate``, ``predict`` and ``export`` rebuild the model wherever the module
  can be imported.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cifarlab.errors import CifarlabError, one_line


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    recipe: str | None = None  # the recipe it trains with by default (None: "original")


_REGISTRY: dict[str, ModelEntry] = {}
# The most classes a model is built for: far beyond any CIFAR labelling (100), small enough
# that a classifier head stays a few hundred MB; 10**12 would ask for terabytes.
MAX_CLASSES = 100_000
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def register(
    name: str, description: str = "", *, recipe: str | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(num_classes=..., **options) -> nn.Module`` as ``name``,
    training with ``recipe`` unless told otherwise (default: ``original``)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise CifarlabError(f"a model name must be a non-empty string without ':', got {name!r}")

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(builder):
            raise CifarlabError(f"register_model({name!r}) decorates a callable, got {builder!r}")
        text = description or (inspect.getdoc(builder) or "").split("\n")[0]
        _REGISTRY[name] = ModelEntry(name, builder, text, recipe)
        return builder

    return wrap


def register_model(
    name: str, description: str = "", *, recipe: str | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register your own model: ``@register_model("my_net")`` on a function (or class) that
    takes ``num_classes`` and returns an ``nn.Module``. Then ``TrainConfig(model="my_net")``
    trains it with cifarlab's loop, recipes, evaluation and report; ``recipe`` names the
    recipe it trains with by default (``original`` if not given). Runs record the builder's
    import path too, so that they can be evaluated in a process that never registered it."""
    return register(name, description, recipe=recipe)


def _load_all() -> None:
    # Importing the model modules runs their @register decorators.
    from cifarlab.models import fastnet, mlp, resnet, simple_cnn  # noqa: F401


def model_names() -> list[str]:
    """The registered models (import-path models are not listed: any importable one works)."""
    _load_all()
    return sorted(_REGISTRY)


def import_path(obj: Any) -> str:
    """``"module:qualified.name"`` of a function or class (how a run folder records it)."""
    return f"{obj.__module__}:{obj.__qualname__}"


def reopen_problem(path: str) -> str | None:
    """Why another process could not rebuild the model at import path ``path`` (a script's
    ``__main__``, a class defined inside a function, a module that does not import), or None."""
    module, _, attr = path.partition(":")
    if module == "__main__":
        return "it is defined in the script being run (__main__)"
    if "<locals>" in attr:
        return "it is defined inside a function"
    try:
        get_entry(path)
    except CifarlabError as e:
        return str(e)
    return None


def _resolve_import_path(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure to import is the user's module's
        raise CifarlabError(
            f"model {path!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); "
            "make it importable (install it, or add its folder to PYTHONPATH)"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise CifarlabError(f"model {path!r}: module {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise CifarlabError(f"model {path!r}: {attr!r} is not callable")
    return obj


def get_entry(name: str) -> ModelEntry:
    """The registered model ``name``, or the callable an import path ``"pkg.mod:build"``
    names (imported now)."""
    if not isinstance(name, str):
        raise CifarlabError(f"model must be a name or an import path, got {name!r}")
    _load_all()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        if not _IMPORT_PATH.match(name):
            raise CifarlabError(
                f"model {name!r}: an import path looks like 'package.module:callable'"
            )
        builder = _resolve_import_path(name)
        return ModelEntry(name, builder, (inspect.getdoc(builder) or "").split("\n")[0])
    raise CifarlabError(
        f"unknown model {name!r}: choose one of {', '.join(sorted(_REGISTRY))}, or give an "
        "import path 'package.module:callable'"
    )


def create_model(name: str, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build the model ``name`` (registered, or an import path ``"pkg.mod:build"``) for
    ``num_classes`` classes, with builder ``options`` (e.g. ``widths=(32, 64, 128)``)."""
    check_num_classes(num_classes)
    entry = get_entry(name)
    try:
        model = entry.builder(num_classes=num_classes, **options)
    except CifarlabError:
        raise
    except TypeError as e:  # an option the builder does not take
        raise CifarlabError(
            f"model {name!r} cannot be built with num_classes={num_classes} and options "
            f"{options}: {one_line(e)}"
        ) from None
    except MemoryError:
        raise CifarlabError(
            f"model {name!r} with num_classes={num_classes} and options {options}: ran out "
            "of memory building it"
        ) from None
    except Exception as e:  # noqa: BLE001 - a builder (maybe the user's) failed: say which
        raise CifarlabError(
            f"model {name!r} cannot be built with num_classes={num_classes} and options "
            f"{options}: {type(e).__name__}: {one_line(e)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise CifarlabError(
            f"model {name!r}: the builder returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def check_num_classes(num_classes: Any, what: str = "num_classes") -> int:
    """``num_classes`` if it is an integer from 2 to :data:`MAX_CLASSES`, else a
    :class:`CifarlabError` naming ``what`` (the CLI passes its option's name)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise CifarlabError(f"{what} must be an integer, got {num_classes!r}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise CifarlabError(
            f"{what} must be between 2 and {MAX_CLASSES:,}, got {int(num_classes):,}"
        )
    return int(num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
