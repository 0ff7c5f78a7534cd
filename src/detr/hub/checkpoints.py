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
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .download import download
from .pretrained import PRETRAINED

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
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # neither torch.save's zip (even truncated) nor a pickle stream
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint at all (neither the zip archive torch.save writes nor a pickle); "
            "is it the right file, completely downloaded?"
        )
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


def convert_to_hf_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """This library's names -> Hugging Face ``DetrForObjectDetection`` names (transformers v5, ResNet backbone).

    The inverse of :func:`convert_hf_state_dict` for models with a torchvision ResNet backbone.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.body."):
            rest = key[len("backbone.body.") :]
            m = re.fullmatch(r"(conv1|bn1)\.(.+)", rest)
            if m:
                kind = "convolution" if m.group(1) == "conv1" else "normalization"
                out[f"model.backbone.model.embedder.embedder.{kind}.{m.group(2)}"] = value
                continue
            m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)", rest)
            prefix = "model.backbone.model.encoder.stages."
            if m:
                stage, block, kind, idx, tail = m.groups()
                kind = "convolution" if kind == "conv" else "normalization"
                out[f"{prefix}{int(stage) - 1}.layers.{block}.layer.{int(idx) - 1}.{kind}.{tail}"] = value
                continue
            m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(.+)", rest)
            if m:
                stage, block, which, tail = m.groups()
                kind = "convolution" if which == "0" else "normalization"
                out[f"{prefix}{int(stage) - 1}.layers.{block}.shortcut.{kind}.{tail}"] = value
                continue
            raise CheckpointError(f"cannot export backbone key {key} to the Hugging Face layout")
        m = re.fullmatch(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
        if m:
            part, idx, rest = m.groups()
            base = f"model.{part}.layers.{idx}."
            attn = re.fullmatch(r"(self_attn|multihead_attn)\.in_proj_(weight|bias)", rest)
            if attn:
                hf_attn = "self_attn" if attn.group(1) == "self_attn" else "encoder_attn"
                for which, chunk in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{base}{hf_attn}.{which}_proj.{attn.group(2)}"] = chunk.clone()
                continue
            renames = [
                ("self_attn.out_proj.", "self_attn.o_proj."),
                ("multihead_attn.out_proj.", "encoder_attn.o_proj."),
                ("linear1.", "mlp.fc1."),
                ("linear2.", "mlp.fc2."),
                ("norm1.", "self_attn_layer_norm."),
                ("norm2.", "final_layer_norm." if part == "encoder" else "encoder_attn_layer_norm."),
                ("norm3.", "final_layer_norm."),
            ]
            for old, new in renames:
                if rest.startswith(old):
                    out[base + new + rest[len(old) :]] = value
                    break
            else:
                raise CheckpointError(f"cannot export transformer key {key} to the Hugging Face layout")
            continue
        simple = {
            "transformer.decoder.norm.": "model.decoder.layernorm.",
            "input_proj.": "model.input_projection.",
            "query_embed.": "model.query_position_embeddings.",
            "position_encoding.row_embed.": "model.position_embedding.row_embeddings.",
            "position_encoding.col_embed.": "model.position_embedding.column_embeddings.",
            "class_head.": "class_labels_classifier.",
            "box_head.": "bbox_predictor.",
        }
        for old, new in simple.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise CheckpointError(f"cannot export key {key} to the Hugging Face layout")
    return out


def to_detr_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, str]:
    """Any understood layout -> (state dict with this library's names, layout name). A segmentation
    model's (its detector under ``detr.``) keeps that prefix (:func:`convert_segmentation_state_dict`)."""
    if any(k.startswith("detr.") for k in state_dict):
        return convert_segmentation_state_dict(state_dict)
    layout = detect_layout(state_dict)
    if layout == "reference":
        return convert_reference_state_dict(state_dict), layout
    if layout == "hf":
        return convert_hf_state_dict(state_dict), layout
    return _drop_bn_counters(state_dict), layout


# ------------------------------------------------------------------ loading
# Parameters with a row per class (True: and a last row for "no object"), and with a row per query:
# when num_classes or num_queries differ (fine-tuning) only these may change shape.
CLASS_ROWS = {
    "class_head.weight": True,
    "class_head.bias": True,
    "dense_head.class_head.weight": False,
    "dense_head.class_head.bias": False,
    "denoising.label_embed.weight": False,
}
QUERY_ROWS = ("query_embed.weight", "refinement.anchors.weight")


@dataclass
class Checkpoint:
    """A checkpoint's tensors, where they came from, and the label space it declares (if it does):
    the name of each class and the dataset category id each stands for."""

    state_dict: StateDict
    source: str
    class_names: list[str] | None = None
    category_ids: list[int] | None = None


def _labels_from_config(directory: Path) -> tuple[list[str] | None, list[int] | None]:
    """Class names and category ids from a saved directory's config.json (ours, or transformers' ``id2label``)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        return None, None
    config = json.loads(config_path.read_text())
    if config.get("format") == "detr":  # built by a factory (its kwargs), or described by its parts
        labels = config.get("kwargs", config)
        return labels.get("class_names"), labels.get("category_ids")
    id2label = config.get("id2label")
    if config.get("model_type") == "detr" and isinstance(id2label, dict) and id2label:
        ids = sorted(int(i) for i in id2label)
        if ids == list(range(len(ids))):
            return [id2label[str(i)] for i in ids], None
    return None, None


def fetch_checkpoint(weights: str | Path | Mapping[str, Tensor]) -> Checkpoint:
    """Resolve ``weights=``: a registry name (see :func:`detr.hub.pretrained.list_pretrained`), a URL, a file,
    a directory (ours or transformers' ``save_pretrained``), or a state dict."""
    if isinstance(weights, Mapping):
        return Checkpoint(unwrap_state_dict(weights, "state dict"), "state dict")
    if isinstance(weights, str) and weights in PRETRAINED:
        entry = PRETRAINED[weights]
        path = download(entry.url)
        return Checkpoint(read_state_dict(path), f"{weights} ({path})", entry.class_names(), entry.category_ids())
    if isinstance(weights, str) and re.match(r"^(https?|file)://", weights):
        path = download(weights)
        return Checkpoint(read_state_dict(path), f"{weights} ({path})")
    if not isinstance(weights, (str, Path)):
        raise TypeError(f"weights must be a name, URL, path or state dict, got {type(weights).__name__}")
    path = Path(weights)
    if not path.exists() and isinstance(weights, str) and "/" not in weights and not path.suffix:
        names = ", ".join(PRETRAINED)
        raise FileNotFoundError(f"weights {weights!r} is neither a file nor a published checkpoint name ({names})")
    names, ids = _labels_from_config(path) if path.is_dir() else (None, None)
    return Checkpoint(read_state_dict(path), str(path), names, ids)


def _summarise(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def class_rows(source_names: list[str], target_names: list[str]) -> list[int | None]:
    """For each target class, the row of the source class of the same name (case-insensitive), or None;
    a name given several times (COCO's "N/A" gaps) matches its occurrences in order."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(source_names):
        rows.setdefault(name.strip().casefold(), []).append(i)
    seen: dict[str, int] = {}
    out: list[int | None] = []
    for name in target_names:
        key = name.strip().casefold()
        k = seen[key] = seen.get(key, -1) + 1
        out.append(rows[key][k] if k < len(rows.get(key, ())) else None)
    return out


def _remap_class_rows(source: Tensor, fresh: Tensor, rows: list[int | None], no_object: bool) -> Tensor:
    """``fresh`` (a row per target class, plus "no object") with the source rows copied where ``rows`` names one."""
    out = fresh.clone()
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = source[row]
    if no_object:
        out[-1] = source[-1]
    return out


def _detector_key(key: str) -> str:
    """A parameter's name in the detector: a mask model holds its detector under ``detr.``."""
    return key.removeprefix("detr.")


def _align_mask_model(
    state_dict: StateDict, expected: Mapping[str, Tensor], notes: list[str]
) -> tuple[StateDict, list[str]]:
    """Detector weights for a mask model (its mask head then starts fresh, as in the reference's
    second training stage), or a mask model's weights for a detector (its mask head left out).
    Returns the state dict in the model's names and the mask-head keys that start fresh."""
    model_masks = any(k.startswith("detr.") for k in expected)
    checkpoint_masks = any(k.startswith("detr.") for k in state_dict)
    if model_masks and not checkpoint_masks:
        state_dict = {f"detr.{k}": v for k, v in state_dict.items()}
        fresh = [k for k in expected if not k.startswith("detr.")]
        notes.append("a detection checkpoint: the mask head starts from its initialisation (train it)")
        return state_dict, fresh
    if checkpoint_masks and not model_masks:
        dropped = [k for k in state_dict if not k.startswith("detr.")]
        if dropped:
            notes.append(f"a segmentation checkpoint: its mask head ({len(dropped)} tensors) is not used")
        return {k[len("detr.") :]: v for k, v in state_dict.items() if k.startswith("detr.")}, []
    return state_dict, []


def _saved_model_hint(weights: object) -> list[str]:
    """For a directory that records how its model was built (our ``config.json``): how to rebuild it."""
    config_path = Path(weights) / "config.json" if isinstance(weights, (str, Path)) else None
    if config_path is None or not config_path.is_file():
        return []
    description = json.loads(config_path.read_text())
    if description.get("format") != "detr":
        return []
    built = {
        k: v for k, v in description.get("kwargs", {}).items() if k not in ("class_names", "category_ids", "preprocessing")
    }
    how = f"{description['model']}({', '.join(f'{k}={v!r}' for k, v in built.items())})" if built else "its parts"
    return [
        f"  {weights} records the model it holds: detr.load({str(weights)!r}) (or DETR.from_pretrained) rebuilds it; "
        f"a factory given these weights must be built the same way: {how}"
    ]


def load_weights(
    model: nn.Module,
    weights: str | Path | Mapping[str, Tensor],
    reinit_heads: bool = True,
    keep_labels: bool = False,
) -> str:
    """Load a checkpoint (any form :func:`fetch_checkpoint` takes, any understood layout) into ``model``.

    Loading is strict: every parameter must be found with its shape. The one exception, for
    fine-tuning (``reinit_heads``), is the parameters with a row per class or per query when
    ``num_classes`` or ``num_queries`` differ from the checkpoint's (and nothing else of their
    shape does): a class whose name the checkpoint knows keeps its row, the others and the query
    rows keep their fresh initialisation, and a warning names them. The model takes the
    checkpoint's class names and category ids when their number fits, unless ``keep_labels``.
    Returns the detected layout; raises :class:`CheckpointError` listing missing, unexpected and
    wrong-shaped keys otherwise.
    """
    checkpoint = fetch_checkpoint(weights)
    state_dict, layout = to_detr_state_dict(checkpoint.state_dict)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    notes = []
    state_dict, fresh_head = _align_mask_model(state_dict, expected, notes)
    missing = sorted(set(expected) - set(state_dict) - set(fresh_head))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    resizable = set(CLASS_ROWS) | set(QUERY_ROWS)
    reinit = (
        [k for k in mismatched if _detector_key(k) in resizable and state_dict[k].shape[1:] == expected[k].shape[1:]]
        if reinit_heads
        else []
    )
    wrong_shape = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in mismatched
        if k not in reinit
    ]
    if missing or unexpected or wrong_shape:
        lines = [
            f"checkpoint {checkpoint.source} (read as the {layout!r} layout) does not fit this {type(model).__name__}:"
        ]
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
        lines += _saved_model_hint(weights)
        raise CheckpointError("\n".join(lines))
    target_names = getattr(model, "class_names", None)
    class_keys = [k for k in reinit if _detector_key(k) in CLASS_ROWS]
    if class_keys and checkpoint.class_names and target_names:
        rows = class_rows(checkpoint.class_names, target_names)
        if any(row is not None for row in rows):
            for k in class_keys:
                state_dict[k] = _remap_class_rows(state_dict[k], expected[k], rows, CLASS_ROWS[_detector_key(k)])
            reinit = [k for k in reinit if k not in class_keys]
            new = [name for name, row in zip(target_names, rows) if row is None]
            if new:
                notes.append(
                    f"kept the rows of the {len(rows) - len(new)} classes the checkpoint knows by name, "
                    f"new rows for {_summarise(new)}"
                )
    if reinit:
        details = ", ".join(f"{k} {tuple(state_dict[k].shape)} -> {tuple(expected[k].shape)}" for k in reinit)
        notes.append(f"re-initialised {details} (num_classes or num_queries differ from the checkpoint's)")
        for k in reinit:
            del state_dict[k]
    if notes:
        warnings.warn(
            f"fine-tuning from {checkpoint.source}: {'; '.join(notes)}; every other weight was loaded", stacklevel=2
        )
    model.load_state_dict(state_dict, strict=False)  # checked above: only re-initialised rows, a fresh mask head
    # or BN counters absent
    num_classes = getattr(model, "num_classes", -1)
    if not keep_labels:
        if checkpoint.class_names is not None and len(checkpoint.class_names) == num_classes:
            model.class_names = list(checkpoint.class_names)
        if checkpoint.category_ids is not None and len(checkpoint.category_ids) == num_classes:
            model.category_ids = list(checkpoint.category_ids)
    return layout


# ------------------------------------------------------------- segmentation (the mask head)
# transformers' DetrForSegmentation mask head names -> the reference's (ours)
_HF_MASK_HEAD = {
    "conv1.conv.": "lay1.",
    "conv1.norm.": "gn1.",
    "conv2.conv.": "lay2.",
    "conv2.norm.": "gn2.",
    "fpn_stages.0.refine.conv.": "lay3.",
    "fpn_stages.0.refine.norm.": "gn3.",
    "fpn_stages.0.fpn_adapter.": "adapter1.",
    "fpn_stages.1.refine.conv.": "lay4.",
    "fpn_stages.1.refine.norm.": "gn4.",
    "fpn_stages.1.fpn_adapter.": "adapter2.",
    "fpn_stages.2.refine.conv.": "lay5.",
    "fpn_stages.2.refine.norm.": "gn5.",
    "fpn_stages.2.fpn_adapter.": "adapter3.",
    "output_conv.": "out_lay.",
}
_HF_ATTENTION_MAP = {"q_proj.": "q_linear.", "k_proj.": "k_linear."}


def convert_segmentation_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, str]:
    """A segmentation DETR's weights in any understood layout -> (this library's names, layout).

    Layouts: the reference's panoptic release (``detr.backbone.0.body.*``, ``bbox_attention.q_linear``,
    ``mask_head.lay1`` ...), transformers' ``DetrForSegmentation`` (``detr.model.*``,
    ``bbox_attention.q_proj``, ``mask_head.conv1.conv`` ...) and ours (the reference's head names,
    the detector under ``detr.`` in our names).
    """
    detector = {k[len("detr.") :]: v for k, v in state_dict.items() if k.startswith("detr.")}
    if not detector:
        raise CheckpointError(
            "not a segmentation checkpoint: no detr.* keys (the detector of a mask model is stored under detr.); "
            f"first keys: {list(state_dict)[:5]}"
        )
    converted, layout = to_detr_state_dict(detector)
    out: StateDict = {f"detr.{k}": v for k, v in converted.items()}
    for key, value in _drop_bn_counters(state_dict).items():
        if key.startswith("detr."):
            continue
        module, _, rest = key.partition(".")
        renames = {"mask_head": _HF_MASK_HEAD, "bbox_attention": _HF_ATTENTION_MAP}.get(module, {})
        for old, new in renames.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        out[f"{module}.{rest}"] = value
    return out, layout


def convert_to_hf_segmentation_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """This library's segmentation names -> transformers' ``DetrForSegmentation`` names (the inverse
    of :func:`convert_segmentation_state_dict` for a torchvision ResNet backbone)."""
    detector = {k[len("detr.") :]: v for k, v in state_dict.items() if k.startswith("detr.")}
    out: StateDict = {f"detr.{k}": v for k, v in convert_to_hf_state_dict(detector).items()}
    inverse = {
        "mask_head": {new: old for old, new in _HF_MASK_HEAD.items()},
        "bbox_attention": {new: old for old, new in _HF_ATTENTION_MAP.items()},
    }
    for key, value in state_dict.items():
        if key.startswith("detr."):
            continue
        module, _, rest = key.partition(".")
        for old, new in inverse.get(module, {}).items():
            if rest.startswith(old):
                out[f"{module}.{new}{rest[len(old) :]}"] = value
                break
        else:
            raise CheckpointError(f"cannot export key {key} to the Hugging Face layout")
    return out
