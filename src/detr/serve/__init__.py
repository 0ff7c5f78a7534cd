"""``detr serve``: a model behind an HTTP API with dynamic batching, metrics and a page to try it.

``create_app(model)`` returns the ASGI app (FastAPI); :func:`detr.serve.server.serve` runs it under
uvicorn. Needs the ``serve`` extra: ``pip install "detr-pytorch[serve]"``.
"""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
