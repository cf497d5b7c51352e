"""Shared test settings (small, offline, deterministic) and helpers every test module may use."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TQDM_DISABLE", "1")

import random  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny-run settings for end-to-end tests on the embedded digits data.
TINY_HPARAMS = '{"batch_size": 16}'


@pytest.fixture
def tiny_train_args(tmp_path):
    """Flags of a run that takes a couple of seconds on CPU."""
    return ["--dataset", "RotatedDigits", "--algorithm", "ERM", "--test_envs", "0",
            "--steps", "6", "--checkpoint_freq", "3", "--hparams", TINY_HPARAMS,
            "--output_dir", str(tmp_path / "run")]


# ------------------------------------------------------------------ tiny algorithms
# A 2-block ViT of width 16 on 1x16x16 images (16 patch tokens), dense or with one 3-expert MoE
# layer: every algorithm's update takes milliseconds.
INPUT_SHAPE, NUM_CLASSES, NUM_DOMAINS, BATCH = (1, 16, 16), 3, 3, 6
TINY_VIT = {"embed_dim": 16, "depth": 2, "num_heads": 2}
BACKBONES = {
    "dense": {"backbone": "vit_micro_patch4_32"},
    "gmoe": {"backbone": "gmoe_micro_patch4_32", "moe_blocks": [1], "num_experts": 3},
}


def tiny_hparams(name: str, backbone: str = "dense", **overrides) -> dict:
    """The algorithm's default hparams (as on a digits dataset) on the tiny backbone."""
    from domainbed.hparams_registry import resolve_hparams

    values = {**BACKBONES[backbone], "backbone_kwargs": TINY_VIT, "batch_size": BATCH, "lr": 3e-3, **overrides}
    return resolve_hparams(name, "RotatedDigits", 0, 0, values)


def tiny_algorithm(name: str, backbone: str = "dense", seed: int = 0, num_domains: int = NUM_DOMAINS,
                   **overrides):
    from domainbed.algorithms import get_algorithm_class

    torch.manual_seed(seed)
    return get_algorithm_class(name)(INPUT_SHAPE, NUM_CLASSES, num_domains, tiny_hparams(name, backbone, **overrides))


def fixed_minibatches(seed: int = 0, num_domains: int = NUM_DOMAINS, batch: int = BATCH):
    """One (x, y) batch per domain of learnable data: the label is which third of the image is
    bright; domains differ by a brightness offset."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for domain in range(num_domains):
        y = torch.arange(batch) % NUM_CLASSES
        x = 0.3 * torch.randn(batch, *INPUT_SHAPE, generator=generator) + 0.1 * domain
        for i, label in enumerate(y.tolist()):
            x[i, :, :, 5 * label:5 * label + 5] += 1.5
        batches.append((x, y))
    return batches


def as_floats(values: dict) -> dict:
    """An update's record values as Python floats (algorithms return 0-dim tensors, read once per
    checkpoint by the loop; the tests compare numbers)."""
    return {key: float(value) for key, value in values.items()}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def read_records():
    """``read_records(run_dir)``: the records a run wrote to its ``results.jsonl``, read as the
    package reads them (``RunFolder(run_dir).read_records()``)."""
    from domainbed.run.folder import RunFolder

    return lambda run_dir: RunFolder(run_dir).read_records()


@pytest.fixture
def kit():
    """The tiny-algorithm helpers: ``kit.algorithm(name, backbone)``, ``kit.minibatches()``,
    ``kit.hparams(name)``, ``kit.seed_all(seed)`` and the shapes they use."""
    return SimpleNamespace(algorithm=tiny_algorithm, minibatches=fixed_minibatches, hparams=tiny_hparams,
                           seed_all=seed_all, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                           num_domains=NUM_DOMAINS, batch=BATCH)
