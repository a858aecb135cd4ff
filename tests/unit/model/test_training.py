"""Training recipe: unfreezing schedule, frozen stages, splits, checkpoints, the train/score commands, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import TinyData, write_manifest, write_tiny_set

from backend.cli import main
from model.data.examples import read_manifest
from model.nn.backbones import build_backbone
from model.nn.checkpoint import META_FILE, TrainedModel
from model.nn.losses import ranking_loss
from model.nn.network import MultiHeadNet
from model.schema import LabelSchema
from model.training import trainer as training
from model.training.trainer import EarlyStopping, TrainConfig, stratified_split, train, trainable_stages_for


@pytest.mark.parametrize(
    ("n_labels", "stages"), [(0, 0), (299, 0), (300, 1), (1499, 1), (1500, 2), (4999, 2), (5000, 4), (10**6, 4)]
)
def test_unfreezing_schedule_boundaries(n_labels: int, stages: int) -> None:
    assert trainable_stages_for(n_labels) == stages


def test_unfreezing_schedule_custom_thresholds() -> None:
    assert [trainable_stages_for(n, (10, 20, 30)) for n in (9, 10, 19, 20, 29, 30)] == [0, 1, 1, 2, 2, 4]


def _net(schema: LabelSchema, backbone: str = "efficientnet_lite0") -> MultiHeadNet:
    return MultiHeadNet(build_backbone(backbone, weights=None), schema)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_set_trainable_stages_freezes_parameters_and_batchnorm(schema: LabelSchema, backbone: str) -> None:
    net = _net(schema, backbone)
    groups = net.backbone.stage_groups()
    for n in (0, 1, 2, 4):
        net.set_trainable_stages(n)
        net.train()
        for i, group in enumerate(groups):
            trainable = i >= 4 - n
            assert all(p.requires_grad == trainable for p in group.parameters()), (n, i)
            norms = [m for m in group.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            assert norms and all(m.training == trainable for m in norms), (n, i)
        assert all(p.requires_grad for p in net.heads.parameters())
        assert all(p.requires_grad for p in net.loss_module.parameters())
    with pytest.raises(ValueError, match="0..4"):
        net.set_trainable_stages(3 + 2)


def test_frozen_stage_keeps_its_statistics_in_a_training_step(schema: LabelSchema) -> None:
    net = _net(schema)
    net.set_trainable_stages(1)
    net.train()
    frozen_bn, trained_bn = net.backbone.net.bn1, net.backbone.net.bn2  # stem (group 0) and head conv (group 3)
    before = (frozen_bn.running_mean.clone(), trained_bn.running_mean.clone())
    out = net(torch.randn(4, 3, 32, 32) * 3)
    sum(v.sum() for v in out.logits.values()).backward()
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(trained_bn.running_mean, before[1])
    assert net.backbone.net.conv_stem.weight.grad is None
    assert net.backbone.net.conv_head.weight.grad is not None


def test_detached_features_stop_the_ranking_loss_at_the_backbone(schema: LabelSchema) -> None:
    net = _net(schema)
    net.set_trainable_stages(4)
    net.train()
    x = torch.randn(4, 3, 32, 32)
    target = torch.tensor([3.0, 1.0, 0.5, 2.0])
    for detach, reaches_backbone in ((False, True), (True, False)):
        net.zero_grad(set_to_none=True)
        ranking_loss(net(x, detach_features=detach).predicted_loss, target).backward()
        grad = net.backbone.net.conv_stem.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches_backbone
        assert net.loss_module.out.weight.grad.abs().sum() > 0


def _walk(stopper: EarlyStopping, scores: list[float]) -> int | None:
    """Feed ``scores`` epoch by epoch; the epoch at which the stopper says stop, None if it never does."""
    for epoch, score in enumerate(scores):
        if stopper.update(epoch, score)[1]:
            return epoch
    return None


def test_early_stopping_ignores_a_peak_before_the_features_detach() -> None:
    stopper = EarlyStopping(first=3, patience=2)
    # a warm-up peak (0.95 at epoch 1) would win and stop training at epoch 3 if every epoch counted
    assert _walk(stopper, [0.6, 0.95, 0.8, 0.8, 0.85, 0.84, 0.83, 0.99]) == 6
    assert stopper.best_epoch == 4 and stopper.best_score == 0.85


def test_early_stopping_never_stops_before_first_and_prefers_the_later_tie() -> None:
    stopper = EarlyStopping(first=4, patience=1)
    assert _walk(stopper, [0.9, 0.1, 0.1, 0.1, 0.5, 0.5, 0.7]) is None
    assert stopper.best_epoch == 6
    tie = EarlyStopping(first=0, patience=3)
    assert _walk(tie, [0.5, 0.7, 0.7]) is None and tie.best_epoch == 2


def test_stratified_split_keeps_rare_class_in_both_parts() -> None:
    rng = np.random.default_rng(0)
    labels = np.stack([np.r_[np.zeros(94), np.full(6, 2)], rng.integers(0, 3, 100)], axis=1).astype(int)
    tr, va = stratified_split(labels, 0.2, seed=0)
    assert len(va) == 20 and len(tr) == 80
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == 100
    assert (labels[tr, 0] == 2).sum() >= 3 and (labels[va, 0] == 2).sum() >= 1
    tr2, va2 = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(va, va2)


def test_checkpoint_round_trip_gives_identical_outputs(schema: LabelSchema, tiny_set: TinyData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _net(schema)
    net.train()
    with torch.no_grad():  # move BatchNorm running statistics away from their initial values
        for _ in range(2):
            net(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    net.eval()
    meta = {
        "schema": schema.to_dict(),
        "backbone": "efficientnet_lite0",
        "image_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "version": "t1",
    }
    model = TrainedModel(net=net, meta=meta, metrics={"n": 1})
    model.save(tmp_path / "ckpt")
    loaded = TrainedModel.load(tmp_path / "ckpt")
    assert loaded.meta == meta and loaded.metrics == {"n": 1} and loaded.schema == schema
    assert not loaded.net.training
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), loaded.net(x)
    for h in schema.head_names:
        assert torch.equal(a.logits[h], b.logits[h])
    assert torch.equal(a.predicted_loss, b.predicted_loss)
    assert torch.equal(a.embedding, b.embedding)
    examples = read_manifest(tiny_set.manifest, schema).examples[:6]
    s1, s2 = model.score(examples, workers=0), loaded.score(examples, workers=0)
    assert s1.keys == s2.keys and np.array_equal(s1.predicted_loss, s2.predicted_loss)
    assert all(np.array_equal(s1.probs[h], s2.probs[h]) for h in schema.head_names)


def test_load_of_a_folder_without_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weather-al train"):
        TrainedModel.load(tmp_path)


@pytest.fixture
def initial_loss_module(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Records the loss module's weights as train() builds the network."""
    recorded: dict[str, torch.Tensor] = {}
    build = training.build_network

    def recording(data, config):
        net = build(data, config)
        recorded.update({k: v.clone() for k, v in net.loss_module.state_dict().items()})
        return net

    monkeypatch.setattr(training, "build_network", recording)
    return recorded


def _changed(net: MultiHeadNet, initial: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(v, initial[k]) for k, v in net.loss_module.state_dict().items())


def test_train_writes_a_complete_checkpoint(tmp_path: Path, schema: LabelSchema, initial_loss_module) -> None:
    data = read_manifest(write_tiny_set(tmp_path / "data", 40).manifest, schema)
    config = TrainConfig(min_steps=1, image_size=32, epochs=2, batch_size=16, workers=0)
    result = train(data, config, progress=False, version="v-test")
    assert len(result.history) == 2 and len(result.train_keys) == 32 and len(result.val_keys) == 8
    assert result.model.metrics["best_epoch"] == 2  # features detach at epoch 2 of 2: only it may be chosen
    assert not set(result.train_keys) & set(result.val_keys)
    assert _changed(result.model.net, initial_loss_module)  # lambda = 1: the module learned
    result.model.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / META_FILE).read_text())
    assert meta["schema"] == schema.to_dict()
    assert meta["backbone"] == "efficientnet_lite0" and meta["image_size"] == 32
    assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]
    assert set(meta["class_weights"]) == {"timeofday", "weather"} and len(meta["class_weights"]["weather"]) == 3
    assert meta["n_train"] == 32 and meta["n_labeled"] == 40 and meta["trainable_stages"] == 0
    assert meta["version"] == "v-test"
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["n"] == 8 and set(metrics["heads"]) == {"timeofday", "weather"}
    assert {"auroc", "msp_auroc", "spearman"} <= set(metrics["loss_module"])


def test_lambda_zero_leaves_the_loss_module_untrained(tmp_path: Path, schema: LabelSchema, initial_loss_module) -> None:
    data = read_manifest(write_tiny_set(tmp_path / "data", 20).manifest, schema)
    config = TrainConfig(
        min_steps=1,
        image_size=32,
        epochs=1,
        batch_size=8,
        workers=0,
        loss_weight=0.0,
        weight_decay=0.0,
        val_fraction=0.0,
    )
    result = train(data, config, progress=False)
    assert not _changed(result.model.net, initial_loss_module)
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in result.model.net.heads.parameters())


def test_overfit_batch_command_reaches_95_percent(tmp_path: Path) -> None:
    data = write_tiny_set(tmp_path / "data", 12, seed=1)
    (tmp_path / "config.json").write_text(json.dumps({"batch_size": 12, "image_size": 32}))
    rc = main(
        [
            "train",
            "--data",
            str(data.manifest),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(tmp_path / "config.json"),
            "--overfit-batch",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "out" / "overfit.json").read_text())
    assert report["batch_size"] == 12
    assert min(report["accuracy"].values()) >= 0.95, report


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyData, list[str]]:
    """27 good images plus one of each bad input; returns the data and the names a report must mention."""
    root = tmp_path_factory.mktemp("bad")
    data = write_tiny_set(root, 27)
    good = (root / data.rows[0][0]).read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "images" / "notimage.jpg").write_bytes(b"this is not a JPEG at all\n" * 10)
    rows = list(data.rows) + [
        ("images/truncated.jpg", "day", "clear"),
        ("images/notimage.jpg", "night", "rain"),
        ("images/missing.jpg", "day", "snow"),
        ("images/0000.jpg", "dawn", "clear"),  # unknown class
        ("images/0001.jpg", "night", ""),  # missing head
    ]
    write_manifest(data.manifest, rows)
    return data, ["truncated.jpg", "notimage.jpg", "missing.jpg", "dawn", "weather"]


def test_bad_inputs_are_reported_and_skipped_by_train_and_score(
    bad_set: tuple[TinyData, list[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, names = bad_set
    (tmp_path / "config.json").write_text(
        json.dumps({"image_size": 32, "epochs": 1, "batch_size": 32, "workers": 0, "min_steps": 1})
    )
    with caplog.at_level(logging.WARNING):
        rc = main(
            [
                "train",
                "--data",
                str(data.manifest),
                "--out",
                str(tmp_path / "m"),
                "--config",
                str(tmp_path / "config.json"),
            ]
        )
    assert rc == 0
    for name in names:
        assert name in caplog.text, name
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 5

    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        rc = main(
            ["score", "--model", str(tmp_path / "m"), "--data", str(data.manifest), "--out", str(tmp_path / "s.jsonl")]
        )
    assert rc == 0
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    # scoring needs no labels: the row with a missing head is scored; the unknown class is still a bad row
    assert len(lines) == 27 + 1
    assert {"truncated.jpg", "notimage.jpg", "missing.jpg"}.isdisjoint(Path(r["image"]).name for r in lines)
    assert "skipped 4" in capsys.readouterr().out
    for name in ("truncated.jpg", "notimage.jpg", "missing.jpg", "dawn"):
        assert name in caplog.text, name
    row = lines[0]
    assert set(row) == {"image", "timeofday", "weather", "predicted_loss"}
    assert sum(row["weather"]["probs"].values()) == pytest.approx(1.0, abs=1e-4)


def test_unreadable_validation_images_are_counted(tmp_path: Path, schema: LabelSchema) -> None:
    data = write_tiny_set(tmp_path, 18)
    bad = [(f"images/bad{i}.jpg", "day", "clear") for i in range(4)]
    for rel, _, _ in bad:
        (tmp_path / rel).write_bytes(b"junk" * 20)
    write_manifest(data.manifest, list(data.rows) + bad)
    config = TrainConfig(min_steps=1, image_size=32, epochs=1, batch_size=64, workers=0, val_fraction=0.5)
    result = train(read_manifest(data.manifest, schema), config, progress=False)
    assert any("bad" in k for k in result.val_keys)  # the split this test needs
    assert result.model.metrics["skipped_images"] == 4
