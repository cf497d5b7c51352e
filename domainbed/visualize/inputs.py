"""Model inputs for the visualisations: image files or tensors in, ``[B, C, H, W]`` batches out.

A picture must go through the same preprocessing as the model's evaluation data, or the maps
show how the model reacts to an input it never saw: image datasets (PACS, OfficeHome...) resize
and normalise with ImageNet statistics, digit datasets feed raw ``[0, 1]`` tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..data.base import ImageDomainDataset
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_eval_transform

__all__ = ["InputSpec", "input_spec", "load_image_files", "prepare_tensors", "to_display", "image_names"]


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: ``shape`` (C, H, W), and whether pixels are ImageNet-normalised."""

    shape: tuple[int, int, int]
    imagenet_normalized: bool


def _is_image_dataset(name: str) -> bool:
    from ..data.catalog import CATALOG
    from ..data.registry import get_dataset_class

    if name not in CATALOG:  # a folder dataset (<data_dir>/<name>/<domain>/<class>/): images
        return True
    return issubclass(get_dataset_class(name), ImageDomainDataset)


def input_spec(algorithm, dataset: str | None = None) -> InputSpec:
    """The input format of ``algorithm``: its ``input_shape`` plus its dataset's normalisation.

    ``dataset`` defaults to the one named in the checkpoint (``algorithm.checkpoint_args``). If
    neither names one, 3-channel models are taken to be ImageNet-normalised (every 3-channel
    DomainBed image dataset is) and others to take ``[0, 1]`` pixels.
    """
    shape = tuple(int(s) for s in algorithm.input_shape)
    if len(shape) != 3:
        raise ValueError(f"expected an image model with input_shape (C, H, W), got {shape}")
    dataset = dataset or (getattr(algorithm, "checkpoint_args", None) or {}).get("dataset")
    normalized = _is_image_dataset(dataset) if dataset else shape[0] == 3
    return InputSpec(shape, normalized)


def _file_transform(spec: InputSpec):
    channels, height, width = spec.shape
    if spec.imagenet_normalized and height == width:
        return image_eval_transform(height)  # exactly the image datasets' evaluation transform
    steps = [v2.Resize((height, width)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if spec.imagenet_normalized:
        steps.append(v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return v2.Compose(steps)


def _read_image(path: Path, channels: int):
    """A PIL image with the channels the model takes: 1 -> grayscale, 3 -> RGB, 2 -> RGB (red, green kept)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' does not exist; check the path given to --images")
    if channels not in (1, 2, 3):
        raise ValueError(f"cannot make {channels}-channel model inputs from image files; pass tensors instead")
    try:
        with Image.open(path) as image:
            return image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image '{path}' ({type(error).__name__}); "
                         "pass a PNG/JPEG/... file that PIL can open") from None


def load_image_files(paths: Sequence[str | os.PathLike], spec: InputSpec) -> torch.Tensor:
    """Read, convert and resize image files into one ``[B, C, H, W]`` float batch of model inputs."""
    if not paths:
        raise ValueError("no images given; pass one or more image files")
    transform = _file_transform(spec)
    batch = []
    for path in paths:
        image = transform(_read_image(Path(path), spec.shape[0]))
        if spec.shape[0] == 2:  # two-channel (ColoredDigits-style) models: red and green
            image = image[:2]
        batch.append(image)
    return torch.stack(batch)


def prepare_tensors(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Check (and batch) tensors that already are model inputs, e.g. items of ``ds.eval_transform``.

    A ``[C, H, W]`` tensor becomes a batch of one; a spatial size other than the model's is
    resized (bilinear). No normalisation is applied: the tensors are assumed preprocessed.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected a tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(images.shape)}")
    channels, height, width = spec.shape
    if images.shape[1] != channels:
        raise ValueError(f"the model takes {channels}-channel inputs, got images of shape {tuple(images.shape)}")
    images = images.float()
    if tuple(images.shape[2:]) != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return images


def to_display(image: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """A model input ``[C, H, W]`` as an RGB array ``[H, W, 3]`` in [0, 1] (undoing normalisation)."""
    image = image.detach().float().cpu()
    if spec.imagenet_normalized and image.shape[0] == 3:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        image = image * std + mean
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 2:
        image = torch.cat([image, torch.zeros_like(image[:1])])
    elif image.shape[0] > 3:
        image = image[:3]
    return image.clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def image_names(count: int, paths: Sequence[str | os.PathLike] | None = None,
                names: Sequence[str] | None = None) -> list[str]:
    """Distinct output-file stems: the given names, the files' stems, or image_000, image_001..."""
    if names is None:
        names = [Path(p).stem for p in paths] if paths is not None else [f"image_{i:03d}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{len(names)} names for {count} images; give one name per image")
    if len(set(names)) < len(names):  # two files called a.png in different folders
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def each_image_alone(algorithm, images: torch.Tensor, names: Sequence[str] | None = None,
                     dataset: str | None = None):
    """Yield ``(batch_of_one_on_device, name, display_image)`` per image, the model in eval mode.

    One image at a time: with a capacity-limited MoE, routing (and so every later block) depends on
    the batch, and a picture of one image must not depend on the others."""
    spec = input_spec(algorithm, dataset)
    x = prepare_tensors(images, spec)
    device = next(algorithm.parameters()).device
    was_training = algorithm.training
    algorithm.eval()
    try:
        for image, name in zip(x, image_names(len(x), names=names)):
            yield image.unsqueeze(0).to(device), name, to_display(image, spec)
    finally:
        algorithm.train(was_training)
