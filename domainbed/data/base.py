"""The base class every dataset shares: a list of per-environment datasets plus DomainBed's metadata.

Environment datasets yield *raw* items ``(x_raw, y)``; the training code applies
``train_transform(env_index)`` or ``eval_transform`` itself, so one environment can be read
with augmentation (its "in" split while training) and without (every split when evaluating).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from .catalog import CATALOG, check_test_envs

Transform = Callable[[Any], torch.Tensor]


class MultipleDomainDataset:
    """A dataset made of environments (domains); ``ds[i]`` is environment ``i``."""

    ENVIRONMENTS: list[str] = []
    N_STEPS = 5001  # default number of training steps (DomainBed)
    CHECKPOINT_FREQ = 100  # default steps between evaluations (DomainBed)
    N_WORKERS = 8  # default DataLoader workers; in-memory tensor datasets use 0

    def __init_subclass__(cls, **kwargs):
        """A dataset class takes its names and defaults from the catalog entry of its own name."""
        super().__init_subclass__(**kwargs)
        info = CATALOG.get(cls.__name__)
        if info is not None:
            cls.INFO = info
            cls.ENVIRONMENTS = list(info.environments)
            cls.N_STEPS, cls.CHECKPOINT_FREQ = info.n_steps, info.checkpoint_freq

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        self.root = root
        self.hparams = dict(hparams or {})
        self.test_envs = check_test_envs(type(self).__name__, test_envs)
        self.datasets: list[Dataset] = []
        self.input_shape: tuple[int, int, int] = (0, 0, 0)
        self.num_classes = 0

    @classmethod
    def check_data(cls, root: str) -> None:
        """Raise FileNotFoundError (one line naming the download command) if the data is not where
        this dataset reads it. Cheap: folders and files are checked, nothing is listed or loaded
        (a sweep checks once before launching anything). Embedded datasets have nothing to check."""

    @property
    def environment_names(self) -> list[str]:
        return list(self.ENVIRONMENTS)

    @property
    def data_augmentation(self) -> bool:
        return bool(self.hparams.get("data_augmentation", True))

    @property
    def eval_transform(self) -> Transform:
        """Deterministic x_raw -> float tensor of shape ``input_shape``."""
        raise NotImplementedError

    def train_transform(self, env_index: int, photometric_on_device: bool = False) -> Transform:
        """The transform for training items of ``env_index``: augmentation unless disabled or a test env.
        ``photometric_on_device``: leave the colour augmentation's pixels to ``device_augment``
        (datasets without it ignore the flag)."""
        return self.eval_transform

    def device_augment(self, env_index: int, photometric_on_device: bool) -> Callable | None:
        """What the training device applies to ``env_index``'s training batches, if anything:
        ``(uint8 images, params) -> inputs`` (see ``train_transform``)."""
        return None

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(env)}" for name, env in zip(self.ENVIRONMENTS, self.datasets))
        return f"{type(self).__name__}({sizes}; classes={self.num_classes}, input_shape={self.input_shape})"


class TensorEnvironment(Dataset):
    """One environment held in memory: items are ``(image tensor [C,H,W], int label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class TensorDomainDataset(MultipleDomainDataset):
    """Base for in-memory tensor datasets: no augmentation (as DomainBed), no loader workers."""

    N_WORKERS = 0  # items are tensor slices; worker processes would only add start-up cost

    @property
    def eval_transform(self) -> Transform:
        from .transforms import identity

        return identity


class ImageDomainDataset(MultipleDomainDataset):
    """Base for datasets of PIL images: square ``image_size`` inputs (hparam, default 224), ImageNet statistics."""

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        from .transforms import image_eval_transform, image_size_from

        super().__init__(root, test_envs, hparams)
        self.image_size = image_size_from(self.hparams)
        self.input_shape = (3, self.image_size, self.image_size)
        self._eval_transform = image_eval_transform(self.image_size)
        self._train_transforms: dict[bool, Transform] = {}

    @property
    def eval_transform(self) -> Transform:
        return self._eval_transform

    def geometric_augmentation(self) -> list:
        """The augmentation before the colour one: DomainBed's random resized crop and flip."""
        from .transforms import geometric_augmentation

        return geometric_augmentation(self.image_size)

    def _augments(self, env_index: int) -> bool:
        if not 0 <= env_index < len(self.ENVIRONMENTS):
            raise ValueError(f"environment index {env_index} out of range for {type(self).__name__}")
        return self.data_augmentation and env_index not in self.test_envs

    def train_transform(self, env_index: int, photometric_on_device: bool = False) -> Transform:
        if not self._augments(env_index):
            return self._eval_transform
        if photometric_on_device not in self._train_transforms:
            from torchvision.transforms import v2

            from .transforms import photometric_augmentation

            self._train_transforms[photometric_on_device] = v2.Compose(
                [*self.geometric_augmentation(), *photometric_augmentation(photometric_on_device)])
        return self._train_transforms[photometric_on_device]

    def device_augment(self, env_index: int, photometric_on_device: bool) -> Callable | None:
        if not (photometric_on_device and self._augments(env_index)):
            return None
        from .device_augment import PhotometricAugment
        from .transforms import IMAGENET_MEAN, IMAGENET_STD

        return PhotometricAugment(IMAGENET_MEAN, IMAGENET_STD)
