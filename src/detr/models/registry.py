"""The registry of model factories: ``register_model``, ``list_models``, ``create_model``.

The library's factories (:mod:`.factories`) register themselves when that module is imported,
which the first lookup here does (by name, so that this module imports nothing of the library and
anything, the model's own loader included, can look a model up).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a factory to the registry under its function name; a name can be registered once."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"a model named {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def _with_library_factories() -> dict[str, Callable[..., nn.Module]]:
    importlib.import_module("detr.models.factories")  # registers them, once
    return _REGISTRY


def list_models() -> list[str]:
    """Names of the registered factories."""
    return sorted(_with_library_factories())


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("detr_r50", num_classes=3)``."""
    if name not in _with_library_factories():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
