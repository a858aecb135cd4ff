"""Image transforms. Training augmentation keeps labels true.

Every image is first squashed to ``image_size`` x ``image_size`` (:func:`squash`), the one step that
depends on the file; the transforms below start from that uint8 tensor, so images decoded once and
kept (model.data.decoded) go through exactly the same steps as images read from disk.

Allowed: horizontal flip, random resized crop, small rotation, mild blur, sensor noise, JPEG artefacts.
Left out on purpose: strong brightness, hue or contrast changes (they turn day into dusk and dusk into
night) and vertical flips (sky and road swap, snow on the ground would fall upwards).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def squash(image_size: int) -> v2.Compose:
    """PIL image -> (3, image_size, image_size) uint8: the whole frame, since both sky and ground carry labels."""
    return v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)])


def eval_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Squashed uint8 pixels -> the network's normalised float input."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def train_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Squashed uint8 pixels -> an augmented, normalised float input."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.65, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(5)], p=0.3),
            v2.RandomApply([v2.JPEG(quality=(40, 95))], p=0.3),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.0))], p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.GaussianNoise(sigma=0.02)], p=0.3),
            v2.Normalize(mean, std),
        ]
    )
