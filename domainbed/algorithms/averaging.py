"""Weight averaging: SMA (Arpit et al., NeurIPS 2022) and SWAD (Cha et al., NeurIPS 2021).

Both train as ERM and predict with an average of the weights visited during training, which
lies in a flatter region of the loss than any single iterate. Averages are kept in place
(``torch._foreach_lerp_``: one fused pass over the weights per step, no per-step copies), so
averaging costs a small fraction of a training step (BENCHMARKS.md).

- **SMA**: the uniform average of every iterate from ``sma_start_iter`` on; predicts with it.
- **SWAD**: dense averaging over the loss valley found from the training domains' validation loss.
  The iterates between two checkpoints are averaged into a segment; once the segment losses stop
  decreasing for ``n_converge`` checkpoints the valley starts at the best of them (the paper's
  t_s; SWAD's code also pulls in a few earlier segments), and later segments join the average
  ``n_tolerance`` checkpoints behind, so that the valley's end is known when they join, until
  every segment of the tolerance window exceeds ``(1 + tolerance_ratio)`` x the mean loss of the
  convergence window. Records evaluate what SWAD would output
  if training stopped there: the latest segment before the valley is found, the valley average
  after; the last checkpoint evaluates SWAD's final model, which model.pkl holds. Unlike SWAD's
  code, BatchNorm statistics are averaged rather than recomputed on training data (the ViT and
  GMoE backbones have none).
"""

from __future__ import annotations

import copy
import sys
from collections import deque

import torch
import torch.nn as nn

from .base import Checkpoint, RunInfo
from .erm import ERM


class AveragedNetwork(nn.Module):
    """A running uniform average of a network's weights (float parameters and buffers; integer
    buffers are copied). Always in eval mode: an average is for predicting, not for training."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(network).requires_grad_(False).eval()
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long))
        self._count: int | None = 0  # host mirror of n_averaged (None: read it), so updates never sync

    def train(self, mode: bool = True) -> "AveragedNetwork":
        return super().train(False)

    @property
    def count(self) -> int:
        """How many networks the average holds (read from the device only after a state load)."""
        if self._count is None:
            self._count = int(self.n_averaged)
        return self._count

    def set_count(self, n: int) -> None:
        self.n_averaged.fill_(n)
        self._count = n

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None

    def _tensors(self, network: nn.Module) -> tuple[list, list, list, list]:
        """Ours and theirs, float and other; theirs brought to our device (a saved copy on the host
        joins an average on the GPU)."""
        ours, theirs = self.module.state_dict().values(), network.state_dict().values()
        pairs = [(a, b.detach().to(a.device, non_blocking=True)) for a, b in zip(ours, theirs)]
        floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        others = [(a, b) for a, b in pairs if not a.is_floating_point()]
        return [a for a, _ in floats], [b for _, b in floats], [a for a, _ in others], [b for _, b in others]

    @torch.no_grad()
    def reset(self, network: nn.Module) -> None:
        """Start a new average at ``network``'s current weights (one model averaged)."""
        avg_f, net_f, avg_o, net_o = self._tensors(network)
        torch._foreach_copy_(avg_f + avg_o, net_f + net_o)
        self.set_count(1)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Add ``network``'s current weights to the average (the first call copies them)."""
        n = self.count
        if n == 0:
            self.reset(network)
            return
        avg_f, net_f, avg_o, net_o = self._tensors(network)
        torch._foreach_lerp_(avg_f, net_f, 1.0 / (n + 1))
        if avg_o:
            torch._foreach_copy_(avg_o, net_o)
        self.set_count(n + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class NetworkPredictor(nn.Module):
    """What evaluation and the visualisations see of an averaging method: one network behind
    DomainBed's ``predict``/``featurizer``/``classifier``/``network``. An averaged network stays in
    eval mode whatever ``train()`` asks (it is never trained); the online one follows the mode."""

    def __init__(self, network: nn.Sequential, like, averaged: bool):
        super().__init__()
        self.network, self.averaged = network, averaged
        self.featurizer, self.classifier = network[0], network[1]
        self.input_shape, self.num_classes, self.hparams = like.input_shape, like.num_classes, like.hparams

    def train(self, mode: bool = True) -> "NetworkPredictor":
        return super().train(mode and not self.averaged)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def evaluation_model(self):
        return self


class SMA(ERM):
    """ERM predicting with the simple moving average of its weights from ``sma_start_iter`` on."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("sma_start_iter", 100, lambda r: 100, low=0)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        if hparams["sma_start_iter"] >= run.steps:
            raise ValueError(f"SMA starts averaging at step sma_start_iter={hparams['sma_start_iter']} but the run "
                             f"has {run.steps} steps; lower sma_start_iter or train longer")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network_sma = AveragedNetwork(self.network)

    def after_step(self, step: int) -> None:
        # iterates before the start are followed (the average is the current model); from
        # sma_start_iter on (counting updates from 1, as the authors' code) they are averaged
        if step + 1 >= self.hparams["sma_start_iter"]:
            self.network_sma.update(self.network)
        else:
            self.network_sma.reset(self.network)

    def evaluation_model(self):
        if self.network_sma.count:
            return NetworkPredictor(self.network_sma.module, self, averaged=True)
        return NetworkPredictor(self.network, self, averaged=False)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluation_model().predict(x)


class SWAD(ERM):
    """ERM with SWAD's dense averaging over the validation-loss valley (see the module docstring)."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("n_converge", 3, lambda r: 3, low=1)
        space.add("n_tolerance", 6, lambda r: 6, low=1)
        space.add("tolerance_ratio", 0.3, lambda r: 0.3, low=0.0)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        n_checkpoints = len(range(0, run.steps, run.checkpoint_freq)) + ((run.steps - 1) % run.checkpoint_freq != 0)
        if hparams["n_converge"] > n_checkpoints:
            raise ValueError(f"SWAD's valley search needs n_converge={hparams['n_converge']} checkpoints, but "
                             f"{run.steps} steps with --checkpoint_freq {run.checkpoint_freq} give {n_checkpoints}; "
                             "checkpoint more often or lower n_converge")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.segment = AveragedNetwork(self.network)       # iterates since the last checkpoint
        self.last_segment = AveragedNetwork(self.network)  # the segment ended at the last checkpoint
        self.swad_network = AveragedNetwork(self.network)  # the valley average (SWAD's output)
        self.register_buffer("converged_step", torch.tensor(-1))
        self.register_buffer("last_joined_step", torch.tensor(-1))
        self.register_buffer("valley_ended", torch.tensor(False))
        self.register_buffer("threshold", torch.tensor(float("inf")))
        # recent segments: (end step, validation loss, weights); at most max(n_converge, n_tolerance)
        self.recent: deque[tuple[int, float, dict]] = deque()

    @property
    def converged(self) -> bool:
        return int(self.converged_step) >= 0

    def after_step(self, step: int) -> None:
        self.segment.update(self.network)

    def on_checkpoint(self, checkpoint: Checkpoint) -> dict:
        self.last_segment.load_state_dict(self.segment.state_dict())
        loss = checkpoint.validation.loss(self.last_segment)
        self.segment.set_count(0)  # the next update starts a new segment
        if not bool(self.valley_ended):
            self._add_segment(checkpoint.step, loss)
        values = {"swad_segment_loss": loss, "swad_averaged": self.swad_network.count}
        if checkpoint.is_last:
            self._finish_valley()
            values.update(swad_averaged=self.swad_network.count, swad_valley_found=self.converged)
            if not self.converged:  # what model.pkl holds is then not SWAD's average: say so
                print(f"warning: SWAD found no validation-loss valley (the lowest of {self.hparams['n_converge']} "
                      "consecutive checkpoints never came first); the model is the average of the last checkpoint "
                      "interval only, not SWAD's; train longer, checkpoint more often or lower n_converge",
                      file=sys.stderr)
        return values

    def _add_segment(self, step: int, loss: float) -> None:
        hp = self.hparams
        self.recent.append((step, loss, _weights_copy(self.last_segment.module)))
        while len(self.recent) > max(hp["n_converge"], hp["n_tolerance"]):
            self.recent.popleft()
        if not self.converged:
            window = list(self.recent)[-hp["n_converge"]:]
            if len(window) == hp["n_converge"] and min(range(len(window)), key=lambda i: window[i][1]) == 0:
                self._start_valley(window)
            return
        # a segment joins once n_tolerance later checkpoints have seen whether the valley goes on
        tolerance = list(self.recent)[-hp["n_tolerance"]:]
        if len(tolerance) < hp["n_tolerance"] or tolerance[0][0] <= int(self.last_joined_step):
            return
        if min(loss for _, loss, _ in tolerance) > float(self.threshold):
            self.valley_ended.fill_(True)
            return
        self._join(tolerance[0])

    def _start_valley(self, window: list) -> None:
        """The oldest of the last n_converge segments has the lowest loss: the valley starts there."""
        start_step, _, weights = window[0]
        self.converged_step.fill_(start_step)
        self.threshold.fill_(sum(loss for _, loss, _ in window) / len(window) * (1 + self.hparams["tolerance_ratio"]))
        self.swad_network.module.load_state_dict(weights)
        self.swad_network.set_count(1)
        self.last_joined_step.fill_(start_step)

    def _join(self, segment: tuple[int, float, dict]) -> None:
        self.swad_network.update(_StateDictView(segment[2]))
        self.last_joined_step.fill_(segment[0])

    def _finish_valley(self) -> None:
        """At the end of training, the segments still waiting join while they stay under the threshold."""
        if not self.converged or bool(self.valley_ended):
            return
        for step, loss, weights in self.recent:
            if step <= int(self.last_joined_step):
                continue
            if loss > float(self.threshold):
                break
            self._join((step, loss, weights))
        self.recent.clear()
        self.valley_ended.fill_(True)

    def evaluation_model(self):
        if self.converged:
            return NetworkPredictor(self.swad_network.module, self, averaged=True)
        if self.last_segment.count:
            return NetworkPredictor(self.last_segment.module, self, averaged=True)
        return NetworkPredictor(self.network, self, averaged=False)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluation_model().predict(x)

    def extra_training_state(self) -> dict:
        return {"recent": [{"step": step, "loss": loss, "weights": weights} for step, loss, weights in self.recent]}

    def load_extra_training_state(self, state: dict) -> None:
        self.recent = deque((item["step"], item["loss"], item["weights"]) for item in state["recent"])


def _weights_copy(module: nn.Module) -> dict:
    """A copy of ``module``'s weights kept on the host: SWAD holds up to max(n_converge, n_tolerance)
    of them, which would otherwise sit in GPU memory (6 ViT-S copies: 0.5 GB)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


class _StateDictView(nn.Module):
    """A saved state dict seen as a network (what ``AveragedNetwork.update`` reads)."""

    def __init__(self, state: dict):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):
        return self._state
