"""Image transforms. Training augmentation keeps labels true.

Allowed: horizontal flip, random resized crop, small rotation, mild blur, sensor noise, JPEG artefacts.
Left out on purpose: strong brightness, hue or contrast changes (they turn day into dusk and dusk into
night) and vertical flips (sky and road swap, snow on the ground would fall upwards).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Squash the whole frame to a square: both the sky and the ground carry the labels."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def train_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.RandomResizedCrop(image_size, scale=(0.65, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomRotation(5)], p=0.3),
        v2.RandomApply([v2.JPEG(quality=(40, 95))], p=0.3),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.0))], p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.GaussianNoise(sigma=0.02)], p=0.3),
        v2.Normalize(mean, std),
    ])
