"""The feature cache (model.nn.feature_cache): cached scores equal the full forward's, damaged entries are
computed again, concurrent fillers lose nothing, a changed image is not served from its old entry, the
size bound holds, and training reads it."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_data import TinyData

from model.data.examples import Example, ExampleSet, read_manifest
from model.nn.backbones import build_backbone
from model.nn.checkpoint import TrainedModel
from model.nn.feature_cache import CLEAN_VIEW, FeatureCache
from model.nn.network import MultiHeadNet
from model.schema import LabelSchema
from model.training.scoring import ScoreResult
from model.training.trainer import TrainConfig, train

SIZE = 32


def make_model(schema: LabelSchema, trainable_stages: int, seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    net = MultiHeadNet(build_backbone("efficientnet_lite0", weights=None), schema).eval()
    meta = {
        "schema": schema.to_dict(),
        "backbone": "efficientnet_lite0",
        "image_size": SIZE,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "trainable_stages": trainable_stages,
    }
    return TrainedModel(net=net, meta=meta)


def max_difference(a: ScoreResult, b: ScoreResult) -> float:
    assert a.keys == b.keys
    diffs = [np.abs(a.predicted_loss - b.predicted_loss).max(), np.abs(a.embeddings - b.embeddings).max()]
    diffs += [np.abs(a.probs[h] - b.probs[h]).max() for h in a.probs]
    return float(max(diffs))


@pytest.fixture()
def examples(schema: LabelSchema, tiny_set: TinyData, tmp_path: Path) -> list[Example]:
    """A private copy of the tiny set (tests change files), plus one truncated JPEG."""
    folder = tmp_path / "images"
    shutil.copytree(tiny_set.manifest.parent, folder)
    good = read_manifest(folder / tiny_set.manifest.name, schema).examples[:12]
    bad = folder / "truncated.jpg"
    data = Path(good[0].source).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return good + [Example(key="truncated.jpg", source=str(bad), labels=good[0].labels)]


@pytest.mark.parametrize("trainable_stages", [0, 1, 2, 3])
def test_cached_scores_equal_the_full_forward(
    schema: LabelSchema, examples: list[Example], tmp_path: Path, trainable_stages: int
) -> None:
    model = make_model(schema, trainable_stages)
    cache = FeatureCache(tmp_path / "cache")
    direct = model.score(examples, workers=0)
    filling = model.score(examples, cache=cache)
    reading = model.score(examples, cache=cache)
    assert len(direct) == len(examples) - 1
    assert max_difference(direct, filling) <= 1e-4
    assert max_difference(direct, reading) <= 1e-4
    assert [k for k, _ in reading.failures] == ["truncated.jpg"] == [k for k, _ in direct.failures]
    assert reading.failures == direct.failures  # the same reason, word for word
    assert cache.size_bytes() > 0


def test_a_damaged_entry_is_computed_again_never_served(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    model = make_model(schema, 1)
    cache = FeatureCache(tmp_path / "cache")
    direct = model.score(examples, workers=0)
    model.score(examples, cache=cache)
    space = cache.space(model.net, 3, SIZE)
    truncated, flipped = (space.entry(cache.content_key(e), CLEAN_VIEW) for e in examples[:2])
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(flipped.read_bytes())
    data[40] ^= 0xFF  # one bit pattern inside the features: the length is right, the digest is not
    flipped.write_bytes(bytes(data))

    fresh = FeatureCache(tmp_path / "cache")  # another process: nothing remembered
    assert fresh.read(space, cache.content_key(examples[1]), CLEAN_VIEW) is None
    assert not flipped.exists()  # deleted, so that the next reader computes it
    again = model.score(examples, cache=fresh)
    assert max_difference(direct, again) <= 1e-4
    assert fresh.read(space, cache.content_key(examples[0]), CLEAN_VIEW) is not None  # rebuilt


def _fill(root: str, examples: list[Example], schema: LabelSchema) -> None:
    torch.set_num_threads(1)
    model = make_model(schema, 0)
    model.score(examples, cache=FeatureCache(root))


def test_two_processes_filling_at_once_lose_nothing(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    good = examples[:-1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_fill, args=(str(tmp_path / "cache"), part, schema)) for part in (good[:9], good[3:])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    model = make_model(schema, 0)
    cache = FeatureCache(tmp_path / "cache")
    space = cache.space(model.net, 4, SIZE)
    assert all(cache.read(space, cache.content_key(e), CLEAN_VIEW) is not None for e in good)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no half-written file left behind
    assert max_difference(model.score(good, workers=0), model.score(good, cache=cache)) <= 1e-4


def test_a_changed_image_is_not_served_from_its_old_entry(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    model = make_model(schema, 0)
    cache = FeatureCache(tmp_path / "cache")
    task = examples[0]
    before = model.score([task], cache=cache)
    Image.new("RGB", (48, 40), (250, 10, 10)).save(task.source)  # same task, same path, new content
    after = model.score([task], cache=cache)
    assert max_difference(model.score([task], workers=0), after) <= 1e-4
    assert np.abs(after.embeddings - before.embeddings).max() > 1e-3


def test_different_frozen_weights_are_different_spaces(schema: LabelSchema, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    a, b = make_model(schema, 0, seed=0), make_model(schema, 0, seed=1)
    assert cache.space(a.net, 4, SIZE).path != cache.space(b.net, 4, SIZE).path
    assert cache.space(a.net, 4, SIZE).path != cache.space(a.net, 3, SIZE).path
    assert cache.space(a.net, 4, SIZE) == cache.space(make_model(schema, 2, seed=0).net, 4, SIZE)
    before = cache.space(a.net, 4, SIZE)
    with torch.no_grad():
        a.net.backbone.net.conv_stem.weight.mul_(1.01)  # the same network object, changed in place
    assert cache.space(a.net, 4, SIZE).path != before.path


def test_the_size_bound_removes_the_least_recently_used(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    model = make_model(schema, 0)
    cache = FeatureCache(tmp_path / "cache")
    good = examples[:-1]
    model.score(good, cache=cache)
    space = cache.space(model.net, 4, SIZE)
    entries = [space.entry(cache.content_key(e), CLEAN_VIEW) for e in good]
    per_entry = entries[0].stat().st_size
    for i, path in enumerate(entries):  # entry 0 used longest ago
        ts = 1_000_000 + i
        os.utime(path, (ts, ts))
    bounded = FeatureCache(tmp_path / "cache", max_bytes=per_entry * 5)
    freed = bounded.evict()
    assert freed == per_entry * (len(good) - 5)
    assert [p.exists() for p in entries] == [False] * (len(good) - 5) + [True] * 5
    assert bounded.size_bytes() <= bounded.max_bytes


def test_training_reads_the_cache_and_its_views_are_the_same_in_every_cache(
    schema: LabelSchema, tiny_set: TinyData, tmp_path: Path
) -> None:
    data = read_manifest(tiny_set.manifest, schema)
    config = TrainConfig(
        image_size=SIZE, epochs=2, min_steps=4, batch_size=8, workers=0, weights=None, trainable_stages=1
    )
    one, two = FeatureCache(tmp_path / "one"), FeatureCache(tmp_path / "two")
    result = train(ExampleSet(schema, data.examples), config, progress=False, cache=one)
    train(ExampleSet(schema, data.examples), config, progress=False, cache=two)
    space = one.space(result.model.net, 3, SIZE)  # the frozen groups did not move in training
    assert space.path.name == two.space(result.model.net, 3, SIZE).path.name
    key = one.content_key(data.examples[0])
    views = list(range(config.cached_views))
    assert all(space.entry(key, v).is_file() for v in views)
    x1, _ = one.read(space, key, 1) or (None, None)
    x1b, _ = two.read(two.space(result.model.net, 3, SIZE), key, 1) or (None, None)
    x0, _ = one.read(space, key, 0) or (None, None)
    assert x1 is not None and x1b is not None and x0 is not None
    assert torch.equal(x1, x1b)  # seeded by (content, view): any process makes the same augmented view
    assert not torch.allclose(x0, x1)  # and it is augmented
    scored = result.model.score(data.examples, cache=one)
    assert len(scored) == len(data.examples) and np.isfinite(scored.predicted_loss).all()


def test_a_training_is_the_same_whether_the_cache_was_empty_or_full(
    schema: LabelSchema, tiny_set: TinyData, tmp_path: Path
) -> None:
    """Filling the cache must not draw from torch's global random state, or a resumed benchmark would differ."""
    data = ExampleSet(schema, read_manifest(tiny_set.manifest, schema).examples)
    config = TrainConfig(image_size=SIZE, epochs=2, min_steps=4, batch_size=8, workers=0, weights=None)
    cache = FeatureCache(tmp_path / "cache")
    cold = train(data, config, progress=False, cache=cache).model.net.state_dict()
    warm = train(data, config, progress=False, cache=cache).model.net.state_dict()
    assert all(torch.equal(cold[k], warm[k]) for k in cold)


def test_filling_leaves_every_module_in_the_mode_it_was_in(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    """Frozen groups keep their BatchNorm statistics in training; computing cache entries must not switch them."""
    model = make_model(schema, 1)
    model.score(examples, cache=FeatureCache(tmp_path / "one"))
    assert not any(m.training for m in model.net.modules())
    net = model.net
    net.set_trainable_stages(1)
    net.train()
    modes = [m.training for m in net.modules()]
    cache = FeatureCache(tmp_path / "two")
    good = examples[:2]
    cache.fill(net, cache.space(net, 3, SIZE), good, [cache.content_key(e) for e in good], [0, 1])
    assert [m.training for m in net.modules()] == modes
    inside = [m for g in net.backbone.stage_groups()[:3] for m in list(g.modules())[1:]]  # not the group wrapper
    assert inside and not any(m.training for m in inside)
