"""The training run, an RQ job: one active-learning cycle of a project, from its annotations to its queue.

A training run: read the annotations through the SDK, train, compare with the current model, score
every unlabeled task (in chunks that any number of workers share), plan the cycle (model.al.cycle: risk
score, manual, automatic and deferred bands, certified threshold, audit sample, new random probes),
import the predictions under the new version, record the audit sample, the probes and state, make the
version current in the store and then in Label Studio, keep the Data Manager views up to date, and, with
``AUTO_ACCEPT``, accept the certified band in bulk.

People's labels have one role each (model/al/cycle.py says why): fit (the seed set's holdout half and the
audits: they fit the risk score and its calibration, and judge promotion), probes (the tasks of
``probe_task_ids``, drawn uniformly from the pool: they certify and nothing else, not even promotion) and
train (everything else, including the probes the strategy picked). A probe is never in the fit set: a
label that fitted the risk score must not certify it.
A crash before promotion leaves the current model serving and no half-done version current; one
between the store and Label Studio is put right by the next run (``recover``). A run writes only while
it holds its project's lock (``RunLease``).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from rq import get_current_job

from backend.labelstudio.client import UNCERTAINTY, UNIFORM, LabelStudioProject
from backend.labelstudio.fetch import ImageFetcher
from backend.labelstudio.predictions import CALIBRATION_FILE, prediction_items, read_calibration
from backend.queue import Broker
from backend.settings import Settings, feature_cache, get_settings
from backend.store import ModelStore
from backend.worker.accepts import probes_of_accepted_bands
from backend.worker.autolabel import accept_band, record_pool, update_views
from backend.worker.chunks import score_pool
from backend.worker.images import fetch_all
from backend.worker.lease import RunLease, _no_check
from backend.worker.progress import CycleProgress
from backend.worker.project_data import read_project
from backend.worker.promotion import should_promote
from model.al.cycle import Labeled, is_calibration_holdout, plan_cycle
from model.al.strategies import PoolView
from model.atomic import write_json_atomic
from model.data.examples import Example, ExampleSet
from model.progress import Report, silent
from model.schema import LabelSchema
from model.training.scoring import ScoreResult
from model.training.trainer import TrainConfig, train

logger = logging.getLogger(__name__)


def train_project(project_id: int) -> dict[str, Any]:
    """The RQ entry point of a training run (JSON-serialisable argument and result).

    The project lock comes first: only then does the run clear its "waiting" mark and read, so events that
    arrive meanwhile fold into it. If another run holds the lock, this one hands its mark to a copy of itself
    scheduled for later and returns at once, rather than park this worker for hours while other projects wait.
    """
    settings = get_settings()
    assert settings.redis_url is not None  # a worker runs only with REDIS_URL (worker.run.work refuses without)
    broker = Broker(settings.redis_url)
    pid = str(project_id)
    job = get_current_job()
    job_id = job.id if job is not None else None
    lease = RunLease(broker.lock(pid, settings.lock_ttl), settings.lock_ttl, pid)
    if not lease.lock.acquire(blocking=False):
        return {"result": "deferred", "next": broker.defer_run(pid, job_id)}
    broker.start_run(pid, job_id)
    lease.start()
    store = ModelStore(settings.model_dir, broker.conn)
    progress = CycleProgress(broker.conn, pid, job)
    try:
        summary = run_cycle(pid, settings, store, broker, lease.check, progress)
        _count_run(store, pid, summary.get("result", "done"))
        log_cycle(pid, job_id, summary)
        return summary
    except Exception as exc:
        if not lease.lost.is_set():
            _count_run(store, pid, "failed")
        log_cycle(pid, job_id, {"result": "lock_lost" if lease.lost.is_set() else "failed", "error": repr(exc)[:500]})
        raise
    finally:
        progress.clear()
        lease.stop()


def log_cycle(pid: str, job_id: str | None, summary: dict[str, Any]) -> None:
    """One line per run, ``cycle {json}``: outcome, bands, certificate and timings as fields to grep or ship."""
    record = {"project": int(pid), "job": job_id, **summary}
    logger.info("cycle %s", json.dumps(record, sort_keys=True, default=str))


def run_cycle(
    pid: str,
    settings: Settings,
    store: ModelStore,
    broker: Broker | None,
    still_held: Callable[[], None] = _no_check,
    progress: CycleProgress | None = None,
) -> dict[str, Any]:
    """One active-learning cycle of project ``pid``; ``still_held`` raises if the run lost its lock (see RunLease).

    ``progress`` hears the training's and the pool scoring's phase and counts, for /metrics, the job's
    status and the demo's bars.

    The writes land in an order that a crash anywhere leaves consistent: a new version is saved aside, its
    pool, risk score, calibration, audit sample, probes and state are recorded, its predictions imported,
    and only then is it made current in the store and, last, in Label Studio; ``recover`` at the start of
    the next run puts Label Studio back on the store's current version if a crash fell between those two.
    """
    settings = settings.for_project(store.state(pid).get("extra_params"))
    still_held()
    store.clean_incomplete(pid)
    ls = LabelStudioProject(settings.label_studio_url, settings.label_studio_api_key or "", int(pid))
    recover(pid, ls, store, still_held)
    schema = LabelSchema.from_xml(ls.label_config())
    state = store.state(pid)
    data = read_project(ls.tasks(), schema, set(state.get("machine_task_ids", [])))
    for p in data.problems:
        logger.warning("project %s: %s", pid, p)
    n_human = len(data.labeled)
    still_held()
    store.update_state(pid, human_labeled=n_human)
    current = store.current_version(pid)
    if n_human < settings.min_labels:
        if current is None:
            still_held()
            ls.set_sampling(UNIFORM)
        msg = f"{n_human} labeled task(s); training starts at {settings.min_labels} (MIN_LABELS)"
        logger.info("project %s: %s", pid, msg)
        return {"result": "waiting_for_labels", "message": msg}

    # Labels whose choice did not depend on the model: the seed set (labeled while no model existed,
    # under uniform sampling), the audit samples and the probes. See the module docstring for their roles.
    random_ids = set(state.get("random_task_ids", []))
    if current is None:
        random_ids |= {tid for tid, _, _ in data.labeled}
    audit_ids = set(state.get("audit_task_ids", []))
    probe_ids = set(state.get("probe_task_ids", [])) - probes_of_accepted_bands(store, pid)
    fit_ids, labeled_probe_ids = label_roles({tid for tid, _, _ in data.labeled}, random_ids, audit_ids, probe_ids)
    still_held()
    store.update_state(pid, random_task_ids=sorted(random_ids))

    fetcher = ImageFetcher.from_settings(settings, settings.label_studio_url, ls.download_token())
    labeled_paths = fetch_all(fetcher, [(tid, url) for tid, url, _ in data.labeled])
    examples = [
        Example(key=str(tid), source=str(labeled_paths[tid]), labels=labels)
        for tid, _, labels in data.labeled
        if tid in labeled_paths
    ]
    train_set = ExampleSet(schema, [e for e in examples if int(e.key) not in fit_ids | labeled_probe_ids])
    fit_set = [e for e in examples if int(e.key) in fit_ids]
    probe_set = [e for e in examples if int(e.key) in labeled_probe_ids]

    version = store.new_version_name(pid)
    report: Report = silent
    if progress is not None:
        progress.version = version
        report = progress
    t0 = time.perf_counter()
    cache = feature_cache(settings)
    result = train(train_set, training_config(settings), progress=False, version=version, report=report, cache=cache)
    model = result.model
    timings = {"train_s": time.perf_counter() - t0}
    still_held()
    store.save_version(
        pid,
        model,
        trained_on={
            "train": sorted(int(k) for k in result.train_keys),
            "validation": sorted(int(k) for k in result.val_keys),
            "calibration": sorted(int(e.key) for e in fit_set),
            "probes": sorted(int(e.key) for e in probe_set),
            "all": sorted(int(e.key) for e in examples),
        },
    )

    val_keys = set(result.val_keys)
    promoted, comparison = should_promote(  # never on probes: they certify, and nothing else
        store,
        pid,
        current,
        model,
        [e for e in train_set.examples if e.key in val_keys] + fit_set,
        settings.promote_tolerance,
    )
    if not promoted:
        logger.info("project %s: %s not promoted: %s", pid, version, comparison)
        return {"result": "not_promoted", "version": version, "comparison": comparison}

    t0 = time.perf_counter()
    pool_paths = fetch_all(fetcher, data.unlabeled)
    pool_examples = [
        Example(key=str(tid), source=str(pool_paths[tid])) for tid, _ in data.unlabeled if tid in pool_paths
    ]
    pool = score_pool(pid, version, pool_examples, settings, store, broker, report)
    pool_view = PoolView(pool.predicted_loss, pool.probs, pool.embeddings)
    fit = model.score(fit_set, workers=0, cache=cache) if fit_set else None
    probes = model.score(probe_set, workers=0, cache=cache) if probe_set else None
    timings["score_s"] = time.perf_counter() - t0

    still_held()
    pool_id = record_pool(store, pid, version, (int(k) for k in pool.keys))
    rng = np.random.default_rng(zlib.crc32(version.encode()))
    plan = plan_cycle(
        pool_view,
        as_labeled(fit, pool_view),
        as_labeled(probes, pool_view),
        k=settings.manual_batch,
        audit_size=settings.audit_size,
        probe_size=settings.probe_size,
        strategy=settings.strategy,
        score=settings.risk_score,
        target=settings.target_precision,
        delta=settings.delta,
        rng=rng,
        pool_id=pool_id,
    )
    summary = plan.summary()
    still_held()
    write_json_atomic(
        store.version_dir(pid, version) / CALIBRATION_FILE,
        {
            "risk_score": plan.risk_score.to_dict(),
            "calibrator": plan.calibrator.to_dict() if plan.calibrator is not None else None,
            "certificate": plan.certificate.to_dict(),
            "probes_in_band": sorted(int(probes.keys[i]) for i in plan.probes_in_band) if probes is not None else [],
            "summary": summary,
        },
    )

    task_ids = np.array([int(k) for k in pool.keys], dtype=np.int64)
    audit = [int(task_ids[i]) for i in plan.audit]
    certified = [int(task_ids[i]) for i in plan.automatic]
    # a probe the strategy picks, labeled already or still waiting, trains from now on, as a pool task it picks
    # would; the new probes join the rest (model/al/cycle.py: why the probes stay a uniform sample of the pool)
    picked = {int(probes.keys[i]) for i in plan.probes_to_train} if probes is not None else set()
    picked |= {int(task_ids[i]) for i in plan.manual}
    next_probe_ids = (probe_ids - picked) | {int(task_ids[i]) for i in plan.probes}
    still_held()
    store.update_state(
        pid,
        audit_task_ids=sorted(audit_ids | set(audit)),
        probe_task_ids=sorted(next_probe_ids),
        last_cycle={"version": version, **summary},
    )

    t0 = time.perf_counter()
    items = prediction_items(pool, version, plan.calibrator, plan.risk_score)
    still_held()
    ls.import_predictions([{"task": int(k), **item} for k, item in zip(pool.keys, items)])
    still_held()
    store.promote(pid, version)
    still_held()
    # a model whose risk score does not tell right from wrong yet shows no order: Label Studio samples uniformly
    ls.use_version(version, UNCERTAINTY if plan.can_rank else UNIFORM)
    # every audit and probe task still waiting for a person, this cycle's and earlier ones', stays out of bulk accept
    labeled_ids = {tid for tid, _, _ in data.labeled}
    still_held()
    update_views(
        ls,
        certified={int(task_ids[i]): items[i]["score"] for i in plan.automatic},
        audit_ids=sorted((audit_ids | set(audit)) - labeled_ids),
        probe_ids=sorted(next_probe_ids - labeled_ids),
    )
    accepted = None
    if settings.auto_accept and certified:
        still_held()
        accepted = accept_band(ls, store, pid, version, certified, plan.certificate)
    timings["import_s"] = time.perf_counter() - t0
    still_held()
    store.modify_state(pid, lambda state: state.setdefault("last_cycle", {}).update(timings=timings))
    logger.info(
        "project %s: version %s current; %d manual, %d certified, %d audit, %d new probes, %d deferred; %s",
        pid,
        version,
        len(plan.manual),
        len(certified),
        len(audit),
        len(plan.probes),
        len(plan.deferred),
        timings,
    )
    return {
        "result": "promoted",
        "version": version,
        "comparison": comparison,
        "timings": timings,
        "summary": summary,
        "accepted": accepted,
        "n_train": len(result.train_keys),
        "skipped_images": (len(data.labeled) - len(examples))
        + (len(data.unlabeled) - len(pool_examples))
        + len(pool.failures),
    }


def recover(pid: str, ls: LabelStudioProject, store: ModelStore, still_held: Callable[[], None]) -> None:
    """Point Label Studio at the store's current version if a crashed run left it elsewhere.

    A run makes a version current in the store before it sets Label Studio's ``model_version``, so a crash
    between the two leaves them apart; Label Studio's score and uncertainty sampling would then rank tasks
    with predictions the served model did not make.
    """
    current = store.current_version(pid)
    if current is None:
        return
    shown = ls.project().get("model_version")
    if shown != current:
        logger.warning(
            "project %s: Label Studio's model version is %r but the current model is %s (a run stopped "
            "between the two); pointing Label Studio at %s",
            pid,
            shown,
            current,
            current,
        )
        can_rank = read_calibration(store.version_dir(pid, current)).get("summary", {}).get("can_rank", True)
        still_held()
        ls.use_version(current, UNCERTAINTY if can_rank else UNIFORM)


def label_roles(
    labeled: set[int], random_ids: set[int], audit_ids: set[int], probe_ids: set[int]
) -> tuple[set[int], set[int]]:
    """(fit, probes) among the ``labeled`` task ids; the rest train.

    fit: labeled audit tasks and the seed set's holdout half (``is_calibration_holdout``); probes: labeled tasks
    of ``probe_ids``. A task that is both an audit and a probe (an audit drawn on a probe still waiting for its
    label, or the reverse) is a probe: a label that fitted the risk score must never certify it.
    """
    probes = labeled & probe_ids
    fit = {
        tid for tid in labeled - probes if tid in audit_ids or (tid in random_ids and is_calibration_holdout(str(tid)))
    }
    return fit, probes


def as_labeled(result: ScoreResult | None, like: PoolView) -> Labeled:
    """The new model's outputs on labeled tasks and whether it got every head right (none: ``like``'s heads)."""
    if result is None:
        return Labeled.none(like)
    return Labeled(PoolView(result.predicted_loss, result.probs, result.embeddings), result.all_correct())


def training_config(settings: Settings) -> TrainConfig:
    config = TrainConfig.from_file(settings.train_config) if settings.train_config else TrainConfig()
    if settings.epochs:
        config.epochs = settings.epochs
    if settings.image_size:
        config.image_size = settings.image_size
    return config


def _count_run(store: ModelStore, pid: str, result: str) -> None:
    def count(state: dict[str, Any]) -> None:
        runs = state.setdefault("runs", {})
        runs[result] = runs.get(result, 0) + 1

    store.modify_state(pid, count)
