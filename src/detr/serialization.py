"""Saving and rebuilding models: our own directory layout, and an export to Hugging Face's.

A saved directory holds ``model.safetensors`` (the weights) and ``config.json``
(``{"format": "detr", "model": <factory name>, "kwargs": {...}}``), from which the
same model is rebuilt. Both files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file

from .fileio import atomic_write, atomic_write_text
from .weights import CheckpointError, convert_to_hf_state_dict

if TYPE_CHECKING:
    from .model import DETR

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _spec(model: DETR) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError(
            "this model was not built by a registered factory (detr_r50, ...), so it cannot be rebuilt "
            "from a config; save its state_dict() instead"
        )
    kwargs = dict(spec["kwargs"], aux_loss=model.aux_loss, class_names=model.class_names)
    try:
        json.dumps(kwargs)
    except TypeError as err:
        raise ValueError(
            f"the model's build arguments cannot be written as JSON ({err}); save its state_dict() instead"
        ) from err
    return {"format": "detr", "model": spec["model"], "kwargs": kwargs}


def _write_safetensors(path: Path, state_dict: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_pretrained(model: DETR, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    directory = Path(directory)
    config = _spec(model)
    directory.mkdir(parents=True, exist_ok=True)
    _write_safetensors(directory / WEIGHTS_NAME, model.state_dict())
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
    return directory


def from_pretrained(directory: str | Path, **overrides: Any) -> DETR:
    """Rebuild a model saved by :func:`save_pretrained` (or by transformers' ``save_pretrained``)."""
    from .factory import create_model

    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {directory} a directory written by save_pretrained?")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON ({err})") from err
    if config.get("format") == "detr":
        name, kwargs = config["model"], dict(config["kwargs"])
    elif config.get("model_type") == "detr":
        name, kwargs = _factory_args_from_hf_config(config)
    else:
        raise CheckpointError(f"{config_path} is neither a detr config nor a transformers DETR config")
    kwargs.update(overrides)
    return create_model(name, weights=directory, **kwargs)


def _factory_args_from_hf_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """transformers DetrConfig (as JSON) -> (factory name, factory kwargs)."""
    backbone = config.get("backbone_config") or {}
    depths = backbone.get("depths")
    timm_name = backbone.get("backbone") or config.get("backbone")
    if depths == [3, 4, 6, 3] or timm_name == "resnet50":
        arch = "detr_r50"
    elif depths == [3, 4, 23, 3] or timm_name == "resnet101":
        arch = "detr_r101"
    else:
        raise CheckpointError(f"unsupported backbone in the transformers config: {backbone or timm_name}")
    if config.get("dilation"):
        arch += "_dc5"
    kwargs = {
        "num_classes": config.get("num_labels", len(config.get("id2label", {})) or 91),
        "num_queries": config.get("num_queries", 100),
        "aux_loss": bool(config.get("auxiliary_loss", False)),
        "position_embedding": config.get("position_embedding_type", "sine"),
        "d_model": config.get("d_model", 256),
        "nhead": config.get("encoder_attention_heads", 8),
        "num_encoder_layers": config.get("encoder_layers", 6),
        "num_decoder_layers": config.get("decoder_layers", 6),
        "dim_feedforward": config.get("encoder_ffn_dim", 2048),
        "dropout": config.get("dropout", 0.1),
    }
    return arch, kwargs


def export_hf(model: DETR, directory: str | Path) -> Path:
    """Write ``model`` in the layout of transformers' ``DetrForObjectDetection.from_pretrained``.

    Supported: ResNet-50/101 without dilation (transformers' own ResNet backbone has no DC5),
    post-norm transformer.
    """
    if model.refinement is not None:
        raise ValueError("box_refinement models cannot be exported: transformers' DETR has no anchor-box queries")
    spec = _spec(model)
    kwargs = spec["kwargs"]
    depths = {"detr_r50": [3, 4, 6, 3], "detr_r101": [3, 4, 23, 3]}.get(spec["model"])
    if depths is None:
        raise ValueError(
            f"{spec['model']} cannot be exported: transformers' ResNet backbone supports R50/R101 without DC5"
        )
    if kwargs.get("normalize_before"):
        raise ValueError("pre-norm transformers cannot be exported: transformers' DETR is post-norm only")
    t = model.transformer
    names = model.class_names or [f"class_{i}" for i in range(model.num_classes)]
    config = {
        "model_type": "detr",
        "architectures": ["DetrForObjectDetection"],
        "backbone_config": {
            "model_type": "resnet",
            "depths": depths,
            "hidden_sizes": [256, 512, 1024, 2048],
            "embedding_size": 64,
            "layer_type": "bottleneck",
            "hidden_act": "relu",
            "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False,
            "out_features": ["stage4"],
        },
        "use_timm_backbone": False,
        "use_pretrained_backbone": False,
        "num_queries": model.num_queries,
        "d_model": t.d_model,
        "encoder_layers": len(t.encoder.layers),
        "decoder_layers": len(t.decoder.layers),
        "encoder_attention_heads": t.nhead,
        "decoder_attention_heads": t.nhead,
        "encoder_ffn_dim": t.encoder.layers[0].linear1.out_features if len(t.encoder.layers) else 2048,
        "decoder_ffn_dim": t.decoder.layers[0].linear1.out_features,
        "dropout": t.decoder.layers[0].dropout.p,
        "attention_dropout": t.decoder.layers[0].self_attn.dropout,
        "activation_function": "relu",
        "position_embedding_type": kwargs.get("position_embedding", "sine"),
        "auxiliary_loss": model.aux_loss,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # training-only parts (denoising queries, dense head, extra query groups) are left out: inference does not use them
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("denoising.", "dense_head."))}
    state["query_embed.weight"] = state["query_embed.weight"][: model.num_queries]
    _write_safetensors(directory / WEIGHTS_NAME, convert_to_hf_state_dict(state))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
    return directory


def load_model(weights: str | Path, model: str | None = None, **kwargs: Any) -> DETR:
    """A model ready to use from ``weights``: a directory written by ``save_pretrained`` (ours or
    transformers'), a training checkpoint (``checkpoint.pth``, rebuilt from its run config), or any
    other checkpoint loaded into the factory ``model`` (default ``detr_r50``)."""
    import torch

    from .factory import create_model

    path = Path(weights)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return from_pretrained(path, **kwargs)
    if path.is_file() and path.suffix in (".pth", ".pt"):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a training checkpoint: the loader below gives the precise error
            ckpt = None
        if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "class_names" in ckpt:
            cfg = ckpt["config"]
            args = dict(
                num_classes=len(ckpt["class_names"]),
                class_names=ckpt["class_names"],
                num_queries=cfg["num_queries"],
                aux_loss=cfg["aux_loss"],
                **cfg.get("model_kwargs", {}),
            )
            args.update(kwargs)
            return create_model(model or cfg["model"], weights=ckpt["model"], **args)
    return create_model(model or "detr_r50", weights=weights, **kwargs)
