"""Small networks algorithms add beside the featurizer (DomainBed's ``networks.MLP``)."""

from __future__ import annotations

import torch.nn as nn


class MLP(nn.Module):
    """DomainBed's MLP: ``mlp_depth`` linear layers of width ``mlp_width`` with ReLU and dropout
    (used as DANN's domain discriminator)."""

    def __init__(self, n_inputs: int, n_outputs: int, hparams: dict):
        super().__init__()
        width, depth, dropout = hparams["mlp_width"], hparams["mlp_depth"], hparams["mlp_dropout"]
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(dropout)
        self.hiddens = nn.ModuleList([nn.Linear(width, width) for _ in range(depth - 2)])
        self.output = nn.Linear(width, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x):
        x = self.dropout(self.input(x).relu())
        for hidden in self.hiddens:
            x = self.dropout(hidden(x).relu())
        return self.output(x)


def mlp_hparams(space, depth=3, depth_choices=(3, 4, 5)) -> None:
    """DomainBed's discriminator-MLP hparams (DANN, CDANN)."""
    space.add("mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10)), low=1)
    space.add("mlp_depth", depth, lambda r: int(r.choice(list(depth_choices))), low=2)
    space.add("mlp_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), low=0.0, high=1.0)
