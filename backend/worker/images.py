"""Fetching the images of many tasks at once, for a training run or an export."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backend.labelstudio.fetch import FetchError, ImageFetcher

logger = logging.getLogger(__name__)


def fetch_all(fetcher: ImageFetcher, items: list[tuple[int, str]]) -> dict[int, Path]:
    """Fetch images in parallel (network-bound); a failure costs its own task, with a log line."""

    def one(item: tuple[int, str]) -> tuple[int, Path | None]:
        tid, url = item
        try:
            return tid, fetcher.fetch(url)
        except FetchError as exc:
            logger.warning("task %s: image skipped: %s", tid, exc)
            return tid, None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return {tid: p for tid, p in pool.map(one, items) if p is not None}
