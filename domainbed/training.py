"""One DomainBed training run: data, algorithm, the step loop, records, checkpoints and resume.

``run(config)`` is what ``python -m domainbed.scripts.train`` calls. A run writes into its output
folder ``results.jsonl`` (one record per checkpoint), ``out.txt``/``err.txt``, TensorBoard scalars,
``model.pkl`` and finally ``done``. It also keeps ``checkpoint.pt``, the full training state at the
last checkpoint; the same command started again after an interruption continues from there and
produces the same records as an uninterrupted run (data order and augmentation depend only on the
seed and the step; the algorithm's declared state and every RNG are restored).

The loop talks to the algorithm only through its contract (``algorithms.base``): ``update``,
``after_step``, ``on_checkpoint``, ``evaluation_model``, ``state_dict``/``training_state``. Records
are assembled from contributors (``records_contributors``), one per kind of value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import datasets as datasets_lib
from . import hparams_registry
from .algorithms import Algorithm, Checkpoint, RunInfo, canonical_name, get_algorithm_class
from .checkpoints import atomic_torch_save, save_model
from .data.loaders import eval_loader, train_loader
from .data.splits import split_dataset
from .distributed import DistEnv, init_distributed, shutdown
from .environment import describe_environment
from .models import PretrainedWeightsError
from .records_contributors import Accuracies, LossValues, RoutingStatistics, Timing, validation_for
from .rng_state import capture_rng_state, restore_rng_state
from .run_files import append_record, keep_records_up_to, logging_to
from .seeding import seed_everything, seed_hash

STATE_FILE = "checkpoint.pt"
RECORDS_FILE = "results.jsonl"
TIMING_KEYS = ("step_time", "mem_gb")


class RunError(Exception):
    """A run cannot start or go on; the message says why and what to do."""


class TrainingDiverged(RunError):
    pass


@contextlib.contextmanager
def _data_errors_as_run_errors():
    """A corrupt file found while loading stops the run with the loader's own one-line message
    (DataLoader workers wrap it in a traceback text; keep its last line)."""
    try:
        yield
    except (ValueError, OSError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        message = lines[-1].split(": ", 1)[-1] if lines and lines[-1].startswith(("ValueError", "OSError")) \
            else (lines[-1] if lines else type(error).__name__)
        raise RunError(f"{message} (the last checkpoint is kept; rerun the same command to resume)") from error


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

    def record_args(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- setup

def pick_device(name: str, dist_env: DistEnv) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_env.local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_hparams(config: TrainConfig) -> dict:
    try:
        overrides = json.loads(config.hparams) if config.hparams else {}
    except json.JSONDecodeError as error:
        raise RunError(f"--hparams is not valid JSON ({error.msg} at character {error.pos}); "
                       "example: --hparams '{\"lr\": 1e-4}'") from None
    if not isinstance(overrides, dict):
        raise RunError("--hparams must be a JSON object, e.g. '{\"lr\": 1e-4}'")
    try:
        return hparams_registry.resolve_hparams(config.algorithm, config.dataset, config.hparams_seed,
                                                config.trial_seed, overrides)
    except ValueError as error:
        raise RunError(str(error)) from None


def _validate(config: TrainConfig, dataset) -> None:
    n_envs = len(dataset)
    bad = [env for env in config.test_envs if not 0 <= env < n_envs]
    if bad:
        raise RunError(f"test env {bad[0]} is out of range: {config.dataset} has {n_envs} environments "
                       f"(0-{n_envs - 1}: {', '.join(dataset.ENVIRONMENTS)})")
    if len(set(config.test_envs)) >= n_envs:
        raise RunError("every environment is a test environment; leave at least one to train on")
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


def run(config: TrainConfig) -> dict:
    """Train (or resume) one run and return its last record."""
    dist_env = init_distributed()
    try:
        return _run(config, dist_env)
    finally:
        shutdown(dist_env)


def _run(config: TrainConfig, dist_env: DistEnv) -> dict:
    output_dir = Path(config.output_dir)
    if (output_dir / "done").exists():
        raise RunError(f"{output_dir} already holds a finished run (a 'done' file); choose another "
                       "--output_dir or delete that folder to train again")
    try:
        dataset_class = datasets_lib.get_dataset_class(config.dataset)
        algorithm_class = get_algorithm_class(config.algorithm)
    except ValueError as error:
        raise RunError(str(error)) from None
    config = dataclasses.replace(config, algorithm=canonical_name(config.algorithm))
    hparams = resolve_hparams(config)
    try:
        dataset = dataset_class(config.data_dir, config.test_envs, hparams)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise RunError(str(error)) from None
    _validate(config, dataset)
    n_steps = config.steps if config.steps is not None else dataset.N_STEPS
    checkpoint_freq = config.checkpoint_freq or dataset.CHECKPOINT_FREQ
    num_domains = len(dataset) - len(set(config.test_envs))
    try:
        algorithm_class.check_run(hparams, RunInfo(n_steps, checkpoint_freq, num_domains))
    except ValueError as error:
        raise RunError(str(error)) from None

    # Build the model before touching the output folder: a bad backbone or missing weights must
    # not leave a trace in (or next to) an earlier run's files.
    device = pick_device(config.device, dist_env)
    seed_everything(config.seed)
    try:
        algorithm = algorithm_class(dataset.input_shape, dataset.num_classes, num_domains, hparams).to(device)
    except (ValueError, PretrainedWeightsError) as error:
        raise RunError(str(error)) from None

    if dist_env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    dist_env.barrier()
    with logging_to(output_dir, dist_env.is_main):
        trainer = _Trainer(config, dist_env, hparams, dataset, algorithm, device, output_dir,
                           n_steps, checkpoint_freq)
        return trainer.train()


# ---------------------------------------------------------------------------------------------- the run

class _Trainer:
    """The state of one run between setup and ``done``: loaders, writers, contributors, the loop."""

    def __init__(self, config: TrainConfig, dist_env: DistEnv, hparams: dict, dataset, algorithm: Algorithm,
                 device: torch.device, output_dir: Path, n_steps: int, checkpoint_freq: int):
        self.config, self.dist_env, self.hparams, self.dataset = config, dist_env, hparams, dataset
        self.algorithm, self.device, self.output_dir = algorithm, device, output_dir
        self.n_steps, self.checkpoint_freq = n_steps, checkpoint_freq
        self.state_path, self.records_path = output_dir / STATE_FILE, output_dir / RECORDS_FILE
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
        self.environment = describe_environment(device)
        self.saved_step: int | None = None
        self.header_printed = False

    def autocast(self):
        """bf16 autocast around the algorithm's forwards when asked (a property of the run, not of
        the method); the MoE router computes in float32 regardless."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train(self) -> dict:
        if self.dist_env.is_main:
            self._print_header()
        torch.backends.cudnn.deterministic = True  # as DomainBed: the same seeds, the same numbers
        torch.backends.cudnn.benchmark = False
        start_step = self._resume()
        if self.dist_env.rank > 0 and start_step == 0:
            # Each process draws its own dropout masks and gate noise (process 0 keeps the stream of
            # a single-process run); the model weights are already built, identical everywhere.
            seed_everything(seed_hash(self.config.seed, "rank", self.dist_env.rank))
        if self.config.compile and hasattr(self.algorithm, "featurizer"):
            self.algorithm.featurizer.compile()  # in place: state_dict keys stay the same
        self._build_loaders(start_step)
        self._build_contributors()
        last_record: dict = {}
        with self._progress_and_writer(start_step), self.dist_env.gradients_averaged_at_each_step():
            for step in range(start_step, self.n_steps):
                self._train_step(step)
                if step % self.checkpoint_freq == 0 or step == self.n_steps - 1:
                    last_record = self._checkpoint(step) or last_record
        self._finish()
        return last_record

    def _print_header(self) -> None:
        print("Environment:")
        for key, value in self.environment.items():
            print(f"\t{key}: {value}")
        print("Args:")
        for key, value in sorted(self.config.record_args().items()):
            print(f"\t{key}: {value}")
        print("HParams:")
        for key, value in sorted(self.hparams.items()):
            print(f"\t{key}: {value}")

    def _resume(self) -> int:
        """Restore the last checkpoint's state if there is one; the step to start from."""
        if not self.state_path.exists():
            if self.dist_env.is_main and self.records_path.exists():
                self.records_path.unlink()  # records of a run that never reached its first checkpoint
            return 0
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.algorithm.load_state_dict(state["algorithm"])
        self.algorithm.load_training_state(state["training_state"])
        rng = state["rng"]
        restore_rng_state(rng[self.dist_env.rank] if len(rng) == self.dist_env.world_size
                          else _rank_rng_fallback(rng[0], self.config, self.dist_env))
        self.saved_step = state["step"]
        if self.dist_env.is_main:
            keep_records_up_to(self.records_path, state["step"])
            print(f"Resuming from the checkpoint of step {state['step']}")
        return state["step"] + 1

    def _build_loaders(self, start_step: int) -> None:
        config, dataset = self.config, self.dataset
        splits = make_splits(dataset, config)
        batch_size = self.hparams["batch_size"]
        self.rank_slice = self.dist_env.shard(batch_size)
        num_workers = config.num_workers
        if num_workers is None:  # in-memory tensor datasets say 0; images want decoding in parallel
            num_workers = min(dataset.N_WORKERS, os.cpu_count() or 1)
        pin = self.device.type == "cuda"
        self.train_iterators = [
            train_loader(split, dataset.train_transform(env_i), batch_size,
                         seed_hash(config.seed, config.trial_seed, "train", env_i), start_step, num_workers, pin)
            for env_i, split in splits.train]
        self.uda_iterators = [
            train_loader(split, dataset.eval_transform, batch_size,
                         seed_hash(config.seed, config.trial_seed, "uda", env_i), start_step, 0, pin)
            for env_i, split in splits.uda] if config.task == "domain_adaptation" else []
        self.eval_loaders = [(name, eval_loader(split, dataset.eval_transform, config.eval_batch_size,
                                                num_workers, pin)) for name, split in splits.evals]
        self.steps_per_epoch = min(len(split) / batch_size for _, split in splits.train)
        self.validation_loaders = [loader for name, loader in self.eval_loaders
                                   if name.endswith("_out") and int(name[3:-4]) not in config.test_envs]

    def _build_contributors(self) -> None:
        self.loss_values = LossValues()
        self.timing = Timing(self.device)
        self.routing = RoutingStatistics(self.algorithm)
        self.accuracies = Accuracies(self.eval_loaders, self.device, self.autocast)

    @contextlib.contextmanager
    def _progress_and_writer(self, start_step: int):
        from tqdm.auto import tqdm

        self.writer = None
        if self.dist_env.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=start_step)
        enabled = self.config.progress if self.config.progress is not None else sys.__stderr__.isatty()
        self.progress = tqdm(total=self.n_steps, initial=start_step, disable=not (enabled and self.dist_env.is_main),
                             file=sys.__stderr__, desc=f"{self.config.algorithm} {self.config.dataset}",
                             dynamic_ncols=True)
        try:
            yield
        finally:
            self.progress.close()
            self.routing.close()
            if self.writer is not None:
                self.writer.close()

    def _train_step(self, step: int) -> None:
        started = time.time()
        device = self.device
        with _data_errors_as_run_errors():
            batches = [next(it) for it in self.train_iterators]
            unlabeled_batches = [next(it) for it in self.uda_iterators]
        minibatches = [(x[self.rank_slice].to(device, non_blocking=True), y[self.rank_slice].to(device, non_blocking=True))
                       for x, y in batches]
        unlabeled = [x[self.rank_slice].to(device) for x, _ in unlabeled_batches] or None
        with self.autocast():
            values = self.algorithm.update(minibatches, unlabeled)
        values = self.dist_env.mean(values)
        bad = {key: value for key, value in values.items() if not math.isfinite(value)}
        if bad:
            key, value = next(iter(bad.items()))
            kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.output_dir}"
                    if self.saved_step is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(f"{key} became {value} at step {step}; {kept}; "
                                   "lower the learning rate (--hparams '{\"lr\": ...}') and rerun")
        self.algorithm.after_step(step)
        self.timing.add_step(time.time() - started)
        self.loss_values.add(values)
        self.progress.update(1)
        self.progress.set_postfix({key: f"{value:.3f}" for key, value in list(values.items())[:3]}, refresh=False)

    def _checkpoint(self, step: int) -> dict | None:
        """Evaluate, record, save the resume state; the record (on the main process)."""
        rng_states = self.dist_env.gather(capture_rng_state())
        with self.autocast():  # every process, so that the algorithm's state stays the same everywhere
            validation = validation_for(self.validation_loaders, self.device)
            algorithm_values = self.algorithm.on_checkpoint(Checkpoint(step, step == self.n_steps - 1, validation))
        record = None
        if self.dist_env.is_main:
            record = {"args": self.config.record_args(), "hparams": self.hparams, "step": step,
                      "epoch": step / self.steps_per_epoch, **self.timing.take(), **self.loss_values.take(),
                      **algorithm_values}
            with _data_errors_as_run_errors():
                record.update(self.accuracies.evaluate(self.algorithm.evaluation_model()))
            record.update(self.routing.take())
            record["environment"] = self.environment
            append_record(self.records_path, record)
            self._print_record(record)
            self._log_scalars(record, step)
            atomic_torch_save({"step": step, "algorithm": self.algorithm.state_dict(),
                               "training_state": self.algorithm.training_state(), "rng": rng_states},
                              self.state_path)
            if self.config.save_model_every_checkpoint:
                save_model(self.output_dir / f"model_step{step}.pkl", self.algorithm, self.config.record_args())
        else:
            self.timing.take(), self.loss_values.take(), self.routing.take()
        self.dist_env.barrier()
        self.saved_step = step
        return record

    def _log_scalars(self, record: dict, step: int) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _print_record(self, record: dict) -> None:
        """DomainBed-style progress table: a header once, then one row per checkpoint."""
        keys = [k for k in record if not isinstance(record[k], (dict, list))]
        if not self.header_printed:
            print("  ".join(f"{k[-12:]:>12}" for k in keys))
            self.header_printed = True
        print("  ".join(f"{record[k]:>12.4f}" if isinstance(record[k], float) else f"{record[k]:>12}"
                        for k in keys))

    def _finish(self) -> None:
        if self.dist_env.is_main:
            if not self.config.skip_model_save:
                save_model(self.output_dir / "model.pkl", self.algorithm, self.config.record_args())
            (self.output_dir / "done").write_text("done\n")
            self.state_path.unlink(missing_ok=True)  # the resume state is only needed until `done`
        self.dist_env.barrier()


def _rank_rng_fallback(saved: dict, config: TrainConfig, dist_env: DistEnv) -> dict:
    """Resuming on a different number of processes: process 0 continues the saved stream, the
    others start fresh ones (the run stays valid but no longer repeats the original exactly)."""
    if dist_env.is_main:
        print("warning: resuming on a different number of processes; random streams restart")
        return saved
    seed_everything(seed_hash(config.seed, "rank", dist_env.rank, "resumed"))
    return capture_rng_state()
