"""The registry of model factories: ``register_model``, ``list_models``, ``create_model``.

Factories (:mod:`.factories`) register themselves when the package is imported; this module
imports nothing of the library, so that anything can look a model up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a factory to the registry under its function name; a name can be registered once."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"a model named {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered factories."""
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("detr_r50", num_classes=3)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
