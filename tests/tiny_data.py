"""A tiny, learnable image set on the weather schema, for fast tests of the real training path.

The images are drawn here with numpy/PIL so the model tests do not depend on the synthetic-scene
generator: time of day sets the sky colour (bright blue / near black / orange), weather draws a
pattern over it (nothing / bright vertical streaks / white flakes). Both heads are easy to learn from a
few dozen images, which is what fast tests of the real training path need.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TIMEOFDAY_COLOUR = {"day": (150, 190, 240), "night": (15, 15, 35), "dusk": (215, 110, 50)}
WEATHER = ("clear", "rain", "snow")


def draw_scene(timeofday: str, weather: str, rng: np.random.Generator, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A ``size`` (width, height) RGB image whose colour gives ``timeofday`` and whose pattern gives ``weather``."""
    width, height = size
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = TIMEOFDAY_COLOUR[timeofday]
    img += rng.normal(0, 8, img.shape)
    if weather == "rain":
        offset = int(rng.integers(0, 6))
        img[:, offset::6] = (200, 200, 210)
        img[:, offset + 1 :: 6] = (200, 200, 210)
    elif weather == "snow":
        flakes = rng.random((height // 3, width // 3)) < 0.25
        ys, xs = np.nonzero(flakes)
        for y, x in zip(ys * 3, xs * 3):
            img[y : y + 2, x : x + 2] = 255
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@dataclass
class TinyData:
    """A manifest of ``n`` coloured scenes: ``manifest`` (CSV), ``root`` (its folder), ``rows`` (image, timeofday,
    weather)."""

    root: Path
    manifest: Path
    rows: list[tuple[str, str, str]]


def write_tiny_set(root: Path, n: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> TinyData:
    """Write ``n`` JPEGs cycling through the nine label combinations, plus ``manifest.csv``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    combos = list(itertools.product(TIMEOFDAY_COLOUR, WEATHER))
    rows = []
    for i in range(n):
        tod, wx = combos[i % len(combos)]
        rel = f"images/{i:04d}.jpg"
        draw_scene(tod, wx, rng, size).save(root / rel, quality=92)
        rows.append((rel, tod, wx))
    manifest = root / "manifest.csv"
    write_manifest(manifest, rows)
    return TinyData(root=root, manifest=manifest, rows=rows)


def write_manifest(path: Path, rows: list[tuple[str, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "timeofday", "weather"])
        writer.writerows(rows)
