"""Tests for model.sim.scenes: labels, label noise, file formats, determinism and basic realism."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.sim.scenes import DEFAULT_FREQUENCIES, HEADS, generate, render_scene

SMALL = (32, 18)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory: pytest.TempPathFactory):
    """400 tiny scenes with 20% label noise: enough to measure frequencies and the noise rate."""
    out = tmp_path_factory.mktemp("synth") / "noisy"
    return generate(out, 400, seed=3, label_noise=0.2, size=SMALL, progress=False, workers=2)


def test_class_frequencies_follow_those_asked(noisy_set) -> None:
    truth = _rows(noisy_set.truth_path)
    for head, table in DEFAULT_FREQUENCIES.items():
        for cls, p in table.items():
            share = sum(row[head] == cls for row in truth) / len(truth)
            assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / len(truth)), (head, cls, share, p)


def test_label_noise_rate_is_close_to_the_rate_asked(noisy_set) -> None:
    truth, manifest = _rows(noisy_set.truth_path), _rows(noisy_set.manifest_path)
    assert [r["image"] for r in truth] == [r["image"] for r in manifest]
    changed = [(t[h], m[h], h) for t, m in zip(truth, manifest) for h in HEADS if t[h] != m[h]]
    draws = len(truth) * len(HEADS)
    assert abs(len(changed) / draws - 0.2) <= 4 * math.sqrt(0.2 * 0.8 / draws)
    assert len(changed) == noisy_set.n_noisy_labels
    assert all(new in HEADS[head] for _, new, head in changed)  # a different class of the same head


def test_no_label_noise_means_manifest_equals_truth(tmp_path: Path) -> None:
    result = generate(tmp_path / "clean", 20, label_noise=0.0, size=SMALL, progress=False, workers=1)
    assert result.manifest_path.read_text() == result.truth_path.read_text()
    assert result.n_noisy_labels == 0


def test_manifest_truth_and_tasks_formats(tmp_path: Path) -> None:
    out = tmp_path / "root" / "my set"
    result = generate(out, 5, seed=1, size=SMALL, progress=False, workers=1)
    assert result.n == 5
    lines = result.manifest_path.read_text().splitlines()
    assert lines[0] == "image,timeofday,weather"
    assert result.truth_path.read_text().splitlines()[0] == "image,timeofday,weather"
    rows = _rows(result.manifest_path)
    assert [r["image"] for r in rows] == [f"images/{i:06d}.jpg" for i in range(5)]
    for row in rows:
        assert row["timeofday"] in HEADS["timeofday"] and row["weather"] in HEADS["weather"]
        with Image.open(out / row["image"]) as image:
            assert image.format == "JPEG" and image.size == SMALL
    tasks = json.loads(result.tasks_path.read_text())
    assert tasks[0] == {"data": {"image": "/data/local-files/?d=my%20set/images/000000.jpg"}}
    assert len(tasks) == 5

    rooted = generate(out, 2, seed=1, size=SMALL, progress=False, workers=1, document_root=tmp_path)
    assert json.loads(rooted.tasks_path.read_text())[1] == {
        "data": {"image": "/data/local-files/?d=root/my%20set/images/000001.jpg"}
    }


def test_document_root_must_contain_the_output(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="document root"):
        generate(tmp_path / "a", 1, size=SMALL, progress=False, document_root=tmp_path / "elsewhere")


def test_default_images_are_640x360_jpeg(tmp_path: Path) -> None:
    result = generate(tmp_path / "full", 2, progress=False, workers=1)
    for name in ("000000.jpg", "000001.jpg"):
        with Image.open(result.out_dir / "images" / name) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (640, 360), "RGB")


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", 12, seed=5, size=SMALL, progress=False, workers=1)
    two = generate(tmp_path / "two", 12, seed=5, size=SMALL, progress=False, workers=2)
    other = generate(tmp_path / "other", 12, seed=6, size=SMALL, progress=False, workers=1)
    images = sorted((one.out_dir / "images").iterdir())
    assert len(images) == 12
    for path in images:
        assert path.read_bytes() == (two.out_dir / "images" / path.name).read_bytes()
    assert one.truth_path.read_text() == two.truth_path.read_text()
    assert one.manifest_path.read_text() == two.manifest_path.read_text()
    assert any(p.read_bytes() != (other.out_dir / "images" / p.name).read_bytes() for p in images)


def test_frequencies_can_be_changed_and_are_validated(tmp_path: Path) -> None:
    only = {"timeofday": {"dusk": 1.0}, "weather": {"snow": 2.0, "rain": 0.0}}
    result = generate(tmp_path / "dusk", 10, frequencies=only, label_noise=0.0, size=SMALL, progress=False, workers=1)
    assert {(r["timeofday"], r["weather"]) for r in _rows(result.truth_path)} == {("dusk", "snow")}
    with pytest.raises(ValueError, match="frequencies"):
        generate(tmp_path / "bad", 1, frequencies={"timeofday": {"noon": 1.0}, "weather": {"clear": 1.0}}, size=SMALL)
    with pytest.raises(ValueError, match="heads"):
        generate(tmp_path / "bad", 1, frequencies={"timeofday": {"day": 1.0}}, size=SMALL)


def test_render_is_deterministic_and_validates_its_input() -> None:
    first = render_scene(np.random.default_rng(11), "dusk", "rain", size=(64, 36))
    again = render_scene(np.random.default_rng(11), "dusk", "rain", size=(64, 36))
    assert first.size == (64, 36) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    with pytest.raises(ValueError, match="unknown class"):
        render_scene(np.random.default_rng(0), "noon", "clear")
    with pytest.raises(ValueError, match="difficulty"):
        render_scene(np.random.default_rng(0), "day", "clear", difficulty=1.5)


def test_time_of_day_orders_brightness_and_snow_whitens_the_ground() -> None:
    """Easy scenes (difficulty 0) carry the cues a model should learn."""

    def scenes(timeofday: str, weather: str) -> np.ndarray:
        return np.stack(
            [
                np.asarray(render_scene(np.random.default_rng(i), timeofday, weather, 0.0, (96, 54)), dtype=np.float32)
                for i in range(12)
            ]
        )

    day, dusk, night = (scenes(t, "clear") for t in ("day", "dusk", "night"))
    assert day.mean() > dusk.mean() > night.mean()
    snow = scenes("day", "snow")
    lower = slice(40, 54)  # bottom rows: ground in every layout
    assert snow[:, lower].mean() > day[:, lower].mean() + 30
