"""Downloads into torch hub's cache, hash-checked, failing fast offline.

Files are cached in ``$TORCH_HOME/hub/checkpoints`` (torch hub's own cache, shared with
torchvision), verified against the SHA-256 prefix in their file name, and downloaded
with a progress bar. Without network the download fails within seconds, naming the
URL and the path where the file can be put by hand.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

# Seconds without an answer before a download is given up (also the connect timeout).
DOWNLOAD_TIMEOUT = 10.0


class DownloadError(RuntimeError):
    """A file could not be downloaded, or was not the published one; the message says what to do."""


def cache_dir() -> Path:
    """torch hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``)."""
    if "torch" in sys.modules:  # it may have been moved with torch.hub.set_dir
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    # torch not imported yet (``detr models``): torch hub's own rule, without paying for importing torch
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


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


def download(
    url: str,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
    instead: str = "or pass weights=<path to the file>",
) -> Path:
    """The cached file for ``url``, downloaded (hash-checked, atomically) if not cached yet.

    Raises :class:`DownloadError`, naming the URL and the cache path, and ending with ``instead``
    (what else the user can do).
    """
    dst = cache_dir() / Path(urlparse(url).path).name
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    prefix = hash_prefix_of(url)
    try:
        with _socket_timeout(timeout):
            # writes to a temporary file and renames it into place once the hash matches
            import torch.hub  # only when downloading: listing the cache must not import torch

            torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=progress)
    except RuntimeError as err:
        if "invalid hash value" in str(err):
            raise DownloadError(
                f"the file downloaded from {url} does not match its published SHA-256 prefix {prefix}; "
                "it is corrupt or not the published file, and was not kept"
            ) from err
        raise
    except OSError as err:  # URLError, socket.timeout, connection refused, DNS failure
        raise DownloadError(
            f"could not download {url} ({getattr(err, 'reason', err)}). If this machine is offline, "
            f"fetch the file elsewhere and put it at {dst} (the cache under $TORCH_HOME), {instead}"
        ) from None
    return dst
