"""Models by name: :func:`create_model`, :func:`model_names`."""

from cifarlab.models.registry import count_parameters, create_model, get_entry, model_names

__all__ = ["count_parameters", "create_model", "get_entry", "model_names"]
