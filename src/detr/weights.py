"""Reading checkpoints safely and mapping foreign key layouts onto this library's modules.

Three layouts are understood, and detected from the keys:

- ``reference``: facebookresearch/detr releases, ``{"model": state_dict}`` .pth files
  (``backbone.0.body.*``, ``class_embed``, ``bbox_embed.layers.N``, ...).
- ``hf``: Hugging Face ``transformers`` ``DetrForObjectDetection`` (``model.backbone.*``,
  ``q_proj``/``k_proj``/``v_proj``, ``class_labels_classifier``, ...), both the ResNet
  (AutoBackbone) and the timm backbone variants, transformers v4 and v5 names.
- ``detr``: this library's own names.

The conversion functions are pure: state dict in, new state dict out.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


# ------------------------------------------------------------------ reading
def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a checkpoint file or directory, never unpickling anything but tensors.

    Accepts ``.safetensors`` files, ``.pth``/``.bin`` files (loaded with
    ``weights_only=True``; a reference ``{"model": ...}`` wrapper is unwrapped), and
    directories holding ``model.safetensors`` or ``pytorch_model.bin``.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise FileNotFoundError(f"{path} is a directory without model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); is it truncated?") from err
    try:
        # checkpoints written by the reference training script carry its argparse.Namespace;
        # allowing that plain-data class runs no code
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors, and unpickling them "
            "could run code. Re-save the weights as a plain state dict or as safetensors."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({err}); is it truncated or corrupt?"
        ) from err
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> StateDict:
    """The state dict inside a loaded checkpoint: the object itself, or its ``model``/``state_dict`` entry."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


# ------------------------------------------------------------------ layouts
def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """``"reference"``, ``"hf"`` or ``"detr"`` from the key names."""
    keys = list(state_dict)
    if any(k.startswith(("backbone.0.", "class_embed.", "bbox_embed.")) for k in keys):
        return "reference"
    if any(k.startswith(("model.backbone.", "class_labels_classifier.", "bbox_predictor.")) for k in keys):
        return "hf"
    if any(k.startswith(("backbone.body.", "class_head.", "box_head.")) for k in keys):
        return "detr"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected DETR weights from the reference release "
        "(backbone.0.body.*), Hugging Face transformers (model.backbone.*) or this library "
        f"(backbone.body.*); first keys: {keys[:5]}"
    )


def _drop_bn_counters(state_dict: Mapping[str, Tensor]) -> StateDict:
    return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def convert_reference_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """facebookresearch/detr names -> this library's names."""
    renames = (
        ("backbone.0.body.", "backbone.body."),
        ("backbone.1.", "position_encoding."),
        ("class_embed.", "class_head."),
        ("bbox_embed.", "box_head."),
    )
    out = {}
    for key, value in _drop_bn_counters(state_dict).items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _hf_backbone_key(rest: str) -> str:
    """Name inside an HF backbone -> torchvision ResNet name (timm names already are)."""
    if rest.startswith("embedder.embedder."):
        rest = rest[len("embedder.embedder.") :]
        return rest.replace("convolution.", "conv1.").replace("normalization.", "bn1.")
    m = re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", rest)
    if m is None:
        return rest  # timm ResNet: conv1, bn1, layerN.M.convK, downsample.0/1
    stage, block, tail = int(m.group(1)), m.group(2), m.group(3)
    prefix = f"layer{stage + 1}.{block}."
    m2 = re.fullmatch(r"layer\.(\d+)\.(convolution|normalization)\.(.+)", tail)
    if m2:
        idx = int(m2.group(1)) + 1
        kind = "conv" if m2.group(2) == "convolution" else "bn"
        return f"{prefix}{kind}{idx}.{m2.group(3)}"
    m2 = re.fullmatch(r"shortcut\.(convolution|normalization)\.(.+)", tail)
    if m2:
        return f"{prefix}downsample.{0 if m2.group(1) == 'convolution' else 1}.{m2.group(2)}"
    raise CheckpointError(f"unexpected key in the Hugging Face backbone: {rest}")


def _hf_layer_key(part: str, rest: str) -> str:
    """Name inside an HF encoder/decoder layer -> reference/torch name."""
    rest = rest.replace("mlp.fc1.", "linear1.").replace("mlp.fc2.", "linear2.")
    rest = re.sub(r"^fc1\.", "linear1.", rest)
    rest = re.sub(r"^fc2\.", "linear2.", rest)
    rest = rest.replace("encoder_attn_layer_norm.", "norm2.").replace("self_attn_layer_norm.", "norm1.")
    rest = rest.replace("final_layer_norm.", "norm2." if part == "encoder" else "norm3.")
    rest = rest.replace("encoder_attn.", "multihead_attn.")
    return rest.replace(".o_proj.", ".out_proj.")


def convert_hf_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Hugging Face ``DetrForObjectDetection`` names -> this library's names.

    Separate q/k/v projections are packed into ``in_proj_weight`` (rows q, k, v).
    """
    out: StateDict = {}
    packed: dict[str, dict[str, Tensor]] = {}
    for key, value in _drop_bn_counters(state_dict).items():
        key = key.replace("model.backbone.conv_encoder.", "model.backbone.")  # transformers v4
        if key.startswith("model.backbone.model."):
            out["backbone.body." + _hf_backbone_key(key[len("model.backbone.model.") :])] = value
            continue
        m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
        if m:
            part, idx, rest = m.groups()
            rest = _hf_layer_key(part, rest)
            qkv = re.fullmatch(r"(self_attn|multihead_attn)\.([qkv])_proj\.(weight|bias)", rest)
            base = f"transformer.{part}.layers.{idx}."
            if qkv:
                attn, which, kind = qkv.groups()
                packed.setdefault(f"{base}{attn}.in_proj_{kind}", {})[which] = value
            else:
                out[base + rest] = value
            continue
        simple = {
            "model.decoder.layernorm.": "transformer.decoder.norm.",
            "model.input_projection.": "input_proj.",
            "model.query_position_embeddings.": "query_embed.",
            "model.position_embedding.row_embeddings.": "position_encoding.row_embed.",
            "model.position_embedding.column_embeddings.": "position_encoding.col_embed.",
            "class_labels_classifier.": "class_head.",
            "bbox_predictor.": "box_head.",
        }
        for old, new in simple.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            out[key] = value  # left for the strict check to report
    for name, parts in packed.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"incomplete attention projections for {name}: found only {sorted(parts)}")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_detr_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, str]:
    """Any understood layout -> (state dict with this library's names, layout name)."""
    layout = detect_layout(state_dict)
    if layout == "reference":
        return convert_reference_state_dict(state_dict), layout
    if layout == "hf":
        return convert_hf_state_dict(state_dict), layout
    return _drop_bn_counters(state_dict), layout


# ------------------------------------------------------------------ loading
def _summarise(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, Tensor]) -> str:
    """Load a checkpoint (path or state dict, any understood layout) into ``model``, strictly.

    Returns the detected layout. Raises :class:`CheckpointError` listing missing,
    unexpected and wrong-shaped keys when the checkpoint does not fit.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "state dict"
    raw = read_state_dict(weights) if isinstance(weights, (str, Path)) else unwrap_state_dict(weights, source)
    state_dict, layout = to_detr_state_dict(raw)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint {source} (read as the {layout!r} layout) does not fit this {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_summarise(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
        if wrong_shape:
            lines.append(f"  wrong shapes ({len(wrong_shape)}): {_summarise(wrong_shape)}")
        lines.append(
            "  is it a checkpoint of another model (backbone depth, DC5, num_classes, num_queries)? "
            "build the matching factory, e.g. detr_r101 for an R101 checkpoint"
        )
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=False)  # only batch-norm counters can be absent
    return layout
