"""Saving and rebuilding models: this library's directory layout, and an export to Hugging Face's.

A saved directory holds ``model.safetensors`` (the weights) and ``config.json``, the description
that rebuilds the model, in one of two forms:

- a model built by a registered factory: ``{"format": "detr", "model": <factory name>, "kwargs": {...}}``;
- a model built as ``DETR(DETRConfig(...), options=[...])``: ``{"format": "detr", "parts": {...},
  "config": {...}, "options": [...], "class_names": [...]}``, each part and option by its type and
  constructor arguments. Parts of the library are rebuilt from it; parts of your own are named
  (never imported: a config file must not run code) and given back with
  ``DETR.from_pretrained(directory, config=DETRConfig(...))``.

Both files are written atomically. transformers' ``DetrForObjectDetection`` directories load too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file
from torch import nn

from ..fileio import atomic_write, atomic_write_text
from ..losses.matcher import HungarianMatcher
from ..models.backbone import ResNetBackbone
from ..models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from ..models.registry import create_model
from ..models.transformer import Transformer
from ..options import OPTION_TYPES
from ..processing.preprocess import ImagePreprocessor
from .checkpoints import CheckpointError, convert_to_hf_segmentation_state_dict, convert_to_hf_state_dict, load_weights

if TYPE_CHECKING:
    from ..models.detr import DETR, DETRConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# The library's parts that a saved description rebuilds, by type name.
PART_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (ResNetBackbone, Transformer, PositionEmbeddingSine, PositionEmbeddingLearned, HungarianMatcher)
}
CONFIG_FIELDS = (
    "num_classes",
    "num_queries",
    "aux_loss",
    "class_loss_coef",
    "bbox_loss_coef",
    "giou_loss_coef",
    "eos_coef",
    "iou_class_targets",
)


def _json_ready(value: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        json.dumps(value)
    except TypeError as err:
        raise ValueError(
            f"the {what} cannot be written as JSON ({err}); save the model's state_dict() instead"
        ) from err
    return value


def _describe(part: nn.Module, known: dict[str, type]) -> dict[str, Any]:
    """``{"type", "args"}`` for a part of the library, ``{"type": "module.Class", "own": true}`` otherwise."""
    cls = type(part)
    if known.get(cls.__name__) is cls:
        return {"type": cls.__name__, "args": part.spec()}
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "own": True}


def describe(model: DETR) -> dict[str, Any]:
    """The JSON description that rebuilds ``model`` (its weights apart); see the module docstring."""
    factory = getattr(model, "factory_spec", None)
    if factory is not None:
        kwargs = dict(
            factory["kwargs"],
            aux_loss=model.aux_loss,
            class_names=model.class_names,
            category_ids=model.category_ids,
            preprocessing=model.preprocessing.to_dict(),
        )
        return {"format": "detr", "model": factory["model"], "kwargs": _json_ready(kwargs, "model's build arguments")}
    if getattr(model, "task", "boxes") == "masks":  # a mask head over a detector of parts: the detector's own
        return {**describe(model.detr), "masks": True}  # description, rebuilt under a new mask head
    config = model.config
    description = {
        "format": "detr",
        "parts": {
            "backbone": _describe(model.backbone, PART_TYPES),
            "transformer": _describe(model.transformer, PART_TYPES),
            "position_encoding": _describe(model.position_encoding, PART_TYPES),
            "matcher": None if config.matcher is None else _describe(config.matcher, PART_TYPES),
        },
        "config": {name: getattr(config, name) for name in CONFIG_FIELDS},
        "options": [_describe(option, OPTION_TYPES) for option in model.options],
        "class_names": model.class_names,
        "category_ids": model.category_ids,
        "preprocessing": model.preprocessing.to_dict(),
    }
    return _json_ready(description, "model's description")


def _write_safetensors(path: Path, state_dict: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_pretrained(model: DETR, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    directory = Path(directory)
    description = describe(model)
    directory.mkdir(parents=True, exist_ok=True)
    _write_safetensors(directory / WEIGHTS_NAME, model.state_dict())
    atomic_write_text(directory / CONFIG_NAME, json.dumps(description, indent=2))
    return directory


def read_description(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved directory (ours or transformers'), checked to be one."""
    config_path = Path(directory) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {directory} a directory written by save_pretrained?")
    try:
        description = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON ({err})") from err
    if not isinstance(description, dict) or not (
        description.get("format") == "detr" or description.get("model_type") == "detr"
    ):
        raise CheckpointError(f"{config_path} is neither a detr config nor a transformers DETR config")
    return description


def from_pretrained(
    directory: str | Path,
    *,
    model_type: type[DETR],
    config_type: type[DETRConfig],
    config: DETRConfig | None = None,
    **overrides: Any,
) -> DETR:
    """Rebuild a model saved by :func:`save_pretrained` (or by transformers' ``save_pretrained``).

    ``overrides`` replace factory arguments of a factory-built model; a model described by its
    parts takes ``class_names``, ``position_encoding`` and ``options`` instead, and ``config``
    (a :class:`DETRConfig` holding the parts) when its parts are not the library's.
    """
    directory = Path(directory)
    description = read_description(directory)
    if "parts" in description:
        model = _build_from_parts(description, directory, model_type, config_type, config, overrides)
        if description.get("masks"):
            from ..models.segmentation import DETRSegmentation

            model = DETRSegmentation(model)
        load_weights(model, directory, reinit_heads=False)
        return model
    if config is not None:
        raise ValueError(
            f"{directory} holds a model built by a registered factory; it rebuilds itself, so drop config="
        )
    if description.get("format") == "detr":
        name, kwargs = description["model"], dict(description["kwargs"])
    else:
        name, kwargs = _factory_args_from_hf_config(description)
    kwargs.update(overrides)
    return create_model(name, weights=directory, reinit_heads=False, **kwargs)


def _rebuild(entry: dict[str, Any], types: dict[str, type], what: str, how: str, directory: Path) -> Any:
    """A described part or option of the library, built again; one of the user's own is refused, saying how
    to pass it instead (a saved description names it, never imports it)."""
    if entry.get("own") or entry.get("type") not in types:
        raise ValueError(
            f"{directory} holds a model whose {what} is a part of your own ({entry['type']}), which a saved "
            f"description cannot rebuild: build it again and pass {how}"
        )
    return types[entry["type"]](**entry["args"])


def _build_from_parts(
    description: dict[str, Any],
    directory: Path,
    model_type: type[DETR],
    config_type: type[DETRConfig],
    config: DETRConfig | None,
    overrides: dict[str, Any],
) -> DETR:
    unknown = sorted(set(overrides) - {"class_names", "category_ids", "position_encoding", "options", "preprocessing"})
    if unknown:
        raise TypeError(
            f"{directory} holds a model described by its parts: from_pretrained takes config=, class_names=, "
            f"position_encoding= and options=, not {unknown}"
        )
    parts = description["parts"]
    if config is None:
        how = "DETR.from_pretrained(directory, config=DETRConfig(backbone=..., transformer=..., ...))"
        built = {
            name: None if parts.get(name) is None else _rebuild(parts[name], PART_TYPES, name, how, directory)
            for name in ("backbone", "transformer", "matcher")
        }
        config = config_type(**built, **description["config"])
    position_encoding = overrides.get("position_encoding") or _rebuild(
        parts["position_encoding"], PART_TYPES, "position_encoding", "position_encoding=", directory
    )
    options = overrides.get("options")
    if options is None:
        options = [
            _rebuild(entry, OPTION_TYPES, "training option", "options=[...]", directory)
            for entry in description.get("options", [])
        ]
    return model_type(
        config,
        position_encoding=position_encoding,
        class_names=overrides.get("class_names", description.get("class_names")),
        category_ids=overrides.get("category_ids", description.get("category_ids")),
        preprocessing=overrides.get("preprocessing")
        or (ImagePreprocessor.from_dict(description["preprocessing"]) if description.get("preprocessing") else None),
        options=options,
    )


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
    masks = "DetrForSegmentation" in (config.get("architectures") or [])
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
        **({"masks": True} if masks else {}),
    }
    return arch, kwargs


def export_hf(model: DETR, directory: str | Path) -> Path:
    """Write ``model`` in the layout of transformers' ``DetrForObjectDetection.from_pretrained`` (a mask
    model, :class:`~detr.models.segmentation.DETRSegmentation`: ``DetrForSegmentation``'s).

    Supported: a :class:`ResNetBackbone` ResNet-50/101 up to ``layer4`` without dilation
    (transformers' own ResNet backbone has no DC5), a post-norm :class:`Transformer`, the sine or
    learned position encoding; training-only options are left out (inference does not use them).
    """
    masks = hasattr(model, "mask_head")  # a DETRSegmentation: the detector under .detr, as transformers'
    full, model = model, (model.detr if masks else model)
    if getattr(model, "refinement", None) is not None:
        raise ValueError("box_refinement models cannot be exported: transformers' DETR has no anchor-box queries")
    backbone, t = model.backbone, model.transformer
    depths = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}
    if not (
        isinstance(backbone, ResNetBackbone)
        and backbone.name in depths
        and not backbone.dilation
        and backbone.num_layers == 4
        and backbone.blocks_per_stage is None
        and backbone.width == 1
    ):
        raise ValueError(
            f"this model's backbone ({getattr(backbone, 'name', type(backbone).__name__)}) cannot be exported: "
            "transformers' ResNet backbone supports R50/R101 up to layer4 with all their blocks and channels, without DC5"
        )
    if not isinstance(t, Transformer) or t.spec()["normalize_before"]:
        raise ValueError("only the post-norm detr.Transformer can be exported: transformers' DETR is post-norm only")
    if not isinstance(model.position_encoding, (PositionEmbeddingSine, PositionEmbeddingLearned)):
        raise ValueError("only the sine and learned position encodings can be exported")
    position = "sine" if isinstance(model.position_encoding, PositionEmbeddingSine) else "learned"
    names = model.class_names or [f"class_{i}" for i in range(model.num_classes)]
    config = {
        "model_type": "detr",
        "architectures": ["DetrForSegmentation" if masks else "DetrForObjectDetection"],
        "backbone_config": {
            "model_type": "resnet",
            "depths": depths[backbone.name],
            "hidden_sizes": [256, 512, 1024, 2048],
            "embedding_size": 64,
            "layer_type": "bottleneck",
            "hidden_act": "relu",
            "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False,
            "out_features": ["stage1", "stage2", "stage3", "stage4"] if masks else ["stage4"],  # masks read all
        },
        "use_timm_backbone": False,
        "backbone": None,  # transformers releases with a timm default need it unset next to backbone_config
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
        "position_embedding_type": position,
        "auxiliary_loss": model.aux_loss,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # training-only parts (options not used at inference, extra query groups) are left out
    training_only = tuple(f"{option.name}." for option in model.options if not option.used_at_inference)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(training_only)}
    state["query_embed.weight"] = state["query_embed.weight"][: model.num_queries]
    if masks:
        head = {k: v for k, v in full.state_dict().items() if not k.startswith("detr.")}
        hf_state = convert_to_hf_segmentation_state_dict({**{f"detr.{k}": v for k, v in state.items()}, **head})
    else:
        hf_state = convert_to_hf_state_dict(state)
    _write_safetensors(directory / WEIGHTS_NAME, hf_state)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
    return directory
