"""DomainBed's photometric augmentation split in two: random draws in the loader, pixels on the device.

DomainBed's training augmentation ends with ``ColorJitter(0.3, 0.3, 0.3, 0.3)`` and
``RandomGrayscale(0.1)``. On the CPU the jitter costs most of the loader's work (its hue step
converts every pixel to HSV and back): 1.5 of 2.6 ms per 224 px image on one core here
(``benchmarks/bench_augmentation.py``), so even 16 perfectly scaling cores feed at most about 6,000
images/s, what one H200 is expected to train a ViT-S/16 at. With
``--augment_on device`` the loader keeps the geometric part (crop, flip) and only *draws* the
photometric parameters (``PhotometricDraw``: the same random calls, in the same order, as
torchvision's v2 transforms, so a seed picks the same jitter either way); the training device then
applies them to the whole batch at once (``PhotometricAugment``).

Same draws, same operations, one difference: the device applies them to float images, while the
loader path applies them to 8-bit PIL images (rounding to 1/255 after each operation).
"""

from __future__ import annotations

from typing import Sequence

import torch

# per-image parameters: the order of the four jitter operations, their factors, the grayscale flag
ORDER = slice(0, 4)
BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAYSCALE = range(4, 9)
N_PARAMS = 9
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class PhotometricDraw:
    """The loader's half: ``uint8 image (3, H, W) -> (image, params)``, drawing ColorJitter's order and
    factors and RandomGrayscale's coin as torchvision's v2 transforms do (from the global CPU
    generator, which the loader seeds per example)."""

    def __init__(self, jitter: float = 0.3, grayscale_p: float = 0.1):
        self.jitter, self.grayscale_p = jitter, grayscale_p

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = torch.empty(N_PARAMS)
        params[ORDER] = torch.randperm(4).float()
        low = max(0.0, 1.0 - self.jitter)
        for index in (BRIGHTNESS, CONTRAST, SATURATION):
            params[index] = float(torch.empty(1).uniform_(low, 1.0 + self.jitter))
        params[HUE] = float(torch.empty(1).uniform_(-self.jitter, self.jitter))
        params[GRAYSCALE] = float(bool(torch.rand(1) < self.grayscale_p))
        return image, params

    def __repr__(self) -> str:
        return f"{type(self).__name__}(jitter={self.jitter}, grayscale_p={self.grayscale_p})"


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def _contrast(x, factor):
    return _blend(x, _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _saturation(x, factor):
    return _blend(x, _grayscale(x), factor)


def _hue(x, shift):
    """Rotate the hue by ``shift`` (a fraction of the circle) in the HSV hexcone, per image."""
    r, g, b = x.unbind(-3)
    value, _ = x.max(dim=-3)
    chroma = value - x.min(dim=-3).values
    grey = chroma == 0
    saturation = chroma / torch.where(grey, torch.ones_like(value), value)
    safe_chroma = torch.where(grey, torch.ones_like(chroma), chroma)
    hue = torch.where(value == r, (g - b) / safe_chroma,
                      torch.where(value == g, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma))
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0)
    # back to RGB: each channel n is value - value*saturation*clamp(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + hue * 6.0, 6.0)
        channels.append(value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=-3)


JITTER_OPERATIONS = (_brightness, _contrast, _saturation, _hue)  # torchvision's order of indices


class PhotometricAugment:
    """The device's half: ``(uint8 images (N, 3, H, W) on the device, params (N, 9) on the host)`` ->
    normalised float images. Each image goes through its four jitter operations in its own order: at
    each position the batch is grouped by operation (a permutation planned on the host, so the device
    never waits), each group transformed at once, and the batch put back in order at the end."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)
        self._statistics: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, made once

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        device = images.device
        params = params.detach().to("cpu", torch.float32)
        x = images.to(torch.float32).div_(255.0)
        n = len(params)
        order = params[:, ORDER].long()
        plans, rows = [], torch.arange(n)  # rows[i]: the image now at batch position i
        for position in range(4):
            regroup = torch.argsort(order[rows, position], stable=True)
            rows = rows[regroup]
            counts = torch.bincount(order[rows, position], minlength=4).tolist()
            plans.append((regroup, counts, params[rows, BRIGHTNESS:HUE + 1]))
        indices = torch.stack([regroup for regroup, _, _ in plans] + [torch.argsort(rows)]).to(device, non_blocking=True)
        factors = torch.stack([f for _, _, f in plans]).to(device, non_blocking=True)
        grayscale = (params[rows, GRAYSCALE] > 0.5).to(device, non_blocking=True).view(-1, 1, 1, 1)
        for position, (_, counts, _) in enumerate(plans):
            x = x[indices[position]]
            groups = zip(x.split(counts), factors[position].split(counts), JITTER_OPERATIONS)
            x = torch.cat([operation(part, f[:, j]) for j, (part, f, operation) in enumerate(groups)])
        x = torch.where(grayscale, _grayscale(x).expand_as(x), x)[indices[4]]
        if device not in self._statistics:
            self._statistics[device] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                        torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        mean, std = self._statistics[device]
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
