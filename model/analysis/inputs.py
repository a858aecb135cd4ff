"""Reading a data set for analysis: every image, every annotation, every label problem kept.

Training readers (:mod:`model.data.examples`) skip a row with a missing head or an unknown class and keep only
the latest annotation of a task. Analysis needs what they leave out: the images without labels (a
duplicate across the labeled and unlabeled parts wastes a label), each annotator's answer (agreement
between annotators is the human baseline), and each label that could not be used, named with its
reason. So this reader keeps every image and records problems instead of skipping.

Sources: a CSV manifest (``image`` column, one column per head, optional ``annotator`` column; an
image listed on several rows counts as annotated several times) or a Label Studio JSON export (a file,
or the task list itself, e.g. read from a live project).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.examples import Example
from model.schema import LabelSchema

logger = logging.getLogger(__name__)

MISSING_HEAD = "missing head"
OUTSIDE_CONFIG = "value outside the config"
SEVERAL_VALUES = "several values on a single-choice head"


@dataclass
class Annotation:
    """One annotator's answer: head name -> value as written (None when the head was left empty)."""

    values: dict[str, str | None]
    annotator: str = ""


@dataclass
class Item:
    """One image of the data set.

    ``annotations`` are in the order they were made. ``labels`` holds the class index per head of the
    label training would use (the latest annotation), None where the head is missing or its value is not a class of
    the config.
    ``error`` is set when the image cannot even be located (e.g. a task whose URL is not a local file).
    """

    key: str
    source: str | None
    labels: tuple[int | None, ...]
    annotations: list[Annotation] = field(default_factory=list)
    error: str | None = None

    @property
    def is_labeled(self) -> bool:
        """Annotated at all (some head has a value); partially labeled items count, their gaps are problems."""
        return any(v is not None for v in self.labels)

    def example(self) -> Example:
        return Example(key=self.key, source=self.source or "", labels=self.labels)


@dataclass(frozen=True)
class LabelIssue:
    """A label that cannot be used as it stands: which item, which head, what is wrong, the value seen."""

    key: str
    head: str
    kind: str
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "head": self.head, "kind": self.kind, "value": self.value}


@dataclass
class AnalysisInput:
    """The items of one data set, the label problems met while reading it, and where it came from."""

    schema: LabelSchema
    items: list[Item]
    label_issues: list[LabelIssue] = field(default_factory=list)
    source: str = ""


def read_input(path: str | Path, schema: LabelSchema, document_root: str | Path | None = None) -> AnalysisInput:
    """A CSV manifest for analysis (a Label Studio export is read by ``backend.labelstudio.tasks``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a CSV manifest or a Label Studio JSON export")
    if path.suffix.lower() == ".json":
        raise ValueError(f"{path}: Label Studio exports are read by `weather-al analyze` (backend.labelstudio.tasks)")
    return read_manifest_rows(path, schema)


def read_manifest_rows(path: Path, schema: LabelSchema) -> AnalysisInput:
    """Every row of a CSV manifest; rows naming the same image are several annotations of it."""
    root = path.parent
    by_key: dict[str, Item] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "image" not in columns:
            raise ValueError(f"{path}: the manifest needs an 'image' column; it has {columns}")
        for lineno, row in enumerate(reader, start=2):
            rel = (row.get("image") or "").strip()
            if not rel:
                logger.warning("%s row %d: empty image path, row ignored", path.name, lineno)
                continue
            values = {h: ((row.get(h) or "").strip() or None) for h in schema.head_names}
            item = by_key.setdefault(rel, Item(key=rel, source=str(root / rel), labels=(None,) * len(schema.heads)))
            if any(v is not None for v in values.values()):
                item.annotations.append(Annotation(values, (row.get("annotator") or "").strip()))
    out = AnalysisInput(schema, list(by_key.values()), source=str(path))
    for item in out.items:
        if item.annotations:  # the last row is the label, as later rows overwrite earlier ones
            settle_labels(item, item.annotations[-1].values, schema, out.label_issues)
    return out


def settle_labels(item: Item, values: dict[str, str | None], schema: LabelSchema, issues: list[LabelIssue]) -> None:
    """Set ``item.labels`` from the annotation ``values`` that give its label; record a missing head or a value
    outside the config."""
    labels: list[int | None] = []
    for head in schema.heads:
        value = values.get(head.name)
        if value is None:
            issues.append(LabelIssue(item.key, head.name, MISSING_HEAD))
            labels.append(None)
        elif value not in head.classes:
            issues.append(LabelIssue(item.key, head.name, OUTSIDE_CONFIG, value))
            labels.append(None)
        else:
            labels.append(head.classes.index(value))
    item.labels = tuple(labels)
