"""The photometric augmentation on the device equals torchvision's, draw for draw.

``--augment_on device`` splits DomainBed's augmentation: the loader draws ColorJitter's order and
factors and RandomGrayscale's coin (``PhotometricDraw``) and the device applies them to the batch
(``PhotometricAugment``). Under the same per-example seed, that must give what torchvision's v2
ColorJitter + RandomGrayscale + Normalize give on the same float image, for every order of the
four operations (24 seeds cover many orders; a test below checks that several occur).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from domainbed.data.device_augment import GRAYSCALE, ORDER, PhotometricAugment, PhotometricDraw
from domainbed.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SEEDS = range(24)


def _images(n: int = len(SEEDS), side: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=generator)
    images[0] = images[0, :1]  # a grey image: hue and saturation leave it alone
    images[1, :, :2] = 255     # saturated and clipped corners
    return images


def _torchvision_reference(image: torch.Tensor, seed: int) -> torch.Tensor:
    pipeline = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.ColorJitter(0.3, 0.3, 0.3, 0.3),
                           v2.RandomGrayscale(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.manual_seed(seed)
    return pipeline(image)


def _draws(images: torch.Tensor) -> torch.Tensor:
    params = []
    for image, seed in zip(images, SEEDS):
        torch.manual_seed(seed)
        kept, drawn = PhotometricDraw()(image)
        assert kept is image
        params.append(drawn)
    return torch.stack(params)


def test_the_device_half_gives_torchvisions_augmentation_for_the_same_draws():
    images = _images()
    params = _draws(images)
    expected = torch.stack([_torchvision_reference(image, seed) for image, seed in zip(images, SEEDS)])
    got = PhotometricAugment(IMAGENET_MEAN, IMAGENET_STD)(images, params)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_the_seeds_cover_many_orders_and_both_grayscale_outcomes():
    params = _draws(_images())
    orders = {tuple(row) for row in params[:, ORDER].long().tolist()}
    assert len(orders) >= 12
    assert 0 < params[:, GRAYSCALE].sum() < len(params)


def test_a_batch_gives_each_image_what_it_gets_alone():
    images = _images()
    params = _draws(images)
    augment = PhotometricAugment(IMAGENET_MEAN, IMAGENET_STD)
    batch = augment(images, params)
    for i in (0, 5, 17):
        torch.testing.assert_close(augment(images[i:i + 1], params[i:i + 1])[0], batch[i], atol=1e-6, rtol=0)
