"""The analysis report: one self-contained HTML file, plots and thumbnails embedded as base64 images.

Sections: overview, class distribution, images (unreadable files, formats, sizes, light), label
problems (issues, disagreements, suspected wrong labels), duplicates, outliers, the human baseline,
and a grid of each class. Grids show at most a few dozen images each; ``summary.json`` has the full
rankings.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from model.analysis.findings import Findings
from model.analysis.image_stats import APPEARANCE
from model.data.images import ImageError, load_image

THUMB_WIDTH = 160
GRID_LIMIT = 40
GROUP_LIMIT = 25
PER_CLASS = 10

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} table{border-collapse:collapse;margin:.5em 0 1em} \
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
th{background:#f3f3f3} .grid{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0 1em}
.card{width:160px;font-size:12px;word-break:break-all} .card img{width:160px;display:block;border:1px solid #bbb}
.group{display:flex;gap:8px;align-items:flex-start;margin:.4em 0;padding:.4em;border:1px dashed #ccc}
.warn{color:#a30} .muted{color:#777} figure{display:inline-block;margin:0 1em 1em 0} \
figcaption{font-size:13px;color:#555}
"""


def write_report(findings: Findings, path: Path) -> Path:
    """Write the HTML report of ``findings`` to ``path``."""
    thumbs = _Thumbnails(findings)
    body = "".join(
        [
            _overview(findings),
            _distribution(findings),
            _images(findings, thumbs),
            _label_problems(findings, thumbs),
            _duplicates(findings, thumbs),
            _outliers(findings, thumbs),
            _baseline(findings),
            _classes(findings, thumbs),
        ]
    )
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Data analysis: {_e(findings.data.source)}</title>"
        f"<style>{_CSS}</style></head><body><h1>Data analysis</h1><p class='muted'>{_e(findings.data.source)}</p>"
        f"<nav>{nav}</nav>{body}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path


SECTIONS = (
    ("overview", "Overview"),
    ("distribution", "Class distribution"),
    ("images", "Images"),
    ("label-problems", "Label problems"),
    ("duplicates", "Duplicates"),
    ("outliers", "Outliers"),
    ("human-baseline", "Human baseline"),
    ("classes", "Classes"),
)


class _Thumbnails:
    """Base64 JPEG thumbnails, decoded once per image through the safe loader."""

    def __init__(self, findings: Findings) -> None:
        self.items = findings.data.items
        self.cache: dict[int, str | None] = {}

    def __call__(self, i: int) -> str | None:
        if i not in self.cache:
            try:
                image = load_image(self.items[i].source or "", target_size=THUMB_WIDTH // 2, name=self.items[i].key)
                image.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=80)
                self.cache[i] = base64.b64encode(buffer.getvalue()).decode("ascii")
            except ImageError:
                self.cache[i] = None
        return self.cache[i]

    def card(self, i: int, caption: str) -> str:
        b64 = self(i)
        img = (
            f'<img alt="{_e(self.items[i].key)}" src="data:image/jpeg;base64,{b64}">'
            if b64
            else "<div class='warn'>unreadable</div>"
        )
        return f'<div class="card">{img}{caption}</div>'

    def grid(self, entries: Iterable[tuple[int, str]]) -> str:
        cards = "".join(self.card(i, cap) for i, cap in entries)
        return f'<div class="grid">{cards}</div>' if cards else "<p class='muted'>none</p>"


def _e(text: Any) -> str:
    return html.escape(str(text))


def _section(sid: str, body: str) -> str:
    title = dict(SECTIONS)[sid]
    return f'<section id="{sid}"><h2>{title}</h2>{body}</section>'


def _table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _figure(fig, caption: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    b64 = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overview(f: Findings) -> str:
    rows = [
        ("images", len(f.keys)),
        ("labeled", int(f.labeled.sum())),
        ("unlabeled", int((~f.labeled).sum())),
        ("unreadable", len(f.unreadable)),
        ("label issues (missing head, value outside the config)", len(f.data.label_issues)),
        ("tasks where annotators disagree", len({d["key"] for d in f.disagreements})),
        ("suspected wrong labels (flagged by confident learning)", int(f.suspects.flagged.sum())),
        ("exact duplicate groups", len(f.exact)),
        ("near-duplicate groups", len(f.near)),
    ]
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in f.timings.items())
    return _section("overview", _table(["", "count"], rows) + f"<p class='muted'>Time per phase: {_e(timings)}</p>")


def _distribution(f: Findings) -> str:
    plt = _plt()
    schema, dist = f.data.schema, f.distribution
    fig, axes = plt.subplots(1, len(schema.heads), figsize=(4.2 * len(schema.heads), 3.2), squeeze=False)
    for ax, head in zip(axes[0], schema.heads):
        raw = [dist["heads"][head.name]["counts"][c] for c in head.classes]
        kept = [dist["trainer"]["heads"][head.name]["kept"][c] for c in head.classes]
        x = np.arange(len(head.classes))
        ax.bar(x - 0.2, raw, 0.4, label="labeled")
        ax.bar(x + 0.2, kept, 0.4, label=f"after undersampling (max_ratio {dist['trainer']['max_ratio']:g})")
        ax.set_xticks(x, head.classes)
        ax.set_title(head.name)
        ax.legend(fontsize=7)
    parts = [_figure(fig, "Labeled images per class, and what the trainer keeps after undersampling")]
    for joint in dist["joint"]:
        rows_head, cols_head = schema.head(joint["rows"]), schema.head(joint["columns"])
        table = np.array(joint["table"])
        fig, ax = plt.subplots(figsize=(0.9 * len(cols_head.classes) + 2, 0.6 * len(rows_head.classes) + 1.5))
        ax.imshow(table, cmap="Blues")
        for (r, c), v in np.ndenumerate(table):
            ax.text(c, r, str(v), ha="center", va="center", color="black" if v < table.max() / 2 else "white")
        ax.set_xticks(range(len(cols_head.classes)), cols_head.classes)
        ax.set_yticks(range(len(rows_head.classes)), rows_head.classes)
        ax.set_xlabel(cols_head.name)
        ax.set_ylabel(rows_head.name)
        parts.append(_figure(fig, f"Joint distribution: {rows_head.name} by {cols_head.name}"))
    rows = []
    for head in schema.heads:
        h, t = dist["heads"][head.name], dist["trainer"]["heads"][head.name]
        for k in head.classes:
            rows.append((head.name, k, h["counts"][k], f"{h['shares'][k]:.1%}", t["kept"][k], t["class_weights"][k]))
    ratios = ", ".join(
        f"{n}: {_fmt(h['imbalance_ratio'])}" + (f" (absent: {', '.join(h['absent'])})" if h["absent"] else "")
        for n, h in dist["heads"].items()
    )
    parts.append(f"<p>Imbalance ratio (largest / smallest class): {_e(ratios)}</p>")
    parts.append(_table(["head", "class", "labeled", "share", "kept by the trainer", "class weight"], rows))
    return _section("distribution", "".join(parts))


def _images(f: Findings, thumbs: _Thumbnails) -> str:
    plt = _plt()
    keys, overview = f.keys, f.image_overview()
    parts = [
        f"<h3>Unreadable images ({len(f.unreadable)})</h3>",
        _table(["image", "reason"], [(keys[i], r) for i, r in sorted(f.unreadable.items())])
        if f.unreadable
        else "<p>none</p>",
    ]
    parts.append("<h3>Formats, modes and sizes</h3>")
    parts.append(_table(["format", "images"], overview["formats"].items()))
    parts.append(_table(["mode", "images"], overview["modes"].items()))
    parts.append(_table(["size (w x h)", "images"], overview["sizes"].items()))
    ok = f.stats.readable
    fig, axes = plt.subplots(1, len(APPEARANCE) + 1, figsize=(3.2 * (len(APPEARANCE) + 1), 2.6))
    for ax, name in zip(axes, (*APPEARANCE, "aspect")):
        ax.hist(f.stats.column(name)[ok], bins=40, color="#4a7")
        ax.set_title(name)
    parts.append(_figure(fig, "Distribution of brightness, contrast, saturation, sharpness and aspect ratio"))
    parts.append("<h3>Extremes</h3>")
    index = {k: i for i, k in enumerate(keys)}
    for name, ends in overview["extremes"].items():
        entries = [
            (index[k], f"lowest {name}: {f.stats.column(name)[index[k]]:.3f}<br>{_e(k)}") for k in ends["lowest"]
        ]
        entries += [
            (index[k], f"highest {name}: {f.stats.column(name)[index[k]]:.3f}<br>{_e(k)}") for k in ends["highest"]
        ]
        parts.append(f"<h4>{name}</h4>" + thumbs.grid(entries))
    return _section("images", "".join(parts))


def _label_problems(f: Findings, thumbs: _Thumbnails) -> str:
    issues = f.data.label_issues
    parts = [
        f"<h3>Unusable labels ({len(issues)})</h3>",
        _table(["image", "head", "problem", "value"], [(x.key, x.head, x.kind, x.value) for x in issues[:500]])
        if issues
        else "<p>none</p>",
        f"<h3>Annotators disagreeing ({len(f.disagreements)})</h3>",
    ]
    parts.append(
        _table(
            ["task", "head", "values", "annotators"],
            [(d["key"], d["head"], ", ".join(d["values"]), ", ".join(d["annotators"])) for d in f.disagreements[:500]],
        )
        if f.disagreements
        else "<p>none</p>"
    )
    acc = ", ".join(f"{h} {a:.1%}" for h, a in f.suspects.probe_accuracy.items())
    parts.append(
        "<h3>Suspected wrong labels</h3>"
        f"<p>A logistic regression on ImageNet embeddings, 5-fold cross-validated (accuracy: {_e(acc) or 'n/a'}), "
        "predicts each label without seeing it; the labels it finds least likely come first "
        "(cleanlab's self-confidence). "
        f"Confident learning flags {int(f.suspects.flagged.sum())} image(s).</p>"
    )
    rows = f.suspect_rows(GRID_LIMIT)
    index = {k: i for i, k in enumerate(f.keys)}
    parts.append(
        thumbs.grid(
            (
                index[r["key"]],
                f"{_e(r['head'])}: <b>{_e(r['given'])}</b> &rarr; {_e(r['suggested'])} "
                f"(p={r['quality']:.3g}){' <span class=warn>flagged</span>' if r['flagged'] else ''}<br>{_e(r['key'])}",
            )
            for r in rows
        )
    )
    return _section("label-problems", "".join(parts))


def _duplicates(f: Findings, thumbs: _Thumbnails) -> str:
    labeled = f.labeled
    parts = [
        f"<p>{len(f.exact)} group(s) of identical files, {len(f.near)} group(s) of near duplicates "
        "(perceptual hash within 10 bits or embedding cosine at least 0.95, confirmed by 16x16 thumbnails "
        "correlating at 0.95 or more and an embedding cosine of at least 0.8). A group that spans the labeled and "
        "unlabeled parts wastes a label; one with different labels holds a label error.</p>"
    ]
    for title, groups in (("Exact duplicates", f.exact), ("Near duplicates", f.near)):
        parts.append(f"<h3>{title} ({len(groups)})</h3>")
        for g in groups[:GROUP_LIMIT]:
            cards = "".join(
                thumbs.card(
                    i, f"{_e(f.keys[i])}<br>{'labeled: ' + _e(_label_text(f, i)) if labeled[i] else 'unlabeled'}"
                )
                for i in g.members[:8]
            )
            parts.append(f'<div class="group">{cards}</div>')
        if len(groups) > GROUP_LIMIT:
            parts.append(f"<p class='muted'>... and {len(groups) - GROUP_LIMIT} more in summary.json</p>")
    return _section("duplicates", "".join(parts))


def _label_text(f: Findings, i: int) -> str:
    return ", ".join(f.class_name(j, int(v)) or "?" for j, v in enumerate(f.labels[i]))


def _outliers(f: Findings, thumbs: _Thumbnails) -> str:
    plt = _plt()
    o = f.outliers
    ranking = o.ranking()
    parts = [
        "<p>Score: the larger of the distance to the nearest class centroid in embedding space and the most extreme "
        "appearance statistic, both as robust z-scores (median and MAD).</p>"
    ]
    parts.append(
        thumbs.grid(
            (
                i,
                f"score {o.score[i]:.1f} (embedding {o.embedding[i]:.1f}, {_e(o.statistic[i])} {o.statistics[i]:.1f})"
                f"<br>{_e(f.keys[i])}",
            )
            for i in ranking[:GRID_LIMIT]
        )
    )
    usable = np.flatnonzero(f.usable & ~np.isnan(f.projection).any(axis=1))
    if len(usable):
        emb = f.projection[usable]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        first = f.labels[usable, 0]
        for c, name in enumerate(f.data.schema.heads[0].classes):
            m = first == c
            ax.scatter(emb[m, 0], emb[m, 1], s=6, label=name)
        ax.scatter(emb[first < 0, 0], emb[first < 0, 1], s=6, c="#bbb", label="unlabeled")
        top = np.isin(usable, ranking[:30])
        ax.scatter(emb[top, 0], emb[top, 1], s=40, facecolors="none", edgecolors="red", label="top 30 outliers")
        ax.legend(fontsize=7)
        ax.set_title(f"embeddings, PCA (colour: {f.data.schema.heads[0].name})")
        parts.append(_figure(fig, "ImageNet embeddings projected to two dimensions; red rings: the top 30 outliers"))
    return _section("outliers", "".join(parts))


def _baseline(f: Findings) -> str:
    rows = []
    for head in f.data.schema.head_names:
        h = f.human[head]
        m = (f.model or {}).get("heads", {}).get(head, {})
        rows.append(
            (
                head,
                h["n_tasks"],
                h["raw_agreement"],
                h["kappa"],
                h["pairwise_agreement"],
                m.get("accuracy"),
                m.get("kappa"),
                f.suspects.probe_accuracy.get(head),
            )
        )
    note = (
        "<p>Humans: first vs second annotation of each task labeled more than once. "
        "Model: its predictions against the labels"
        + (f" (version {_e(f.model['version'])}; {_e(f.model['note'])})" if f.model else ", not given (pass --model)")
        + ". Linear probe: cross-validated logistic regression on ImageNet embeddings, a floor for a trained model.</p>"
    )
    table = _table(
        [
            "head",
            "tasks labeled twice+",
            "human raw agreement",
            "human Cohen's kappa",
            "all-pairs agreement",
            "model accuracy",
            "model kappa",
            "linear probe accuracy",
        ],
        rows,
    )
    return _section("human-baseline", note + table)


def _classes(f: Findings, thumbs: _Thumbnails) -> str:
    rng = np.random.default_rng(0)
    parts = []
    for j, head in enumerate(f.data.schema.heads):
        for c, name in enumerate(head.classes):
            members = np.flatnonzero(f.usable & (f.labels[:, j] == c))
            pick: np.ndarray | list[int] = (
                rng.choice(members, size=min(PER_CLASS, len(members)), replace=False) if len(members) else []
            )
            parts.append(
                f"<h3>{_e(head.name)} = {_e(name)} ({len(members)})</h3>"
                + thumbs.grid((int(i), _e(f.keys[i])) for i in pick)
            )
    return _section("classes", "".join(parts))
