"""Downloads into torch hub's cache, hash-checked, failing fast offline.

Files are cached in ``$TORCH_HOME/hub/checkpoints`` (torch hub's own cache, shared with
torchvision), verified against the SHA-256 prefix in their file name, and downloaded
with a progress bar. Without network the download fails within seconds, naming the
URL and the path where the file can be put by hand.
"""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch.hub

# Seconds without an answer before a download is given up (also the connect timeout).
DOWNLOAD_TIMEOUT = 10.0


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def hash_prefix_of(url: str) -> str | None:
    """The SHA-256 prefix torch hub file names carry (``name-<hex>.pth``), if any."""
    m = re.search(r"-([a-f0-9]{8,})\.", Path(urlparse(url).path).name)
    return m.group(1) if m else None


def download(url: str, progress: bool = True, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """The cached file for ``url``, downloaded (hash-checked, atomically) if not cached yet."""
    dst = cache_dir() / Path(urlparse(url).path).name
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    prefix = hash_prefix_of(url)
    try:
        with _socket_timeout(timeout):
            # writes to a temporary file and renames it into place once the hash matches
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=progress)
    except RuntimeError as err:
        if "invalid hash value" in str(err):
            raise RuntimeError(
                f"the file downloaded from {url} does not match its published SHA-256 prefix {prefix}; "
                "it is corrupt or not the published file, and was not kept"
            ) from err
        raise
    except OSError as err:  # URLError, socket.timeout, connection refused, DNS failure
        raise RuntimeError(
            f"could not download {url} ({getattr(err, 'reason', err)}). If this machine is offline, "
            f"fetch the file elsewhere and put it at {dst} (the cache under $TORCH_HOME), "
            "or pass weights=<path to the file>"
        ) from err
    return dst
