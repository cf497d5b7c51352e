"""One DomainBed training run: data, algorithm, the step loop, records, checkpoints and resume.

``run(config)`` is what ``python -m domainbed.scripts.train`` calls. A run writes into its output
folder ``results.jsonl`` (one record per checkpoint), ``out.txt``/``err.txt``, TensorBoard scalars,
``model.pkl`` and finally ``done``. It also keeps ``checkpoint.pt``, the full training state at the
last checkpoint; the same command started again after an interruption continues from there and
produces the same records as an uninterrupted run (data order and augmentation depend only on the
seed and the step; every RNG is restored).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import datasets as datasets_lib
from . import hparams_registry
from .algorithms import get_algorithm_class
from .checkpoints import atomic_torch_save, save_model
from .data.loaders import eval_loader, train_loader
from .data.splits import split_dataset
from .evaluation import accuracy
from .models import PretrainedWeightsError
from .distributed import DistEnv, init_distributed, shutdown
from .moe.stats import RoutingMeter
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


# ----------------------------------------------------------------------------------------------

def pick_device(name: str, dist_env: DistEnv) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_env.local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA), or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB on Linux


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
    hparams = resolve_hparams(config)
    try:
        dataset_class = datasets_lib.get_dataset_class(config.dataset)
        get_algorithm_class(config.algorithm)
    except ValueError as error:
        raise RunError(str(error)) from None
    if config.task not in ("domain_generalization", "domain_adaptation"):
        raise RunError(f"unknown --task '{config.task}'; use domain_generalization or domain_adaptation")
    if config.task == "domain_adaptation" and config.uda_holdout_fraction <= 0:
        raise RunError("--task domain_adaptation needs --uda_holdout_fraction > 0")
    try:
        dataset = dataset_class(config.data_dir, config.test_envs, hparams)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise RunError(str(error)) from None
    _validate(config, dataset)

    # Build the model before touching the output folder: a bad backbone or missing weights must
    # not leave a trace in (or next to) an earlier run's files.
    device = pick_device(config.device, dist_env)
    seed_everything(config.seed)
    try:
        algorithm = get_algorithm_class(config.algorithm)(
            dataset.input_shape, dataset.num_classes, len(dataset) - len(config.test_envs), hparams).to(device)
    except (ValueError, PretrainedWeightsError) as error:
        raise RunError(str(error)) from None

    if dist_env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    dist_env.barrier()
    with logging_to(output_dir, dist_env.is_main):
        return _train(config, dist_env, hparams, dataset, algorithm, device, output_dir)


def _describe_environment(config, hparams, device) -> None:
    import timm
    import torchvision
    print("Environment:")
    print(f"\tPython: {sys.version.split()[0]}")
    print(f"\tPyTorch: {torch.__version__}")
    print(f"\tTorchvision: {torchvision.__version__}")
    print(f"\ttimm: {timm.__version__}")
    print(f"\tCUDA: {torch.version.cuda if torch.cuda.is_available() else 'not available'}")
    print(f"\tNumPy: {np.__version__}")
    print(f"\tDevice: {device}")
    print("Args:")
    for key, value in sorted(config.record_args().items()):
        print(f"\t{key}: {value}")
    print("HParams:")
    for key, value in sorted(hparams.items()):
        print(f"\t{key}: {value}")


def _train(config: TrainConfig, dist_env: DistEnv, hparams: dict, dataset, algorithm, device: torch.device,
           output_dir: Path) -> dict:
    if dist_env.is_main:
        _describe_environment(config, hparams, device)
    torch.backends.cudnn.deterministic = True  # as DomainBed: the same seeds, the same numbers
    torch.backends.cudnn.benchmark = False

    splits = make_splits(dataset, config)
    n_steps = config.steps if config.steps is not None else dataset.N_STEPS
    checkpoint_freq = config.checkpoint_freq or dataset.CHECKPOINT_FREQ
    batch_size = hparams["batch_size"]
    rank_slice = dist_env.shard(batch_size)

    num_workers = config.num_workers
    if num_workers is None:  # in-memory tensor datasets say 0; images want decoding in parallel
        num_workers = min(dataset.N_WORKERS, os.cpu_count() or 1)
    pin = device.type == "cuda"

    algorithm.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None

    state_path = output_dir / STATE_FILE
    records_path = output_dir / RECORDS_FILE
    start_step, saved_step = 0, None
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        algorithm.load_state_dict(state["algorithm"])
        algorithm.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"][dist_env.rank] if len(state["rng"]) == dist_env.world_size
                          else _rank_rng_fallback(state["rng"][0], config, dist_env))
        saved_step = state["step"]
        start_step = saved_step + 1
        if dist_env.is_main:
            keep_records_up_to(records_path, state["step"])
            print(f"Resuming from the checkpoint of step {state['step']}")
    elif dist_env.is_main and records_path.exists():
        records_path.unlink()  # records of a run that never reached its first checkpoint state

    if dist_env.rank > 0 and start_step == 0:
        # Each process draws its own dropout masks and gate noise (process 0 keeps the stream of a
        # single-process run); the model weights are already built, identical everywhere.
        seed_everything(seed_hash(config.seed, "rank", dist_env.rank))
    network = algorithm.network
    if config.compile:
        algorithm.network = torch.compile(network)
    if dist_env.enabled:
        algorithm.network = torch.nn.parallel.DistributedDataParallel(
            algorithm.network, device_ids=[device.index] if device.type == "cuda" else None)

    train_iterators = [
        train_loader(split, dataset.train_transform(env_i), batch_size,
                     seed_hash(config.seed, config.trial_seed, "train", env_i), start_step,
                     num_workers, pin)
        for env_i, split in splits.train]
    uda_iterators = [
        train_loader(split, dataset.eval_transform, batch_size,
                     seed_hash(config.seed, config.trial_seed, "uda", env_i), start_step, 0, pin)
        for env_i, split in splits.uda] if config.task == "domain_adaptation" else []
    eval_loaders = [(name, eval_loader(split, dataset.eval_transform, config.eval_batch_size,
                                       num_workers, pin)) for name, split in splits.evals]
    steps_per_epoch = min(len(split) / batch_size for _, split in splits.train)

    writer = None
    if dist_env.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=start_step)

    from tqdm.auto import tqdm
    progress_enabled = config.progress if config.progress is not None else sys.__stderr__.isatty()
    progress = tqdm(total=n_steps, initial=start_step, disable=not (progress_enabled and dist_env.is_main),
                    file=sys.__stderr__, desc=f"{config.algorithm} {config.dataset}", dynamic_ncols=True)

    routing_meter = RoutingMeter(network)
    last_record: dict = {}
    header_printed = False
    checkpoint_values: dict[str, list[float]] = {}
    step_times: list[float] = []
    try:
        for step in range(start_step, n_steps):
            step_start = time.time()
            with _data_errors_as_run_errors():
                batches = [next(it) for it in train_iterators]
                unlabeled_batches = [next(it) for it in uda_iterators]
            minibatches = [(x[rank_slice].to(device, non_blocking=True), y[rank_slice].to(device, non_blocking=True))
                           for x, y in batches]
            unlabeled = [x[rank_slice].to(device) for x, _ in unlabeled_batches] or None
            values = dist_env.mean(algorithm.update(minibatches, unlabeled))
            if not math.isfinite(values.get("loss", 0.0)):
                kept = (f"the last good checkpoint (step {saved_step}) is kept in {output_dir}"
                        if saved_step is not None else "no checkpoint had been written yet")
                raise TrainingDiverged(f"loss became {values['loss']} at step {step}; {kept}; "
                                       "lower the learning rate (--hparams '{\"lr\": ...}') and rerun")
            routing_meter.update()
            step_times.append(time.time() - step_start)
            for key, value in values.items():
                checkpoint_values.setdefault(key, []).append(value)
            progress.update(1)
            progress.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)

            if step % checkpoint_freq == 0 or step == n_steps - 1:
                rng_states = dist_env.gather(capture_rng_state())
                if dist_env.is_main:
                    last_record = _checkpoint_record(config, hparams, step, steps_per_epoch, step_times,
                                                     checkpoint_values, algorithm, network, eval_loaders,
                                                     device)
                    if routing_meter.layers:
                        last_record["routing"] = routing_meter.summary()
                    append_record(records_path, last_record)
                    _print_record(last_record, header=not header_printed)
                    header_printed = True
                    for key, value in last_record.items():
                        if isinstance(value, (int, float)) and key not in ("step",):
                            writer.add_scalar(key, value, step)
                    writer.flush()
                    with _unwrapped(algorithm, network):
                        atomic_torch_save({"step": step, "algorithm": algorithm.state_dict(),
                                           "optimizer": algorithm.optimizer.state_dict(),
                                           "rng": rng_states}, state_path)
                        if config.save_model_every_checkpoint:
                            save_model(output_dir / f"model_step{step}.pkl", algorithm, config.record_args())
                dist_env.barrier()
                saved_step = step
                checkpoint_values, step_times = {}, []
                routing_meter.reset()
    finally:
        progress.close()
        if writer is not None:
            writer.close()

    if dist_env.is_main:
        if not config.skip_model_save:
            with _unwrapped(algorithm, network):
                save_model(output_dir / "model.pkl", algorithm, config.record_args())
        (output_dir / "done").write_text("done\n")
        state_path.unlink(missing_ok=True)  # the resume state is only needed until `done`
    dist_env.barrier()
    return last_record


def _rank_rng_fallback(saved: dict, config: TrainConfig, dist_env: DistEnv) -> dict:
    """Resuming on a different number of processes: process 0 continues the saved stream, the
    others start fresh ones (the run stays valid but no longer repeats the original exactly)."""
    if dist_env.is_main:
        print("warning: resuming on a different number of processes; random streams restart")
        return saved
    seed_everything(seed_hash(config.seed, "rank", dist_env.rank, "resumed"))
    return capture_rng_state()


@contextlib.contextmanager
def _unwrapped(algorithm, network):
    """Let the algorithm see its plain network (no DDP/compile wrapper) for saving and evaluation."""
    wrapped = algorithm.network
    algorithm.network = network
    try:
        yield
    finally:
        algorithm.network = wrapped


def _checkpoint_record(config, hparams, step, steps_per_epoch, step_times, checkpoint_values,
                       algorithm, network, eval_loaders, device) -> dict:
    record = {
        "args": config.record_args(),
        "hparams": hparams,
        "step": step,
        "epoch": step / steps_per_epoch,
        "step_time": float(np.mean(step_times)) if step_times else 0.0,
        "mem_gb": peak_memory_gb(device),
    }
    for key, values in checkpoint_values.items():
        record[key] = float(np.mean(values))
    with _unwrapped(algorithm, network), _data_errors_as_run_errors():
        for name, loader in eval_loaders:
            record[f"{name}_acc"] = accuracy(algorithm, loader, device)
    return record


def _print_record(record: dict, header: bool) -> None:
    """DomainBed-style progress table: a header once, then one row per checkpoint."""
    keys = [k for k in record if not isinstance(record[k], dict)]
    if header:
        print("  ".join(f"{k[-12:]:>12}" for k in keys))
    print("  ".join(f"{record[k]:>12.4f}" if isinstance(record[k], float) else f"{record[k]:>12}"
                    for k in keys))
