"""Images decoded once (model.data.decoded) give exactly what reading the files gives: scores, training, failures."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import TinyData

from model.data.decoded import DecodedImages
from model.data.examples import Example, ExampleSet, ImageDataset, read_manifest
from model.nn.backbones import build_backbone
from model.nn.checkpoint import TrainedModel
from model.nn.network import MultiHeadNet
from model.schema import LabelSchema
from model.training.trainer import TrainConfig, train

SIZE = 32


@pytest.fixture()
def examples(schema: LabelSchema, tiny_set: TinyData, tmp_path: Path) -> list[Example]:
    """The tiny set plus one truncated JPEG."""
    good = read_manifest(tiny_set.manifest, schema).examples
    data = Path(good[0].source).read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    return good + [Example(key="truncated.jpg", source=str(bad), labels=good[0].labels)]


def test_scores_from_decoded_pixels_equal_scores_from_the_files(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    net = MultiHeadNet(build_backbone("efficientnet_lite0", weights=None), schema).eval()
    model = TrainedModel(
        net=net,
        meta={
            "schema": schema.to_dict(),
            "backbone": "efficientnet_lite0",
            "image_size": SIZE,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "version": "t",
        },
        metrics={},
    )
    decoded = DecodedImages.decode(examples, SIZE, tmp_path / "pixels.npy", progress=False)
    assert len(decoded) == len(examples) - 1 and "truncated.jpg" in decoded and "elsewhere.jpg" not in decoded

    direct = model.score(examples, workers=0)
    cached = model.score(examples, workers=0, decoded=decoded)
    assert cached.keys == direct.keys and len(direct) == len(examples) - 1
    assert np.array_equal(cached.predicted_loss, direct.predicted_loss)
    assert np.array_equal(cached.embeddings, direct.embeddings)
    assert all(np.array_equal(cached.probs[h], direct.probs[h]) for h in schema.head_names)
    assert cached.failures == direct.failures and [k for k, _ in direct.failures] == ["truncated.jpg"]

    # a pickled DecodedImages is its path: another process reopens the same file
    blob = pickle.dumps(decoded)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert torch.equal(again.pixels(examples[3].key), decoded.pixels(examples[3].key))
    with pytest.raises(ValueError, match="decode them again"):
        ImageDataset(examples, None, SIZE * 2, decoded)


def test_training_on_decoded_pixels_is_the_same_training(
    schema: LabelSchema, examples: list[Example], tmp_path: Path
) -> None:
    data = ExampleSet(schema, examples[:-1])
    decoded = DecodedImages.decode(data.examples, SIZE, tmp_path / "pixels.npy", progress=False)
    config = TrainConfig(weights=None, image_size=SIZE, epochs=1, min_steps=3, batch_size=8, workers=0, device="cpu")
    a = train(data, config, progress=False).model
    b = train(data, config, progress=False, decoded=decoded).model
    for key, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[key]), key
    assert a.metrics == b.metrics
