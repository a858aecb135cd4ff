"""Backbones: four stages at strides 4..32, the shipped ImageNet weights, local weights files."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import v2

from model.nn.backbones import BACKBONES, build_backbone

#: ImageNet classes a palace photo may fairly be called (palace, monastery, castle, stupa, mosque, church, bell cote,
#: pagoda-like).
PALACE = 698
PALACE_LIKE = {698, 663, 483, 832, 668, 497, 442}


@pytest.mark.parametrize(
    ("name", "channels"), [("efficientnet_lite0", (24, 40, 112, 320)), ("resnet18", (64, 128, 256, 512))]
)
def test_four_stages_at_strides_4_to_32(name: str, channels: tuple[int, ...]) -> None:
    backbone = build_backbone(name, weights=None).eval()
    assert backbone.stage_channels == channels
    assert len(backbone.stage_groups()) == 4
    with torch.no_grad():
        feats, pooled = backbone(torch.randn(2, 3, 96, 64))
    assert [tuple(f.shape) for f in feats] == [(2, c, 96 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    assert pooled.shape == (2, backbone.embedding_dim)


def test_every_parameter_belongs_to_a_stage_group() -> None:
    # progressive unfreezing acts on the groups: a parameter outside them would never be trainable below 4 stages
    for name in BACKBONES:
        backbone = build_backbone(name, weights=None)
        backbone.drop_imagenet_classifier()
        grouped = {id(p) for g in backbone.stage_groups() for p in g.parameters()}
        assert {id(p) for p in backbone.parameters()} == grouped, name


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0, resnet18"):
        build_backbone("vgg16", weights=None)


def test_shipped_imagenet_weights_see_a_palace_in_china_jpg() -> None:
    load_sample_image = pytest.importorskip("sklearn.datasets").load_sample_image
    backbone = build_backbone("efficientnet_lite0").eval()
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(224, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(backbone.mean, backbone.std),
        ]
    )
    x = transform(Image.fromarray(load_sample_image("china.jpg")))[None]
    with torch.no_grad():
        _, pooled = backbone(x)
        top3 = backbone.imagenet_logits(pooled)[0].topk(3).indices.tolist()
    assert PALACE_LIKE & set(top3), top3
    assert top3[0] == PALACE


def test_resnet18_offline_warns_and_builds(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with caplog.at_level(logging.WARNING, logger="model.nn.backbones"):
        backbone = build_backbone("resnet18")
    assert "random initialisation" in caplog.text and "no network" in caplog.text
    with torch.no_grad():
        feats, _ = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert len(feats) == 4


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file_loads(tmp_path, suffix: str) -> None:
    source = build_backbone("efficientnet_lite0", weights=None)
    state = {k: v.contiguous() for k, v in source.net.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    loaded = build_backbone("efficientnet_lite0", weights=path)
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_weights_file_of_another_model_errors_clearly(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match=r"does not fit efficientnet_lite0.*missing"):
        build_backbone("efficientnet_lite0", weights=path)


def test_weights_file_with_wrong_shapes_errors_clearly(tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(build_backbone("resnet18", weights=None).net.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit efficientnet_lite0"):
        build_backbone("efficientnet_lite0", weights=path)


def test_missing_weights_file_errors_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet18", weights=tmp_path / "nope.safetensors")
