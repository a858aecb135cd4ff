"""Images decoded and squashed once, kept as uint8 pixels for loops that read the same images again.

``weather-al simulate`` scores the whole pool and the test set, and trains on a growing part of the
pool, every cycle. Reading, decoding and resizing a 640x360 JPEG costs about 3.6 ms of CPU
(benchmarks/bench_scoring.py): a tenth of a CPU forward pass, but most of a cycle on a GPU host. The
pixels are what :func:`model.data.transforms.squash` makes, so training and scoring see exactly what they
would see reading the files. They live in one ``.npy`` file, memory-mapped: processes running side
by side (``simulate(jobs=...)``) share one copy through the page cache, and a pickled
DecodedImages is only its path.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from model.data.examples import Example, ImageDataset, collate
from model.data.images import ImageError

logger = logging.getLogger(__name__)


class DecodedImages:
    """Read-only (3, S, S) uint8 pixels by example key, and the reason for each image that could not be read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta = json.loads(self.path.with_suffix(".json").read_text(encoding="utf-8"))
        self.image_size: int = int(meta["image_size"])
        self.index: dict[str, int] = {key: i for i, key in enumerate(meta["keys"])}
        self.failures: dict[str, str] = dict(meta["failures"])
        self._pixels = np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index or key in self.failures

    def pixels(self, key: str) -> torch.Tensor:
        """A fresh (3, S, S) uint8 tensor of ``key``; ImageError with the original reason if it could not be read."""
        if key in self.failures:
            raise ImageError(key, self.failures[key])
        return torch.from_numpy(np.array(self._pixels[self.index[key]]))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        DecodedImages.__init__(self, state["path"])

    @classmethod
    def decode(
        cls,
        examples: list[Example],
        image_size: int,
        path: str | os.PathLike[str],
        workers: int = 0,
        batch_size: int = 64,
        progress: bool = True,
    ) -> DecodedImages:
        """Decode and squash ``examples`` into ``path`` (.npy, with a .json of keys beside it) and open it."""
        path = Path(path)
        loader = DataLoader(
            ImageDataset(examples, None, image_size),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            prefetch_factor=4 if workers else None,
        )
        pixels = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(len(examples), 3, image_size, image_size)
        )
        keys: list[str] = []
        failures: dict[str, str] = {}
        for batch in tqdm(
            loader, desc=f"decoding {len(examples)} images", unit="batch", disable=not progress, leave=False
        ):
            failures.update(
                (examples[i].key, reason.removeprefix(f"{examples[i].key}: ")) for i, reason in batch["failures"]
            )
            if "image" in batch:
                pixels[len(keys) : len(keys) + len(batch["index"])] = batch["image"].numpy()
                keys += [examples[i].key for i in batch["index"].tolist()]
        pixels.flush()
        del pixels
        path.with_suffix(".json").write_text(
            json.dumps({"image_size": image_size, "keys": keys, "failures": failures}), encoding="utf-8"
        )
        if failures:
            logger.warning("%d of %d image(s) could not be read and will be skipped", len(failures), len(examples))
        return cls(path)
