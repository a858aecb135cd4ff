"""RQ jobs: one active-learning cycle per training run, and the chunked scoring of the pool.

A training run: read the annotations through the SDK, train, compare with the current model, score
every unlabeled task (in chunks that any number of workers share), plan the cycle (manual, automatic
and deferred bands, certified threshold, audit sample), import the predictions under the new version,
record the audit sample and state, make the version current in the store and then in Label Studio,
keep the Data Manager views up to date, and, with ``AUTO_ACCEPT``, accept the certified band in bulk.
A crash before promotion leaves the current model serving and no half-done version current; one
between the store and Label Studio is put right by the next run (``recover``). A run writes only while
it holds its project's lock (``RunLease``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rq import get_current_job

from model.active_learning import is_calibration_holdout, plan_cycle
from model.checkpoint import write_json_atomic
from model.data import Example, ExampleSet, annotation_choices, latest_annotation
from model.evaluation import evaluate, mean_macro_f1
from model.schema import LabelSchema
from model.scoring import ScoreResult
from model.selection import PoolView
from model.training import TrainConfig, train

from .accepts import edited_by_a_person
from .autolabel import accept_band, update_views
from .fetch import FetchError, ImageFetcher
from .labelstudio import UNCERTAINTY, UNIFORM, LabelStudioProject
from .predictions import CALIBRATION_FILE, prediction_items
from .queue import Broker
from .settings import Settings, get_settings
from .store import ModelStore

logger = logging.getLogger(__name__)

CHUNK_CLAIM_S = 900


@dataclass
class ProjectData:
    """The project's tasks split the way a cycle needs them."""

    schema: LabelSchema
    labeled: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)  # (task id, url, labels)
    unlabeled: list[tuple[int, str]] = field(default_factory=list)
    annotated_at: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def train_project(project_id: int) -> dict[str, Any]:
    """The RQ entry point of a training run (JSON-serialisable argument and result).

    The project lock comes first: only then does the run clear its "waiting" mark and read, so events that
    arrive meanwhile fold into it. If another run holds the lock, this one hands its mark to a copy of itself
    scheduled for later and returns at once, rather than park this worker for hours while other projects wait.
    """
    settings = get_settings()
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
    try:
        summary = run_cycle(pid, settings, store, broker, lease.check)
        _count_run(store, pid, summary.get("result", "done"))
        return summary
    except Exception:
        if not lease.lost.is_set():
            _count_run(store, pid, "failed")
        raise
    finally:
        lease.stop()


class LockLost(RuntimeError):
    """The run's project lock expired or was taken: another run may be writing the project, so this one stops."""


class RunLease:
    """The project lock a run holds, extended by a heartbeat thread; ``check()`` before every write that matters.

    The lock expires ``ttl`` seconds after its last extension, and then another worker may train the project.
    So the run counts as having lost it once Redis says it is no longer ours, or once it could not be extended
    for half of ``ttl`` (Redis unreachable): past that point it must not write, or two runs race on the
    model version Label Studio and the store point at.
    """

    def __init__(self, lock: Any, ttl: int, pid: str) -> None:
        self.lock, self.ttl, self.pid = lock, ttl, pid
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._why = ""
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        """Raise LockLost if the lock was lost: called just before each write of a run."""
        if self.lost.is_set():
            raise LockLost(f"project {self.pid}: the training lock was lost ({self._why}); this run stopped before "
                           "writing, and the project's next run trains again")

    def stop(self) -> None:
        self._stop.set()
        try:
            self.lock.release()
        except redis.RedisError:  # expired, taken or unreachable: nothing of ours to release
            pass

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 4):
            try:
                self.lock.extend(self.ttl, replace_ttl=True)
                last_ok = time.monotonic()
            except redis.exceptions.LockError as exc:
                return self._lose(f"it expired or another run took it: {exc}")
            except redis.RedisError as exc:
                if time.monotonic() - last_ok >= self.ttl / 2:
                    return self._lose(f"Redis unreachable for {time.monotonic() - last_ok:.0f} s: {exc}")
                logger.warning("project %s: could not extend the training lock, will retry: %s", self.pid, exc)

    def _lose(self, why: str) -> None:
        self._why = why
        self.lost.set()
        logger.error("project %s: lost the training lock (%s); the run stops before its next write", self.pid, why)


def _no_check() -> None:
    """The write guard of a run that holds no lock (tests, a one-off command)."""


def run_cycle(pid: str, settings: Settings, store: ModelStore, broker: Broker | None,
              still_held: Callable[[], None] = _no_check) -> dict[str, Any]:
    """One active-learning cycle of project ``pid``; ``still_held`` raises if the run lost its lock (see RunLease).

    The writes land in an order that a crash anywhere leaves consistent: a new version is saved aside, its
    calibration, audit sample and state are recorded, its predictions imported, and only then is it made
    current in the store and, last, in Label Studio; ``recover`` at the start of the next run puts Label
    Studio back on the store's current version if a crash fell between those two.
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
    # under uniform sampling) and the audit samples. Half of the seed set and every audit label are
    # held out of training so that certification is not judged on images the model has seen.
    random_ids = set(state.get("random_task_ids", []))
    if current is None:
        random_ids |= {tid for tid, _, _ in data.labeled}
    audit_ids = set(state.get("audit_task_ids", []))
    calib_ids = {tid for tid, _, _ in data.labeled if tid in audit_ids or (tid in random_ids and is_calibration_holdout(str(tid)))}
    still_held()
    store.update_state(pid, random_task_ids=sorted(random_ids))

    fetcher = ImageFetcher.from_settings(settings, settings.label_studio_url, ls.download_token())
    labeled_paths = fetch_all(fetcher, [(tid, url) for tid, url, _ in data.labeled])
    examples = [Example(key=str(tid), source=str(labeled_paths[tid]), labels=labels) for tid, _, labels in data.labeled if tid in labeled_paths]
    train_set = ExampleSet(schema, [e for e in examples if int(e.key) not in calib_ids])
    calib_set = [e for e in examples if int(e.key) in calib_ids]

    version = store.new_version_name(pid)
    t0 = time.perf_counter()
    result = train(train_set, training_config(settings), progress=False, version=version)
    model = result.model
    timings = {"train_s": time.perf_counter() - t0}
    still_held()
    store.save_version(pid, model, trained_on={
        "train": sorted(int(k) for k in result.train_keys), "validation": sorted(int(k) for k in result.val_keys),
        "calibration": sorted(int(e.key) for e in calib_set), "all": sorted(int(e.key) for e in examples),
    })

    val_keys = set(result.val_keys)
    promoted, comparison = should_promote(store, pid, current, model, [e for e in train_set.examples if e.key in val_keys] + calib_set,
                                          settings.promote_tolerance)
    if not promoted:
        logger.info("project %s: %s not promoted: %s", pid, version, comparison)
        return {"result": "not_promoted", "version": version, "comparison": comparison}

    t0 = time.perf_counter()
    pool_paths = fetch_all(fetcher, data.unlabeled)
    pool_examples = [Example(key=str(tid), source=str(pool_paths[tid])) for tid, _ in data.unlabeled if tid in pool_paths]
    pool = score_pool(pid, version, pool_examples, settings, store, broker)
    calib = model.score(calib_set, workers=0) if calib_set else None
    timings["score_s"] = time.perf_counter() - t0

    rng = np.random.default_rng(zlib.crc32(version.encode()))
    plan = plan_cycle(
        PoolView(pool.predicted_loss, pool.probs, pool.embeddings),
        calib.predicted_loss if calib is not None else np.zeros(0),
        calib.all_correct() if calib is not None else np.zeros(0, dtype=bool),
        k=settings.manual_batch, audit_size=settings.audit_size, strategy="loss",
        target=settings.target_precision, delta=settings.delta, rng=rng,
    )
    summary = plan.summary()
    still_held()
    write_json_atomic(store.version_dir(pid, version) / CALIBRATION_FILE, {
        "calibrator": plan.calibrator.to_dict() if plan.calibrator is not None else None,
        "certificate": plan.certificate.to_dict(), "summary": summary,
    })

    task_ids = np.array([int(k) for k in pool.keys], dtype=np.int64)
    audit = [int(task_ids[i]) for i in plan.audit]
    certified = [int(task_ids[i]) for i in plan.automatic]
    still_held()
    store.update_state(pid, audit_task_ids=sorted(audit_ids | set(audit)), last_cycle={"version": version, **summary})

    t0 = time.perf_counter()
    items = prediction_items(pool, version, plan.calibrator)
    still_held()
    ls.import_predictions([{"task": int(k), **item} for k, item in zip(pool.keys, items)])
    still_held()
    store.promote(pid, version)
    still_held()
    ls.use_version(version, UNCERTAINTY)
    score_floor = float(min((items[i]["score"] for i in plan.automatic), default=1.0))
    # every audit task still waiting for a person, this cycle's and earlier ones', stays out of bulk accept
    labeled_ids = {tid for tid, _, _ in data.labeled}
    pending_audit = sorted((audit_ids | set(audit)) - labeled_ids)
    still_held()
    update_views(ls, certified_score_floor=score_floor if certified else None, audit_ids=pending_audit)
    accepted = None
    if settings.auto_accept and certified:
        still_held()
        accepted = accept_band(ls, store, pid, version, certified, plan.certificate)
    timings["import_s"] = time.perf_counter() - t0
    still_held()
    store.modify_state(pid, lambda state: state.setdefault("last_cycle", {}).update(timings=timings))
    logger.info("project %s: version %s current; %d manual, %d certified, %d audit, %d deferred; %s", pid, version,
                len(plan.manual), len(certified), len(audit), len(plan.deferred), timings)
    return {"result": "promoted", "version": version, "comparison": comparison, "timings": timings, "summary": summary,
            "accepted": accepted, "n_train": len(result.train_keys),
            "skipped_images": (len(data.labeled) - len(examples)) + (len(data.unlabeled) - len(pool_examples)) + len(pool.failures)}


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
        logger.warning("project %s: Label Studio's model version is %r but the current model is %s (a run stopped "
                       "between the two); pointing Label Studio at %s", pid, shown, current, current)
        still_held()
        ls.use_version(current, UNCERTAINTY)


def read_project(tasks: list[dict[str, Any]], schema: LabelSchema, machine_ids: set[int]) -> ProjectData:
    """Split tasks into human-labeled and unlabeled; bulk-accepted (machine) labels never train the model.

    A machine label a person has saved since (corrected or confirmed in the editor) is theirs and trains.
    A person's annotation always wins over a machine one on the same task (a person labeled between the
    listing and the bulk conversion, or a lead converted predictions on labeled tasks): it trains.
    """
    data = ProjectData(schema)
    both: list[int] = []
    for task in tasks:
        tid = int(task["id"])
        url = (task.get("data") or {}).get(schema.image_key)
        if not url:
            data.problems.append(f"task {tid}: no '{schema.image_key}' in its data; skipped")
            continue
        annotations = task.get("annotations") or []
        people = [a for a in annotations if not _unedited_conversion(a)]
        ann = latest_annotation(people) or latest_annotation(annotations)
        if ann is None:
            data.unlabeled.append((tid, url))
            continue
        if _unedited_conversion(ann):
            if tid in machine_ids:
                continue  # the bulk accept's own annotation, untouched since
        elif latest_annotation([a for a in annotations if _unedited_conversion(a)]) is not None:
            both.append(tid)
        choices = annotation_choices(ann, schema)
        try:
            labels = tuple(schema.head(h).index(v) for h, v in choices.items() if v is not None)
        except KeyError as exc:
            data.problems.append(f"task {tid}: {exc.args[0]}; skipped")
            continue
        if len(labels) != len(schema.heads):
            missing = [h for h, v in choices.items() if v is None]
            data.problems.append(f"task {tid}: annotation has no choice for {missing}; skipped")
            continue
        data.labeled.append((tid, url, labels))
        data.annotated_at[tid] = ann.get("created_at") or ""
    if both:
        logger.warning("%d task(s) carry both a person's annotation and one converted from a prediction; the "
                       "person's trains: %s", len(both), both[:20])
    return data


def _unedited_conversion(annotation: dict[str, Any]) -> bool:
    """A machine label: converted from a prediction (bulk accept) and saved by no person since."""
    return annotation.get("parent_prediction") is not None and not edited_by_a_person(annotation)


def fetch_all(fetcher: ImageFetcher, items: list[tuple[int, str]]) -> dict[int, Path]:
    """Fetch images in parallel (network-bound); a failure costs its own task, with a log line."""
    def one(item: tuple[int, str]) -> tuple[int, Path | None]:
        tid, url = item
        try:
            return tid, fetcher.fetch(url)
        except FetchError as exc:
            logger.warning("task %s: image skipped: %s", tid, exc)
            return tid, None
    with ThreadPoolExecutor(max_workers=8) as pool:
        return {tid: p for tid, p in pool.map(one, items) if p is not None}


def training_config(settings: Settings) -> TrainConfig:
    config = TrainConfig.from_file(settings.train_config) if settings.train_config else TrainConfig()
    if settings.epochs:
        config.epochs = settings.epochs
    if settings.image_size:
        config.image_size = settings.image_size
    return config


def should_promote(store: ModelStore, pid: str, current: str | None, model, examples: list[Example],
                   tolerance: float = 0.0) -> tuple[bool, dict[str, Any]]:
    """Promote when not worse than the current model, judged on labels NEITHER model trained on.

    "Not worse" allows ``tolerance`` of mean macro-F1: on a few dozen labels, a model trained on more
    data that scores a hair lower is a tie, and refusing it would leave the queue ranked by a model
    that has not seen the newest labels.
    """
    if current is None:
        return True, {"reason": "first model"}
    try:
        seen = set(store.trained_on(pid, current).get("train", []))
    except (FileNotFoundError, ValueError):
        seen = set()
    fair = [e for e in examples if int(e.key) not in seen]
    if len(fair) < 5:
        return True, {"reason": f"only {len(fair)} labels unseen by both models; newer labels win"}
    new_f1 = mean_macro_f1(evaluate(model.score(fair, workers=0)))
    old_f1 = mean_macro_f1(evaluate(store.load(pid, current).score(fair, workers=0)))
    return new_f1 >= old_f1 - tolerance, {"new_macro_f1": new_f1, "current_macro_f1": old_f1, "n": len(fair), "current": current}


def score_pool(pid: str, version: str, examples: list[Example], settings: Settings, store: ModelStore, broker: Broker | None) -> ScoreResult:
    """Score the pool in chunks; other workers that are free help through ``score_chunks`` jobs.

    Chunks are claimed in Redis with an expiry, so a chunk whose worker died is scored again by
    whoever finds its claim expired; results are files in the version folder.
    """
    out = store.version_dir(pid, version) / "scores"
    out.mkdir(exist_ok=True)
    chunks = [examples[i:i + settings.score_chunk] for i in range(0, len(examples), settings.score_chunk)]
    plan = [[{"key": e.key, "source": e.source} for e in c] for c in chunks]
    write_json_atomic(out / "plan.json", plan)
    if broker is not None and len(chunks) > 1:
        for _ in range(min(len(chunks) - 1, 8)):
            broker.queue.enqueue("backend.jobs.score_chunks", int(pid), version, job_timeout=3600, result_ttl=600)
    score_chunks(int(pid), version, broker=broker, wait=True)
    return _merge_chunks(store, pid, version, len(chunks))


def score_chunks(project_id: int, version: str, broker: Broker | None = None, wait: bool = False) -> int:
    """Claim and score chunks of a version's pool until none is left; ``wait`` also waits for others'."""
    settings = get_settings()
    store = ModelStore(settings.model_dir)
    broker = broker if broker is not None else (Broker(settings.redis_url) if settings.redis_url else None)
    pid = str(project_id)
    out = store.version_dir(pid, version) / "scores"
    plan = json.loads((out / "plan.json").read_text())
    model = store.load(pid, version)
    done = 0
    while True:
        missing = [i for i in range(len(plan)) if not (out / f"chunk-{i}.npz").is_file()]
        if not missing:
            return done
        claimed_any = False
        for i in missing:
            if broker is not None and not broker.conn.set(f"weather-al:{pid}:{version}:chunk:{i}", "1", nx=True, ex=CHUNK_CLAIM_S):
                continue
            claimed_any = True
            examples = [Example(key=r["key"], source=r["source"]) for r in plan[i]]
            res = model.score(examples, batch_size=settings.predict_batch)
            _save_chunk(out / f"chunk-{i}.npz", res)
            done += 1
        if not wait:
            return done
        if not claimed_any:
            time.sleep(1.0 + random.random())


def _save_chunk(path: Path, res: ScoreResult) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, keys=np.array(res.keys), predicted_loss=res.predicted_loss, embeddings=res.embeddings,
             failures=np.array(json.dumps(res.failures)), **{f"probs__{h}": p for h, p in res.probs.items()})
    tmp.replace(path)


def _merge_chunks(store: ModelStore, pid: str, version: str, n: int) -> ScoreResult:
    model = store.load(pid, version)
    schema = model.schema
    parts = [np.load(store.version_dir(pid, version) / "scores" / f"chunk-{i}.npz") for i in range(n)]
    keys = [str(k) for p in parts for k in p["keys"]]
    def cat(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([p[name] for p in parts]) if parts else np.zeros(shape, dtype=np.float32)
    return ScoreResult(
        schema=schema, keys=keys,
        probs={h.name: cat(f"probs__{h.name}", (0, len(h.classes))) for h in schema.heads},
        predicted_loss=cat("predicted_loss", (0,)), embeddings=cat("embeddings", (0, model.net.backbone.embedding_dim)),
        targets=np.full((len(keys), len(schema.heads)), -1, dtype=np.int64),
        failures=[tuple(f) for p in parts for f in json.loads(str(p["failures"]))],
    )


def _count_run(store: ModelStore, pid: str, result: str) -> None:
    def count(state: dict[str, Any]) -> None:
        runs = state.setdefault("runs", {})
        runs[result] = runs.get(result, 0) + 1

    store.modify_state(pid, count)
