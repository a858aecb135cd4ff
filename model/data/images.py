"""Safe image loading: every image the model sees comes through :func:`load_image`.

Images come from annotators' uploads and arbitrary URLs, so every input is untrusted: it may be
empty, truncated, not an image at all, or a decompression bomb (a few KB of PNG that decodes to
gigabytes). :func:`load_image` refuses all of these with one exception type, :class:`ImageError`,
so that a bad image costs its own task a prediction and a log line, never the batch.

What comes back is always an 8-bit RGB image with the EXIF orientation applied, i.e. the picture
as the annotator saw it in the browser.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.settings import image_limits

logger = logging.getLogger(__name__)

__all__ = ["ALPHA_BACKGROUND", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "ImageError", "load_image", "read_image_bytes"]


#: Decompression-bomb limit (width * height), checked on the header before any pixel is decoded (MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS: int = image_limits().max_image_pixels
#: Files larger than this are refused before they are parsed (MAX_IMAGE_BYTES).
MAX_IMAGE_BYTES: int = image_limits().max_image_bytes
#: Transparent pixels are composited on white: that is how a browser page (and so the annotator)
#: shows a transparent PNG, and the label must describe what the annotator saw.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Our limit is the authoritative one. PIL's own check (Image.MAX_IMAGE_PIXELS, ~89 Mpx by default)
# runs inside Image.open: it warns above its limit and raises above twice it. Its warning is
# silenced in load_image and its error becomes an ImageError; when the configured limit is higher
# than PIL's, PIL's is raised to match so that it cannot refuse an image we accept.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def load_image(
    source: str | os.PathLike[str] | bytes,
    target_size: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an RGB image, refusing bad input.

    ``target_size``: the short side the caller will resize to. JPEGs are then decoded in draft mode
    (DCT scaling by 1/2, 1/4 or 1/8), several times faster than a full decode for large photos; the
    result is still at least ``target_size`` on its short side, so the caller's resize only shrinks. ``name`` labels
    the image in error messages (default: the path, or "<bytes>").

    Raises :class:`ImageError` for a missing or unreadable file, a file over MAX_IMAGE_BYTES, an
    image over MAX_IMAGE_PIXELS (refused from its header, before decoding), and empty, truncated,
    corrupt or non-image data.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
    else:
        label = name or str(source)
        data = read_image_bytes(Path(source), label)
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(label, f"too large: {len(data)} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes")
    if not data:
        raise ImageError(label, "empty file")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"too large: over the limit of {MAX_IMAGE_PIXELS} pixels ({exc})") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) on bad bytes
        raise ImageError(label, f"cannot decode: not a readable image ({exc})") from exc

    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            label,
            f"too large: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{MAX_IMAGE_PIXELS} (set WEATHER_AL_MAX_IMAGE_PIXELS to change it)",
        )

    try:
        if target_size and image.format == "JPEG":
            image.draft(None, (target_size, target_size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)
    except Exception as exc:  # truncated data surfaces only here, as OSError or others
        raise ImageError(label, f"cannot decode: corrupt or truncated image data ({exc})") from exc


def read_image_bytes(path: Path, label: str) -> bytes:
    """The bytes of an image file, at most MAX_IMAGE_BYTES + 1 of them, so an oversized file is never read whole.

    Raises ImageError for a missing or unreadable file, with what to check.
    """
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError as exc:
        raise ImageError(label, "file not found; check the path and LOCAL_FILES_DOCUMENT_ROOT") from exc
    except OSError as exc:
        raise ImageError(label, f"cannot read the file ({exc.strerror or exc})") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without changing how bright the picture looks.

    Brightness matters here (it is what separates day, dusk and night), so high-bit-depth data is
    scaled by its format's full range, never stretched to its own min..max.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(image), sixteen_bit=mode in _SIXTEEN_BIT_MODES)
        return Image.fromarray(gray).convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _scale_to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Map integer or float samples to 0..255 by the smallest usual full scale that holds them.

    16-bit modes use 65535. For 32-bit 'I' and float 'F' the true range is not recorded in the
    file, so the full scale is the smallest of 1.0 (floats only), 255 and 65535 that contains the
    data, else the data's maximum. Negative values clip to black.
    """
    data = values.astype(np.float64)
    peak = float(data.max()) if data.size else 0.0
    if sixteen_bit:
        full_scale = 65535.0
    else:
        scales = ([1.0] if values.dtype.kind == "f" else []) + [255.0, 65535.0]
        full_scale = next((s for s in scales if peak <= s), peak)
    return np.clip(np.rint(data * (255.0 / full_scale)), 0, 255).astype(np.uint8)
