"""The HTML report of a simulation: one self-contained file, figures embedded as base64 PNGs.

Figures: test accuracy and macro-F1 against labels per strategy (mean over seeds, band = min..max);
auto-labeled share and measured precision per cycle; the loss module's AUROC for finding wrong
predictions beside max-softmax's; predicted against true loss on the test set for the last model.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model.sim.results import RunTrace, SimulationResult


def curves(
    rows: list[dict[str, Any]], x: str, y: str
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per strategy: x (mean over seeds), and the mean, min and max of y over seeds, per cycle.

    Missing values (None/NaN) are left out of the statistics of their cycle.
    """
    by: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["strategy"]][r["cycle"]].append((_num(r.get(x)), _num(r.get(y))))
    out = {}
    for strategy, cycles in by.items():
        xs, mean, lo, hi = [], [], [], []
        for c in sorted(cycles):
            pts = np.array(cycles[c], dtype=float)
            ys = pts[:, 1][np.isfinite(pts[:, 1])]
            xs.append(np.nanmean(pts[:, 0]))
            mean.append(ys.mean() if ys.size else np.nan)
            lo.append(ys.min() if ys.size else np.nan)
            hi.append(ys.max() if ys.size else np.nan)
        out[strategy] = (np.array(xs), np.array(mean), np.array(lo), np.array(hi))
    return out


def _num(value: Any) -> float:
    return float("nan") if value is None or value == "" else float(value)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _band_plot(ax, rows, x: str, y: str, ylabel: str, xlabel: str, hline: float | None = None) -> None:
    for strategy, (xs, mean, lo, hi) in curves(rows, x, y).items():
        (line,) = ax.plot(xs, mean, marker="o", ms=3, label=strategy)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=f"target {hline:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def figures(result: SimulationResult) -> list[tuple[str, str]]:
    """(caption, base64 PNG) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, target = result.rows, result.settings["target"]
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    people = "labels by people (seed set, manual picks, audits, probes)"
    _band_plot(axes[0], rows, "labels_by_people", "accuracy", "test accuracy (mean over heads)", people)
    _band_plot(axes[1], rows, "labels_by_people", "macro_f1", "test macro-F1 (mean over heads)", people)
    out.append(
        ("Accuracy and macro-F1 on the test set against labels; line = mean over seeds, band = min..max.", _png(fig))
    )
    plt.close(fig)

    precision = "precision_truth" if result.settings["has_truth"] else "precision_labels"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _band_plot(axes[0], rows, "cycle", "auto_share", "auto-labeled share of the remaining pool", "cycle")
    _band_plot(
        axes[1],
        rows,
        "cycle",
        precision,
        f"measured precision ({precision.split('_')[1]}), all heads",
        "cycle",
        hline=target,
    )
    out.append(
        (
            "Automatic annotation per cycle: the certified band (minus what people label) as a share of the "
            "unlabeled pool, "
            "and its measured precision (no point = nothing certified).",
            _png(fig),
        )
    )
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, (column, title) in zip(
        axes,
        (
            ("auroc_score", "the risk score in use"),
            ("auroc_loss", "loss module alone"),
            ("auroc_msp", "max-softmax (baseline)"),
        ),
    ):
        _band_plot(ax, rows, "cycle", column, "AUROC for wrong predictions", "cycle")
        ax.set_title(title)
    out.append(("How well each score finds the test images where some head is wrong.", _png(fig)))
    plt.close(fig)

    first: dict[str, RunTrace] = {}
    for t in result.traces:
        first.setdefault(t.strategy, t)
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 3.6), squeeze=False)
    for ax, (strategy, t) in zip(axes[0], first.items()):
        ax.scatter(t.test_true_loss, t.test_predicted_loss, s=4, alpha=0.4)
        ax.set_xlabel("true loss (sum over heads)")
        ax.set_ylabel("predicted loss")
        ax.set_title(f"{strategy}, seed {t.seed}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.append(("Predicted against true loss on the test set, last model of each strategy (first seed).", _png(fig)))
    plt.close(fig)
    return out


TABLE_COLUMNS = (
    "labels",
    "labels_by_people",
    "probe_labels",
    "macro_f1",
    "accuracy",
    "auto_share",
    "precision_labels",
    "precision_truth",
    "threshold",
    "lower_bound",
    "auroc_score",
    "auroc_loss",
    "auroc_msp",
    "time_train",
    "time_score",
)


def final_table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per strategy, the last cycle's figures as 'mean ± std' over seeds."""
    last = max(r["cycle"] for r in rows)
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        sel = [r for r in rows if r["strategy"] == strategy and r["cycle"] == last]
        line = {"strategy": strategy, "seeds": str(len(sel))}
        for c in TABLE_COLUMNS:
            values = np.array([_num(r.get(c)) for r in sel], dtype=float)
            values = values[np.isfinite(values)]
            line[c] = (
                "–"
                if not values.size
                else f"{values.mean():.3f} ± {values.std():.3f}"
                if values.size > 1
                else f"{values[0]:.3f}"
            )
        out.append(line)
    return out


def _html_table(lines: list[dict[str, str]]) -> str:
    if not lines:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in lines[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in line.values()) + "</tr>" for line in lines
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(result: SimulationResult, path: Path) -> Path:
    """Write the self-contained report to ``path``."""
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{b64}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for cap, b64 in figures(result)
    )
    per_cycle = [
        {
            c: ("" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r[c]))
            for c in ("strategy", "seed", "cycle", *TABLE_COLUMNS, "more_labels_needed")
        }
        for r in result.rows
    ]
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>weather-al simulation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} img{{max-width:100%}} \
figcaption{{color:#555;font-size:13px}}</style>
</head><body>
<h1>Active-learning simulation</h1>
<p>Settings: <code>\
{html.escape(json.dumps({k: v for k, v in result.settings.items() if k != "train_config"}))}</code></p>
<p>Training: <code>{html.escape(json.dumps(result.settings["train_config"]))}</code></p>
<h2>After the last cycle (mean ± std over seeds)</h2>
{_html_table(final_table(result.rows))}
<h2>Figures</h2>
{figs}
<h2>Every cycle</h2>
<details><summary>{len(per_cycle)} rows (also in {html.escape(result.results_path.name)})</summary>\
{_html_table(per_cycle)}</details>
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path
