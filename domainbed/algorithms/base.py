"""DomainBed's algorithm interface: ``update(minibatches)`` trains one step, ``predict(x)`` gives logits."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class Algorithm(nn.Module):
    """A domain-generalization method.

    Subclasses build ``self.network`` and ``self.optimizer`` and implement ``update`` and ``predict``.
    ``update`` gets one ``(x, y)`` minibatch per training domain and returns a dict of floats that
    go into the records (e.g. ``{"loss": ...}``).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = hparams
        # Mixed precision is a property of the run, not of the method: training sets this.
        self.autocast_dtype: torch.dtype | None = None

    def autocast(self, x: torch.Tensor):
        """Autocast context for the forward pass (bf16 on request), a no-op otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]], unlabeled=None) -> dict:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
