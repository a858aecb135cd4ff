"""Label Studio tasks as the data report reads them (``weather-al analyze`` of an export or a live project).

Apart from ``tasks`` because it brings in the analysis package, which the web process and the worker do
not need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.labelstudio.tasks import latest_annotation, resolve_local_url
from model.analysis.inputs import (
    OUTSIDE_CONFIG,
    SEVERAL_VALUES,
    AnalysisInput,
    Annotation,
    Item,
    LabelIssue,
    settle_labels,
)
from model.schema import LabelSchema


def read_export_input(path: str | Path, schema: LabelSchema, document_root: str | Path | None = None) -> AnalysisInput:
    """A Label Studio JSON export for analysis; image URLs resolve under ``document_root`` (default: its folder)."""
    path = Path(path)
    tasks = json.loads(path.read_text(encoding="utf-8"))
    return read_export_tasks(tasks, schema, Path(document_root) if document_root else path.parent, source=str(path))


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
            settle_labels(item, item.annotations[chronological.index(latest)].values, schema, out.label_issues)
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
