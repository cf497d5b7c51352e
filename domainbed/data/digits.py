"""Small in-memory datasets that need no download: random Debug tensors and scikit-learn's digits.

``RotatedDigits`` and ``ColoredDigits`` follow RotatedMNIST / ColoredMNIST's rules on the
1,797 8x8 digits shipped inside scikit-learn, upscaled to 32x32. They make the whole pipeline
(training, selection, tables) runnable in seconds on a laptop. The environment-building
functions here (``environment_shares``, ``rotate_images``, ``colour_by_label``) are shared with
the MNIST datasets.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..seeding import seed_hash
from .base import TensorDomainDataset, TensorEnvironment

SHUFFLE_SEED = 0  # the fixed seed of the shuffle that assigns images to environments
LABEL_NOISE = 0.25  # ColoredMNIST: probability that the binary label is flipped
DIGITS_SIZE = 32

EnvironmentTensors = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- environment rules
def environment_shares(n_items: int, n_envs: int, seed: int = SHUFFLE_SEED) -> list[np.ndarray]:
    """Disjoint index shares, one per environment, after a seeded shuffle (every n_envs-th item)."""
    order = np.random.RandomState(seed).permutation(n_items)
    return [order[env::n_envs] for env in range(n_envs)]


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a batch [N,C,H,W] counter-clockwise by ``angle`` degrees (bilinear, black fill)."""
    if angle == 0:
        return images.clone()
    return TF.rotate(images, float(angle), interpolation=InterpolationMode.BILINEAR, fill=0.0)


def colour_by_label(
    images: torch.Tensor, digits: torch.Tensor, colour_flip_prob: float, generator: torch.Generator
) -> EnvironmentTensors:
    """ColoredMNIST's rule: label = (digit < 5) flipped w.p. 0.25; colour = label flipped w.p. ``colour_flip_prob``.

    ``images`` is [N,1,H,W]; the result has two channels (red, green) and only the channel of
    the image's colour is non-zero, so colour agrees with the label w.p. 1 - colour_flip_prob.
    """
    n = len(digits)
    labels = (digits < 5).long() ^ (torch.rand(n, generator=generator) < LABEL_NOISE).long()
    colours = labels ^ (torch.rand(n, generator=generator) < colour_flip_prob).long()
    coloured = torch.zeros(n, 2, *images.shape[2:], dtype=images.dtype)
    coloured[torch.arange(n), colours] = images[:, 0]
    return coloured, labels


def rotated_environments(
    images: torch.Tensor, labels: torch.Tensor, angles: Sequence[float]
) -> list[EnvironmentTensors]:
    """One rotated share of (images, labels) per angle."""
    shares = environment_shares(len(labels), len(angles))
    return [(rotate_images(images[idx], angle), labels[idx]) for idx, angle in zip(shares, angles)]


def coloured_environments(
    images: torch.Tensor, digits: torch.Tensor, colour_flip_probs: Sequence[float], dataset_name: str
) -> list[EnvironmentTensors]:
    """One coloured share per colour-flip probability; the noise of each share is seeded by its name."""
    shares = environment_shares(len(digits), len(colour_flip_probs))
    environments = []
    for env, (idx, prob) in enumerate(zip(shares, colour_flip_probs)):
        generator = torch.Generator().manual_seed(seed_hash(dataset_name, env))
        environments.append(colour_by_label(images[idx], digits[idx], prob, generator))
    return environments


# ----------------------------------------------------------------------------- scikit-learn digits
def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (images [N,8,8] in 0..16, labels).

    Reads scikit-learn's bundled CSV directly: importing ``sklearn.datasets`` costs over a second.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the Digits datasets need scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digit_tensors() -> EnvironmentTensors:
    """All digits upscaled to [N,1,32,32] with values in [0,1] (cached: built once per process)."""
    images, labels = _read_sklearn_digits()
    images = torch.from_numpy(images / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.from_numpy(labels)


@functools.lru_cache(maxsize=1)
def _rotated_digits() -> list[EnvironmentTensors]:
    images, labels = _digit_tensors()
    return rotated_environments(images, labels, [float(a) for a in RotatedDigits.ENVIRONMENTS])


@functools.lru_cache(maxsize=1)
def _coloured_digits() -> list[EnvironmentTensors]:
    images, digits = _digit_tensors()
    return coloured_environments(images, digits, ColoredDigits.COLOUR_FLIP_PROBS, "ColoredDigits")


class RotatedDigits(TensorDomainDataset):
    """RotatedMNIST's rules on scikit-learn's digits: 6 disjoint shares rotated by 0..75 degrees. ``root`` is unused."""


    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.datasets = [TensorEnvironment(x, y) for x, y in _rotated_digits()]
        self.input_shape = (1, DIGITS_SIZE, DIGITS_SIZE)
        self.num_classes = 10


class ColoredDigits(TensorDomainDataset):
    """ColoredMNIST's rules on scikit-learn's digits: colour agrees with the label w.p. 0.9, 0.8, 0.1.

    ``root`` is unused.
    """

    COLOUR_FLIP_PROBS = (0.1, 0.2, 0.9)

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.datasets = [TensorEnvironment(x, y) for x, y in _coloured_digits()]
        self.input_shape = (2, DIGITS_SIZE, DIGITS_SIZE)
        self.num_classes = 2


# ----------------------------------------------------------------------------- random debug tensors
class _RandomDebug(TensorDomainDataset):
    """Random inputs and labels (fixed seed) for smoke tests of models and the training loop."""

    INPUT_SHAPE: tuple[int, int, int] = (3, 28, 28)
    SAMPLES_PER_ENV = 16

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 2
        generator = torch.Generator().manual_seed(seed_hash(type(self).__name__))
        self.datasets = [
            TensorEnvironment(
                torch.randn(self.SAMPLES_PER_ENV, *self.INPUT_SHAPE, generator=generator),
                torch.randint(0, self.num_classes, (self.SAMPLES_PER_ENV,), generator=generator),
            )
            for _ in self.ENVIRONMENTS
        ]


class Debug28(_RandomDebug):
    INPUT_SHAPE = (3, 28, 28)


class Debug224(_RandomDebug):
    INPUT_SHAPE = (3, 224, 224)
