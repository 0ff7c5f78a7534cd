"""Around the model: input checks (:mod:`.checks`), images -> padded batch (:mod:`.preprocess`), outputs ->
detections in pixels (:mod:`.postprocess`), drawing them (:mod:`.visualize`), and handing them to other
tools (:mod:`.interop`). Import from the modules (``detr.postprocess`` and ``detr.ImagePreprocessor`` are
also at the top level); this file imports nothing, so that module and function names cannot shadow each other.
"""
