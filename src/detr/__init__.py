"""detr: DETR (DEtection TRansformer, Carion et al. 2020) in PyTorch.

Faithful to the paper and the facebookresearch/detr reference code; API of the
Lucid DETR documentation (``DETRConfig``, ``DETR``, ``detr_r50`` ...).

Layout: ``models`` (the paper's DETR, its parts, the factories), ``options`` (training options
beyond the paper), ``losses`` (matcher, set criterion), ``hub`` (published weights, checkpoints,
saving), ``processing`` (input checks, pre- and post-processing), ``deploy`` (inference copy,
ONNX), ``data``, ``engine`` (training, evaluation), ``cli``.
"""

from .data.coco_categories import COCO_CATEGORIES, COCO_CLASS_NAMES
from .hub.checkpoints import (
    CheckpointError,
    convert_hf_state_dict,
    convert_reference_state_dict,
    convert_to_hf_state_dict,
    fetch_checkpoint,
    load_weights,
    read_state_dict,
)
from .hub.pretrained import PretrainedWeights, list_pretrained
from .hub.serialization import export_hf, save_pretrained
from .losses import HungarianMatcher, SetCriterion
from .models.backbone import ResNetBackbone
from .models.detr import DETR, DETRConfig
from .models.factories import build_detr, detr_r18, detr_r34, detr_r50, detr_r50_dc5, detr_r101, detr_r101_dc5
from .models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from .models.registry import create_model, list_models, register_model
from .models.transformer import Transformer
from .processing import Batch, ImagePreprocessor, postprocess, preprocess_images

from_pretrained = DETR.from_pretrained

__version__ = "0.1.0"

__all__ = [
    "COCO_CATEGORIES",
    "COCO_CLASS_NAMES",
    "DETR",
    "Batch",
    "CheckpointError",
    "DETRConfig",
    "HungarianMatcher",
    "ImagePreprocessor",
    "PositionEmbeddingLearned",
    "PositionEmbeddingSine",
    "PretrainedWeights",
    "ResNetBackbone",
    "SetCriterion",
    "Transformer",
    "build_detr",
    "convert_hf_state_dict",
    "convert_reference_state_dict",
    "convert_to_hf_state_dict",
    "create_model",
    "detr_r18",
    "detr_r34",
    "detr_r50",
    "detr_r50_dc5",
    "detr_r101",
    "detr_r101_dc5",
    "export_hf",
    "fetch_checkpoint",
    "from_pretrained",
    "list_models",
    "list_pretrained",
    "load_weights",
    "postprocess",
    "preprocess_images",
    "read_state_dict",
    "register_model",
    "save_pretrained",
]
