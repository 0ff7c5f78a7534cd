"""Around the model: input checks, images -> padded batch (:mod:`.preprocess`), outputs -> detections
in pixels (:mod:`.postprocess`), and drawing them (:mod:`.visualize`)."""

from .postprocess import postprocess
from .preprocess import Batch, ImagePreprocessor, preprocess_images

__all__ = ["Batch", "ImagePreprocessor", "postprocess", "preprocess_images"]
