"""Scoring a version's pool in chunks that every free worker shares.

Chunks are claimed in Redis with an expiry, so a chunk whose worker died is scored again by whoever finds
its claim expired; results are files in the version folder.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from backend.queue import Broker
from backend.settings import Settings, feature_cache, get_settings
from backend.store import ModelStore
from model.atomic import write_atomic, write_json_atomic
from model.data.examples import Example
from model.progress import Report, silent
from model.training.scoring import ScoreResult

logger = logging.getLogger(__name__)

CHUNK_CLAIM_S = 900


def score_pool(
    pid: str,
    version: str,
    examples: list[Example],
    settings: Settings,
    store: ModelStore,
    broker: Broker | None,
    report: Report = silent,
) -> ScoreResult:
    """Score the pool in chunks; other workers that are free help through ``score_chunks`` jobs.

    Chunks are claimed in Redis with an expiry, so a chunk whose worker died is scored again by
    whoever finds its claim expired; results are files in the version folder. ``report`` hears the
    images scored of the whole pool, by every worker.
    """
    out = store.version_dir(pid, version) / "scores"
    out.mkdir(exist_ok=True)
    chunks = [examples[i : i + settings.score_chunk] for i in range(0, len(examples), settings.score_chunk)]
    plan = [[{"key": e.key, "source": e.source} for e in c] for c in chunks]
    write_json_atomic(out / "plan.json", plan)
    if broker is not None and len(chunks) > 1:
        for _ in range(min(len(chunks) - 1, 8)):
            broker.queue.enqueue(
                "backend.worker.chunks.score_chunks", int(pid), version, job_timeout=3600, result_ttl=600
            )
    score_chunks(int(pid), version, broker=broker, wait=True, report=report)
    return _merge_chunks(store, pid, version, len(chunks))


def score_chunks(
    project_id: int, version: str, broker: Broker | None = None, wait: bool = False, report: Report = silent
) -> int:
    """Claim and score chunks of a version's pool until none is left; ``wait`` also waits for others'.

    ``report`` hears ``("scoring", images scored, pool size)`` counting every worker's finished chunks, so
    a run waiting for its helpers still shows them moving; other phases (features) pass through as they are.
    """
    settings = get_settings()
    store = ModelStore(settings.model_dir)
    broker = broker if broker is not None else (Broker(settings.redis_url) if settings.redis_url else None)
    pid = str(project_id)
    out = store.version_dir(pid, version) / "scores"
    plan = json.loads((out / "plan.json").read_text())
    model = store.load(pid, version)
    cache = feature_cache(settings)
    total = sum(len(chunk) for chunk in plan)
    done = 0
    while True:
        missing = _missing(out, plan)
        report("scoring", total - sum(len(plan[i]) for i in missing), total)
        if not missing:
            return done
        claimed_any = False
        for i in missing:
            if broker is not None and not broker.conn.set(
                f"weather-al:{pid}:{version}:chunk:{i}", "1", nx=True, ex=CHUNK_CLAIM_S
            ):
                continue
            claimed_any = True
            examples = [Example(key=r["key"], source=r["source"]) for r in plan[i]]
            scored = total - sum(len(plan[j]) for j in _missing(out, plan))  # this worker's and the others' chunks
            res = model.score(
                examples, batch_size=settings.predict_batch, report=_in_pool(report, scored, total), cache=cache
            )
            _save_chunk(out / f"chunk-{i}.npz", res)
            done += 1
        if not wait:
            return done
        if not claimed_any:
            time.sleep(1.0 + random.random())


def _missing(out: Path, plan: list[list[dict[str, str]]]) -> list[int]:
    """The chunks of ``plan`` no worker has finished yet."""
    return [i for i in range(len(plan)) if not (out / f"chunk-{i}.npz").is_file()]


def _in_pool(report: Report, before: int, total: int) -> Report:
    """A chunk's ``report``: its scoring counts as images of the whole pool, ``before`` of them scored already."""

    def chunk_report(phase: str, done: int, chunk_total: int) -> None:
        if phase == "scoring":
            report(phase, before + done, total)
        else:
            report(phase, done, chunk_total)

    return chunk_report


def _save_chunk(path: Path, res: ScoreResult) -> None:
    def save(tmp: Path) -> None:
        arrays: dict[str, Any] = {
            "keys": np.array(res.keys),
            "predicted_loss": res.predicted_loss,
            "embeddings": res.embeddings,
            "failures": np.array(json.dumps(res.failures)),
            **{f"probs__{h}": p for h, p in res.probs.items()},
        }
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a temporary file's name
            np.savez(fh, **arrays)

    write_atomic(path, save)


def _merge_chunks(store: ModelStore, pid: str, version: str, n: int) -> ScoreResult:
    model = store.load(pid, version)
    schema = model.schema
    parts = [np.load(store.version_dir(pid, version) / "scores" / f"chunk-{i}.npz") for i in range(n)]
    keys = [str(k) for p in parts for k in p["keys"]]

    def cat(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([p[name] for p in parts]) if parts else np.zeros(shape, dtype=np.float32)

    return ScoreResult(
        schema=schema,
        keys=keys,
        probs={h.name: cat(f"probs__{h.name}", (0, len(h.classes))) for h in schema.heads},
        predicted_loss=cat("predicted_loss", (0,)),
        embeddings=cat("embeddings", (0, model.net.backbone.embedding_dim)),
        targets=np.full((len(keys), len(schema.heads)), -1, dtype=np.int64),
        failures=[tuple(f) for p in parts for f in json.loads(str(p["failures"]))],
    )
