"""The whole active-learning loop against a simulated annotator, for several strategies and seeds.

Per (strategy, seed) run, with the same pool, test set and random seed set for every strategy:

1. a random seed set is labeled; :func:`~model.al.cycle.is_calibration_holdout` sends about
   half of it to the fit labels (they fit the risk score, never train);
2. each cycle trains the real model (model.training.train) on the training labels, scores the pool
   and a held-out test set, and plans the cycle (model.al.cycle.plan_cycle);
3. the simulated annotator reveals the manual picks (to training), the audit sample (to the fit
   labels) and the new probes (to the probes, which certify and nothing else); probes the strategy
   picked move to training. The certified band counts as auto-labeled and its precision is measured
   against the labels nobody revealed.

``labels_by_people`` counts every label a person gave: seed set, manual picks, audits and probes.

The annotator reveals the manifest's labels, noise included (manifest.csv of model.sim.scenes is "what an
annotator would say"). Where a truth file exists (model.sim.scenes's truth.csv beside the manifest), the
test set is scored against the truth and the auto-labels are measured against both.
``calibration_labels="truth"`` models audits and probes by a careful reviewer: the fit labels (holdout
and audits) and the probes then come from the truth file too.

Auto-labeled images stay in the pool (they never train the model, as in the Label Studio backend
where machine labels are excluded from training); the automatic band is re-derived every cycle.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing as mp
import os
import queue as queue_module
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model.al.confidence import RISK_SCORES, error_auroc, fit_confidence
from model.al.cycle import Labeled, is_calibration_holdout, plan_cycle
from model.al.strategies import STRATEGY_NAMES, PoolView
from model.data.decoded import DecodedImages
from model.data.examples import Example, ExampleSet, read_manifest
from model.nn.feature_cache import FeatureCache
from model.schema import LabelSchema
from model.sim.results import RunTrace, SimulationResult
from model.training.evaluation import evaluate, mean_macro_f1
from model.training.scoring import ScoreResult, default_workers
from model.training.trainer import TrainConfig, build_network, train

logger = logging.getLogger(__name__)

CALIBRATION_SOURCES = ("annotator", "truth")
RESULTS_FILE = "results.csv"
REPORT_FILE = "report.html"
SPLIT_SEED = 12345  # the pool/test split is the same for every run, so runs differ only in what they choose


def default_test_size(pool_size: int) -> int:
    """Test images beside a pool: a quarter of it, at least 20, at most 2,000."""
    return min(2000, max(20, pool_size // 4))


@dataclass
class SimulationData:
    """A pool and a test set of one schema; labels are row-aligned (N, heads) class-index matrices.

    pool_labels are what the simulated annotator reveals; pool_truth / test labels use the truth
    file when there is one (else they equal the annotator's labels, and has_truth is False).
    """

    schema: LabelSchema
    pool: list[Example]
    pool_labels: np.ndarray
    pool_truth: np.ndarray
    test: list[Example]
    has_truth: bool

    @classmethod
    def from_examples(
        cls,
        data: ExampleSet,
        truth: dict[str, tuple[int | None, ...]] | None,
        pool_size: int | None = None,
        test_size: int | None = None,
    ) -> SimulationData:
        """Split labeled ``data`` at random (fixed seed) into a test set and a pool."""
        examples = [e for e in data.examples if e.is_labeled]
        if truth is not None:
            missing = [e.key for e in examples if e.key not in truth]
            if missing:
                raise ValueError(
                    f"the truth file has no row for {len(missing)} image(s), e.g. {missing[:3]}; "
                    "regenerate it with the manifest"
                )
        n = len(examples)
        if test_size is None:
            test_size = min(default_test_size(pool_size), n - pool_size) if pool_size else min(2000, n // 5)
        pool_size = pool_size or n - test_size
        if test_size < 1 or pool_size < 1 or pool_size + test_size > n:
            raise ValueError(
                f"need a pool of {pool_size} and a test set of {test_size} images but only {n} labeled images "
                f"are usable; generate more (weather-al synth) or lower --pool"
            )
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        test_idx, pool_idx = order[:test_size], order[test_size : test_size + pool_size]
        truth_of = (lambda e: truth[e.key]) if truth is not None else (lambda e: e.labels)
        pool = [examples[i] for i in pool_idx]
        test = [replace(examples[i], labels=tuple(truth_of(examples[i]))) for i in test_idx]
        heads = len(data.schema.heads)
        return cls(
            schema=data.schema,
            pool=pool,
            pool_labels=np.array([e.labels for e in pool], dtype=np.int64).reshape(-1, heads),
            pool_truth=np.array([truth_of(e) for e in pool], dtype=np.int64).reshape(-1, heads),
            test=test,
            has_truth=truth is not None,
        )

    @classmethod
    def from_manifest(
        cls,
        manifest: str | Path,
        schema: LabelSchema | None = None,
        truth_path: str | Path | None = None,
        pool_size: int | None = None,
        test_size: int | None = None,
    ) -> SimulationData:
        """Read ``manifest`` and, by default, ``truth.csv`` beside it when present."""
        manifest = Path(manifest)
        schema = schema or LabelSchema.from_file()
        data = read_manifest(manifest, schema)
        data.report_problems(str(manifest))
        truth_path = Path(truth_path) if truth_path else manifest.parent / "truth.csv"
        truth = None
        if truth_path.is_file() and truth_path.resolve() != manifest.resolve():
            truth = {e.key: e.labels for e in read_manifest(truth_path, schema).examples}
        return cls.from_examples(data, truth, pool_size, test_size)


def result_columns(schema: LabelSchema) -> list[str]:
    heads = schema.head_names
    return [
        "strategy",
        "seed",
        "cycle",
        "labels",
        "train_labels",
        "calibration_labels",
        "audit_labels",
        "probe_labels",
        "probes",
        "labels_by_people",
        "pool_remaining",
        "manual",
        "audit",
        "new_probes",
        "probes_to_train",
        "automatic",
        "auto_share",
        "precision_labels",
        "precision_truth",
        "threshold",
        "lower_bound",
        "calibration_precision",
        "more_labels_needed",
        "audit_check",
        "expected_accuracy_automatic",
        *[f"f1_{h}" for h in heads],
        "macro_f1",
        *[f"accuracy_{h}" for h in heads],
        "accuracy",
        "exact_match",
        "score",
        "auroc_score",
        "auroc_loss",
        "auroc_msp",
        "auroc_confidence",
        "auroc_confidence_no_loss",
        "spearman_loss",
        "spearman_msp",
        "time_train",
        "time_score",
        "time_evaluate",
        "time_select",
        "time_certify",
    ]


@dataclass(frozen=True)
class LoopSettings:
    """What every run of one simulation shares, besides the data."""

    seed_size: int
    k: int
    cycles: int
    audit_size: int
    probe_size: int
    score: str
    train_config: TrainConfig
    holdout_fraction: float
    target: float
    delta: float
    calibration_labels: str
    batch_size: int


def simulate(
    data: str | Path | SimulationData,
    strategies: list[str],
    seeds: list[int],
    out_dir: str | Path,
    pool_size: int | None = None,
    test_size: int | None = None,
    seed_size: int = 200,
    k: int = 100,
    cycles: int = 10,
    audit_size: int = 50,
    probe_size: int = 50,
    score: str = "confidence",
    train_config: TrainConfig | None = None,
    holdout_fraction: float = 0.5,
    target: float = 0.95,
    delta: float = 0.05,
    calibration_labels: str = "annotator",
    batch_size: int = 64,
    progress: bool = True,
    report: bool = True,
    jobs: int = 1,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_run: Callable[[RunTrace, dict[str, Any]], None] | None = None,
    cache_features: bool = True,
    feature_cache: FeatureCache | None = None,
) -> SimulationResult:
    """Run ``cycles`` rounds of active learning per strategy and seed; write results.csv and report.html.

    data: a labeled CSV manifest (truth.csv beside it is used when present; pool_size and test_size
    split it) or a ready SimulationData. Cycle 0 trains on the seed set's training half; each later cycle adds the
    previous plan's k manual picks. Every cycle is one row of results.csv, written as soon as it is known.

    The pool and the test set are decoded once (model.data.decoded), not once per cycle. ``jobs``
    runs that many (strategy, seed) runs side by side in their own processes, each with an equal
    share of the CPU's threads: on a GPU host, where one small training leaves the GPU mostly idle.
    ``cache_features`` trains and scores through ``feature_cache`` (model.nn.feature_cache; default: one
    beside the decoded images, removed at the end); without it every pass runs the whole backbone.
    ``on_row`` gets each row too, once it is in results.csv, and ``on_run`` each run's trace with the
    simulation's settings as soon as the run ends, after all its rows: a caller keeps runs as they finish,
    not when the whole call does.
    """
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown or not strategies:
        raise ValueError(f"unknown or no strategies {unknown}; choose from {', '.join(STRATEGY_NAMES)}")
    if score not in RISK_SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(RISK_SCORES)}")
    if calibration_labels not in CALIBRATION_SOURCES:
        raise ValueError(f"calibration_labels must be one of {CALIBRATION_SOURCES}, got {calibration_labels!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    sim = (
        data
        if isinstance(data, SimulationData)
        else SimulationData.from_manifest(data, pool_size=pool_size, test_size=test_size)
    )
    if calibration_labels == "truth" and not sim.has_truth:
        raise ValueError(
            "calibration_labels='truth' needs a truth file (truth.csv beside the manifest, as model.sim.scenes writes)"
        )
    if seed_size > len(sim.pool):
        raise ValueError(f"the seed set ({seed_size}) is larger than the pool ({len(sim.pool)})")
    config = train_config or TrainConfig()
    loop = LoopSettings(
        seed_size=seed_size,
        k=k,
        cycles=cycles,
        audit_size=audit_size,
        probe_size=probe_size,
        score=score,
        train_config=config,
        holdout_fraction=holdout_fraction,
        target=target,
        delta=delta,
        calibration_labels=calibration_labels,
        batch_size=batch_size,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "pool": len(sim.pool),
        "test": len(sim.test),
        **{f.name: getattr(loop, f.name) for f in fields(loop)},
        "train_config": config.to_dict(),
        "strategies": list(strategies),
        "seeds": list(seeds),
        "has_truth": sim.has_truth,
        "jobs": jobs,
    }
    columns = result_columns(sim.schema)
    results_path = out_dir / RESULTS_FILE
    runs = [
        (strategy, seed) for seed in seeds for strategy in strategies
    ]  # seeds outermost: a run cut short still compares every strategy
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(runs) * (cycles + 1), desc="simulate", unit="cycle", disable=not progress)
    with (
        results_path.open("w", newline="", encoding="utf-8") as fh,
        tempfile.TemporaryDirectory(dir=out_dir, prefix=".decoded-") as tmp,
    ):
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()

        def record(row: dict[str, Any]) -> None:
            rows.append(row)
            writer.writerow({c: _csv_value(row.get(c)) for c in columns})
            fh.flush()
            bar.set_postfix(strategy=row["strategy"], seed=row["seed"], cycle=row["cycle"])
            bar.update()
            if on_row is not None:
                on_row(row)

        workers = default_workers() if config.workers is None else config.workers
        n_images = len(sim.pool) + len(sim.test)
        logger.info(
            "decoding the %d pool and test images once into %s (%.0f MB, removed at the end)",
            n_images,
            tmp,
            n_images * 3 * config.image_size**2 / 1e6,
        )
        decoded = DecodedImages.decode(
            sim.pool + sim.test,
            config.image_size,
            Path(tmp) / "pixels.npy",
            workers=max(workers, min(jobs, os.cpu_count() or 1) - 1),
            progress=progress,
        )
        cache = (feature_cache or FeatureCache(Path(tmp) / "features")) if cache_features else None
        inputs = _Inputs(decoded, cache)
        if cache is not None:
            _fill_feature_cache(sim, loop, inputs, cache, seeds)

        def finished(trace: RunTrace) -> None:
            if on_run is not None:
                on_run(trace, settings)

        if jobs == 1:
            traces = []
            for strategy, seed in runs:
                traces.append(_run(sim, strategy, seed, loop, inputs, record))
                finished(traces[-1])
        else:
            traces = _run_in_parallel(sim, runs, loop, inputs, jobs, record, finished)
    bar.close()
    order = {run: i for i, run in enumerate(runs)}
    rows.sort(key=lambda r: (order[(r["strategy"], r["seed"])], r["cycle"]))
    result = SimulationResult(rows=rows, traces=traces, settings=settings, results_path=results_path, columns=columns)
    if report:
        from model.sim.report import write_report

        result.report_path = write_report(result, out_dir / REPORT_FILE)
    return result


def _fill_feature_cache(
    sim: SimulationData, loop: LoopSettings, inputs: _Inputs, cache: FeatureCache, seeds: list[int]
) -> None:
    """Cache the clean view of every pool and test image at each depth the runs will score at, here and now.

    Every run scores the same images at the same depths (the frozen part depends only on how many labels
    train, TrainConfig.stages_for), so this process fills each entry once, with all the
    CPU's threads, instead of every run's process computing it at the same moment as the others.
    """
    config = loop.train_config
    depths = set()
    for seed in seeds:
        first = len(_seed_split(sim, seed, loop)[0])
        for cycle in range(loop.cycles + 1):
            depths.add(4 - config.stages_for(min(first + loop.k * cycle, len(sim.pool))))
    net = build_network(ExampleSet(sim.schema, []), config).eval()
    for depth in sorted(d for d in depths if d > 0):
        logger.info("caching the features of %d images at depth %d", len(sim.pool) + len(sim.test), depth)
        cache.loader(net, sim.pool + sim.test, depth, config.image_size, decoded=inputs.decoded)


def _run(
    sim: SimulationData,
    strategy: str,
    seed: int,
    loop: LoopSettings,
    inputs: _Inputs,
    emit: Callable[[dict[str, Any]], None],
) -> RunTrace:
    """One (strategy, seed) run: ``emit`` gets each cycle's row as soon as it is known."""
    run = _Run(sim, strategy, seed, loop, inputs)
    for cycle in range(loop.cycles + 1):
        emit(run.cycle(cycle))
        if cycle < loop.cycles:
            run.reveal()
    return run.trace()


_rows_queue: Any = None  # in a worker process of _run_in_parallel: where its rows go


def _start_worker(queue: Any, threads: int) -> None:
    global _rows_queue
    _rows_queue = queue
    torch.set_num_threads(threads)


def _run_in_worker(sim: SimulationData, strategy: str, seed: int, loop: LoopSettings, inputs: _Inputs) -> RunTrace:
    return _run(sim, strategy, seed, loop, inputs, _rows_queue.put)


def _run_in_parallel(
    sim: SimulationData,
    runs: list[tuple[str, int]],
    loop: LoopSettings,
    inputs: _Inputs,
    jobs: int,
    record: Callable[[dict[str, Any]], None],
    finished: Callable[[RunTrace], None],
) -> list[RunTrace]:
    """Runs in ``jobs`` spawned processes (CUDA cannot be forked); rows are recorded as they arrive, and a
    run is ``finished`` once it has returned and all its rows are recorded (they travel on another pipe).

    A run that fails stops the others at once and its error is raised here.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ctx.Pool(min(jobs, len(runs)), initializer=_start_worker, initargs=(queue, threads))
    rows_seen: Counter[tuple[str, int]] = Counter()

    def count(row: dict[str, Any]) -> None:
        record(row)
        rows_seen[(row["strategy"], row["seed"])] += 1

    try:
        pending = {run: pool.apply_async(_run_in_worker, (sim, *run, loop, inputs)) for run in runs}
        waiting = dict(pending)
        while waiting:
            _drain(queue, count, timeout=0.5)
            for run, p in list(waiting.items()):
                if not p.ready():
                    continue
                trace = p.get()  # raises the run's error
                if rows_seen[run] == loop.cycles + 1:
                    finished(trace)
                    del waiting[run]
        traces = [p.get() for p in pending.values()]
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return traces


def _drain(queue: Any, record: Callable[[dict[str, Any]], None], timeout: float) -> None:
    """Record every row waiting in ``queue``, waiting up to ``timeout`` for the first."""
    try:
        row = queue.get(timeout=timeout)
        while True:
            record(row)
            row = queue.get_nowait()
    except queue_module.Empty:
        pass


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return round(value, 6) if isinstance(value, float) else value


@dataclass(frozen=True)
class _Inputs:
    """What every run reads images through: the pixels decoded once, and the feature cache (None: none)."""

    decoded: DecodedImages
    cache: FeatureCache | None


def _seed_split(sim: SimulationData, seed: int, loop: LoopSettings) -> tuple[list[int], list[int]]:
    """The random seed set of run seed ``seed`` (the same for every strategy), split into (train, holdout)."""
    seed_ids = np.random.default_rng(seed).choice(len(sim.pool), size=loop.seed_size, replace=False)
    held = [is_calibration_holdout(sim.pool[i].key, loop.holdout_fraction) for i in seed_ids]
    return [int(i) for i, h in zip(seed_ids, held) if not h], [int(i) for i, h in zip(seed_ids, held) if h]


class _Run:
    """The state of one (strategy, seed) run: which pool images are labeled, and for what (model/al/cycle.py's
    roles: train, fit = holdout and audits, probes)."""

    def __init__(self, sim: SimulationData, strategy: str, seed: int, loop: LoopSettings, inputs: _Inputs) -> None:
        self.sim, self.strategy, self.seed, self.loop = sim, strategy, seed, loop
        self.decoded, self.cache = inputs.decoded, inputs.cache
        self.train_ids, self.holdout_ids = _seed_split(sim, seed, loop)
        self.audit_ids: list[int] = []
        self.probe_ids: list[int] = []
        self.n_seed = loop.seed_size
        self.n_manual = 0
        self.n_probe_labels = 0
        self.calib_truth = loop.calibration_labels == "truth"
        self.rng = np.random.default_rng([seed, zlib.crc32(strategy.encode())])
        self.pending: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.last: dict[str, Any] = {}

    def cycle(self, cycle: int) -> dict[str, Any]:
        sim, loop, config, decoded = self.sim, self.loop, self.loop.train_config, self.decoded
        if len(self.train_ids) < 2:
            raise ValueError(
                f"only {len(self.train_ids)} seed labels are left for training after the calibration holdout; "
                f"raise the seed set size"
            )
        row: dict[str, Any] = {
            "strategy": self.strategy,
            "seed": self.seed,
            "cycle": cycle,
            "labels": self.n_seed + self.n_manual,
            "train_labels": len(self.train_ids),
            "calibration_labels": len(self.holdout_ids) + len(self.audit_ids),
            "audit_labels": len(self.audit_ids),
            "probe_labels": self.n_probe_labels,
            "probes": len(self.probe_ids),
            "labels_by_people": self.n_seed + self.n_manual + len(self.audit_ids) + self.n_probe_labels,
        }
        t0 = time.perf_counter()
        run_config = replace(config, seed=config.seed + 1000 * self.seed + cycle)
        model = train(
            ExampleSet(sim.schema, [sim.pool[i] for i in self.train_ids]),
            run_config,
            progress=False,
            version=f"{self.strategy}-seed{self.seed}-cycle{cycle}",
            decoded=decoded,
            cache=self.cache,
        ).model
        row["time_train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        scored = model.score(
            sim.pool, batch_size=loop.batch_size, workers=config.workers, decoded=decoded, cache=self.cache
        )
        loss, pred, probs, embeddings = _in_pool_order(scored, sim.pool)
        row["time_score"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        test_scored = model.score(
            sim.test, batch_size=loop.batch_size, workers=config.workers, decoded=decoded, cache=self.cache
        )
        metrics = evaluate(test_scored)
        row["time_evaluate"] = time.perf_counter() - t0
        row.update(_test_columns(metrics))

        correct_labels = (pred == sim.pool_labels).all(axis=1)
        correct_truth = (pred == sim.pool_truth).all(axis=1)
        correct_calib = correct_truth if self.calib_truth else correct_labels
        readable = np.isfinite(loss)
        fit = np.array(self.holdout_ids + self.audit_ids, dtype=np.int64)
        fit = fit[readable[fit]]
        probe = np.array(self.probe_ids, dtype=np.int64)
        probe = probe[readable[probe]]
        row.update(_confidence_columns(loss, probs, fit, correct_calib, test_scored))
        labeled = np.zeros(len(sim.pool), dtype=bool)
        labeled[self.train_ids + self.holdout_ids + self.audit_ids + self.probe_ids] = True
        unlabeled = np.flatnonzero(~labeled & readable)

        def view(ids: np.ndarray) -> PoolView:
            return PoolView(loss[ids], {h: p[ids] for h, p in probs.items()}, embeddings[ids])

        plan = plan_cycle(
            view(unlabeled),
            Labeled(view(fit), correct_calib[fit]),
            Labeled(view(probe), correct_calib[probe]),
            k=loop.k,
            audit_size=loop.audit_size,
            probe_size=loop.probe_size,
            strategy=self.strategy,
            score=loop.score,
            target=loop.target,
            delta=loop.delta,
            rng=self.rng,
        )
        manual, audit, auto = unlabeled[plan.manual], unlabeled[plan.audit], unlabeled[plan.automatic]
        new_probes = unlabeled[plan.probes]
        remaining = len(unlabeled) - len(manual) - len(audit) - len(new_probes)
        cert = plan.certificate
        est = plan.estimates.get("automatic")
        risk = np.full(len(sim.pool), np.nan)
        risk[readable] = plan.risk_score(loss[readable], {h: p[readable] for h, p in probs.items()})
        test_risk = plan.risk_score(test_scored.predicted_loss, test_scored.probs)
        row.update(
            {
                "pool_remaining": remaining,
                "manual": len(manual),
                "audit": len(audit),
                "new_probes": len(new_probes),
                "probes_to_train": len(plan.probes_to_train),
                "automatic": len(auto),
                "auto_share": len(auto) / remaining if remaining else float("nan"),
                "precision_labels": float(correct_labels[auto].mean()) if len(auto) else float("nan"),
                "precision_truth": float(correct_truth[auto].mean()) if len(auto) and sim.has_truth else float("nan"),
                "threshold": cert.threshold,
                "lower_bound": cert.lower_bound,
                "calibration_precision": cert.precision,
                "more_labels_needed": cert.more_labels_needed,
                "audit_check": plan.audit_check[0] / plan.audit_check[1]
                if plan.audit_check and plan.audit_check[1]
                else float("nan"),
                "expected_accuracy_automatic": est.expected_accuracy if est is not None else None,
                "score": plan.risk_score.source,
                "auroc_score": error_auroc(-test_risk, test_scored.all_correct()),
                "time_select": plan.timings["select"],
                "time_certify": plan.timings["certify"],
            }
        )
        self.pending = (manual, audit, new_probes, probe[plan.probes_to_train])
        self.last = {
            "risk": risk,
            "correct_calibration": correct_calib,
            "correct_labels": correct_labels,
            "correct_truth": correct_truth,
            "test_loss": test_scored.predicted_loss,
            "test_true_loss": test_scored.true_loss(),
        }
        return row

    def reveal(self) -> None:
        """The simulated annotator labels the last plan's picks: manual ones train, audited ones fit, new probes
        certify; probes the strategy picked train from now on (their labels are known already)."""
        assert self.pending is not None, "reveal() follows cycle(), which sets the plan's picks"
        manual, audit, new_probes, probes_to_train = self.pending
        moved = {int(i) for i in probes_to_train}
        self.train_ids += [int(i) for i in manual] + sorted(moved)
        self.probe_ids = [i for i in self.probe_ids if i not in moved] + [int(i) for i in new_probes]
        self.audit_ids += [int(i) for i in audit]
        self.n_manual += len(manual)
        self.n_probe_labels += len(new_probes)

    def trace(self) -> RunTrace:
        """The last model's view: labels as that model's plan saw them (its own picks are not revealed)."""
        last = self.last
        return RunTrace(
            strategy=self.strategy,
            seed=self.seed,
            pool_risk=last["risk"],
            correct_calibration=last["correct_calibration"],
            correct_labels=last["correct_labels"],
            correct_truth=last["correct_truth"],
            train_ids=np.array(self.train_ids, dtype=np.int64),
            holdout_ids=np.array(self.holdout_ids, dtype=np.int64),
            audit_ids=np.array(self.audit_ids, dtype=np.int64),
            probe_ids=np.array(self.probe_ids, dtype=np.int64),
            test_predicted_loss=last["test_loss"],
            test_true_loss=last["test_true_loss"],
        )


def _in_pool_order(
    scored: ScoreResult, pool: list[Example]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Predicted loss, predicted class per head, probabilities and embeddings, row-aligned with ``pool``.

    An unreadable image (absent from ``scored``) gets NaN loss, class -1, uniform probabilities and a
    zero embedding; callers leave NaN-loss images out of every band.
    """
    position = {e.key: i for i, e in enumerate(pool)}
    index = np.array([position[key] for key in scored.keys], dtype=np.int64)
    n = len(pool)
    loss = np.full(n, np.nan)
    loss[index] = scored.predicted_loss
    pred = np.full((n, len(scored.schema.heads)), -1, dtype=np.int64)
    probs = {}
    for j, (h, p) in enumerate(scored.probs.items()):
        probs[h] = np.full((n, p.shape[1]), 1.0 / p.shape[1])
        probs[h][index] = p
        pred[index, j] = p.argmax(axis=1)
    emb = np.zeros((n, scored.embeddings.shape[1]), dtype=np.float32)
    emb[index] = scored.embeddings
    return loss, pred, probs, emb


def _confidence_columns(
    pool_loss: np.ndarray,
    pool_probs: dict[str, np.ndarray],
    calib: np.ndarray,
    correct: np.ndarray,
    test: ScoreResult,
) -> dict[str, float]:
    """The learned confidence (model.al.confidence), fitted on the calibration labels (never trained on),
    judged on the test set: its AUROC for wrong predictions with and without the loss module's input."""
    out = {}
    test_correct = test.all_correct()
    for column, use_loss in (("auroc_confidence", True), ("auroc_confidence_no_loss", False)):
        fitted = fit_confidence(
            pool_loss[calib], {h: p[calib] for h, p in pool_probs.items()}, correct[calib], use_loss_module=use_loss
        )
        out[column] = (
            error_auroc(fitted.predict(test.predicted_loss, test.probs), test_correct) if fitted else float("nan")
        )
    return out


def _test_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    heads = metrics["heads"]
    lm = metrics["loss_module"]
    out: dict[str, Any] = {f"f1_{h}": m["macro_f1"] for h, m in heads.items()}
    out.update({f"accuracy_{h}": m["accuracy"] for h, m in heads.items()})
    out["macro_f1"] = mean_macro_f1(metrics)
    out["accuracy"] = float(np.mean([m["accuracy"] for m in heads.values()]))
    out["exact_match"] = 1.0 - lm["error_rate"]
    out.update(
        {
            "auroc_loss": lm["auroc"],
            "auroc_msp": lm["msp_auroc"],
            "spearman_loss": lm["spearman"],
            "spearman_msp": lm["msp_spearman"],
        }
    )
    return out
