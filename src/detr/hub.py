"""Published weights, declared as data, and their download into torch hub's cache.

Files are cached in ``$TORCH_HOME/hub/checkpoints`` (torch hub's own cache, shared with
torchvision), verified against the SHA-256 prefix in their file name, and downloaded
with a progress bar. Without network the download fails within seconds, naming the
URL and the path where the file can be put by hand.
"""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch.hub

from .coco import COCO_CATEGORIES

# Seconds without an answer before a download is given up (also the connect timeout).
DOWNLOAD_TIMEOUT = 10.0


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint.

    name: what ``weights=`` accepts; factory: the model it fits; url: where it is published;
    sha256_prefix: the hash prefix torch hub checks; num_classes and categories: the head's
    classes (class index = COCO category id, names by id); box_ap: COCO val2017 box AP reported
    by the release.
    """

    name: str
    factory: str
    url: str
    sha256_prefix: str
    num_classes: int
    box_ap: float
    categories: dict[int, str] = field(default_factory=lambda: dict(COCO_CATEGORIES), repr=False)
    source: str = "facebookresearch/detr"

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name

    def class_names(self) -> list[str]:
        return [self.categories.get(i, "N/A") for i in range(self.num_classes)]


_FB = "https://dl.fbaipublicfiles.com/detr/"
PRETRAINED: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        PretrainedWeights("detr_r50", "detr_r50", _FB + "detr-r50-e632da11.pth", "e632da11", 91, 42.0),
        PretrainedWeights("detr_r50_dc5", "detr_r50_dc5", _FB + "detr-r50-dc5-f0fb7ef5.pth", "f0fb7ef5", 91, 43.3),
        PretrainedWeights("detr_r101", "detr_r101", _FB + "detr-r101-2c7b67e5.pth", "2c7b67e5", 91, 43.5),
        PretrainedWeights("detr_r101_dc5", "detr_r101_dc5", _FB + "detr-r101-dc5-a2e86def.pth", "a2e86def", 91, 44.9),
    )
}


def list_pretrained() -> list[PretrainedWeights]:
    """The published DETR checkpoints that ``weights=`` accepts by name."""
    return list(PRETRAINED.values())


def backbone_weights() -> dict[str, dict[str, object]]:
    """torchvision ImageNet weights behind ``pretrained_backbone=True``: url and top-1 accuracy per ResNet."""
    import torchvision

    from .backbone import RESNET_IMAGENET_WEIGHTS

    out = {}
    for name, spec in RESNET_IMAGENET_WEIGHTS.items():
        enum_name, member = spec.split(".")
        w = getattr(getattr(torchvision.models, enum_name), member)
        out[name] = {"weights": spec, "url": w.url, "imagenet_acc1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"]}
    return out


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
