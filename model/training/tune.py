"""Hyperparameter search on the validation split, starting from the fixed baseline configuration.

The recipe the seed links (Karpathy, "A Recipe for Training Neural Networks", 2019) tunes last: after
a baseline with fixed parameters and an overfit check. Random search (Bergstra & Bengio, "Random
Search for Hyper-Parameter Optimization", JMLR 2012), because with few trials it covers the one or
two settings that matter better than a grid. Trial 0 is the baseline itself, so the best configuration
is never worse than the baseline on the validation split. Every trial trains with the same seed and
therefore the same train/validation split; the score is the validation mean macro-F1 over heads.

Searched: learning rate, epochs, image size, the loss module's weight lambda and margin (Yoo & Kweon,
CVPR 2019, use 1 and 1), and the undersampling ``max_ratio``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from model.data.examples import ExampleSet
from model.training.evaluation import mean_macro_f1
from model.training.trainer import TrainConfig, train

logger = logging.getLogger(__name__)

SEARCHED = ("lr", "epochs", "image_size", "loss_weight", "margin", "max_ratio")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges (low, high) are sampled log-uniformly for ``lr`` and ``loss_weight``, uniformly for ``margin``;
    tuples of more than two values, and ``epochs``, ``image_size`` and ``max_ratio``, are choices."""

    lr: tuple[float, float] = (3e-4, 1e-2)
    epochs: tuple[int, ...] = (8, 15, 25)
    image_size: tuple[int, ...] = (128, 160, 192)
    loss_weight: tuple[float, float] = (0.1, 3.0)
    margin: tuple[float, float] = (0.1, 2.0)
    max_ratio: tuple[float, ...] = (3.0, 5.0, 10.0, 20.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        unknown = sorted(set(d) - set(SEARCHED))
        if unknown:
            raise ValueError(f"unknown search setting(s) {unknown}; searchable: {list(SEARCHED)}")
        for name in ("lr", "loss_weight", "margin"):
            if name in d and (len(d[name]) != 2 or not 0 < d[name][0] <= d[name][1]):
                raise ValueError(f"{name} takes a range [low, high] with 0 < low <= high, got {d[name]}")
        for name in ("epochs", "image_size", "max_ratio"):
            if name in d and not d[name]:
                raise ValueError(f"{name} takes a non-empty list of choices")
        return cls(**{k: tuple(v) for k, v in d.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    def sample(self, rng: np.random.Generator, base: TrainConfig) -> TrainConfig:
        """``base`` with the searched settings drawn from this space."""
        return dataclasses.replace(
            base,
            lr=float(math.exp(rng.uniform(math.log(self.lr[0]), math.log(self.lr[1])))),
            epochs=int(rng.choice(self.epochs)),
            image_size=int(rng.choice(self.image_size)),
            loss_weight=float(math.exp(rng.uniform(math.log(self.loss_weight[0]), math.log(self.loss_weight[1])))),
            margin=float(rng.uniform(*self.margin)),
            max_ratio=float(rng.choice(self.max_ratio)),
        )


@dataclass
class Trial:
    number: int
    config: TrainConfig
    score: float | None = None  # validation mean macro-F1; None when the trial failed
    heads: dict[str, float] = field(default_factory=dict)  # macro-F1 per head
    loss_spearman: float | None = None
    best_epoch: int | None = None
    seconds: float = 0.0
    error: str | None = None

    def row(self) -> dict[str, Any]:
        c = self.config
        return {
            "trial": self.number,
            **{k: getattr(c, k) for k in SEARCHED},
            "val_macro_f1": self.score,
            **{f"f1_{h}": v for h, v in self.heads.items()},
            "loss_spearman": self.loss_spearman,
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 1),
            "error": self.error,
        }


@dataclass
class TuneResult:
    trials: list[Trial]

    @property
    def best(self) -> Trial:
        """The highest validation score; ties go to the earlier trial (the baseline first)."""
        done = [t for t in self.trials if t.score is not None]
        if not done:
            raise RuntimeError("every trial failed: " + "; ".join(f"trial {t.number}: {t.error}" for t in self.trials))
        return max(done, key=lambda t: (t.score, -t.number))


def tune(
    data: ExampleSet,
    trials: int,
    base: TrainConfig | None = None,
    space: SearchSpace | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Train ``trials`` configurations (trial 0: ``base``) on ``data`` and score each on the validation split."""
    if trials < 1:
        raise ValueError(f"need at least 1 trial, got {trials}")
    base = base or TrainConfig()
    if base.val_fraction <= 0:
        raise ValueError("tuning needs a validation split: val_fraction must be above 0")
    space = space or SearchSpace()
    rng = np.random.default_rng(seed)
    configs = [base] + [space.sample(rng, base) for _ in range(trials - 1)]
    result = TuneResult([])
    bar = tqdm(configs, desc="tuning", unit="trial", disable=not progress)
    for number, config in enumerate(bar):
        trial = Trial(number, config)
        start = time.perf_counter()
        try:
            metrics = train(data, config, progress=False, version=f"tune-{number}").model.metrics
        except (ValueError, RuntimeError) as exc:  # e.g. a split too small for a setting; the search goes on
            trial.error = str(exc)
            logger.warning("trial %d failed: %s", number, exc)
        else:
            if metrics.get("heads"):
                trial.score = mean_macro_f1(metrics)
                trial.heads = {h: m["macro_f1"] for h, m in metrics["heads"].items()}
                trial.loss_spearman = metrics["loss_module"]["spearman"]
            trial.best_epoch = metrics.get("best_epoch")
        trial.seconds = time.perf_counter() - start
        result.trials.append(trial)
        done = [t.score for t in result.trials if t.score is not None]
        bar.set_postfix(best=f"{max(done):.3f}" if done else "n/a")
    return result


def format_table(result: TuneResult) -> str:
    """One line per trial, the best marked with '*'."""
    best = result.best.number if any(t.score is not None for t in result.trials) else -1
    header = (
        f"{'':1}{'trial':>5} {'lr':>9} {'epochs':>6} {'size':>5} {'lambda':>7} {'margin':>7} {'max_ratio':>9} "
        f"{'val F1':>7} {'rank rho':>8} {'s':>6}"
    )
    lines = [header, "-" * len(header)]
    for t in result.trials:
        c = t.config
        score = f"{t.score:.3f}" if t.score is not None else "failed"
        rho = f"{t.loss_spearman:.3f}" if t.loss_spearman is not None and not math.isnan(t.loss_spearman) else "n/a"
        lines.append(
            f"{'*' if t.number == best else ' '}{t.number:>5} {c.lr:>9.2e} {c.epochs:>6} {c.image_size:>5} "
            f"{c.loss_weight:>7.3f} {c.margin:>7.3f} {c.max_ratio:>9g} {score:>7} {rho:>8} {t.seconds:>6.0f}"
        )
    return "\n".join(lines)


def write_outputs(result: TuneResult, out_dir: str | Path, space: SearchSpace) -> dict[str, Path]:
    """``best_config.json`` (read by ``weather-al train --config`` and the backend's TRAIN_CONFIG), trials as
    CSV and JSON, and ``trials.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best, baseline = result.best, result.trials[0]
    paths = {
        "best_config": out_dir / "best_config.json",
        "trials_csv": out_dir / "trials.csv",
        "trials_json": out_dir / "trials.json",
        "plot": out_dir / "trials.png",
    }
    paths["best_config"].write_text(
        json.dumps(
            {
                "config": best.config.to_dict(),
                "trial": best.number,
                "val_macro_f1": best.score,
                "baseline_val_macro_f1": baseline.score,
                "metric": "validation mean macro-F1 over heads",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    rows = [t.row() for t in result.trials]
    with paths["trials_csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    paths["trials_json"].write_text(
        json.dumps(
            {"space": space.to_dict(), "trials": [{**t.row(), "config": t.config.to_dict()} for t in result.trials]},
            indent=2,
        ),
        encoding="utf-8",
    )
    plot_trials(result, paths["plot"])
    return paths


def plot_trials(result: TuneResult, path: Path) -> Path:
    """Validation score per trial, and against each searched setting; the baseline in black, the best in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in result.trials if t.score is not None]
    best = result.best.number
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    panels = [("trial", None), *[(name, name) for name in SEARCHED]]
    for ax, (label, attr) in zip(axes.ravel(), panels):
        x = [t.number if attr is None else getattr(t.config, attr) for t in done]
        y = [t.score for t in done]
        colours = ["red" if t.number == best else "black" if t.number == 0 else "#4a7" for t in done]
        ax.scatter(x, y, c=colours, s=30)
        if attr in ("lr", "loss_weight"):
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation mean macro-F1")
    axes.ravel()[-1].axis("off")
    fig.suptitle("Hyperparameter search: black = baseline (trial 0), red = best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
