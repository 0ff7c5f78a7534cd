"""Weights -> a ready model: the one place that knows every form weights come in.

- a directory written by ``save_pretrained`` (ours, or transformers' DETR / DETR for segmentation);
- a training run's folder: its ``final/`` (its last weights), else its ``checkpoint.pth``;
- a training checkpoint (``checkpoint.pth``): rebuilt from the run's config by the trainer's own builder
  (:func:`detr.engine.build.build_model`), so with the run's preprocessing, labels and mask head, and with
  the weights the run evaluated and saved (its moving average with ``--ema``);
- a published name (``detr_r50`` ...), a URL, a reference or Hugging Face file, a plain state dict (a
  file or a mapping of tensors): loaded into the factory ``model`` (the published name's, else ``detr_r50``);
- an exported ``.onnx`` / OpenVINO ``.xml`` file (:func:`load` only): run by :mod:`detr.deploy.runtime`.

Whatever the form, the model returned carries its ``preprocessing``, ``class_names``, ``category_ids``
and ``task`` (``"boxes"``, or ``"masks"`` for a mask model, which also segments panoptically).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .deploy.runtime import is_exported, load_exported
from .engine.build import build_model
from .engine.config import TrainConfig
from .engine.train import CHECKPOINT
from .hub.checkpoints import fetch_checkpoint, to_detr_state_dict
from .hub.pretrained import PRETRAINED
from .hub.serialization import CONFIG_NAME, WEIGHTS_NAME, from_pretrained
from .models.detr import DETR, DETRConfig
from .models.registry import create_model

log = logging.getLogger(__name__)

Weights = str | Path | Mapping[str, Tensor]


def run_weights(path: str | Path) -> Path:
    """The weights a training run's folder stands for: ``final/`` when the run saved it, else its
    ``checkpoint.pth``; any other path as it is."""
    path = Path(path)
    if not (path.is_dir() and not (path / WEIGHTS_NAME).is_file() and (path / CHECKPOINT).is_file()):
        return path
    if (path / "final" / CONFIG_NAME).is_file():
        log.info("%s is a training run: using %s (its last weights; best/ its best-AP ones)", path, path / "final")
        return path / "final"
    log.info("%s is a training run without final weights yet: using its %s", path, CHECKPOINT)
    return path / CHECKPOINT


def read_training_checkpoint(path: Path) -> dict[str, Any] | None:
    """The contents of a training checkpoint (weights, run config, labels), or None when ``path`` is another
    kind of file (the state-dict loader then says precisely what it is)."""
    if not (path.is_file() and path.suffix in (".pth", ".pt")):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (any unreadable file: not a training checkpoint)
        return None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "class_names" in ckpt and "model" in ckpt:
        return ckpt
    return None


def model_from_training_checkpoint(ckpt: dict[str, Any], model: str | None = None, **kwargs: Any) -> DETR:
    """The model of a training checkpoint: built from the run's config as the trainer built it, with the
    weights it evaluated (the moving average of ``--ema`` runs, as in ``final/``)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in ckpt["config"].items() if k in known}  # keys of other versions are not the model's
    config = TrainConfig(**{**values, **({"model": model} if model else {})})
    state = ckpt["ema"]["model"] if ckpt.get("ema") else ckpt["model"]
    kwargs.setdefault("reinit_heads", False)  # a model to use, not to fine-tune: its checkpoint must fit
    return build_model(config, ckpt["class_names"], ckpt.get("category_ids"), weights=state, **kwargs)


def load_model(weights: Weights, model: str | None = None, **kwargs: Any) -> DETR:
    """A PyTorch model ready to use (train mode, on the CPU) from ``weights`` in any form of the module
    docstring but an exported file; ``model`` names the factory for weights that do not record theirs,
    ``kwargs`` are factory (or ``from_pretrained``) arguments."""
    if isinstance(weights, Mapping):
        return _from_state_dict(weights, model, kwargs)
    path = run_weights(weights)
    if path.suffix.lower() in (".onnx", ".xml") and path.is_file():
        raise ValueError(
            f"{path} is an exported file: detr.load() runs it (predict, eval); training, explain and export "
            "need the PyTorch weights it was exported from"
        )
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return from_pretrained(path, model_type=DETR, config_type=DETRConfig, **kwargs)
    ckpt = read_training_checkpoint(path)
    if ckpt is not None:
        return model_from_training_checkpoint(ckpt, model, **kwargs)
    if path.is_file():
        return _from_state_dict(path, model, kwargs)
    if model is None and isinstance(weights, str) and weights in PRETRAINED:
        model = PRETRAINED[weights].factory
    kwargs.setdefault("reinit_heads", False)
    return create_model(model or "detr_r50", weights=weights, **kwargs)


def _from_state_dict(weights: Path | Mapping[str, Tensor], model: str | None, kwargs: dict[str, Any]) -> DETR:
    """A plain state dict (any layout :func:`detr.hub.checkpoints.to_detr_state_dict` reads) in the factory
    ``model`` (default ``detr_r50``), its heads sized as the state dict's."""
    state, _ = to_detr_state_dict(fetch_checkpoint(weights).state_dict)
    if "class_head.weight" in state:
        kwargs.setdefault("num_classes", state["class_head.weight"].shape[0] - 1)  # less "no object"
    if "query_embed.weight" in state:
        kwargs.setdefault("num_queries", state["query_embed.weight"].shape[0])
    kwargs.setdefault("reinit_heads", False)
    return create_model(model or "detr_r50", weights=weights, **kwargs)


def load(weights: Weights, model: str | None = None, device: torch.device | str = "cpu", **kwargs: Any) -> Any:
    """Anything the library writes, ready to ``predict``: PyTorch weights give a
    :class:`~detr.models.detr.DETR` (see :func:`load_model`) in eval mode on ``device``, an ``.onnx`` file
    or OpenVINO ``.xml`` an exported model (:mod:`detr.deploy.runtime`) with the same ``predict()``, class
    names, preprocessing and task."""
    if not isinstance(weights, Mapping) and is_exported(weights):
        if model is not None or kwargs:
            raise ValueError(f"{weights} is an exported model: it takes no factory or build arguments")
        return load_exported(weights, device)
    return load_model(weights, model, **kwargs).to(device).eval()


__all__ = ["load", "load_model", "model_from_training_checkpoint", "run_weights"]
