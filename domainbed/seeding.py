"""Seeds derived from names, as DomainBed derives them, so splits and hparams stay stable."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_hash(*args) -> int:
    """A 31-bit seed from any printable arguments (DomainBed's scheme: md5 of ``str(args)``)."""
    digest = hashlib.md5(str(args).encode("utf-8")).hexdigest()
    return int(digest, 16) % (2**31)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a run."""
    import torch  # here, so that commands which only hash seeds never import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
