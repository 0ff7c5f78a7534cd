"""detr: DETR (DEtection TRansformer, Carion et al. 2020) in PyTorch.

Faithful to the paper and the facebookresearch/detr reference code; API of the
Lucid DETR documentation (``DETRConfig``, ``DETR``, ``detr_r50`` ...).

Layout: ``models`` (the paper's DETR, its parts, the factories), ``options`` (training options
beyond the paper), ``losses`` (matcher, set criterion), ``hub`` (published weights, checkpoints,
saving), ``processing`` (input checks, pre- and post-processing), ``deploy`` (inference copy,
ONNX), ``data``, ``engine`` (training, evaluation), ``cli``. The names below are imported on first
use, so that the command line starts without importing PyTorch.
"""

from ._lazy import lazy_exports

_EXPORTS = {
    "COCO_CATEGORIES": "data.coco_categories",
    "COCO_CLASS_NAMES": "data.coco_categories",
    "CheckpointError": "hub.checkpoints",
    "convert_hf_state_dict": "hub.checkpoints",
    "convert_reference_state_dict": "hub.checkpoints",
    "convert_to_hf_state_dict": "hub.checkpoints",
    "fetch_checkpoint": "hub.checkpoints",
    "load_weights": "hub.checkpoints",
    "read_state_dict": "hub.checkpoints",
    "PretrainedWeights": "hub.pretrained",
    "list_pretrained": "hub.pretrained",
    "export_hf": "hub.serialization",
    "save_pretrained": "hub.serialization",
    "HungarianMatcher": "losses.matcher",
    "SetCriterion": "losses.criterion",
    "ResNetBackbone": "models.backbone",
    "DETR": "models.detr",
    "DETRConfig": "models.detr",
    "build_detr": "models.factories",
    "create_model": "models.registry",
    "detr_r18": "models.factories",
    "detr_r34": "models.factories",
    "detr_r50": "models.factories",
    "detr_r50_dc5": "models.factories",
    "detr_r101": "models.factories",
    "detr_r101_dc5": "models.factories",
    "detr_r50_panoptic": "models.factories",
    "detr_r50_dc5_panoptic": "models.factories",
    "detr_r101_panoptic": "models.factories",
    "DETRSegmentation": "models.segmentation",
    "list_models": "models.registry",
    "register_model": "models.registry",
    "PositionEmbeddingLearned": "models.position_encoding",
    "PositionEmbeddingSine": "models.position_encoding",
    "Transformer": "models.transformer",
    "Batch": "processing.preprocess",
    "ImagePreprocessor": "processing.preprocess",
    "preprocess_images": "processing.preprocess",
    "postprocess": "processing.postprocess",
    "to_supervision": "processing.interop",
    "from_pretrained": "models.factories",
    "load": "loader",
    "load_model": "loader",
    "ExportedDETR": "deploy.runtime",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
