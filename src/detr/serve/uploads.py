"""The images a request brings: decoded, checked and refused with a reason (``detr serve``).

Every refusal is a :class:`BadInput` with the HTTP status and a short ``kind`` (the ``/metrics``
label); the message names the problem and what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from ..processing.preprocess import pil_to_rgb

# 16 bits a channel or more: the server takes what cameras and browsers send (8-bit), and says so
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB;16", "RGBA;16"}


class BadInput(ValueError):
    """A request the server refuses: ``status`` (4xx), ``kind`` (e.g. ``"not_an_image"``) and the message."""

    def __init__(self, message: str, status: int = 400, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def decode_base64(text: str, what: str) -> bytes:
    """The bytes of a base64 string (a ``data:image/...;base64,`` prefix allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{what} is not valid base64", kind="bad_base64") from None


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """``data`` (an encoded image file) as an 8-bit RGB PIL image, turned as its EXIF orientation says
    (as ``detr predict`` reads files); :class:`BadInput` when it is empty, not an image, over
    ``max_pixels``, truncated, 16-bit or CMYK."""
    if not data:
        raise BadInput(f"{what} is empty: send the bytes of a JPEG, PNG, BMP, WebP or TIFF file", kind="empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise BadInput(f"{what}: {err}", status=413, kind="too_many_pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadInput(
            f"{what} is not an image PIL can read ({len(data)} bytes): send a JPEG, PNG, BMP, WebP or TIFF file",
            status=415,
            kind="not_an_image",
        ) from None
    width, height = image.size
    if width * height > max_pixels:  # checked before decoding: a decompression bomb never reaches memory
        raise BadInput(
            f"{what} has {width}x{height} = {width * height} pixels, over the server's --max-pixels {max_pixels}: "
            f"resize it first",
            status=413,
            kind="too_many_pixels",
        )
    if image.mode in _WIDE_MODES:
        raise BadInput(
            f"{what} is a {image.mode} image (16 or 32 bits a channel): send an 8-bit image "
            f"(detr predict reads such files, scaling their range)",
            status=415,
            kind="unsupported_mode",
        )
    if image.mode == "CMYK":
        raise BadInput(
            f"{what} is a CMYK image (print colours): convert it to RGB first", status=415, kind="unsupported_mode"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return pil_to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadInput(
            f"{what} is truncated or corrupt ({err}): send the whole file", status=400, kind="truncated"
        ) from None
