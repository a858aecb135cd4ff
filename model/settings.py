"""The model's own settings, read from the environment (or ``.env``) like the backend's, which inherit them.

Only what the model needs to read untrusted images safely lives here; ``backend.settings.Settings``
extends this class, so that one variable (for example ``MAX_IMAGE_BYTES``) sets the same limit for
downloading an image and for decoding it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ImageLimits(BaseSettings):
    """Limits on every image the model reads (see ``model.data.images.load_image``)."""

    # env_ignore_empty: docker-compose passes every setting as ${NAME:-}, so an empty value means "unset"
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True, hide_input_in_errors=True
    )

    max_image_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="decompression-bomb limit (width x height), checked on the header before any pixel is decoded",
        validation_alias=AliasChoices("max_image_pixels", "weather_al_max_image_pixels"),
    )
    max_image_bytes: int = Field(
        default=30 * 1024 * 1024, gt=0, description="files (and downloads) larger than this are refused"
    )


class CacheSettings(BaseSettings):
    """Where frozen-backbone features are kept between trainings and scorings (model.nn.feature_cache)."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True, hide_input_in_errors=True
    )

    feature_cache_dir: Path | None = Field(
        default=None,
        description="folder of the feature cache (default: ~/.cache/weather-al/features; the backend: "
        "MODEL_DIR/feature-cache)",
    )
    feature_cache_max_mb: int = Field(
        default=4096,
        ge=0,
        description="the cache's size bound in MiB; 0 turns the cache off (every pass runs the whole backbone)",
    )


DEFAULT_FEATURE_CACHE_DIR = Path.home() / ".cache" / "weather-al" / "features"


@lru_cache(maxsize=1)
def image_limits() -> ImageLimits:
    """The limits from the environment, read once per process."""
    return ImageLimits()
