"""Small in-memory datasets that need no download: random Debug tensors and scikit-learn's digits.

``RotatedDigits`` and ``ColoredDigits`` follow RotatedMNIST / ColoredMNIST's rules on the
1,797 8x8 digits shipped inside scikit-learn, upscaled to ``image_size`` (hparam, default 32; 16
keeps every pixel of the 8x8 originals with a quarter of the patch tokens). They make the whole
pipeline (training, selection, tables) runnable in seconds on a laptop. The environment-building
functions here (``environment_shares``, ``rotate_images``, ``colour_by_label``) are shared with
the MNIST datasets.

Which images form which environment (and, for the coloured datasets, the label noise and
colours) is drawn from the ``environment_shuffle_seed`` hparam, which is the run's ``trial_seed``
unless given: trials are independent draws of the benchmark, and every algorithm of a trial sees
the same environments, so rows compare paired within a trial.
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

LABEL_NOISE = 0.25  # ColoredMNIST: probability that the binary label is flipped
DIGITS_SIZE = 32  # default image_size of the digit datasets

EnvironmentTensors = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- environment rules
def environment_shares(n_items: int, n_envs: int, seed: int = 0) -> list[np.ndarray]:
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
    images: torch.Tensor, labels: torch.Tensor, angles: Sequence[float], seed: int = 0
) -> list[EnvironmentTensors]:
    """One rotated share of (images, labels) per angle (shares drawn with ``seed``)."""
    shares = environment_shares(len(labels), len(angles), seed)
    return [(rotate_images(images[idx], angle), labels[idx]) for idx, angle in zip(shares, angles)]


def coloured_environments(
    images: torch.Tensor, digits: torch.Tensor, colour_flip_probs: Sequence[float], dataset_name: str,
    seed: int = 0
) -> list[EnvironmentTensors]:
    """One coloured share per colour-flip probability; shares and noise drawn with ``seed``."""
    shares = environment_shares(len(digits), len(colour_flip_probs), seed)
    environments = []
    for env, (idx, prob) in enumerate(zip(shares, colour_flip_probs)):
        generator = torch.Generator().manual_seed(seed_hash(dataset_name, env, seed))
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


@functools.lru_cache(maxsize=2)
def _digit_tensors(size: int = DIGITS_SIZE) -> EnvironmentTensors:
    """All digits upscaled to [N,1,size,size] with values in [0,1] (cached: built once per process)."""
    images, labels = _read_sklearn_digits()
    images = torch.from_numpy(images / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.from_numpy(labels)


@functools.lru_cache(maxsize=2)
def _rotated_digits(size: int = DIGITS_SIZE, seed: int = 0) -> list[EnvironmentTensors]:
    images, labels = _digit_tensors(size)
    return rotated_environments(images, labels, [float(a) for a in RotatedDigits.ENVIRONMENTS], seed)


@functools.lru_cache(maxsize=2)
def _coloured_digits(size: int = DIGITS_SIZE, seed: int = 0) -> list[EnvironmentTensors]:
    images, digits = _digit_tensors(size)
    return coloured_environments(images, digits, ColoredDigits.COLOUR_FLIP_PROBS, "ColoredDigits", seed)


class _DigitsDataset(TensorDomainDataset):
    """The digit datasets' hparams: ``image_size`` and ``environment_shuffle_seed``."""

    CHANNELS = 1

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.image_size = _image_size(self.hparams)
        self.shuffle_seed = environment_shuffle_seed(self.hparams)
        self.input_shape = (self.CHANNELS, self.image_size, self.image_size)


class RotatedDigits(_DigitsDataset):
    """RotatedMNIST's rules on scikit-learn's digits: 6 disjoint shares rotated by 0..75 degrees. ``root`` is unused."""

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.datasets = [TensorEnvironment(x, y) for x, y in _rotated_digits(self.image_size, self.shuffle_seed)]
        self.num_classes = 10


class ColoredDigits(_DigitsDataset):
    """ColoredMNIST's rules on scikit-learn's digits: colour agrees with the label w.p. 0.9, 0.8, 0.1.

    ``root`` is unused.
    """

    CHANNELS = 2
    COLOUR_FLIP_PROBS = (0.1, 0.2, 0.9)

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.datasets = [TensorEnvironment(x, y) for x, y in _coloured_digits(self.image_size, self.shuffle_seed)]
        self.num_classes = 2


def _image_size(hparams: dict) -> int:
    size = hparams.get("image_size", DIGITS_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"hparam image_size must be an integer >= 8 for the digit datasets, got {size!r}")
    return size


def environment_shuffle_seed(hparams: dict) -> int:
    """The seed that assigns images to environments (the hparam; 0 when absent, DomainBed's API)."""
    seed = hparams.get("environment_shuffle_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"hparam environment_shuffle_seed must be an integer >= 0, got {seed!r}")
    return seed


# ----------------------------------------------------------------------------- random debug tensors
class _RandomDebug(TensorDomainDataset):
    """Random inputs and labels (fixed seed) for smoke tests of models and the training loop."""

    INPUT_SHAPE: tuple[int, int, int] = (3, 28, 28)
    SAMPLES_PER_ENV = 16

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        size = self.INPUT_SHAPE[-1]
        if self.hparams.get("image_size", size) != size:
            raise ValueError(f"{type(self).__name__} images are {size}x{size}; image_size "
                             f"{self.hparams['image_size']} is not supported (leave image_size at {size})")
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
