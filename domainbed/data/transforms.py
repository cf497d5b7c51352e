"""Image transforms: DomainBed's evaluation resize and training augmentation (torchvision v2).

Builders return picklable objects (``v2.Compose``, module-level functions) so DataLoader
workers can receive them under any start method.
"""

from __future__ import annotations

import numbers

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224


def identity(x: torch.Tensor) -> torch.Tensor:
    """The transform of tensor datasets: their items are already model inputs."""
    return x


def _to_normalized_tensor() -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]


def image_eval_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> v2.Compose:
    """Resize to a square ``image_size`` and normalise with ImageNet statistics (deterministic)."""
    return v2.Compose([v2.Resize((image_size, image_size)), *_to_normalized_tensor()])


def geometric_augmentation(image_size: int = DEFAULT_IMAGE_SIZE) -> list:
    """DomainBed's augmentation before the colour one: a random crop of 70-100% of the area, a flip."""
    return [v2.RandomResizedCrop(image_size, scale=(0.7, 1.0)), v2.RandomHorizontalFlip()]


def photometric_augmentation(on_device: bool = False) -> list:
    """DomainBed's colour jitter and grayscale, then the tensor conversion. ``on_device``: only draw
    their parameters here and leave the pixels to ``device_augment.PhotometricAugment`` (items become
    ``(uint8 image, params)``)."""
    if on_device:
        from .device_augment import PhotometricDraw

        return [v2.ToImage(), PhotometricDraw(jitter=0.3, grayscale_p=0.1)]
    return [v2.ColorJitter(0.3, 0.3, 0.3, 0.3), v2.RandomGrayscale(), *_to_normalized_tensor()]


def image_train_transform(image_size: int = DEFAULT_IMAGE_SIZE, photometric_on_device: bool = False) -> v2.Compose:
    """DomainBed's training augmentation: random crop 70-100% of the area, flip, colour jitter, grayscale."""
    return v2.Compose([*geometric_augmentation(image_size), *photometric_augmentation(photometric_on_device)])


def image_size_from(hparams: dict) -> int:
    """Read and check the ``image_size`` hparam (tests use tiny images to stay fast)."""
    size = hparams.get("image_size", DEFAULT_IMAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"hparam image_size must be a positive integer, got {size!r}")
    return int(size)
