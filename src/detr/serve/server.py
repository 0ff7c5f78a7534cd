"""Running the app: ``detr serve``'s banner, its no-authentication warning, and uvicorn.

With ``workers`` > 1 uvicorn starts that many processes, each loading the model itself
(:func:`app_from_environment` reads what to load from ``DETR_SERVE_SETTINGS``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any

import uvicorn

from .app import LOOPBACK, ServeConfig, ServedModel, create_app

SETTINGS_VARIABLE = "DETR_SERVE_SETTINGS"


def banner(served: ServedModel, url: str, config: ServeConfig, workers: int) -> str:
    """What ``detr serve`` prints on start: where, which model, its classes and input size."""
    info = served.describe()
    names = [c["name"] if c["name"] is not None else str(c["id"]) for c in info["classes"]]
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    p = info["preprocessing"]
    return (
        f"serving {info['model']} ({info['kind']}, {info['precision']}, {info['device']}"
        f"{', masks' if info['masks'] else ''}) at {url}\n"
        f"  classes: {shown}\n"
        f"  input: short side {p['short_side']}, longest side at most {p['max_size']}, padded to a multiple of "
        f"{p['size_divisor']}\n"
        f"  batching: up to {config.max_batch_size} images, waiting at most {config.max_wait_ms:g} ms; "
        f"{workers} worker process{'es' if workers > 1 else ''}\n"
        f"  page: {url}/   API: {url}/docs   metrics: {url}/metrics   (Ctrl-C stops)"
    )


def startup_warnings(host: str, config: ServeConfig) -> list[str]:
    """What ``detr serve`` warns of before it listens on ``host``: an open network without a key."""
    if host in LOOPBACK:
        return []
    if config.api_key is None:
        return [
            f"warning: listening on {host} with no authentication: anyone who reaches this port can use the "
            f"model; set --api-key (or DETR_API_KEY), or bind to 127.0.0.1"
        ]
    return ["note: the API key travels in clear over HTTP: put a TLS proxy in front on an open network"]


def app_from_environment() -> Any:
    """The app for one of uvicorn's worker processes: the weights and settings ``serve`` left in the environment."""
    from ..loader import load

    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    return create_app(load(settings["weights"], device=settings["device"]), ServeConfig(**settings["config"]))


def serve(
    model: Any,
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    weights: str | None = None,
    device: str = "cpu",
) -> None:
    """Serve ``model`` until Ctrl-C (requests in flight finish first). ``workers`` > 1 needs ``weights``
    (each process loads them on ``device``)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and weights is None:
        raise ValueError("several workers each load the model: give the weights")
    app = create_app(model, config)
    shown_host = f"[{host}]" if ":" in host else host
    print(banner(app.state.served, f"http://{shown_host}:{port}", config, workers), flush=True)
    for warning in startup_warnings(host, config):
        print(warning, file=sys.stderr, flush=True)
    # graceful shutdown: uvicorn stops accepting, lets requests in flight finish, then the app's batcher stops
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=None)
        return
    os.environ[SETTINGS_VARIABLE] = json.dumps({"weights": str(weights), "device": device, "config": asdict(config)})
    uvicorn.run(
        f"{__name__}:app_from_environment", factory=True, host=host, port=port, workers=workers, log_level="info"
    )
