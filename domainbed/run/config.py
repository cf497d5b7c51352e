"""What one run is: DomainBed's train flags (``TrainConfig``), its hparams, its data splits, and
the errors that stop it with a one-line message."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from ..data.splits import split_dataset
from ..hparams import registry as hparams_registry
from ..hparams.space import parse_hparams_json
from ..seeding import seed_hash
from .numerics import deterministic_environment_set


class RunError(Exception):
    """A run cannot start or go on; the message says why and what to do."""


class TrainingDiverged(RunError):
    pass


@dataclass
class TrainConfig:
    """DomainBed's train flags, plus the ones a GPU user expects."""
    data_dir: str = "./domainbed/data"
    dataset: str = "RotatedDigits"
    algorithm: str = "ERM"
    task: str = "domain_generalization"
    hparams: str | None = None
    hparams_seed: int = 0
    trial_seed: int = 0
    seed: int = 0
    steps: int | None = None
    checkpoint_freq: int | None = None
    test_envs: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "train_output"
    holdout_fraction: float = 0.2
    uda_holdout_fraction: float = 0.0
    skip_model_save: bool = False
    save_model_every_checkpoint: bool = False
    # ours
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    num_workers: int | None = None
    eval_batch_size: int = 64
    progress: bool | None = None
    deterministic: bool = False
    tf32: bool = True  # fp32 matmuls on tensor cores on CUDA (off under --deterministic)
    augment_on: str = "auto"  # colour augmentation's pixels: "loader", "device", or auto (device on CUDA)

    def record_args(self) -> dict:
        return dataclasses.asdict(self)


AUGMENT_ON = ("auto", "loader", "device")


def resolve_augment_on(choice: str, device_type: str) -> str:
    """Where the colour augmentation's pixels are computed: ``auto`` is the training device on CUDA
    (the jitter is 60% of the loader's CPU time per image; see ``data/device_augment.py``), the
    loader else."""
    if choice != "auto":
        return choice
    return "device" if device_type == "cuda" else "loader"


# The flags that decide what a run computes. A folder resumes only under the same ones (and the same
# hparams); the others say where and how (folders, device, workers, evaluation batch, compilation,
# logging, --deterministic's portable kernels, TF32 and --augment_on's arithmetic) and may change between
# attempts.
IDENTITY_ARGS = ("dataset", "algorithm", "task", "test_envs", "hparams_seed", "trial_seed", "seed", "steps",
                 "checkpoint_freq", "holdout_fraction", "uda_holdout_fraction", "precision")


def run_identity(config: TrainConfig, hparams: dict, n_steps: int, checkpoint_freq: int) -> dict:
    """What a run computes, as plain JSON values (stored with the resume state)."""
    identity = {name: getattr(config, name) for name in IDENTITY_ARGS}
    identity.update(steps=n_steps, checkpoint_freq=checkpoint_freq, test_envs=sorted(set(config.test_envs)))
    return json.loads(json.dumps({"args": identity, "hparams": hparams}))


def identity_differences(saved: dict, current: dict) -> list[str]:
    """``name: saved there, current here`` for every flag or hparam that differs."""
    differences = []
    for part in ("args", "hparams"):
        before, now = saved.get(part, {}), current.get(part, {})
        for name in sorted(set(before) | set(now)):
            if before.get(name, "(unset)") != now.get(name, "(unset)"):
                label = name if part == "args" else f"hparam {name}"
                differences.append(f"{label} {json.dumps(before.get(name, '(unset)'))} there, "
                                   f"{json.dumps(now.get(name, '(unset)'))} here")
    return differences


# ---------------------------------------------------------------------------------------------- setup

def resolve_hparams(config: TrainConfig) -> dict:
    try:
        overrides = parse_hparams_json(config.hparams)
        return hparams_registry.resolve_hparams(config.algorithm, config.dataset, config.hparams_seed,
                                                config.trial_seed, overrides)
    except ValueError as error:
        raise RunError(str(error)) from None


def validate_config(config: TrainConfig, dataset) -> None:
    """Flags that only make sense against the dataset; RunError (one line) otherwise."""
    n_envs = len(dataset)
    if len(set(config.test_envs)) >= n_envs:
        raise RunError("every environment is a test environment; leave at least one to train on")
    if config.deterministic and not deterministic_environment_set():
        raise RunError("--deterministic sets PyTorch's and MKL's kernels before they load: run the command "
                       "line (python -m domainbed.scripts.train ... --deterministic), which restarts itself "
                       "with them")
    for flag, value in (("--steps", config.steps), ("--checkpoint_freq", config.checkpoint_freq)):
        if value is not None and value < 1:
            raise RunError(f"{flag} must be at least 1, got {value}")
    if config.eval_batch_size < 1:
        raise RunError(f"--eval_batch_size must be at least 1, got {config.eval_batch_size}")
    if os.path.isfile(config.data_dir):
        raise RunError(f"--data_dir {config.data_dir} is a file; give the folder that holds the datasets "
                       "(or the dataset's own folder)")
    if config.augment_on not in AUGMENT_ON:
        raise RunError(f"unknown --augment_on '{config.augment_on}'; use {', '.join(AUGMENT_ON)}")
    if config.precision not in ("fp32", "bf16"):
        raise RunError(f"unknown --precision '{config.precision}'; use fp32 or bf16")
    if config.task not in ("domain_generalization", "domain_adaptation"):
        raise RunError(f"unknown --task '{config.task}'; use domain_generalization or domain_adaptation")
    if config.task == "domain_adaptation" and config.uda_holdout_fraction <= 0:
        raise RunError("--task domain_adaptation needs --uda_holdout_fraction > 0")


@dataclass
class _Splits:
    evals: list  # (name, subset)
    train: list  # (env index, subset)
    uda: list    # (env index, subset)


def make_splits(dataset, config: TrainConfig) -> _Splits:
    """DomainBed's splits: out/in per environment, uda share of the test environments' "in"."""
    splits = _Splits([], [], [])
    for env_i, env in enumerate(dataset):
        out, in_ = split_dataset(env, int(len(env) * config.holdout_fraction),
                                 seed_hash(config.trial_seed, env_i))
        uda = None
        if env_i in config.test_envs and config.uda_holdout_fraction > 0:
            uda, in_ = split_dataset(in_, int(len(in_) * config.uda_holdout_fraction),
                                     seed_hash(config.trial_seed, env_i))
        splits.evals += [(f"env{env_i}_in", in_), (f"env{env_i}_out", out)]
        if uda is not None:
            splits.evals.append((f"env{env_i}_uda", uda))
            splits.uda.append((env_i, uda))
        if env_i not in config.test_envs:
            splits.train.append((env_i, in_))
    return splits
