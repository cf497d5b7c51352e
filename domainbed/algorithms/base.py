"""The algorithm contract: what a DG method owns and what the training loop may ask of it.

DomainBed's interface, ``update(minibatches, unlabeled)`` trains one step and ``predict(x)`` gives
logits, made explicit in four ways:

- **Networks** have DomainBed's names: ``featurizer`` (a timm backbone without head, any
  architecture), ``classifier`` and ``network = Sequential(featurizer, classifier)``.
- **State is declared.** Parameters and buffers are the module's (``state_dict``, which is what
  model.pkl holds); optimizers and LR schedulers are registered by assigning them to an attribute,
  as submodules are (``self.optimizer = Adam(...)``); plain-Python state (a deque, a counter that
  is not a buffer) goes through ``extra_training_state``. ``training_state()`` is everything a
  resumed run needs besides ``state_dict``.
- **MoE follows the backbone.** Each training forward of a sparse MoE layer queues its balance
  loss; an algorithm adds ``self.moe_aux_loss()`` (weighted by ``aux_loss_weight``) to every loss it
  backpropagates through the network. ``update`` is wrapped so that every forward is counted once
  and an aux loss that was computed but never added is an error rather than a silently unbalanced
  router. The step's values get ``moe_aux_loss_per_forward`` (the balance loss of one forward of
  the network: per MoE layer, its mean over the step's forwards, summed over layers; comparable
  across algorithms whatever number of forwards their step runs) and ``moe_aux_term`` (what the
  weighted balance losses added to the step's objective). The values an algorithm returns
  (``loss``, penalties) leave the balance loss out, so they mean the same on any backbone.
- **Hooks** for the loop: ``after_step`` (weight averaging), ``on_checkpoint`` (e.g. SWAD's
  validation-loss valley), ``evaluation_model`` (what evaluation, model.pkl readers and the
  visualisations use: the averaged model for SWAD/SMA) and ``check_run`` (refuse a run the method
  cannot do, before anything is written).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from ..moe import moe_layers, pop_aux_losses

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RunInfo:
    """What a method may need to know about the run to refuse it early (see ``check_run``)."""
    steps: int
    checkpoint_freq: int
    num_train_domains: int


class Validation:
    """Loss of a model on the training domains' held-out splits (for SWAD's valley search).

    The loop builds it; ``loss(model)`` evaluates any module mapping images to logits, in eval
    mode (the mode is restored)."""

    def __init__(self, loss_fn: Callable[[nn.Module], float]):
        self._loss_fn = loss_fn

    def loss(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            return self._loss_fn(model)
        finally:
            model.train(was_training)


@dataclass(frozen=True)
class Checkpoint:
    """What ``on_checkpoint`` learns about the checkpoint being written."""
    step: int
    is_last: bool
    validation: Validation


def _is_stateful_training_object(value) -> bool:
    return isinstance(value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))


def _step_aux_values(losses: list[tuple[str, torch.Tensor]], weight: float) -> dict[str, torch.Tensor | float]:
    """``moe_aux_loss_per_forward`` and ``moe_aux_term`` of a step from its (layer, balance loss) pairs."""
    if not losses:
        return {"moe_aux_loss_per_forward": 0.0, "moe_aux_term": 0.0}
    by_layer: dict[str, list[torch.Tensor]] = {}
    for layer, loss in losses:
        by_layer.setdefault(layer, []).append(loss)
    per_forward = torch.stack([torch.stack(values).mean() for values in by_layer.values()]).sum()
    total = torch.stack([loss for _, loss in losses]).sum()
    return {"moe_aux_loss_per_forward": per_forward.detach(), "moe_aux_term": weight * total.detach()}


def _accounted(update):
    """Wrap a subclass's ``update``: count every MoE forward once and report the step's aux loss."""

    @functools.wraps(update)
    def accounted_update(self, minibatches, unlabeled=None):
        if self._in_update:  # a subclass calling super().update(): the outer call accounts
            return update(self, minibatches, unlabeled)
        self._in_update, self._step_aux_losses = True, []
        try:
            values = dict(update(self, minibatches, unlabeled))
        finally:
            self._in_update = False
        left = sum(len(losses) for losses in pop_aux_losses(self).values())
        if left:
            raise RuntimeError(f"{type(self).__name__}.update ran {left} MoE layer forward(s) whose "
                               "auxiliary loss it never added; add self.moe_aux_loss() to the loss it "
                               "backpropagates")
        if self.has_moe:
            values.update(_step_aux_values(self._step_aux_losses, self.hparams.get("aux_loss_weight", 0.0)))
        return values

    accounted_update.__wrapped_update__ = True
    return accounted_update


class Algorithm(nn.Module):
    """A domain-generalization method (see the module docstring for the contract).

    Subclasses implement ``update`` and ``predict``, declare their hparams in ``define_hparams``
    and, if they need more than one training domain, say so in ``min_train_domains``.
    """

    min_train_domains: ClassVar[int] = 1

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = hparams
        self._training_objects: dict[str, object] = {}
        self._in_update = False
        self._step_aux_losses: list[tuple[str, torch.Tensor]] = []  # (layer, balance loss) of the step

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        update = cls.__dict__.get("update")
        if update is not None and not getattr(update, "__wrapped_update__", False):
            cls.update = _accounted(update)

    def __setattr__(self, name, value):
        if _is_stateful_training_object(value):
            self.__dict__.setdefault("_training_objects", {})[name] = value
        elif name in self.__dict__.get("_training_objects", {}):
            del self._training_objects[name]
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ hparams and run checks
    @classmethod
    def default_backbone(cls, small_images: bool) -> str:
        """The backbone when the user names none: the micro ViT on digits, DomainBed's ResNet-50 else."""
        return "vit_micro_patch4_32" if small_images else "resnet50"

    @classmethod
    def define_hparams(cls, space) -> None:
        """Declare this method's own hparams into ``space`` (an ``HParamSpace``)."""

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        """Raise ValueError (one line) if the method cannot do this run, before anything is written."""
        if run.num_train_domains < cls.min_train_domains:
            raise ValueError(f"{cls.__name__} needs at least {cls.min_train_domains} training domains, got "
                             f"{run.num_train_domains}; hold out fewer environments (--test_envs)")

    # ------------------------------------------------------------------ training and prediction
    def update(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict:
        """One training step on one ``(x, y)`` minibatch per training domain; returns record values:
        0-dim tensors, detached (the loop reads them once per checkpoint, so a GPU step never waits
        for the host), or Python floats."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ MoE balance loss
    @property
    def has_moe(self) -> bool:
        return bool(moe_layers(self))

    def moe_aux_loss(self) -> torch.Tensor | float:
        """``aux_loss_weight`` x the balance losses of the MoE forwards since the last call; add it to
        the loss being backpropagated (0.0 on a dense backbone)."""
        losses = pop_aux_losses(self)
        if not losses:
            return 0.0
        self._step_aux_losses += [(layer, loss.detach()) for layer, values in losses.items() for loss in values]
        total = torch.stack([loss for values in losses.values() for loss in values]).sum()
        return self.hparams.get("aux_loss_weight", 0.0) * total

    # ------------------------------------------------------------------ update count
    def register_update_count(self) -> None:
        """DomainBed's ``update_count`` buffer (in the state, so that a resumed run continues its
        schedules), mirrored on the host: schedules read ``updates`` without waiting for the GPU."""
        self.register_buffer("update_count", torch.tensor([0]))
        self._updates_on_host: int | None = 0

    @property
    def updates(self) -> int:
        """The updates counted so far (read from the device only once after a state load)."""
        if self._updates_on_host is None:
            self._updates_on_host = int(self.update_count)
        return self._updates_on_host

    def count_update(self) -> int:
        """Count one update; returns the new count."""
        count = self.updates + 1
        self.update_count += 1
        self._updates_on_host = count
        return count

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if "update_count" in self._buffers:
            self._updates_on_host = None

    # ------------------------------------------------------------------ declared state
    @property
    def training_objects(self) -> dict[str, object]:
        """Optimizers and LR schedulers, by attribute name."""
        return dict(self._training_objects)

    def extra_training_state(self) -> dict:
        """Plain-Python state that is neither a parameter, a buffer nor an optimizer (override)."""
        return {}

    def load_extra_training_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no extra training state, got {sorted(state)}")

    def training_state(self) -> dict:
        """Everything besides ``state_dict()`` that a resumed run needs."""
        return {"objects": {name: obj.state_dict() for name, obj in self._training_objects.items()},
                "extra": self.extra_training_state()}

    def load_training_state(self, state: dict) -> None:
        saved, ours = set(state["objects"]), set(self._training_objects)
        if saved != ours:
            raise ValueError(f"training state holds {sorted(saved)} but {type(self).__name__} has {sorted(ours)}")
        for name, obj in self._training_objects.items():
            obj.load_state_dict(state["objects"][name])
        self.load_extra_training_state(state["extra"])

    # ------------------------------------------------------------------ hooks
    def after_step(self, step: int) -> None:
        """Called after every ``update`` with the step's index (weight averaging)."""

    def on_checkpoint(self, checkpoint: Checkpoint) -> dict:
        """Called at every checkpoint (the last step's included) before evaluation; returns extra
        record values."""
        return {}

    def evaluation_model(self) -> "Algorithm":
        """The model to evaluate, save and visualise: ``self``, or an averaged model (SWAD, SMA)."""
        return self
