"""Tests for model.data.images: every bad input is a clean ImageError, every mode comes back RGB."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.data import images
from model.data.images import ALPHA_BACKGROUND, ImageError, load_image


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _gradient_rgb(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    array = np.stack([np.tile(x, (height, 1))] * 3, axis=-1)
    array[..., 2] = 128
    return Image.fromarray(array)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _huge_bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height that compresses to a few KB: a decompression bomb."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


# --- good input ------------------------------------------------------------------------------


def test_rgb_jpeg_from_path_and_bytes(tmp_path: Path) -> None:
    data = _encode(_gradient_rgb(), "JPEG", quality=95)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    from_path = load_image(path)
    from_bytes = load_image(data)
    assert from_path.mode == from_bytes.mode == "RGB"
    assert from_path.size == (64, 48)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_bytes))


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour() -> None:
    red_in_cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    loaded = load_image(_encode(red_in_cmyk, "JPEG", quality=95))
    assert loaded.mode == "RGB"
    r, g, b = np.asarray(loaded).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_png_is_scaled_by_full_range_not_stretched() -> None:
    values = np.array([[0, 4112, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    loaded = load_image(_encode(image, "PNG"))
    assert loaded.mode == "RGB"
    # 4112 / 257 = 16: a dark pixel stays dark (a night scene must not turn into day).
    assert np.asarray(loaded)[0, :, 0].tolist() == [0, 16, 128, 255]


def test_float_tiff_in_unit_range_maps_to_0_255() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32).repeat(2, axis=0)
    loaded = load_image(_encode(Image.fromarray(values), "TIFF"))
    assert np.asarray(loaded)[0, :, 1].tolist() == [0, 128, 255]


def test_grayscale_jpeg_becomes_three_equal_channels() -> None:
    loaded = load_image(_encode(_gradient_rgb().convert("L"), "JPEG"))
    array = np.asarray(loaded)
    assert loaded.mode == "RGB"
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_the_documented_background(mode: str) -> None:
    rgba = np.zeros((8, 16, 4), dtype=np.uint8)
    rgba[:, 8:] = (30, 30, 30, 255)  # opaque dark right half, fully transparent left half
    image = Image.fromarray(rgba)
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P")
        image.info["transparency"] = image.getpixel((0, 0))
    loaded = np.asarray(load_image(_encode(image, "PNG")))
    assert loaded[:, :8].reshape(-1, 3).tolist() == [list(ALPHA_BACKGROUND)] * 64
    assert (loaded[:, 8:] < 60).all()


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = _encode(_gradient_rgb(64, 32), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (64, 32)
    assert load_image(data).size == (32, 64)


def test_jpeg_draft_mode_decodes_smaller_but_not_below_target() -> None:
    data = _encode(_gradient_rgb(640, 360), "JPEG")
    loaded = load_image(data, target_size=160)
    assert loaded.mode == "RGB"
    assert loaded.width < 640
    assert min(loaded.size) >= 160


def test_target_size_larger_than_image_keeps_full_size() -> None:
    assert load_image(_encode(_gradient_rgb(64, 48), "JPEG"), target_size=500).size == (64, 48)


def test_truncated_images_are_reported_not_padded() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- bad input -------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.jpg"
    with pytest.raises(ImageError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", name="upload-7")


def test_non_image_bytes_name_the_source() -> None:
    with pytest.raises(ImageError, match="cannot decode") as info:
        load_image(b"<html>not an image</html>", name="task-42")
    assert "task-42" in str(info.value)


def test_corrupt_png_header() -> None:
    data = bytearray(_encode(_gradient_rgb(), "PNG"))
    data[16:24] = b"\xff" * 8  # width and height in IHDR; the chunk CRC no longer matches
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(bytes(data))


def test_corrupt_jpeg_body() -> None:
    data = _encode(_gradient_rgb(), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(data[:4] + b"\x00" * (len(data) - 4))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noisy), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_bilevel_png(20_000, 20_000))
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_our_pixel_limit_is_authoritative_and_pil_does_not_warn() -> None:
    # 10000 x 10000 sits between PIL's warning level (~89 Mpx) and its error level (~179 Mpx).
    bomb = _huge_bilevel_png(10_000, 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=r"10000x10000 = 100000000 pixels exceeds the limit"):
            load_image(bomb)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(_gradient_rgb(64, 48), "PNG")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(ImageError, match="too large"):
        load_image(data)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 48)
    assert load_image(data).size == (64, 48)


def test_byte_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(_gradient_rgb(), "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", len(data) - 1)
    for source in (path, data):
        with pytest.raises(ImageError, match="too large"):
            load_image(source)


def test_directory_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path)


def test_bad_env_limit_is_a_clear_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.settings import ImageLimits

    monkeypatch.setenv("MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="max_image_pixels"):
        ImageLimits()
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1234")
    assert ImageLimits().max_image_pixels == 1234
    monkeypatch.delenv("MAX_IMAGE_PIXELS")
    monkeypatch.setenv("WEATHER_AL_MAX_IMAGE_PIXELS", "4321")  # the name of earlier releases still works
    assert ImageLimits().max_image_pixels == 4321


def test_the_backend_and_the_model_read_one_byte_limit() -> None:
    """MAX_IMAGE_BYTES was defined three times and the decoder's was fixed: raising the setting made fetch
    download files that load_image then refused. Now one variable sets both (a fresh process reads it)."""
    import subprocess
    import sys

    code = (
        "from model.data import images; from backend.settings import Settings; "
        "print(images.MAX_IMAGE_BYTES, Settings().max_image_bytes)"
    )
    env = {**os.environ, "MAX_IMAGE_BYTES": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["12345", "12345"]
