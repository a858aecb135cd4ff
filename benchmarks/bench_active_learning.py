"""Issue 4's and issue 14's benchmark: selection strategies side by side, automatic annotation and its certificate.

Synthetic scenes (default imbalance, 2% label noise), a pool of 10,000, a seed set of 200, K = 100,
50 audits and 50 random probes per cycle, 10 cycles, 3 seeds, 160 px, the default backbone; strategies
loss, random, entropy, margin, loss+diversity and confidence; the risk score that ranks the queue and
bands the pool is ``--score`` (default the learned confidence, model/al/confidence.py). Prints, and
writes to OUT/benchmark.md:

- label efficiency: labels by people (seed set, manual picks, audits and probes: every label counts) each
  strategy needs to reach random's final mean macro-F1, as % of random's, and its worst per-cycle gap to
  random; random's largest drop from one cycle to the next;
- automatic annotation after the last cycle, per seed: share of the remaining pool and measured
  precision (target: >= 60% at >= 0.95 in every seed);
- the certificate's miss rate: at each run's last model, the probes are redrawn ``--draws`` times
  uniformly from what the run left unlabeled (probes included), the threshold certified on them, and the
  band's measured precision compared with the target; reported over all draws (the bound promises at
  most delta) and among the draws that certified;
- AUROC for wrong predictions per cycle: the risk score in use, the loss module alone, max-softmax, and
  the learned confidence without the loss module (what the module contributes);
- time per cycle per phase.

Resumable: each (strategy, seed) run is kept when it finishes, under ``--cache-dir`` (default
``~/.cache/weather-al/bench-active-learning``) in a folder named by a hash of every setting that changes
the results, so running the same command again, in this session or a later one, runs only what is
missing and then prints the tables of all. The code's commit is not part of that hash (work on the code
would otherwise throw finished runs away); each run records its commit and the report lists them.
``--fresh`` runs everything again. One line per finished cycle says how long the benchmark has left.
Run it from a checkout nobody edits meanwhile (``git worktree add``, then PYTHONPATH=that checkout):
its job processes import the code when they start, which may be an hour after the command did.
The runs behind the README's tables are kept in the repository, ``--cache-dir benchmarks/results/active-learning``
(finished runs only, about 100 kB each): the full benchmark takes longer than a working session on 2 cores,
and a new machine starts with an empty ``~/.cache``, so a later session on any machine carries on from
them, and the same command reprints the tables without running anything once all are there.

Small version on CPU: ``python benchmarks/bench_active_learning.py --pool 300 --seed-size 100 --k 50
--audit 20 --probes 20 --cycles 2 --seeds 0 --image-size 96 --epochs 3 --out runs/bench-smoke``. Full
version on a GPU host (16 cores): ``python benchmarks/bench_active_learning.py --device cuda --workers 0
--jobs 18``. Scenes come from the folder the other benchmarks share (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from common import SCENES, machine, synthetic_set

from model.al.bands import draw_audit_sample
from model.al.certify import certify_threshold
from model.al.confidence import RISK_SCORES
from model.al.strategies import STRATEGY_NAMES
from model.atomic import write_json_atomic
from model.cli import add_cache_args, feature_cache
from model.schema import LabelSchema
from model.sim.report import curves, write_report
from model.sim.results import FinishedRun, RunStore, RunTrace, SimulationResult
from model.sim.simulate import (
    REPORT_FILE,
    RESULTS_FILE,
    SimulationData,
    _csv_value,
    default_test_size,
    result_columns,
    simulate,
)
from model.training.trainer import TrainConfig

logger = logging.getLogger("bench_active_learning")
#: Where finished runs are kept, one folder per settings key, so that a later session carries on.
CACHE = Path.home() / ".cache" / "weather-al" / "bench-active-learning"
REPO = Path(__file__).resolve().parents[1]
Run = tuple[str, int]  # (strategy, seed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-active-learning"))
    p.add_argument(
        "--data", type=Path, default=SCENES, help=f"folder of synthetic scenes, extended when short (default {SCENES})"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="JSON training configuration (e.g. from `weather-al tune`)"
    )
    p.add_argument("--pool", type=int, default=10_000)
    p.add_argument("--test", type=int, default=None, help="test images (default: a quarter of the pool, at most 2,000)")
    p.add_argument("--seed-size", type=int, default=200)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--audit", type=int, default=50, help="audit sample per cycle")
    p.add_argument("--probes", type=int, default=50, help="random probes drawn per cycle (they certify)")
    p.add_argument("--score", choices=RISK_SCORES, default="confidence", help="what ranks the queue and bands")
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    p.add_argument(
        "--calibration-labels",
        choices=("annotator", "truth"),
        default="truth",
        help=(
            "labels the holdout, audits and probes reveal (default truth: a careful reviewer; see the note at the end)"
        ),
    )
    p.add_argument("--draws", type=int, default=1000, help="probe redraws behind the miss-rate estimate (0: skip)")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--backbone", default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers per run (default: up to 2; 0 with --jobs on a big host)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs side by side in their own processes (GPU host: one per run)"
    )
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument(
        "--cache-dir", type=Path, default=CACHE, help=f"where finished runs are kept, per settings (default {CACHE})"
    )
    p.add_argument("--fresh", action="store_true", help="run every run again, ignoring finished ones")
    add_cache_args(p)  # one feature cache for every run and session
    return p.parse_args(argv)


def settings_key(args: argparse.Namespace, config: TrainConfig, test: int) -> tuple[str, dict[str, Any]]:
    """A short hash of every setting that changes a run's results, and those settings.

    Device, DataLoader workers and where the feature cache lives change only the speed; whether there
    is one changes the training (fixed augmented views). The code's commit is left out on purpose:
    finished runs survive work on the code, and each records the commit it ran at instead.
    """
    inputs = {
        "data": str(args.data.resolve()),
        "pool": args.pool,
        "test": test,
        "seed_size": args.seed_size,
        "k": args.k,
        "audit": args.audit,
        "probes": args.probes,
        "score": args.score,
        "cycles": args.cycles,
        "calibration_labels": args.calibration_labels,
        "target": args.target,
        "delta": args.delta,
        "train_config": {k: v for k, v in config.to_dict().items() if k not in ("device", "workers")},
        "feature_cache": not args.no_feature_cache,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12], inputs


def batches(todo: list[Run]) -> list[tuple[list[str], list[int]]]:
    """The simulate() calls that run ``todo``: each a product strategies x seeds, as few as can be.

    Consecutive seeds with the same strategies left share a call, so that the call's ``jobs`` processes
    always have a run to take (a fresh benchmark is one call); simulate() hands each run back as it ends.
    """
    calls: list[tuple[list[str], list[int]]] = []
    for seed in dict.fromkeys(seed for _, seed in todo):
        strategies = [s for s, d in todo if d == seed]
        if calls and calls[-1][0] == strategies:
            calls[-1][1].append(seed)
        else:
            calls.append((strategies, [seed]))
    return calls


def cycle_seconds(row: dict[str, Any]) -> float:
    return float(sum(row[p] for p in PHASES))


class Progress:
    """One line per finished cycle: its run, its index, its time, and how long the benchmark has left.

    A cycle's time depends on its index (training grows with the labels) far more than on the strategy,
    so what is left is the sum, over the cycles still to run, of the mean time recorded at that index
    (by this session and by earlier ones, finished runs or not), spread over the runs side by side.
    """

    def __init__(self, recorded: list[dict[str, Any]], todo: list[Run], cycles: int, jobs: int) -> None:
        self.times: dict[int, list[float]] = defaultdict(list)
        for row in recorded:
            self.times[row["cycle"]].append(cycle_seconds(row))
        self.cycles, self.jobs = cycles, jobs
        self.left = {run: cycles + 1 for run in todo}

    def cycle_done(self, row: dict[str, Any]) -> str:
        seconds = cycle_seconds(row)
        self.times[row["cycle"]].append(seconds)
        self.left[(row["strategy"], row["seed"])] -= 1
        cycles_left = sum(self.left.values())
        eta = self.seconds_left()
        return (
            f"{row['strategy']} seed {row['seed']}: cycle {row['cycle']}/{self.cycles} in {duration(seconds)}; "
            f"{cycles_left} cycle(s) to go, " + ("unknown time" if eta is None else f"about {duration(eta)}") + " left"
        )

    def seconds_left(self) -> float | None:
        """None while no cycle index has a time yet, else the estimate described in the class docstring."""
        means = {c: float(np.mean(t)) for c, t in self.times.items()}
        if not means:
            return None

        def mean_at(cycle: int) -> float:  # an index not timed yet: the nearest timed one below, else above
            below = [c for c in means if c <= cycle]
            return means[max(below)] if below else means[min(means)]

        total = sum(mean_at(c) for left in self.left.values() for c in range(self.cycles + 1 - left, self.cycles + 1))
        side_by_side = min(self.jobs, sum(left > 0 for left in self.left.values())) or 1
        return total / side_by_side


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s" if m else f"{s} s"


def git_commit() -> str:
    """The checkout's commit, with -dirty when files differ from it; 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While running, `kill` (SIGTERM) unwinds like Ctrl-C: simulate() then terminates its job processes, which
    SIGTERM's default action would leave running, orphaned, for as long as their runs take."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process alone: two benchmarks in one folder would restart each other's runs."""
    with (folder / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"another benchmark is running with these settings in {folder}; wait for it or use --cache-dir")
        yield


def run_missing(
    data: SimulationData, todo: list[Run], store: RunStore, args: argparse.Namespace, config: TrainConfig
) -> None:
    """Run ``todo`` with simulate(), keeping each run's rows as they come and the run when it finishes."""
    progress = Progress(store.recorded_rows(), todo, args.cycles, args.jobs)  # before start() clears cut-short runs
    commit = git_commit()
    cache = feature_cache(args)  # one for all calls: simulate()'s own would be computed again for every run

    def on_row(row: dict[str, Any]) -> None:
        store.save_row(row)
        logger.info(progress.cycle_done(row))

    for stale in store.root.glob(".work-*"):  # the scratch folder of a session that was killed
        shutil.rmtree(stale, ignore_errors=True)

    def on_run(trace: RunTrace, settings: dict[str, Any]) -> None:
        meta = {"commit": commit, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
        store.finish(trace, meta | {"settings": settings})

    for strategies, seeds in batches(todo):
        for seed in seeds:
            for strategy in strategies:
                store.start(strategy, seed)
        with tempfile.TemporaryDirectory(dir=store.root, prefix=".work-") as work:
            simulate(
                data,
                strategies,
                seeds,
                work,
                seed_size=args.seed_size,
                k=args.k,
                cycles=args.cycles,
                audit_size=args.audit,
                probe_size=args.probes,
                score=args.score,
                train_config=config,
                target=args.target,
                delta=args.delta,
                calibration_labels=args.calibration_labels,
                progress=False,  # the lines of Progress instead
                report=False,
                jobs=min(args.jobs, len(strategies) * len(seeds)),
                on_row=on_row,
                on_run=on_run,
                cache_features=cache is not None,
                feature_cache=cache,
            )


def labels_to_reach(labels: np.ndarray, f1: np.ndarray, goal: float) -> float | None:
    """Labels at which a mean curve first reaches ``goal``, interpolated linearly between cycles."""
    above = np.flatnonzero(f1 >= goal)
    if not above.size:
        return None
    i = int(above[0])
    if i == 0:
        return float(labels[0])
    x0, x1, y0, y1 = labels[i - 1], labels[i], f1[i - 1], f1[i]
    return float(x0 + (goal - y0) / (y1 - y0) * (x1 - x0))


def label_efficiency(rows: list[dict]) -> list[dict]:
    """Per strategy: labels by people to reach random's final macro-F1, worst gap to random, largest drop."""
    curve = curves(rows, "labels_by_people", "macro_f1")
    if "random" not in curve:
        return []
    r_labels, r_f1 = curve["random"][0], curve["random"][1]
    goal, budget = r_f1[-1], r_labels[-1]
    out = []
    for strategy, (labels, f1, _, _) in curve.items():
        needed = labels_to_reach(labels, f1, goal)
        n = min(len(f1), len(r_f1))
        gap = (f1[:n] - r_f1[:n]) * 100
        out.append(
            {
                "strategy": strategy,
                "final_macro_f1": float(f1[-1]),
                "random_final": float(goal),
                "labels_needed": needed,
                "pct_of_random": None if needed is None else 100 * needed / budget,
                "worst_gap_points": float(gap.min()),
                "worst_gap_cycle": int(gap.argmin()),
                "largest_drop_points": float(min(0.0, np.diff(f1).min() * 100)) if len(f1) > 1 else 0.0,
            }
        )
    return out


def final_per_seed(rows: list[dict]) -> list[dict]:
    last = max(r["cycle"] for r in rows)
    return [
        {
            k: r.get(k)
            for k in (
                "strategy",
                "seed",
                "score",
                "labels_by_people",
                "probe_labels",
                "pool_remaining",
                "automatic",
                "auto_share",
                "precision_labels",
                "precision_truth",
                "threshold",
                "lower_bound",
                "calibration_labels",
            )
        }
        for r in rows
        if r["cycle"] == last
    ]


def probe_redraw_check(trace: RunTrace, draws: int, target: float, delta: float, seed: int = 0) -> dict:
    """Redraw a run's probes ``draws`` times at its last model; how often does the certified band miss?

    The run's last model saw ``len(trace.probe_ids)`` standing probes, a uniform sample of what it left
    unlabeled (model/al/cycle.py says why). Each redraw takes as many uniformly from that set (unlabeled
    pool plus probes), certifies on them with the run's risk scores, and measures the band's precision
    over the rest of the set against the labels the certificate is about (and against the truth).
    ``own_*``: the run's own standing probes certified by this checkout's model/al/certify.py, the band over
    the rest: what the run's last cycle certified, unless the certificate changed after the run was made.
    """
    rng = np.random.default_rng(seed)
    risk = trace.pool_risk
    taken = np.concatenate([trace.train_ids, trace.holdout_ids, trace.audit_ids])
    population = np.setdiff1d(np.flatnonzero(np.isfinite(risk)), taken)
    n = len(trace.probe_ids)
    own = certify_threshold(risk[trace.probe_ids], trace.correct_calibration[trace.probe_ids], target, delta)
    rest = np.setdiff1d(population, trace.probe_ids)
    own_band = rest[risk[rest] <= own.threshold] if own.threshold is not None else rest[:0]
    precisions, precisions_truth, shares, misses, empty = [], [], [], 0, 0
    for _ in range(draws):
        probes = draw_audit_sample(population, n, rng)
        cert = certify_threshold(risk[probes], trace.correct_calibration[probes], target=target, delta=delta)
        if cert.threshold is None:
            empty += 1
            continue
        rest = np.setdiff1d(population, probes)
        band = rest[risk[rest] <= cert.threshold]
        shares.append(len(band) / max(len(rest), 1))
        if len(band):
            p = float(trace.correct_calibration[band].mean())
            precisions.append(p)
            precisions_truth.append(float(trace.correct_truth[band].mean()))
            misses += p < target
    return {
        "strategy": trace.strategy,
        "seed": trace.seed,
        "probes": n,
        "draws": draws,
        "misses": misses,
        "nothing_certified": empty,
        "miss_rate": misses / draws if draws else None,
        "miss_rate_certified": misses / (draws - empty) if draws > empty else None,
        "min_precision": min(precisions, default=None),
        "mean_precision": float(np.mean(precisions)) if precisions else None,
        "min_precision_truth": min(precisions_truth, default=None),
        "mean_share": float(np.mean(shares)) if shares else None,
        "own_share": len(own_band) / max(len(rest), 1),
        "own_precision_truth": float(trace.correct_truth[own_band].mean()) if len(own_band) else None,
    }


AUROC_COLUMNS = ("auroc_score", "auroc_loss", "auroc_msp", "auroc_confidence_no_loss")


def auroc_table(rows: list[dict]) -> dict[str, dict[int, tuple[float, ...]]]:
    """Per strategy and cycle, the mean over seeds of each AUROC_COLUMNS score's AUROC for wrong predictions."""
    per = [curves(rows, "cycle", column) for column in AUROC_COLUMNS]
    return {s: {int(c): tuple(float(p[s][1][i]) for p in per) for i, c in enumerate(per[0][s][0])} for s in per[0]}


def score_beats_msp(rows: list[dict]) -> tuple[int, int]:
    """(paired cycles where the risk score's AUROC is at least max-softmax's, paired cycles measured)."""
    pairs = [
        (float(r["auroc_score"]), float(r["auroc_msp"]))
        for r in rows
        if r.get("auroc_score") not in (None, "") and r.get("auroc_msp") not in (None, "")
    ]
    pairs = [(c, m) for c, m in pairs if np.isfinite(c) and np.isfinite(m)]
    return sum(c >= m for c, m in pairs), len(pairs)


PHASES = ("time_train", "time_score", "time_evaluate", "time_select", "time_certify")


def timing_table(rows: list[dict]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for c in sorted({r["cycle"] for r in rows}):
        sel = [r for r in rows if r["cycle"] == c]
        out[c] = {p: float(np.mean([r[p] for r in sel])) for p in PHASES}
    return out


def _f(value, fmt: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, fmt)


def render(
    args,
    settings: dict,
    eff: list[dict],
    finals: list[dict],
    checks: list[dict],
    aurocs: dict,
    beats: tuple[int, int],
    timings: dict,
    commits: dict[str, list[Run]],
) -> str:
    lines = [
        "# Active-learning benchmark",
        "",
        f"pool {settings['pool']}, test {settings['test']}, seed set {settings['seed_size']}, K {settings['k']}, "
        f"audit {settings['audit_size']}/cycle, probes {settings['probe_size']}/cycle, "
        f"{settings['cycles']} cycles, seeds {settings['seeds']}, score {settings['score']}, "
        f"{settings['train_config']['image_size']} px, {settings['train_config']['backbone']}, "
        f"{settings['train_config']['epochs']} epochs, labels of holdout, audits and probes: "
        f"{settings['calibration_labels']}, target {settings['target']} at delta {settings['delta']}",
        "",
        "Code: "
        + "; ".join(
            f"{commit} ({', '.join(f'{strategy} seed {seed}' for strategy, seed in runs)})"
            for commit, runs in commits.items()
        ),
        "",
    ]
    lines += [
        "## Label efficiency (mean macro-F1 over heads and seeds, against labels by people)",
        "",
        "Labels by people: seed set, manual picks, audits and probes.",
        "",
        "| strategy | final macro-F1 | labels to reach random's final | % of random's labels "
        "| worst gap vs random (points, cycle) | largest drop between cycles (points) |",
        "|---|---|---|---|---|---|",
    ]
    for e in eff:
        needed = _f(e["labels_needed"], ".0f") if e["labels_needed"] is not None else "not reached"
        lines.append(
            f"| {e['strategy']} | {e['final_macro_f1']:.3f} | {needed} "
            f"| {_f(e['pct_of_random'], '.0f')}% | {e['worst_gap_points']:+.1f} (cycle {e['worst_gap_cycle']}) "
            f"| {e['largest_drop_points']:+.1f} |"
        )
    lines += [
        "",
        "## Automatic annotation after the last cycle",
        "",
        "| strategy | seed | score | labels by people | probes | remaining pool | auto-labeled | share "
        "| precision (probes' source) | precision vs annotator | precision vs truth | threshold | bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in finals:
        own = r["precision_truth"] if settings["calibration_labels"] == "truth" else r["precision_labels"]
        lines.append(
            f"| {r['strategy']} | {r['seed']} | {r.get('score') or '–'} | {r.get('labels_by_people')} "
            f"| {r.get('probe_labels')} | {r['pool_remaining']} | {r['automatic']} | {_f(r['auto_share'])} "
            f"| {_f(own)} | {_f(r['precision_labels'])} | {_f(r['precision_truth'])} | {_f(r['threshold'], '.4g')} "
            f"| {_f(r['lower_bound'])} |"
        )
    if checks:
        lines += [
            "",
            f"## The certificate's miss rate: {args.draws} probe draws at each run's last model",
            "",
            f"The bound promises a miss rate of at most delta ({settings['delta']}) over all draws. Each draw takes "
            "as many probes as the run had, uniformly from what it left unlabeled, certifies on them, and measures "
            "the band's precision over the rest. Own probes: the run's own standing probes certified by this "
            "checkout's certificate (the table above shows what the run's code certified, if that differs).",
            "",
            "| strategy | seed | probes | miss rate, all draws | miss rate, draws that certified | nothing certified "
            "| min precision | mean precision | mean share | own probes: share (precision vs truth) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c['strategy']} | {c['seed']} | {c['probes']} | {_f(c['miss_rate'])} "
                f"| {_f(c['miss_rate_certified'])} | {c['nothing_certified']}/{c['draws']} | {_f(c['min_precision'])} "
                f"| {_f(c['mean_precision'])} | {_f(c['mean_share'])} "
                f"| {_f(c['own_share'])} ({_f(c['own_precision_truth'])}) |"
            )
    strategies = list(aurocs)
    lines += [
        "",
        "## AUROC for wrong predictions (test set): the risk score in use / loss module alone / max-softmax / "
        "the learned confidence without the loss module",
        "",
        "The risk score (model/al/confidence.py) is fitted each cycle on the seed holdout and the audits (never "
        "trained on, never the probes). It was at least max-softmax's in {} of {} paired cycles.".format(*beats),
        "",
        "| cycle | " + " | ".join(strategies) + " |",
        "|---" * (len(strategies) + 1) + "|",
    ]
    for c in sorted({c for s in aurocs.values() for c in s}):
        lines.append(
            f"| {c} | "
            + " | ".join(" / ".join(_f(v) for v in aurocs[s][c]) if c in aurocs[s] else "–" for s in strategies)
            + " |"
        )
    lines += [
        "",
        f"## Seconds per cycle (mean over runs; device {settings['train_config']['device'] or 'auto'}; {machine()})",
        "",
        "| cycle | " + " | ".join(p.removeprefix("time_") for p in PHASES) + " |",
        "|---" * (len(PHASES) + 1) + "|",
    ]
    for c, t in timings.items():
        lines.append(f"| {c} | " + " | ".join(f"{t[p]:.2f}" for p in PHASES) + " |")
    lines += [
        "",
        "Note: with --calibration-labels annotator the holdout, audits and probes reveal the (noisy) annotator's "
        "labels and the certificate speaks of agreement with them; with 2% noise per head two heads agree with the "
        "truth on about 96% of images, so even a perfect model cannot be certified at 0.95 without about a thousand "
        "probes in its band. 'truth' models a careful reviewer.",
    ]
    return "\n".join(lines) + "\n"


def merged(
    finished: list[FinishedRun], strategies: list[str], seeds: list[int], args: argparse.Namespace
) -> SimulationResult:
    """All runs as one simulation's result, written to OUT as simulate() writes one: results.csv, report.html.

    The settings are the first run's with this benchmark's strategies, seeds and jobs: the rest is the
    same for every run kept under one settings key.
    """
    rows = [row for run in finished for row in run.rows]
    settings = finished[0].meta["settings"] | {"strategies": strategies, "seeds": seeds, "jobs": args.jobs}
    columns = result_columns(LabelSchema.from_file())
    args.out.mkdir(parents=True, exist_ok=True)
    result = SimulationResult(
        rows=rows,
        traces=[run.trace for run in finished],
        settings=settings,
        results_path=args.out / RESULTS_FILE,
        columns=columns,
    )
    with result.results_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: _csv_value(row.get(c)) for c in columns} for row in rows)
    result.report_path = write_report(result, args.out / REPORT_FILE)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(strategies) - set(STRATEGY_NAMES)
    if unknown:
        sys.exit(f"unknown strategies {sorted(unknown)}; choose from {STRATEGY_NAMES}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    test = args.test or default_test_size(args.pool)
    manifest = synthetic_set(args.data, args.pool + test)  # default imbalance, 2% label noise
    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    config.image_size, config.device, config.workers = args.image_size, args.device, args.workers
    for name in ("epochs", "backbone"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    key, key_settings = settings_key(args, config, test)
    store = RunStore(args.cache_dir / key)
    store.root.mkdir(parents=True, exist_ok=True)
    runs = [(strategy, seed) for seed in seeds for strategy in strategies]  # seeds outermost, as simulate() does
    with exclusive(store.root):
        write_json_atomic(store.root / "settings.json", key_settings)
        todo = runs if args.fresh else [run for run in runs if not store.is_finished(*run)]
        logger.info("%d of %d runs kept in %s; running %d", len(runs) - len(todo), len(runs), store.root, len(todo))
        if todo:
            data = SimulationData.from_manifest(manifest, pool_size=args.pool, test_size=test)
            with sigterm_unwinds():
                run_missing(data, todo, store, args, config)
        finished = [store.load(*run) for run in runs]
    result = merged(finished, strategies, seeds, args)
    eff = label_efficiency(result.rows)
    finals = final_per_seed(result.rows)
    checks = [
        probe_redraw_check(t, args.draws, args.target, args.delta, seed=t.seed) for t in result.traces if args.draws
    ]
    commits: dict[str, list[Run]] = defaultdict(list)
    for run in finished:
        commits[run.meta["commit"]].append((run.trace.strategy, run.trace.seed))
    text = render(
        args,
        result.settings,
        eff,
        finals,
        checks,
        auroc_table(result.rows),
        score_beats_msp(result.rows),
        timing_table(result.rows),
        commits,
    )
    (args.out / "benchmark.md").write_text(text, encoding="utf-8")
    (args.out / "benchmark.json").write_text(
        json.dumps(
            {
                "settings": result.settings,
                "commits": commits,
                "label_efficiency": eff,
                "final": finals,
                "miss_rates": checks,
            },
            indent=2,
            default=float,
        ),
        encoding="utf-8",
    )
    print(text)
    print(f"results: {result.results_path}; report: {result.report_path}; runs kept in {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
