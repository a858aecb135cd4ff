"""Labeled and unlabeled image sets: reading them, and feeding them to PyTorch.

Inputs are a CSV manifest (an ``image`` column with a path relative to the manifest, then one column
per head), a Label Studio JSON export, or a folder of images. A row that cannot be used (unknown class,
missing head, missing file) is named in ``problems`` with its row and reason and skipped: nothing is
dropped silently, nothing stops the run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from model.data.images import ImageError, load_image
from model.data.transforms import squash
from model.schema import LabelSchema

logger = logging.getLogger(__name__)


class PixelSource(Protocol):
    """Images already decoded at one size, by key (``model.data.decoded.DecodedImages`` is one).

    A protocol, so that this module does not import the one that decodes through it.
    """

    image_size: int

    def __contains__(self, key: str) -> bool: ...

    def pixels(self, key: str) -> torch.Tensor: ...


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Example:
    """One image: ``key`` identifies it (relative path or task id), ``source`` is what to read."""

    key: str
    source: str
    labels: tuple[int | None, ...] = ()

    @property
    def is_labeled(self) -> bool:
        return bool(self.labels) and all(v is not None for v in self.labels)


@dataclass
class ExampleSet:
    """Examples of one schema, plus the problems met while reading them."""

    schema: LabelSchema
    examples: list[Example]
    problems: list[str] = field(default_factory=list)

    def label_matrix(self) -> np.ndarray:
        """(N, heads) int array of class indices; every example must be labeled."""
        return np.array([e.labels for e in self.examples], dtype=np.int64).reshape(
            len(self.examples), len(self.schema.heads)
        )

    def subset(self, indices: Iterable[int]) -> ExampleSet:
        return ExampleSet(self.schema, [self.examples[i] for i in indices], list(self.problems))

    def report_problems(self, what: str) -> None:
        if self.problems:
            logger.warning("%s: skipped %d item(s):\n  %s", what, len(self.problems), "\n  ".join(self.problems))


def read_manifest(path: str | Path, schema: LabelSchema, require_labels: bool = True) -> ExampleSet:
    """Read a CSV manifest. Rows with a missing head or an unknown class are skipped and named."""
    path = Path(path)
    root = path.parent
    out = ExampleSet(schema, [])
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "image" not in columns:
            raise ValueError(f"{path}: the manifest needs an 'image' column; it has {columns}")
        missing_cols = [h for h in schema.head_names if h not in columns]
        if require_labels and missing_cols:
            raise ValueError(
                f"{path}: no column for head(s) {missing_cols}; expected columns image,{','.join(schema.head_names)}"
            )
        for lineno, row in enumerate(reader, start=2):
            where = f"{path.name} row {lineno}"
            rel = (row.get("image") or "").strip()
            if not rel:
                out.problems.append(f"{where}: empty image path")
                continue
            labels, problem = row_labels(schema, {h: row.get(h) for h in schema.head_names}, require_labels)
            if problem:
                out.problems.append(f"{where} ({rel}): {problem}")
                continue
            source = root / rel
            if not source.is_file():
                out.problems.append(f"{where}: image file {source} does not exist")
                continue
            out.examples.append(Example(key=rel, source=str(source), labels=labels))
    return out


def read_folder(folder: str | Path, schema: LabelSchema) -> ExampleSet:
    """Every image file under ``folder`` (recursively), unlabeled, in sorted order."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return ExampleSet(
        schema,
        [Example(key=str(p.relative_to(folder)), source=str(p), labels=(None,) * len(schema.heads)) for p in files],
    )


def row_labels(
    schema: LabelSchema, values: dict[str, str | None], require_labels: bool
) -> tuple[tuple[int | None, ...], str | None]:
    labels: list[int | None] = []
    for head in schema.heads:
        value = (values.get(head.name) or "").strip()
        if not value:
            if require_labels:
                return (), f"no label for head '{head.name}'"
            labels.append(None)
            continue
        try:
            labels.append(head.index(value))
        except KeyError as exc:
            return (), str(exc.args[0])
    return tuple(labels), None


class ImageDataset(Dataset):
    """Decodes and squashes images for a DataLoader; an unreadable image yields a failure record instead of raising.

    Decoding runs in DataLoader worker processes, overlapping with the forward pass of the previous
    batch; JPEG draft mode makes the decoder produce about ``image_size`` pixels directly. With
    ``decoded`` (a :class:`model.data.decoded.DecodedImages` of the same size) the images it holds
    are taken from it instead of being read again. ``transform`` maps the squashed uint8 pixels to the
    network's input (model.data.transforms); None keeps the uint8 pixels.
    """

    def __init__(
        self,
        examples: list[Example],
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        image_size: int,
        decoded: PixelSource | None = None,
    ) -> None:
        if decoded is not None and decoded.image_size != image_size:
            raise ValueError(
                f"the decoded images are {decoded.image_size} px but this pass needs {image_size} px; decode them again"
            )
        self.examples = examples
        self.transform = transform
        self.image_size = image_size
        self.decoded = decoded
        self.squash = squash(image_size)

    def __len__(self) -> int:
        return len(self.examples)

    def pixels(self, ex: Example) -> torch.Tensor:
        """(3, image_size, image_size) contiguous uint8 pixels of ``ex``; raises ImageError when it cannot be read.

        Contiguous because PIL's pixels arrive channels-last, and the augmentations round differently on
        the two layouts: a decoded image must train exactly as the file it came from.
        """
        if self.decoded is not None and ex.key in self.decoded:
            return self.decoded.pixels(ex.key)
        return self.squash(load_image(ex.source, target_size=self.image_size, name=ex.key)).contiguous()

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        try:
            pixels = self.pixels(ex)
        except ImageError as exc:
            return {"index": i, "error": str(exc)}
        labels = [(-1 if v is None else v) for v in ex.labels]
        image = pixels if self.transform is None else self.transform(pixels)
        return {"index": i, "image": image, "labels": torch.tensor(labels, dtype=torch.long)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; carry the failures along so the caller can count and report them.

    Items of the feature cache (model.nn.feature_cache) also carry ``pooled`` and ``start``: the
    network then starts at stage group ``start`` (see MultiHeadNet.forward).
    """
    good = [it for it in items if "image" in it]
    failures = [(it["index"], it["error"]) for it in items if "error" in it]
    batch: dict[str, Any] = {
        "failures": failures,
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "start": good[0].get("start", 0) if good else 0,
    }
    if good:
        batch["image"] = torch.stack([it["image"] for it in good])
        batch["labels"] = torch.stack([it["labels"] for it in good])
        if "pooled" in good[0]:
            batch["pooled"] = torch.stack([it["pooled"] for it in good])
    return batch
