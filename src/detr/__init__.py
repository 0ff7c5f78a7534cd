"""detr: DETR (DEtection TRansformer, Carion et al. 2020) in PyTorch.

Faithful to the paper and the facebookresearch/detr reference code; API of the
Lucid DETR documentation (``DETRConfig``, ``DETR``, ``detr_r50`` ...).
"""

from .backbone import ResNetBackbone
from .coco import COCO_CATEGORIES, COCO_CLASS_NAMES
from .criterion import SetCriterion
from .factory import (
    build_detr,
    create_model,
    detr_r18,
    detr_r34,
    detr_r50,
    detr_r50_dc5,
    detr_r101,
    detr_r101_dc5,
    list_models,
    register_model,
)
from .hub import PretrainedWeights, list_pretrained
from .matcher import HungarianMatcher
from .model import DETR, DETRConfig
from .position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from .postprocess import postprocess
from .preprocess import Batch, ImagePreprocessor, preprocess_images
from .serialization import export_hf, from_pretrained, save_pretrained
from .transformer import Transformer
from .weights import (
    CheckpointError,
    convert_hf_state_dict,
    convert_reference_state_dict,
    convert_to_hf_state_dict,
    fetch_checkpoint,
    load_weights,
    read_state_dict,
)

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
