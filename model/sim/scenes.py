"""Procedural outdoor driving scenes with known time of day and weather.

Why: the active-learning loop, its benchmarks and the end-to-end tests need a labelled image set
that is free, offline, reproducible and hard in the places where real data is hard (BDD100K: dusk,
light rain, light snow). Each scene is a dash-cam view (sky, horizon, road, buildings or trees,
cars and street lights) lit for its time of day and dressed for its weather. Classes differ mostly
by global light and colour (time of day) and by texture (rain streaks, snowflakes, white ground);
``difficulty`` adds overlapping cases at the margins: dusk as bright as a grey day or as dark as a
city night, faint drizzle, a light dusting of snow, grey overcast skies without rain, wet roads
after rain, occluders, exposure and white-balance jitter, noise and blur.

Numpy and PIL only, vectorised: the geometry is drawn with ImageDraw, glare and light spill are
blurred in float at 1/8 of the resolution, rain streaks and snowflakes are rasterised all at once
as points on one layer. About 30 scenes/s per core at 640x360.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DIFFICULTY",
    "DEFAULT_FREQUENCIES",
    "DEFAULT_SIZE",
    "HEADS",
    "SynthResult",
    "generate",
    "render_scene",
]

HEADS: dict[str, tuple[str, ...]] = {"timeofday": ("day", "night", "dusk"), "weather": ("clear", "rain", "snow")}
#: Class shares as the design asks (after BDD100K: dusk is rare, so are rain and snow).
DEFAULT_FREQUENCIES: dict[str, dict[str, float]] = {
    "timeofday": {"day": 0.526, "night": 0.400, "dusk": 0.072},
    "weather": {"clear": 0.78, "rain": 0.106, "snow": 0.114},
}
DEFAULT_DIFFICULTY = 0.5
DEFAULT_SIZE = (640, 360)

_EMIT_SCALE = 4.0  # the emission canvas is uint8; 255 means this much light (headroom for glare)


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate` wrote."""

    out_dir: Path
    manifest_path: Path  # labels after label noise: what an annotator would have said
    truth_path: Path  # the noiseless labels
    tasks_path: Path  # Label Studio import list
    n: int
    n_noisy_labels: int  # head labels changed by label noise, over all heads


@dataclass(frozen=True)
class _Conditions:
    """The physical state of one scene, sampled from its labels and the difficulty."""

    level: float  # ambient light on the ground, 1 = bright day
    warmth: float  # 0 = neutral light, 1 = strong low-sun orange
    overcast: float  # 0 = clear sky, 1 = uniform grey cloud deck
    precipitation: float  # falling rain or snow, 0 = none, 1 = heavy
    snow_cover: float  # fraction of the ground under snow
    wet: float  # 0 = dry road, 1 = soaked
    lights: float  # 0 = few artificial lights, 1 = a bright city
    mix_with: str  # a neighbouring time of day whose sky colours blend in (hard cases)...
    mix: float  # ...by this much, 0..1


@dataclass(frozen=True)
class _Layout:
    """Where things are: horizon, vanishing point, road."""

    width: int
    height: int
    horizon: float  # y of the horizon
    vanish_x: float
    road_center: float  # x of the road's centre at the bottom edge
    road_half: float  # half width of the road at the bottom edge
    kind: str  # "city", "suburb" or "open"

    @property
    def scale(self) -> float:
        return self.width / 640.0

    def at(self, depth: float, lateral: float) -> tuple[float, float]:
        """Image point at ``depth`` (0 = horizon, 1 = bottom edge) and ``lateral`` (-1/+1 = road edges)."""
        x = self.vanish_x + (self.road_center - self.vanish_x) * depth + lateral * self.road_half * depth
        return x, self.horizon + (self.height - self.horizon) * depth


# --------------------------------------------------------------------------------------------
# Sampling the scene


def _sample_conditions(rng: np.random.Generator, timeofday: str, weather: str, difficulty: float) -> _Conditions:
    """Light and weather for the labels; each ``hard`` draw makes one overlapping case more likely."""

    def hard(probability: float) -> bool:
        return bool(rng.random() < probability * difficulty)

    mix_with, mix = "dusk", 0.0
    if timeofday == "day":
        level, warmth = rng.uniform(0.78, 1.05), rng.uniform(0.0, 0.1)
        if hard(0.4):  # low sun, late afternoon: dimmer, warmer, a touch of dusk in the sky
            level, warmth, mix = rng.uniform(0.5, 0.72), rng.uniform(0.15, 0.45), rng.uniform(0.1, 0.4)
        lights = rng.uniform(0.0, 0.3)
    elif timeofday == "dusk":
        level, warmth = rng.uniform(0.28, 0.5), rng.uniform(0.55, 1.0)
        if hard(0.9):  # early dusk near day, or late dusk near night
            mix_with = "day" if rng.random() < 0.5 else "night"
            level = rng.uniform(0.5, 0.72) if mix_with == "day" else rng.uniform(0.12, 0.26)
            warmth, mix = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6)
        lights = rng.uniform(0.2, 0.7)
    else:
        level, lights, warmth = rng.uniform(0.03, 0.09), rng.uniform(0.2, 0.8), 0.0
        if hard(0.4):  # a bright city night, the last of the twilight in the sky
            level, lights, mix = rng.uniform(0.1, 0.2), rng.uniform(0.7, 1.0), rng.uniform(0.1, 0.35)

    precipitation = snow_cover = wet = 0.0
    if weather == "clear":
        overcast = rng.uniform(0.55, 0.95) if hard(0.4) else rng.beta(1.0, 5.0)
        wet = rng.uniform(0.3, 0.8) if hard(0.25) else 0.0  # after the rain stopped
    elif weather == "rain":
        overcast = rng.uniform(0.6, 1.0)
        precipitation = rng.uniform(0.04, 0.25) if hard(0.5) else rng.uniform(0.35, 1.0)
        wet = rng.uniform(0.5, 1.0)
    else:
        if hard(0.25):  # it stopped snowing: snow on the ground under a clearing sky
            overcast, snow_cover = rng.uniform(0.0, 0.6), rng.uniform(0.5, 1.0)
        else:
            overcast = rng.uniform(0.5, 1.0)
            precipitation = rng.uniform(0.04, 0.25) if hard(0.5) else rng.uniform(0.35, 1.0)
            snow_cover = rng.uniform(0.1, 0.4) if hard(0.5) else rng.uniform(0.6, 1.0)
        wet = rng.uniform(0.0, 0.3)
    darkening = {"clear": 0.25, "rain": 0.35, "snow": 0.1}[weather]
    return _Conditions(
        level=float(level * (1.0 - darkening * overcast)),
        warmth=float(warmth * (1.0 - 0.6 * overcast)),
        overcast=float(overcast),
        precipitation=float(precipitation),
        snow_cover=float(snow_cover),
        wet=float(wet),
        lights=float(lights),
        mix_with=mix_with,
        mix=float(mix),
    )


def _sample_layout(rng: np.random.Generator, width: int, height: int) -> _Layout:
    """A random camera pose and street: horizon height, road direction and width, surroundings."""
    return _Layout(
        width=width,
        height=height,
        horizon=height * rng.uniform(0.36, 0.56),
        vanish_x=width * rng.uniform(0.3, 0.7),
        road_center=width * rng.uniform(0.3, 0.7),
        road_half=width * rng.uniform(0.3, 0.6),
        kind=str(rng.choice(["city", "suburb", "open"], p=[0.45, 0.35, 0.2])),
    )


# --------------------------------------------------------------------------------------------
# Drawing: albedo (reflectance), solid-object mask, road mask and emission (light sources)


class _Canvas:
    """The layers a scene is drawn on, each with its ImageDraw: reflectance, light sources,
    solid objects (versus sky), road, and open ground (where snow can lie)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.albedo_img, self.emit_img = Image.new("RGB", size), Image.new("RGB", size)
        self.mask_img, self.road_img, self.ground_img = (Image.new("L", size) for _ in range(3))
        self.albedo, self.emit = ImageDraw.Draw(self.albedo_img), ImageDraw.Draw(self.emit_img)
        self.mask, self.road, self.ground = (ImageDraw.Draw(i) for i in (self.mask_img, self.road_img, self.ground_img))

    def light(self, x: float, y: float, radius: float, colour: np.ndarray) -> None:
        """A light source of ``colour`` (may exceed 1, up to _EMIT_SCALE) as a disc."""
        r = max(radius, 0.6)
        self.emit.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(colour, 255.0 / _EMIT_SCALE))


def _rgb(colour: np.ndarray, scale: float = 255.0) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(c) * scale))) for c in colour)
    return r, g, b


def _depths(rng: np.random.Generator, count: int, spacing: float) -> np.ndarray:
    """Depths of objects evenly spaced along the road in the world: 1/distance, near first."""
    distances = 1.0 + spacing * (np.arange(count) + rng.uniform(0.0, 1.0, count))
    return 1.0 / distances


def _draw_buildings(rng, lay: _Layout, canvas: _Canvas, lit_share: float) -> None:
    """A skyline whose buildings grow toward the image edges; ``lit_share`` of windows glow."""
    s, x = lay.scale, -rng.uniform(0, 40) * lay.scale
    while x < lay.width:
        w = rng.uniform(35, 130) * s
        spread = abs(x + w / 2 - lay.vanish_x) / lay.width
        top = lay.horizon - lay.height * rng.uniform(0.04, 0.2) * (0.4 + 2.5 * spread)
        colour = rng.uniform(0.25, 0.6) * np.array([1.0, rng.uniform(0.9, 1.05), rng.uniform(0.85, 1.1)])
        box = (round(x), round(top), round(x + w), round(lay.horizon) + 2)
        canvas.albedo.rectangle(box, fill=_rgb(colour))
        canvas.mask.rectangle(box, fill=255)
        _windows(rng, s, box, canvas, colour * 0.45, lit_share)
        x += w + rng.uniform(-5, 25) * s


def _windows(
    rng, s: float, box: tuple[int, int, int, int], canvas: _Canvas, colour: np.ndarray, lit_share: float
) -> None:
    """A window grid as a mask pasted in one call; lit windows vary in brightness."""
    x0, y0, x1, y1 = box
    win_w, win_h = rng.uniform(4, 9) * s, rng.uniform(5, 10) * s
    step_x, step_y = win_w * rng.uniform(1.6, 2.4), win_h * rng.uniform(1.5, 2.2)
    ys = np.arange(y1 - y0 - 3)[:, None] - step_y * 0.6
    xs = np.arange(x1 - x0)[None, :] - step_x * 0.4
    inside = (
        (ys >= 0) & (ys % step_y < win_h) & (xs >= 0) & (xs % step_x < win_w) & (xs < x1 - x0 - step_x * 0.4 - win_w)
    )
    if not inside.any():
        return
    region = (x0, y0, x1, y0 + inside.shape[0])
    canvas.albedo_img.paste(_rgb(colour), region, Image.fromarray(inside.astype(np.uint8) * 255))
    cells = (int(ys.max() // step_y) + 1, int(xs.max() // step_x) + 1)
    brightness = np.where(rng.random(cells) < lit_share, rng.uniform(0.3, 1.0, cells), 0.0)
    row = np.clip(ys // step_y, 0, cells[0] - 1).astype(int)
    col = np.clip(xs // step_x, 0, cells[1] - 1).astype(int)
    glow = (brightness[row, col] * inside * 255).astype(np.uint8)
    canvas.emit_img.paste(_rgb(np.array([1.0, 0.8, 0.5]) * 0.7, 255.0 / _EMIT_SCALE), region, Image.fromarray(glow))


def _draw_trees(rng, lay: _Layout, canvas: _Canvas, count: int) -> None:
    """Round crowns on the horizon, bigger toward the image edges (nearer the camera)."""
    s = lay.scale
    for _ in range(count):
        x = rng.uniform(0, lay.width)
        near = abs(x - lay.vanish_x) / lay.width
        r = rng.uniform(10, 28) * s * (0.5 + 2 * near)
        y = lay.horizon - r * rng.uniform(0.2, 0.9)
        green = np.array([rng.uniform(0.08, 0.2), rng.uniform(0.16, 0.32), rng.uniform(0.06, 0.14)])
        canvas.albedo.ellipse((x - r, y - r, x + r, y + r * 1.1), fill=_rgb(green))
        canvas.mask.ellipse((x - r, y - r, x + r, y + r * 1.1), fill=255)


def _draw_ground(rng, lay: _Layout, canvas: _Canvas) -> None:
    """Verges, the road and its lane markings."""
    s, w, h, hy = lay.scale, lay.width, lay.height, lay.horizon
    verge = {
        "city": np.full(3, rng.uniform(0.35, 0.5)),
        "suburb": np.array([0.22, 0.34, 0.14]) * rng.uniform(0.8, 1.2),
        "open": np.array([rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.4), 0.15]),
    }[lay.kind]
    canvas.albedo.rectangle((0, hy, w, h), fill=_rgb(verge))
    canvas.mask.rectangle((0, hy, w, h), fill=255)
    canvas.ground.rectangle((0, hy, w, h), fill=255)
    left_far, right_far = lay.at(0.0, -1.0)[0] - 2 * s, lay.at(0.0, 1.0)[0] + 2 * s
    polygon = [(left_far, hy), (right_far, hy), lay.at(1.0, 1.0), lay.at(1.0, -1.0)]
    canvas.albedo.polygon(polygon, fill=_rgb(np.full(3, rng.uniform(0.18, 0.32))))
    canvas.road.polygon(polygon, fill=255)
    lanes = int(rng.integers(2, 5))
    paint = _rgb(np.array([0.85, 0.85, 0.8]) if rng.random() < 0.7 else np.array([0.85, 0.7, 0.2]))
    dash, half = rng.uniform(0.25, 0.5), 3.0 * s
    for lane in range(1, lanes):
        lateral = -1.0 + 2.0 * lane / lanes
        for near in _depths(rng, 14, 0.9):
            far = near / (1.0 + 1.8 * dash * near)
            (x0, y0), (x1, y1) = lay.at(near, lateral), lay.at(far, lateral)
            canvas.albedo.polygon(
                [(x0 - half * near, y0), (x0 + half * near, y0), (x1 + half * far, y1), (x1 - half * far, y1)],
                fill=paint,
            )


def _draw_lamps(rng, lay: _Layout, canvas: _Canvas, on: bool) -> None:
    """Street lamps along one or both road edges; when ``on`` their heads are light sources."""
    s, pole = lay.scale, (40, 40, 42)
    colour = np.array([1.0, 0.72, 0.4]) if rng.random() < 0.6 else np.array([0.9, 0.95, 1.0])
    for side in (-1.15, 1.15) if rng.random() < 0.6 else (float(rng.choice([-1.15, 1.15])),):
        for depth in _depths(rng, int(rng.integers(3, 7)), 1.2):
            x, y = lay.at(depth, side)
            top, arm = y - 190 * s * depth, x - side * 22 * s * depth
            canvas.albedo.line([(x, y), (x, top)], fill=pole, width=max(1, round(5 * s * depth)))
            canvas.albedo.line([(x, top), (arm, top)], fill=pole, width=max(1, round(4 * s * depth)))
            canvas.mask.line([(x, y), (x, top), (arm, top)], fill=255, width=max(1, round(5 * s * depth)))
            canvas.ground.line([(x, y), (x, top)], fill=0, width=max(1, round(5 * s * depth)))
            if on:
                canvas.light(arm, top + 3 * s * depth, 5 * s * depth + 1, colour * 2.5)


def _draw_cars(rng, lay: _Layout, canvas: _Canvas, count: int, lights_on: bool) -> None:
    """Cars far to near; oncoming ones (left of the road's middle) show headlights, others tail lights."""
    s = lay.scale
    for depth in np.sort(rng.uniform(0.08, 0.75, count)):
        lateral = rng.uniform(-0.75, 0.75)
        x, y = lay.at(depth, lateral)
        half_w = 75 * s * depth
        height = half_w * rng.uniform(0.9, 1.3)
        body = np.clip(rng.uniform(0.05, 0.9) * np.array([1, rng.uniform(0.7, 1.1), rng.uniform(0.7, 1.2)]), 0, 1)
        canvas.albedo.rectangle((x - half_w, y - height, x + half_w, y), fill=_rgb(body))
        canvas.ground.rectangle((x - half_w, y - height, x + half_w, y), fill=0)
        canvas.albedo.rectangle(
            (x - half_w * 0.8, y - height * 0.95, x + half_w * 0.8, y - height * 0.55), fill=(25, 28, 32)
        )
        if not lights_on:
            continue
        colour = np.array([1.0, 0.95, 0.8]) * 3.0 if lateral < 0 else np.array([1.0, 0.06, 0.04]) * 1.6
        for side in (-0.7, 0.7):
            canvas.light(x + side * half_w, y - height * 0.3, max(1.0, 7 * s * depth), colour)


def _draw_sky_lights(rng, lay: _Layout, canvas: _Canvas, cond: _Conditions, timeofday: str) -> None:
    """Sun (day, low and orange at dusk), moon and stars (night), hidden by heavy cloud."""
    s, hy, w = lay.scale, lay.horizon, lay.width
    if timeofday == "day" and cond.overcast < 0.45 and rng.random() < 0.5:
        canvas.light(rng.uniform(0, w), hy * rng.uniform(0.05, 0.8), 12 * s, np.array([1.0, 0.97, 0.88]) * 3.5)
    elif timeofday == "dusk" and cond.overcast < 0.6 and rng.random() < 0.7:
        canvas.light(rng.uniform(0, w), hy * rng.uniform(0.72, 0.98), 16 * s, np.array([1.0, 0.55, 0.2]) * 3.0)
    elif timeofday == "night":
        if rng.random() < 0.35:
            canvas.light(
                rng.uniform(0, w), hy * rng.uniform(0.1, 0.6), 7 * s, np.full(3, 1.6 * (1 - 0.8 * cond.overcast))
            )
        if cond.overcast < 0.35 and hy >= 2:
            n = int(rng.integers(10, 80) * s * s)
            stars = np.zeros((lay.height, lay.width), np.uint8)
            stars[rng.integers(0, int(hy * 0.8) + 1, n), rng.integers(0, w, n)] = rng.integers(12, 40, n)
            canvas.emit_img.paste(Image.merge("RGB", [Image.fromarray(stars)] * 3), (0, 0), Image.fromarray(stars))


# --------------------------------------------------------------------------------------------
# Light, sky and weather: planar float32 arrays (3, H, W) of display values in 0..1. Planar
# layout keeps every broadcast (colour (3,1,1), mask (H,W)) on contiguous memory, which is
# several times faster than (H, W, 3) with (H, W, 1) masks.


def _colour(*rgb: float) -> np.ndarray:
    """An RGB colour shaped (3, 1, 1) to broadcast over planar images."""
    return np.array(rgb, dtype=np.float32).reshape(3, 1, 1)


def _planar(image: Image.Image, scale: float = 1.0 / 255.0) -> np.ndarray:
    """An RGB image as (3, H, W) float32 times ``scale``."""
    planes = np.empty((3, image.height, image.width), np.float32)
    for plane, band in zip(planes, image.split()):
        np.multiply(np.asarray(band), np.float32(scale), out=plane)
    return planes


@lru_cache(maxsize=8)
def _grids(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row (H, 1) and column (1, W) coordinates and a vignette map (H, W) for one image size."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    radius2 = ((xs - width / 2) / (width / 2)) ** 2 + ((ys - height / 2) / (height / 2)) ** 2
    return ys, xs, (radius2 / 2.0).astype(np.float32)


@lru_cache(maxsize=8)
def _noise_bank(width: int, height: int) -> np.ndarray:
    """A fixed field of unit Gaussian noise, cropped at random offsets: cheaper than fresh noise."""
    return np.random.default_rng(12345).standard_normal((height + 64, width + 64), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Value noise (height, width) in about 0..1 with ``cells`` features across; two octaves."""
    out = np.zeros((height, width), np.float32)
    for octave, weight in ((1, 0.7), (4, 0.3)):
        nx = max(2, cells * octave)
        grid = rng.random((max(2, round(nx * height / width) + 1), nx), dtype=np.float32)
        out += weight * np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))
    return out


def _palette(timeofday: str, cond: _Conditions) -> dict[str, np.ndarray | float]:
    """Sky, cloud and ambient-light colours of one time of day, before brightness scaling."""
    warm, lights = cond.warmth, cond.lights
    if timeofday == "day":
        return {
            "nominal": 0.9,
            "top": _colour(0.25, 0.48, 0.86),
            "horizon": _colour(0.72, 0.82, 0.93) * (1 - warm) + _colour(0.95, 0.78, 0.6) * warm,
            "grey": _colour(0.66, 0.67, 0.7),
            "cloud": _colour(0.92, 0.92, 0.94),
            "ambient": _colour(0.9, 0.9, 0.93),
        }
    if timeofday == "dusk":
        return {
            "nominal": 0.4,
            "top": _colour(0.2, 0.2, 0.42),
            "horizon": _colour(0.55, 0.58, 0.75) * (1 - warm) + _colour(1.0, 0.55, 0.28) * warm,
            "grey": _colour(0.45, 0.4, 0.42),
            "cloud": _colour(0.95, 0.6, 0.5) * (0.4 + 0.6 * warm),
            "ambient": _colour(0.9, 0.9, 0.93),
        }
    grey = _colour(0.06, 0.055, 0.06) + _colour(0.08, 0.05, 0.03) * lights
    return {
        "nominal": 0.06,
        "top": _colour(0.008, 0.012, 0.035),
        "horizon": _colour(0.045, 0.045, 0.08) + _colour(0.09, 0.06, 0.03) * lights,
        "grey": grey,
        "cloud": grey * 1.3,
        "ambient": _colour(0.6, 0.66, 0.85),
    }


def _mixed_palette(timeofday: str, cond: _Conditions) -> dict[str, np.ndarray | float]:
    """The palette of ``timeofday`` blended toward ``cond.mix_with``: hard cases sit in between."""
    own, other = _palette(timeofday, cond), _palette(cond.mix_with, cond)
    return {key: own[key] * (1 - cond.mix) + other[key] * cond.mix for key in own}


def _sky(rng, lay: _Layout, cond: _Conditions, palette: dict) -> np.ndarray:
    """Vertical gradient from zenith to horizon, with clouds; (3, H, W)."""
    gain = (cond.level / palette["nominal"]) ** 0.6
    grey = palette["grey"]
    top = (palette["top"] * (1 - cond.overcast) + grey * (0.85 * cond.overcast)) * gain
    horizon = (palette["horizon"] * (1 - cond.overcast) + grey * cond.overcast) * gain
    ys, _, _ = _grids(lay.width, lay.height)
    t = np.clip(ys / max(lay.horizon, 1.0), 0.0, 1.0) ** rng.uniform(0.8, 1.6)  # (H, 1)
    sky = np.repeat(top * (1 - t) + horizon * t, lay.width, axis=2)

    coverage = min(1.0, cond.overcast * 1.2 + rng.uniform(0.0, 0.35))
    rows = int(math.ceil(lay.horizon))
    if coverage > 0.05 and rows > 0:
        field = _smooth_noise(rng, lay.width, rows, int(rng.integers(3, 9)))
        amount = np.clip((field - (1.0 - coverage)) * 3.0, 0.0, 1.0) * (0.5 + 0.5 * coverage)
        cloud = palette["cloud"] * (gain * (1 - 0.5 * cond.overcast)) * (0.75 + 0.4 * field)
        cloud -= sky[:, :rows]
        cloud *= amount
        sky[:, :rows] += cloud
    return sky


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix that blurs a length-n signal with a Gaussian of ``sigma`` samples.

    Rows are renormalised so that the frame's edges do not darken."""
    idx = np.arange(n, dtype=np.float32)
    kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / max(sigma, 0.3)) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True)


def _light_field(canvas: _Canvas, lay: _Layout, wet: float, haze: float, sky_horizon: np.ndarray) -> np.ndarray:
    """Glare and spill of every light source, and a wet road's reflections; (3, H, W).

    Computed at 1/8 resolution in float (a uint8 blur would round a lamp's wide spill to zero),
    then upsampled: the field is smooth, so nothing is lost. The gains stand for the true
    brightness of lamps, which the clipped emission canvas cannot hold.
    """
    w, h = lay.width, lay.height
    sw, sh = max(2, w // 8), max(2, h // 8)
    small = _planar(canvas.emit_img.resize((sw, sh), Image.Resampling.BOX), _EMIT_SCALE / 255.0)
    field = np.zeros_like(small)
    for radius, gain in ((12 * lay.scale * (1 + 2 * haze), 1.5), (60 * lay.scale, 6.0)):
        field += gain * (_gaussian_matrix(sh, radius / 8) @ small @ _gaussian_matrix(sw, radius / 8).T)
    if wet > 0:  # lights smeared into vertical streaks, and the sky mirrored, on the road only
        road = np.asarray(canvas.road_img.resize((sw, sh), Image.Resampling.BOX), dtype=np.float32) * (wet / 255.0)
        streaks = _gaussian_matrix(sh, 5 * lay.scale) @ small @ _gaussian_matrix(sw, 0.4).T
        field += (6.0 * streaks + 0.35 * sky_horizon) * road
    out = np.empty((3, h, w), np.float32)
    for plane, small_plane in zip(out, field):
        plane[...] = np.asarray(Image.fromarray(small_plane).resize((w, h), Image.Resampling.BILINEAR))
    return out


def _headlight_beam(lay: _Layout, strength: float) -> np.ndarray:
    """Our own car's headlights on the road ahead (H, W): separable, so one outer product."""
    ys, xs, _ = _grids(lay.width, lay.height)
    reach = max(lay.height - lay.horizon, 1.0)
    along = np.exp(-(((ys - lay.height) / (0.5 * reach)) ** 2)) * (ys > lay.horizon)
    across = np.exp(-(((xs - lay.road_center) / (0.3 * lay.width)) ** 2))
    return (strength * along) * across


def _snow_on_ground(rng, lay: _Layout, canvas: _Canvas, albedo: np.ndarray, cover: float) -> None:
    """Whiten open ground in patches (in place); cars leave darker tracks on the road."""
    top = int(lay.horizon)
    rows = lay.height - top
    if rows <= 0:
        return
    field = _smooth_noise(rng, lay.width, rows, int(rng.integers(10, 30)))
    oy, ox = rng.integers(0, 64, 2)
    field += 0.12 * _noise_bank(lay.width, lay.height)[oy : oy + rows, ox : ox + lay.width]  # grainy edges
    amount = np.clip((field - (1.0 - cover)) * 6.0, 0.0, 1.0)
    ys, xs, _ = _grids(lay.width, lay.height)
    depth = (ys[top:] - lay.horizon) / max(lay.height - lay.horizon, 1.0)
    tracks = np.zeros((rows, lay.width), np.float32)
    for lateral in rng.uniform(-0.9, 0.9, int(rng.integers(2, 5))):
        centre = lay.vanish_x + (lay.road_center - lay.vanish_x + lateral * lay.road_half) * depth
        tracks = np.maximum(tracks, np.abs(xs - centre) < 12 * lay.scale * depth + 0.5)
    road = np.asarray(canvas.road_img, dtype=np.float32)[top:] * (1.0 / 255.0)
    amount *= 1.0 - road * (0.3 + 0.6 * tracks)
    amount *= np.asarray(canvas.ground_img, dtype=np.float32)[top:] * (1.0 / 255.0)
    albedo[:, top:] += (_colour(0.9, 0.92, 0.96) - albedo[:, top:]) * amount


def _precipitation(rng, lay: _Layout, weather: str, amount: float) -> np.ndarray:
    """Rain streaks or snowflakes on one layer (H, W) in 0..1; far ones small, near ones big."""
    w, h, s = lay.width, lay.height, lay.scale
    area = w * h / (640 * 360)
    if weather == "rain":  # each streak rasterised as points along it, all streaks at once
        data = np.zeros((h, w), np.uint8)
        angle = rng.normal(0, 0.18)
        for count, length, thickness, lowest in (
            (int(1500 * amount * area), 14, 1, 60),
            (int(200 * amount * area), 38, 2, 90),
        ):
            x0, y0 = rng.uniform(-0.2 * w, 1.2 * w, count), rng.uniform(-0.1 * h, h, count)
            lengths = length * s * rng.uniform(0.6, 1.4, count)
            tilt = angle + rng.normal(0, 0.03, count)
            values = np.broadcast_to(
                rng.integers(lowest, 256, count).astype(np.uint8), (max(2, math.ceil(1.4 * length * s) + 1), count)
            )
            t = np.linspace(0.0, 1.0, values.shape[0])[:, None]
            xs = np.rint(x0 + t * (np.sin(tilt) * lengths)).astype(int)
            ys = np.rint(y0 + t * (np.cos(tilt) * lengths)).astype(int)
            for dx in range(max(1, round(thickness * s))):
                ok = (xs + dx >= 0) & (xs + dx < w) & (ys >= 0) & (ys < h)
                data[ys[ok], xs[ok] + dx] = values[ok]
        layer = Image.fromarray(data)
    else:
        far = int(2500 * amount * area)
        data = np.zeros((h, w), np.uint8)
        ys, xs = rng.integers(0, h, far), rng.integers(0, w, far)
        data[ys, xs] = rng.integers(120, 256, far)
        big = rng.random(far) < 0.4  # two-pixel flakes
        data[np.minimum(ys[big] + 1, h - 1), xs[big]] = data[ys[big], xs[big]]
        layer = Image.fromarray(data)
        draw = ImageDraw.Draw(layer)
        near = int(140 * amount * area)
        for x, y, r, v in zip(
            rng.uniform(0, w, near).tolist(),
            rng.uniform(0, h, near).tolist(),
            (rng.uniform(1.5, 5.5, near) * s).tolist(),
            rng.integers(140, 256, near).tolist(),
        ):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=v)
    return np.asarray(layer.filter(ImageFilter.BoxBlur(0.7 * s)), dtype=np.float32) * (1.0 / 255.0)


def _occluder(rng, lay: _Layout) -> np.ndarray:
    """A dark foreground object: the car's hood, a wiper or a pole; returns its alpha (H, W)."""
    w, h, s = lay.width, lay.height, lay.scale
    alpha = Image.new("L", (w, h))
    draw = ImageDraw.Draw(alpha)
    kind = rng.integers(0, 3)
    if kind == 0:
        top = h * rng.uniform(0.82, 0.93)
        draw.chord((-0.2 * w, top, 1.2 * w, top + 0.6 * h), 180, 360, fill=255)  # reaches below the frame
    elif kind == 1:
        x0 = rng.uniform(0.1, 0.6) * w
        draw.line(
            [(x0, h), (x0 + rng.uniform(0.2, 0.5) * w, h * rng.uniform(0.2, 0.6))], fill=255, width=max(1, round(9 * s))
        )
    else:
        x0 = rng.uniform(0, w)
        draw.rectangle((x0, 0, x0 + rng.uniform(12, 40) * s, h), fill=255)
    return np.asarray(alpha.filter(ImageFilter.BoxBlur(1)), dtype=np.float32) * (1.0 / 255.0)


def _soften(img: np.ndarray, amount: float) -> None:
    """Mild optical blur in place: blend toward a separable [1, 2, 1] / 4 filter (edges repeat)."""
    for axis in (1, 2):
        src = np.moveaxis(img, axis, 0)
        blurred = src * 0.5
        blurred[1:] += src[:-1] * 0.25
        blurred[:-1] += src[1:] * 0.25
        blurred[0] += src[0] * 0.25
        blurred[-1] += src[-1] * 0.25
        blurred -= src
        blurred *= amount
        src += blurred


def _camera(rng, img: np.ndarray, lay: _Layout, cond: _Conditions, difficulty: float) -> Image.Image:
    """Exposure and white-balance jitter (mild), vignetting, optional blur, sensor noise."""
    exposure = math.exp(rng.normal(0.0, 0.05 + 0.08 * difficulty))
    balance = np.exp(rng.normal(0.0, 0.02 + 0.03 * difficulty, 3)).astype(np.float32).reshape(3, 1, 1)
    _, _, vignette = _grids(lay.width, lay.height)
    img *= balance * (255.0 * exposure)
    img *= 1.0 - rng.uniform(0.0, 0.35) * vignette
    if rng.random() < 0.3 + 0.4 * difficulty:
        _soften(img, rng.uniform(0.3, 1.0))
    sigma = 255.0 * (0.008 + 0.03 * (1.0 - min(cond.level, 1.0)) + 0.01 * difficulty)
    oy, ox = rng.integers(0, 64, 2)
    img += sigma * _noise_bank(lay.width, lay.height)[oy : oy + lay.height, ox : ox + lay.width] + 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return Image.merge("RGB", [Image.fromarray(plane) for plane in img.astype(np.uint8)])


def render_scene(
    rng: np.random.Generator,
    timeofday: str,
    weather: str,
    difficulty: float = DEFAULT_DIFFICULTY,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> Image.Image:
    """Render one RGB scene of ``size`` (width, height) showing ``timeofday`` and ``weather``.

    ``difficulty`` in 0..1 scales how often the overlapping hard cases occur (see the module
    docstring). The same ``rng`` state gives the same image. Full-frame arrays are updated in
    place where possible: fresh 3 MB temporaries cost page faults that dominate the run time.
    """
    if timeofday not in HEADS["timeofday"] or weather not in HEADS["weather"]:
        raise ValueError(f"unknown class ({timeofday!r}, {weather!r}); expected one of {HEADS}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in 0..1, got {difficulty}")
    width, height = size
    cond = _sample_conditions(rng, timeofday, weather, difficulty)
    lay = _sample_layout(rng, width, height)

    dark = min(0.97, max(0.03, 1.2 - 1.6 * cond.level))  # how likely lights are on: by light, not by label
    canvas = _Canvas(size)
    _draw_sky_lights(rng, lay, canvas, cond, timeofday)
    if lay.kind != "open":
        _draw_buildings(rng, lay, canvas, dark * 0.45 * (0.4 + cond.lights))
    _draw_trees(rng, lay, canvas, int(rng.integers(0, 4 if lay.kind == "city" else 12)))
    _draw_ground(rng, lay, canvas)
    if lay.kind != "open" or rng.random() < 0.3:
        _draw_lamps(rng, lay, canvas, on=rng.random() < dark)
    car_lights = rng.random() < dark + 0.15
    _draw_cars(rng, lay, canvas, int(rng.integers(0, 3 + round(5 * cond.lights))), car_lights)
    beam = None
    if rng.random() < dark - 0.1:
        beam = _headlight_beam(lay, rng.uniform(0.15, 0.45))

    palette = _mixed_palette(timeofday, cond)
    sky = _sky(rng, lay, cond, palette)
    sky_horizon = sky[:, max(0, int(lay.horizon) - 1)].mean(axis=1).reshape(3, 1, 1)
    img = _planar(canvas.albedo_img)
    if cond.snow_cover > 0:
        _snow_on_ground(rng, lay, canvas, img, cond.snow_cover)
    haze = 0.1 + 0.25 * cond.precipitation + 0.15 * cond.overcast
    light = _light_field(canvas, lay, cond.wet, haze, sky_horizon)

    scratch = light * 1.5  # ground light: ambient, lamp spill, our headlights
    scratch += (palette["ambient"] * (1 - cond.warmth) + _colour(1.0, 0.68, 0.45) * cond.warmth) * cond.level
    if beam is not None:
        scratch += beam
    img *= scratch
    img -= sky  # solid objects over the sky
    img *= np.asarray(canvas.mask_img, dtype=np.float32) * (1.0 / 255.0)
    img += sky
    img += _planar(canvas.emit_img, _EMIT_SCALE / 255.0)
    np.multiply(light, 0.6 + haze, out=scratch)
    img += scratch
    ys, _, _ = _grids(width, height)
    fog = haze * np.exp(-np.abs(ys - lay.horizon) / (0.12 * height))  # (H, 1): thickest at the horizon
    img *= 1.0 - fog
    img += sky_horizon * fog

    if cond.precipitation > 0:  # drops and flakes catch ambient light, glare and our headlights
        rain = weather == "rain"
        strength = (0.25 + 0.45 * cond.precipitation) if rain else (0.55 + 0.4 * cond.precipitation)
        np.add(light, (0.2 + 0.7 * cond.level) if rain else (0.3 + 0.65 * cond.level), out=scratch)
        if beam is not None:
            scratch += beam
        scratch -= img
        scratch *= _precipitation(rng, lay, weather, cond.precipitation) * strength
        img += scratch
    if rng.random() < 0.3 * difficulty:
        np.multiply(light, 0.2, out=scratch)
        scratch += 0.04 + 0.08 * cond.level
        scratch -= img
        scratch *= _occluder(rng, lay)
        img += scratch
    return _camera(rng, img, lay, cond, difficulty)


# --------------------------------------------------------------------------------------------
# Writing a data set


def _normalised(frequencies: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Check ``frequencies`` names both heads and known classes; return classes and probabilities."""
    if set(frequencies) != set(HEADS):
        raise ValueError(f"frequencies must give exactly the heads {sorted(HEADS)}, got {sorted(frequencies)}")
    out = {}
    for head, table in frequencies.items():
        unknown = set(table) - set(HEADS[head])
        probs = np.array([float(p) for p in table.values()])
        if unknown or len(table) == 0 or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(
                f"frequencies[{head!r}] must map classes of {HEADS[head]} to non-negative weights, got {dict(table)}"
            )
        out[head] = (tuple(table), probs / probs.sum())
    return out


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    """One generator per image, from (seed, index): output does not depend on the worker count."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _make_one(job: tuple) -> tuple[dict[str, str], dict[str, str]]:
    """Sample labels, apply label noise, render and write one image; returns (truth, noisy)."""
    index, seed, path, heads, label_noise, difficulty, size = job
    rng = _scene_rng(seed, index)
    truth, noisy = {}, {}
    for head, (classes, probs) in heads.items():
        truth[head] = classes[int(rng.choice(len(classes), p=probs))]
        others = [c for c in classes if c != truth[head]]
        flip = rng.random() < label_noise
        noisy[head] = others[int(rng.integers(len(others)))] if flip and others else truth[head]
    image = render_scene(rng, truth["timeofday"], truth["weather"], difficulty, size)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(72, 96)))
    Path(path).write_bytes(buffer.getvalue())
    return truth, noisy


def _write_csv(path: Path, names: list[str], labels: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", *HEADS])
        for name, row in zip(names, labels):
            writer.writerow([name, *(row[head] for head in HEADS)])


def generate(
    out_dir: Path,
    n: int,
    seed: int = 0,
    label_noise: float = 0.02,
    difficulty: float = DEFAULT_DIFFICULTY,
    frequencies: Mapping[str, Mapping[str, float]] = DEFAULT_FREQUENCIES,
    document_root: Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> SynthResult:
    """Write ``n`` labelled scenes under ``out_dir``: images/, manifest.csv, truth.csv, tasks.json.

    Classes are drawn independently per head with ``frequencies``; with probability
    ``label_noise`` a head's label in manifest.csv is replaced by another class of that head
    (truth.csv keeps the real one). tasks.json lists Label Studio local-file URLs relative to
    ``document_root`` (default: the parent of ``out_dir``), which must contain ``out_dir``.
    ``workers`` processes render in parallel (default min(2, CPU count)); the bytes written are the
    same for any worker count.
    """
    if n < 0 or not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"need n >= 0 and label_noise in 0..1, got n={n}, label_noise={label_noise}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in 0..1, got {difficulty}")
    heads = _normalised(frequencies)
    out_dir = Path(out_dir)
    root = Path(document_root) if document_root is not None else out_dir.parent
    try:
        relative_dir = out_dir.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(
            f"{out_dir} is not inside the document root {root}; Label Studio serves local files only "
            f"under LOCAL_FILES_DOCUMENT_ROOT, so pass a document_root that contains out_dir"
        ) from None
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    names = [f"images/{i:06d}.jpg" for i in range(n)]
    jobs = [(i, seed, str(out_dir / name), heads, label_noise, difficulty, tuple(size)) for i, name in enumerate(names)]
    workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    logger.info("rendering %d scenes into %s with %d worker(s)", n, out_dir, workers)
    bar = dict(total=n, desc="synth", unit="img", disable=not progress)
    if workers == 1 or n < 2 * workers:
        results = [r for r in tqdm(map(_make_one, jobs), **bar)]
    else:
        # spawn, not fork: a process that already ran torch (a test session, a notebook) can fork a child
        # holding an OpenMP or logging lock, and that child then waits forever (seen in CI)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_make_one, jobs, chunksize=8), **bar))
    truth, noisy = [r[0] for r in results], [r[1] for r in results]

    manifest_path, truth_path, tasks_path = out_dir / "manifest.csv", out_dir / "truth.csv", out_dir / "tasks.json"
    _write_csv(manifest_path, names, noisy)
    _write_csv(truth_path, names, truth)
    tasks = [
        {"data": {"image": "/data/local-files/?d=" + urllib.parse.quote((relative_dir / name).as_posix())}}
        for name in names
    ]
    tasks_path.write_text(json.dumps(tasks, indent=1) + "\n")
    changed = sum(t[h] != z[h] for t, z in zip(truth, noisy) for h in HEADS)
    return SynthResult(out_dir, manifest_path, truth_path, tasks_path, n, changed)
