"""Label Studio's formats: tasks and their annotations, exports, and the image paths of Local Storage.

What model/ reads is manifests and examples; this module turns Label Studio's JSON (an export, or the
tasks the SDK lists) into them: the annotation that gives a task its labels, the choices it holds, and
the file a ``/data/local-files/?d=...`` URL names under ``LOCAL_FILES_DOCUMENT_ROOT``.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from model.data.examples import Example, ExampleSet, row_labels
from model.schema import LabelSchema


def read_label_studio_export(
    path: str | Path, schema: LabelSchema, document_root: str | Path | None = None
) -> ExampleSet:
    """Read a Label Studio JSON export: the latest non-cancelled annotation of each task gives its labels.

    Image URLs of local storage (``/data/local-files/?d=...``) and plain paths are resolved under
    ``document_root`` (Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``), by default the export's folder.
    """
    path = Path(path)
    tasks = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: a Label Studio JSON export is a list of tasks")
    root = Path(document_root) if document_root else path.parent
    out = ExampleSet(schema, [])
    for task in tasks:
        tid = task.get("id", "?")
        where = f"task {tid}"
        url = (task.get("data") or {}).get(schema.image_key)
        if not url:
            out.problems.append(f"{where}: no '{schema.image_key}' in its data")
            continue
        choices = annotation_choices(latest_annotation(task.get("annotations") or []), schema)
        labels, problem = row_labels(schema, choices, require_labels=True)
        if problem:
            out.problems.append(f"{where}: {problem}")
            continue
        source = resolve_local_url(url, root)
        if source is None or not source.is_file():
            out.problems.append(f"{where}: image {url} is not a readable local file under {root}")
            continue
        out.examples.append(Example(key=str(tid), source=str(source), labels=labels))
    return out


def latest_annotation(annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recently updated annotation that was not cancelled (skipped)."""
    valid = [a for a in annotations if not a.get("was_cancelled")]
    if not valid:
        return None
    return max(valid, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


def annotation_choices(annotation: dict[str, Any] | None, schema: LabelSchema) -> dict[str, str | None]:
    """Head name -> chosen value from an annotation's (or prediction's) ``result`` list."""
    choices: dict[str, str | None] = {h: None for h in schema.head_names}
    for item in (annotation or {}).get("result") or []:
        if item.get("type") == "choices" and item.get("from_name") in choices:
            values = (item.get("value") or {}).get("choices") or []
            if values:
                choices[item["from_name"]] = values[0]
    return choices


def resolve_local_url(url: str, root: Path) -> Path | None:
    """Map ``/data/local-files/?d=rel`` or a relative path to a file under ``root``; None if it escapes root
    or names no possible file (a NUL byte: a task's URL is input, and one bad task must not stop training).

    ``?d=`` is read as Label Studio reads it (Django's ``request.GET.get('d')``: percent-decoded, and the
    last one when there are several). A plain path is taken as it is written: it is not a URL, and a URL
    parser would cut ``img;v1.jpg`` at the ``;``. Like Label Studio, ``..`` is collapsed on the text
    (``normpath``) before the file system is asked, so ``link/../a.jpg`` names the ``a.jpg`` Label Studio
    serves, not one beside the link's target.
    """
    if url.startswith("/data/local-files"):
        rel = (parse_qs(urlsplit(url).query, keep_blank_values=True).get("d") or [""])[-1]
    elif url.startswith("file:"):
        parsed = urlsplit(url)
        if parsed.netloc:
            return None
        rel = unquote(parsed.path)
    elif _SCHEME_RE.match(url):
        return None
    else:
        rel = url
    if "\0" in rel:
        return None
    candidate = (root / posixpath.normpath(rel).lstrip("/")).resolve()
    if not candidate.is_relative_to(root.resolve()):
        return None
    return candidate


#: A URL scheme ("http:", "s3:"): such a string is not a local path
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
