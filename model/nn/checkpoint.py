"""A trained model with its metadata: save to and load from a directory, safely and atomically.

A checkpoint directory holds ``model.safetensors`` (weights: safetensors never executes code on load),
``meta.json`` (schema, backbone, image size, normalization, class weights, training-set size, version,
training configuration) and ``metrics.json``. Each file is written to a temporary name and renamed into
place, ``meta.json`` last, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from model.atomic import write_atomic, write_json_atomic
from model.data.examples import Example
from model.nn.backbones import build_backbone
from model.nn.feature_cache import FeatureCache
from model.nn.network import MultiHeadNet
from model.progress import Report, silent
from model.schema import LabelSchema
from model.training.scoring import ScoreResult, inference_loader, run_inference

if TYPE_CHECKING:
    from model.data.decoded import DecodedImages

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
METRICS_FILE = "metrics.json"


@dataclass
class TrainedModel:
    """A network ready to score, with everything needed to preprocess its inputs the same way."""

    net: MultiHeadNet
    meta: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def schema(self) -> LabelSchema:
        return self.net.schema

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def version(self) -> str:
        return str(self.meta.get("version", ""))

    def score(
        self,
        examples: list[Example],
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        desc: str = "scoring",
        decoded: DecodedImages | None = None,
        report: Report = silent,
        cache: FeatureCache | None = None,
    ) -> ScoreResult:
        """Score ``examples``; with ``cache``, the frozen stage groups' outputs come from the feature cache."""
        depth = 4 - int(self.meta.get("trainable_stages", 4))
        if cache is not None and depth > 0:
            loader = cache.loader(
                self.net, examples, depth, self.image_size, batch_size=batch_size, decoded=decoded, report=report
            )
            return run_inference(self.net, loader, progress=progress, desc=desc, report=report)
        loader = inference_loader(
            examples,
            self.image_size,
            tuple(self.meta["mean"]),
            tuple(self.meta["std"]),
            batch_size=batch_size,
            workers=workers,
            decoded=decoded,
        )
        return run_inference(self.net, loader, progress=progress, desc=desc, report=report)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        write_json_atomic(directory / METRICS_FILE, self.metrics)
        write_json_atomic(directory / META_FILE, self.meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a model checkpoint: {META_FILE} is missing (train one with `weather-al train`)"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        schema = LabelSchema.from_dict(meta["schema"])
        net = MultiHeadNet(build_backbone(meta["backbone"], weights=None), schema)
        net.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(device)))
        net.to(device).eval()
        metrics_path = directory / METRICS_FILE
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        return cls(net=net, meta=meta, metrics=metrics)
