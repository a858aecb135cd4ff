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
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.examples import Example, latest_annotation, resolve_local_url
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
    """A manifest (``.csv``) or a Label Studio export (``.json``) for analysis."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a CSV manifest or a Label Studio JSON export")
    if path.suffix.lower() == ".json":
        tasks = json.loads(path.read_text(encoding="utf-8"))
        return read_export_tasks(tasks, schema, Path(document_root) if document_root else path.parent, source=str(path))
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
            _settle_labels(item, item.annotations[-1].values, schema, out.label_issues)
    return out


def read_export_tasks(
    tasks: Any, schema: LabelSchema, document_root: Path, source: str = "", errors: dict[str, str] | None = None
) -> AnalysisInput:
    """Items from a Label Studio export (a list of tasks); image URLs resolve under ``document_root``.

    ``errors``: task id -> why its image is unavailable, known before reading (e.g. a failed download).
    """
    if not isinstance(tasks, list):
        raise ValueError(f"{source or 'the export'}: a Label Studio JSON export is a list of tasks")
    out = AnalysisInput(schema, [], source=source)
    for task in tasks:
        key = str(task.get("id", len(out.items)))
        url = (task.get("data") or {}).get(schema.image_key)
        item = Item(key=key, source=None, labels=(None,) * len(schema.heads))
        if errors and key in errors:
            item.error = errors[key]
        elif not url:
            item.error = f"no '{schema.image_key}' field in the task data"
        else:
            path = resolve_local_url(str(url), document_root)
            if path is None:
                item.error = f"image {url} is not a local file under {document_root}"
            else:
                item.source = str(path)
        chronological = sorted(
            (a for a in task.get("annotations") or [] if not a.get("was_cancelled")),
            key=lambda a: (a.get("created_at") or "", a.get("id") or 0),
        )
        for ann in chronological:
            values, problems = _result_values(ann, schema)
            out.label_issues.extend(LabelIssue(key, head, kind, value) for head, kind, value in problems)
            item.annotations.append(Annotation(values, _annotator(ann)))
        latest = latest_annotation(chronological)
        if latest is not None:  # the label training would use (model.data reads the same one)
            _settle_labels(item, item.annotations[chronological.index(latest)].values, schema, out.label_issues)
        out.items.append(item)
    return out


def _annotator(annotation: dict[str, Any]) -> str:
    """Who made an annotation: exports hold the user id, the SDK's task list may hold the user object."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return str(who if who is not None else "")


def _result_values(
    annotation: dict[str, Any], schema: LabelSchema
) -> tuple[dict[str, str | None], list[tuple[str, str, str]]]:
    """Head -> value of one annotation's ``result``, and the problems seen in it (unknown head, several values)."""
    values: dict[str, str | None] = {h: None for h in schema.head_names}
    problems: list[tuple[str, str, str]] = []
    for res in annotation.get("result") or []:
        if res.get("type") != "choices":
            continue
        head = res.get("from_name")
        chosen = (res.get("value") or {}).get("choices") or []
        if head not in values:
            problems.append((str(head), OUTSIDE_CONFIG, ", ".join(map(str, chosen))))
            continue
        if len(chosen) > 1:
            problems.append((head, SEVERAL_VALUES, ", ".join(map(str, chosen))))
        if chosen:
            values[head] = str(chosen[0])
    return values, problems


def _settle_labels(item: Item, values: dict[str, str | None], schema: LabelSchema, issues: list[LabelIssue]) -> None:
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
