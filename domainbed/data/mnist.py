"""RotatedMNIST and ColoredMNIST from torchvision's MNIST files (train + test = 70,000 images).

Reads ``<root>/MNIST/raw/*-ubyte`` (torchvision's layout, what ``torchvision.datasets.MNIST``
downloads) or ``<root>/raw/*-ubyte`` when ``root`` is the MNIST folder itself. The images are
split into disjoint shares after a shuffle seeded by the ``environment_shuffle_seed`` hparam (the
run's trial seed), then rotated or coloured by the rules shared with the digits datasets
(:mod:`.digits`). The images stay 28x28: ``image_size`` is refused if it asks for another size.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from .base import TensorDomainDataset, TensorEnvironment
from .digits import coloured_environments, environment_shuffle_seed, rotated_environments

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_mnist_raw_dir(root: str, dataset_name: str) -> str:
    """The folder holding MNIST's four raw files, or a FileNotFoundError naming them and the fix."""
    needed = [name for pair in MNIST_FILES.values() for name in pair]
    candidates = [os.path.join(root, "MNIST", "raw"), os.path.join(root, "raw")]
    for candidate in candidates:
        if all(os.path.isfile(os.path.join(candidate, name)) for name in needed):
            return candidate
    raise FileNotFoundError(
        f"MNIST not found: expected {', '.join(needed)} in {candidates[0]}; download it: "
        f"python -m domainbed.scripts.download --data_dir {root} --datasets {dataset_name}"
    )


def load_mnist(root: str, dataset_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 MNIST images as floats in [0,1] of shape [N,1,28,28], and their digit labels (train first)."""
    raw_dir = find_mnist_raw_dir(root, dataset_name)
    images, labels = [], []
    for image_file, label_file in MNIST_FILES.values():
        try:
            images.append(read_image_file(os.path.join(raw_dir, image_file)))
            labels.append(read_label_file(os.path.join(raw_dir, label_file)))
        except (AssertionError, KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise ValueError(
                f"cannot read MNIST file in {raw_dir} ({exc}); delete the folder and download again: "
                f"python -m domainbed.scripts.download --data_dir {root} --datasets {dataset_name}"
            ) from exc
    return (torch.cat(images).float() / 255.0).unsqueeze(1), torch.cat(labels).long()


class _MNISTDataset(TensorDomainDataset):
    """The MNIST files' location check and hparams, shared by the two MNIST datasets."""

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        if self.hparams.get("image_size", 28) != 28:
            raise ValueError(f"{type(self).__name__} images are 28x28; image_size {self.hparams['image_size']} "
                             "is not supported (leave image_size at 28)")
        self.shuffle_seed = environment_shuffle_seed(self.hparams)

    @classmethod
    def check_data(cls, root: str) -> None:
        find_mnist_raw_dir(str(root), cls.__name__)


class RotatedMNIST(_MNISTDataset):
    """Six disjoint MNIST shares rotated by 0, 15, ..., 75 degrees; 10 classes."""


    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        images, labels = load_mnist(str(root), type(self).__name__)
        angles = [float(a) for a in self.ENVIRONMENTS]
        self.datasets = [TensorEnvironment(x, y)
                         for x, y in rotated_environments(images, labels, angles, self.shuffle_seed)]
        self.input_shape = (1, 28, 28)
        self.num_classes = 10


class ColoredMNIST(_MNISTDataset):
    """Three MNIST shares, binary noisy labels, colour agreeing with the label w.p. 0.9, 0.8, 0.1."""

    COLOUR_FLIP_PROBS = (0.1, 0.2, 0.9)

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        images, digits = load_mnist(str(root), type(self).__name__)
        environments = coloured_environments(images, digits, self.COLOUR_FLIP_PROBS, type(self).__name__,
                                             self.shuffle_seed)
        self.datasets = [TensorEnvironment(x, y) for x, y in environments]
        self.input_shape = (2, 28, 28)
        self.num_classes = 2
