"""Models by name: :func:`create_model`, :func:`model_names`, :func:`register_model`."""

from cifarlab.models.registry import (
    count_parameters,
    create_model,
    get_entry,
    import_path,
    model_names,
    register_model,
    reopen_problem,
)

__all__ = [
    "count_parameters",
    "create_model",
    "get_entry",
    "import_path",
    "model_names",
    "register_model",
    "reopen_problem",
]
