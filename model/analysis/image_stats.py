"""Per-image facts: readable or not (and why), file hash, format, mode, size, light and texture, a perceptual hash.

One pass over the files, decoded through :func:`model.data.images.load_image` (the loader training and
scoring use, so "unreadable" means exactly what it means there) at a small draft size: statistics of
light and texture and a perceptual hash need only a thumbnail, and JPEG draft decoding makes a
thumbnail several times cheaper than the full image. Files are read in DataLoader worker processes.

Two compact fingerprints serve the duplicate search: a 16x16 colour thumbnail ("tiny image", Torralba,
Fergus & Freeman, "80 Million Tiny Images", PAMI 2008, who found duplicates by comparing such
thumbnails) and a perceptual hash. The perceptual hash is pHash (Zauner, "Implementation and Benchmarking of
Perceptual Image Hash Functions", 2010; the variant of the ``imagehash`` package): the signs of the 8x8 lowest
frequencies of the 2-D DCT of a 32x32 grey thumbnail against their median. Re-encoding, resizing, small crops and
brightness changes move few of its 64 bits.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.fft import dctn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from model.analysis.inputs import Item
from model.data.images import ImageError, load_image
from model.training.scoring import default_workers

logger = logging.getLogger(__name__)

#: Short side the statistics are computed at (JPEG draft decoding stops at or above it).
STAT_SIZE = 64
#: Statistics that describe how an image looks; their extremes are shown and feed the outlier score.
APPEARANCE = ("brightness", "contrast", "saturation", "sharpness")
_HASH_SIDE, _HASH_LOW = 32, 8
TINY_SIDE = 16


@dataclass
class ImageStats:
    """Column-wise facts of N items, in item order. ``error`` is None for readable images."""

    error: list[str | None]
    sha256: list[str | None]
    format: list[str | None]
    mode: list[str | None]
    width: np.ndarray
    height: np.ndarray
    file_bytes: np.ndarray
    brightness: np.ndarray  # mean luma, 0..1
    contrast: np.ndarray  # standard deviation of luma
    saturation: np.ndarray  # mean HSV saturation
    sharpness: np.ndarray  # mean absolute Laplacian of luma: edges and noise
    phash: np.ndarray  # uint64
    tiny: np.ndarray  # (N, 16, 16, 3) uint8 thumbnails, zeros for unreadable images

    @property
    def readable(self) -> np.ndarray:
        return np.array([e is None for e in self.error], dtype=bool)

    @property
    def aspect(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.height > 0, self.width / np.maximum(self.height, 1), np.nan)

    def column(self, name: str) -> np.ndarray:
        return self.aspect if name == "aspect" else getattr(self, name)


_NO_TINY = np.zeros((TINY_SIDE, TINY_SIDE, 3), dtype=np.uint8)


def phash(gray: np.ndarray) -> int:
    """64-bit pHash of a 2-D grey array (any size; it is resampled to 32x32)."""
    small = np.asarray(
        Image.fromarray(gray.astype(np.float32), mode="F").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX)
    )
    low = dctn(small, norm="ortho")[:_HASH_LOW, :_HASH_LOW]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def describe(rgb: np.ndarray) -> dict[str, float | np.ndarray]:
    """Light and texture statistics, pHash and 16x16 thumbnail of an (H, W, 3) uint8 image."""
    x = rgb.astype(np.float32) / 255.0
    luma = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    top, bottom = x.max(axis=2), x.min(axis=2)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-6), 0.0)
    lap = np.abs(4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:])
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "sharpness": float(lap.mean()) if lap.size else 0.0,
        "phash": phash(luma),
        "tiny": np.asarray(Image.fromarray(rgb).resize((TINY_SIDE, TINY_SIDE), Image.Resampling.BOX)),
    }


def profile(item: Item) -> dict[str, Any]:
    """Everything this module knows about one item; ``error`` says why an image cannot be used."""
    if item.error or not item.source:
        return {"error": item.error or "no image"}
    try:
        image = load_image(item.source, target_size=STAT_SIZE, name=item.key)
    except ImageError as exc:
        return {"error": exc.reason}
    with open(item.source, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        size = fh.tell()
    with Image.open(item.source) as header:  # header only: the format and mode as stored
        fmt, mode, (width, height) = header.format, header.mode, header.size
    return {
        "error": None,
        "sha256": digest,
        "file_bytes": size,
        "format": fmt,
        "mode": mode,
        "width": width,
        "height": height,
        **describe(np.asarray(image)),
    }


class _ProfileDataset(Dataset):
    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return profile(self.items[i])


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def image_statistics(items: list[Item], workers: int | None = None, progress: bool = False) -> ImageStats:
    """Profile every item, decoding in ``workers`` processes (default: as for scoring)."""
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _ProfileDataset(items),
        batch_size=32,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=4 if workers else None,
    )
    rows: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="reading images", unit="batch", disable=not progress, leave=False):
        rows.extend(batch)

    def num(name: str, dtype=np.float64) -> np.ndarray:
        return np.array([r.get(name, np.nan if dtype is np.float64 else 0) for r in rows], dtype=dtype)

    return ImageStats(
        error=[r["error"] for r in rows],
        sha256=[r.get("sha256") for r in rows],
        format=[r.get("format") for r in rows],
        mode=[r.get("mode") for r in rows],
        width=num("width", np.int64),
        height=num("height", np.int64),
        file_bytes=num("file_bytes", np.int64),
        brightness=num("brightness"),
        contrast=num("contrast"),
        saturation=num("saturation"),
        sharpness=num("sharpness"),
        phash=np.array([r.get("phash", 0) for r in rows], dtype=np.uint64),
        tiny=np.array([r.get("tiny", _NO_TINY) for r in rows], dtype=np.uint8).reshape(
            len(rows), TINY_SIDE, TINY_SIDE, 3
        ),
    )
