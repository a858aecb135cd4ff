"""``/predict``: pre-labels for the tasks Label Studio sends, from the project's current model.

Predictions are cached per (project, version, task), so a task asked again under the same model costs
a dictionary look-up. Images are fetched in a thread pool (network-bound) and scored in batches; an
image that cannot be fetched or decoded costs only its own task an empty item (Label Studio then
stores no prediction for it and keeps the others').
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backend.labelstudio.fetch import FetchError, ImageFetcher
from backend.labelstudio.predictions import load_calibrator, load_risk_score, prediction_items
from backend.settings import Settings, feature_cache
from backend.store import ModelStore
from model.data.examples import Example
from model.schema import LabelSchema

logger = logging.getLogger(__name__)

CACHE_SIZE = 100_000


class SchemaMismatch(ValueError):
    """The project's label config no longer matches the model's heads."""


class Predictor:
    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self.features = feature_cache(settings)
        self._cache: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")

    def fetcher(self, hostname: str | None, token: str | None) -> ImageFetcher:
        """Label Studio's URL and token from the settings, else those Label Studio sent in the request."""
        own = bool(self.settings.label_studio_api_key)
        url = self.settings.label_studio_url if own else (hostname or self.settings.label_studio_url)
        return ImageFetcher.from_settings(self.settings, url, self.settings.label_studio_api_key or token)

    def predict(
        self, project: str, tasks: list[dict[str, Any]], schema: LabelSchema | None, fetcher: ImageFetcher
    ) -> tuple[list[Any], str | None]:
        """One item per task, in order: a prediction dict, or ``[]`` where none can be given."""
        model = self.store.load_current(project)
        if model is None:
            logger.info(
                "project %s: no trained model yet, so no predictions for %d task(s); label the seed set and train",
                project,
                len(tasks),
            )
            return [[] for _ in tasks], None
        if schema is not None and schema.heads != model.schema.heads:
            raise SchemaMismatch(
                f"project {project}'s label config has heads {[(h.name, h.classes) for h in schema.heads]} but model "
                f"{model.version} was trained for {[(h.name, h.classes) for h in model.schema.heads]}; "
                "retrain (Start Training)"
            )
        version = model.version
        items: list[Any] = [None] * len(tasks)
        todo: list[int] = []
        for i, task in enumerate(tasks):
            cached = self._get((project, version, int(task.get("id", -1))))
            if cached is not None:
                items[i] = cached
            else:
                todo.append(i)
        if todo:
            self._score(project, model, tasks, todo, items, fetcher)
        return [it if it is not None else [] for it in items], version

    def _score(self, project: str, model, tasks, todo: list[int], items: list[Any], fetcher: ImageFetcher) -> None:
        key = model.schema.image_key

        def fetch(i: int) -> tuple[int, Path | None]:
            url = (tasks[i].get("data") or {}).get(key)
            try:
                return i, fetcher.fetch(url)
            except FetchError as exc:
                logger.warning("task %s: no prediction: %s", tasks[i].get("id"), exc)
                return i, None

        fetched = [(i, p) for i, p in self._pool.map(fetch, todo) if p is not None]
        examples = [Example(key=str(i), source=str(p)) for i, p in fetched]
        # workers=0: forking DataLoader workers from a threaded web process is unsafe, and the
        # thread pool above already overlaps the slow part (the network)
        result = model.score(examples, batch_size=self.settings.predict_batch, workers=0, cache=self.features)
        for row_key, reason in result.failures:  # the keys are positions in the request; name the task
            logger.warning("task %s: no prediction: %s", tasks[int(row_key)].get("id"), reason)
        # the version's own risk score and calibration, as the worker's bulk import used: the same score either way
        version_dir = self.store.version_dir(project, model.version)
        predicted = prediction_items(result, model.version, load_calibrator(version_dir), load_risk_score(version_dir))
        for row_key, item in zip(result.keys, predicted):
            i = int(row_key)
            items[i] = item
            self._put((project, model.version, int(tasks[i].get("id", -1))), item)

    def _get(self, key: tuple[str, str, int]) -> dict[str, Any] | None:
        if key[2] < 0:
            return None
        with self._lock:
            item = self._cache.get(key)
            if item is not None:
                self._cache.move_to_end(key)
            return item

    def _put(self, key: tuple[str, str, int], item: dict[str, Any]) -> None:
        if key[2] < 0:
            return
        with self._lock:
            self._cache[key] = item
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
