"""One DomainBed training run: data, algorithm, the step loop, records, checkpoints and resume.

``run(config)`` is what ``python -m domainbed.scripts.train`` calls. A run writes into its output
folder ``results.jsonl`` (one record per checkpoint), ``out.txt``/``err.txt``, TensorBoard scalars,
``model.pkl`` and finally ``done``. It also keeps ``checkpoint.pt``, the full training state at the
last checkpoint; the same command started again after an interruption continues from there and
produces the same records as an uninterrupted run (data order and augmentation depend only on the
seed and the step; the algorithm's declared state and every RNG are restored).

The loop talks to the algorithm only through its contract (``algorithms.base``): ``update``,
``after_step``, ``on_checkpoint``, ``evaluation_model``, ``state_dict``/``training_state``. Records
are assembled from contributors (``contributors``), one per kind of value; the run's flags,
hparams and splits are ``config``'s, its files ``folder``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..algorithms import Algorithm, Checkpoint, RunInfo, canonical_name, get_algorithm_class
from ..checkpoints import BackgroundWriter, model_record, save_model
from ..data import registry as datasets_lib
from ..data.loaders import eval_loader, train_loader
from ..models import PretrainedWeightsError
from ..results.selection import IIDAccuracySelectionMethod
from ..seeding import seed_everything, seed_hash
from .config import (RunError, TrainConfig, TrainingDiverged, identity_differences, make_splits, resolve_hparams,
                     resolve_augment_on, run_identity, validate_config)
from .accelerator import compile_networks, configure_cuda, use_fused_optimizers
from .contributors import Accuracies, LossValues, RoutingStatistics, Timing, validation_for
from .distributed import DistEnv, init_distributed, pick_device, shutdown
from .environment import describe_environment
from .folder import RunFolder
from .rng_state import capture_rng_state, restore_rng_state

TIMING_KEYS = ("step_time", "data_time", "mem_gb")


def _last_line(error: BaseException) -> str:
    """A loader error's own one-line message (DataLoader workers wrap it in a traceback text)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if lines and lines[-1].startswith(("ValueError", "OSError")):
        return lines[-1].split(": ", 1)[-1]
    return lines[-1] if lines else type(error).__name__


def run(config: TrainConfig) -> dict:
    """Train (or resume) one run and return its last record."""
    dist_env = init_distributed()
    try:
        return _run(config, dist_env)
    finally:
        shutdown(dist_env)


def _run(config: TrainConfig, dist_env: DistEnv) -> dict:
    output_dir = Path(config.output_dir)
    if RunFolder(output_dir).is_done:
        raise RunError(f"{output_dir} already holds a finished run (a 'done' file); choose another "
                       "--output_dir or delete that folder to train again")
    try:
        dataset_class = datasets_lib.get_dataset_class(config.dataset, config.data_dir)
        algorithm_class = get_algorithm_class(config.algorithm)
    except ValueError as error:
        raise RunError(str(error)) from None
    config = dataclasses.replace(config, algorithm=canonical_name(config.algorithm))
    hparams = resolve_hparams(config)
    try:
        dataset = dataset_class(config.data_dir, config.test_envs, hparams)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise RunError(str(error)) from None
    validate_config(config, dataset)
    try:
        RunFolder(output_dir).check_writable()
    except PermissionError as error:
        raise RunError(str(error)) from None
    n_steps = config.steps if config.steps is not None else dataset.N_STEPS
    checkpoint_freq = config.checkpoint_freq or dataset.CHECKPOINT_FREQ
    num_domains = len(dataset) - len(set(config.test_envs))
    try:
        algorithm_class.check_run(hparams, RunInfo(n_steps, checkpoint_freq, num_domains))
    except ValueError as error:
        raise RunError(str(error)) from None

    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, where CUDA has no such kernel
    # Build the model before touching the output folder: a bad backbone or missing weights must
    # not leave a trace in (or next to) an earlier run's files.
    device = pick_device(config.device, dist_env)
    config = dataclasses.replace(config, augment_on=resolve_augment_on(config.augment_on, device.type))
    seed_everything(config.seed)
    try:
        algorithm = algorithm_class(dataset.input_shape, dataset.num_classes, num_domains, hparams).to(device)
    except (ValueError, PretrainedWeightsError) as error:
        raise RunError(str(error)) from None
    identity = run_identity(config, hparams, n_steps, checkpoint_freq)
    resume_state = _resume_state_of_same_run(RunFolder(output_dir), identity)

    folder = RunFolder(output_dir)
    if dist_env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    dist_env.barrier()
    with folder.logging(dist_env.is_main), _terminated_on_sigterm():
        try:
            trainer = _Trainer(config, dist_env, hparams, dataset, algorithm, device, output_dir,
                               n_steps, checkpoint_freq, identity, resume_state)
            return trainer.train()
        except BaseException as error:  # the console gets it from the command; err.txt keeps it too
            if dist_env.is_main:
                folder.log_error(error, expected=isinstance(error, (RunError, KeyboardInterrupt)))
            raise


# ---------------------------------------------------------------------------------------------- the run

class _Trainer:
    """The state of one run between setup and ``done``: loaders, writers, contributors, the loop."""

    def __init__(self, config: TrainConfig, dist_env: DistEnv, hparams: dict, dataset, algorithm: Algorithm,
                 device: torch.device, output_dir: Path, n_steps: int, checkpoint_freq: int, identity: dict,
                 resume_state: dict | None):
        self.config, self.dist_env, self.hparams, self.dataset = config, dist_env, hparams, dataset
        self.algorithm, self.device, self.output_dir = algorithm, device, output_dir
        self.n_steps, self.checkpoint_freq = n_steps, checkpoint_freq
        self.identity, self.resume_state = identity, resume_state
        self.folder = RunFolder(output_dir)
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
        self.environment = describe_environment(device)
        self.saved_step: int | None = None
        self.header_printed = False
        self.best_val: float | None = None  # training-domain validation accuracy of model_best_val.pkl
        self.best_val_step: int | None = None

    @contextlib.contextmanager
    def _data_errors_as_run_errors(self):
        """A corrupt file found while loading stops the run with the loader's one-line message and
        what is true of the run's state."""
        try:
            yield
        except (ValueError, OSError) as error:
            kept = (f"the checkpoint of step {self.saved_step} is kept: rerun the same command to resume"
                    if self.saved_step is not None else "no checkpoint was written yet: rerun to start again")
            raise RunError(f"{_last_line(error)} ({kept} once the file is fixed)") from error

    def autocast(self):
        """bf16 autocast around the algorithm's forwards when asked (a property of the run, not of
        the method); the MoE router computes in float32 regardless."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train(self) -> dict:
        self.environment.update(configure_cuda(self.device, self.config.tf32, self.config.deterministic))
        if self.dist_env.is_main:
            self._print_header()
        use_fused_optimizers(self.algorithm, self.device)
        start_step = self._resume()
        if self.dist_env.rank > 0 and start_step == 0:
            # Each process draws its own dropout masks and gate noise (process 0 keeps the stream of
            # a single-process run); the model weights are already built, identical everywhere.
            seed_everything(seed_hash(self.config.seed, "rank", self.dist_env.rank))
        if self.config.compile:  # in place: state_dict keys stay the same
            compiled = compile_networks(self.algorithm)
            if self.dist_env.is_main:
                print(f"torch.compile: {len(compiled)} network(s): "
                      + ", ".join(type(network).__name__ for network in compiled))
        self._build_loaders(start_step)
        self._build_contributors()
        last_record: dict = {}
        step = start_step
        with self._progress_and_writer(start_step), self.dist_env.gradients_averaged_at_each_step(), \
                self._background_writes():
            try:
                for step in range(start_step, self.n_steps):
                    self._train_step(step)
                    if step % self.checkpoint_freq == 0 or step == self.n_steps - 1:
                        last_record = self._checkpoint(step) or last_record
            except KeyboardInterrupt as interruption:  # Ctrl-C or SIGTERM: say where the run stands
                reason = str(interruption) or "interrupted"
                kept = (f"the checkpoint of step {self.saved_step} is kept: rerun the same command to resume"
                        if self.saved_step is not None else "no checkpoint was written yet: rerun to start again")
                raise type(interruption)(f"{reason} at step {step} ({kept})") from None
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
        state, self.resume_state = self.resume_state, None
        if state is None:
            if self.dist_env.is_main:
                self.folder.results.unlink(missing_ok=True)  # records of a run that never reached its first checkpoint
            return 0
        self.algorithm.load_state_dict(state["algorithm"])
        self.algorithm.load_training_state(state["training_state"])
        rng = state["rng"]
        restore_rng_state(rng[self.dist_env.rank] if len(rng) == self.dist_env.world_size
                          else _rank_rng_fallback(rng[0], self.config, self.dist_env))
        self.saved_step = state["step"]
        if self.dist_env.is_main:
            self.folder.keep_records_up_to(state["step"])
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
        balanced = bool(self.hparams.get("class_balanced", False))  # DomainBed balances the uda splits too
        on_device = config.augment_on == "device"
        self.device_augments = [dataset.device_augment(env_i, on_device) for env_i, _ in splits.train]
        self.train_iterators = [
            train_loader(split, dataset.train_transform(env_i, on_device), batch_size,
                         seed_hash(config.seed, config.trial_seed, "train", env_i), start_step, num_workers, pin,
                         class_balanced=balanced)
            for env_i, split in splits.train]
        self.uda_iterators = [
            train_loader(split, dataset.eval_transform, batch_size,
                         seed_hash(config.seed, config.trial_seed, "uda", env_i), start_step, 0, pin,
                         class_balanced=balanced)
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
            self.writer = SummaryWriter(log_dir=str(self.folder.tensorboard), purge_step=start_step)
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
        device = self.device
        waited = time.perf_counter()
        with self._data_errors_as_run_errors():
            batches = [next(it) for it in self.train_iterators]
            unlabeled_batches = [next(it) for it in self.uda_iterators]
        waited = time.perf_counter() - waited
        minibatches = [(self._model_inputs(x, augment), y[self.rank_slice].to(device, non_blocking=True))
                       for (x, y), augment in zip(batches, self.device_augments)]
        unlabeled = [x[self.rank_slice].to(device) for x, _ in unlabeled_batches] or None
        with self.autocast():
            values = self.algorithm.update(minibatches, unlabeled)
        values = self.dist_env.mean(values, device)
        self.loss_values.add(values, step)  # values on the device stay there: no wait for the GPU here
        if any(not torch.is_tensor(value) and not math.isfinite(value) for value in values.values()):
            self._stop_if_diverged()  # a float that is already on the host: stop at once
        self.algorithm.after_step(step)
        self.timing.add_step(waited)
        self.progress.update(1)

    def _model_inputs(self, x, device_augment) -> torch.Tensor:
        """This rank's share of a training batch on the device; with ``--augment_on device`` the
        loader's items are ``(uint8 images, colour draws)`` and the device finishes the augmentation."""
        if device_augment is None:
            return x[self.rank_slice].to(self.device, non_blocking=True)
        images, draws = x
        return device_augment(images[self.rank_slice].to(self.device, non_blocking=True), draws[self.rank_slice])

    def _stop_if_diverged(self) -> None:
        """Stop (TrainingDiverged) if a value ``update`` returned since the last checkpoint was NaN or
        infinite, before anything of that state is evaluated or saved."""
        bad = self.loss_values.first_nonfinite()
        if bad is None:
            return
        key, step = bad
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.output_dir}"
                if self.saved_step is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{key} became nan or inf at step {step}; {kept}; "
                               "lower the learning rate (--hparams '{\"lr\": ...}') and rerun")

    def _checkpoint(self, step: int) -> dict | None:
        """Evaluate, record, save the resume state; the record (on the main process)."""
        self._stop_if_diverged()
        timing, loss_values = self.timing.take(), self.loss_values.take()
        self.progress.set_postfix({key: f"{value:.3f}" for key, value in list(loss_values.items())[:3]})
        rng_states = self.dist_env.gather(capture_rng_state())
        with self.autocast():  # every process, so that the algorithm's state stays the same everywhere
            validation = validation_for(self.validation_loaders, self.device)
            algorithm_values = self.algorithm.on_checkpoint(Checkpoint(step, step == self.n_steps - 1, validation))
        record = None
        if self.dist_env.is_main:
            record = {"args": self.config.record_args(), "hparams": self.hparams, "step": step,
                      "epoch": step / self.steps_per_epoch, **timing, **loss_values,
                      **algorithm_values}
            with self._data_errors_as_run_errors():
                record.update(self.accuracies.evaluate(self.algorithm.evaluation_model()))
            record.update(self.routing.take())
            record["environment"] = self.environment
            self.folder.append_record(record)
            self._print_record(record)
            self._log_scalars(record, step)
            self._keep_best_validation_model(record)  # before the resume state: a resumed run redoes both
            self.files.submit({"step": step, "algorithm": self.algorithm.state_dict(),
                                "training_state": self.algorithm.training_state(), "rng": rng_states,
                                "identity": self.identity}, self.folder.state)
            if self.config.save_model_every_checkpoint:
                self.files.submit(model_record(self.algorithm, self.config.record_args(), step),
                                   self.folder.model_at_step(step))
        else:
            self.routing.take()
        self.dist_env.barrier()
        self.saved_step = step
        self.timing.start()  # the next interval's clock starts after this checkpoint's work
        return record

    def _keep_best_validation_model(self, record: dict) -> None:
        """Keep the model of the checkpoint that training-domain validation selects so far (DomainBed's
        main method picks a checkpoint within each run, often not the last), so that the selected
        model can be exported without saving every checkpoint. Ties keep the earlier checkpoint,
        as the selection does."""
        if self.config.skip_model_save or len(set(self.config.test_envs)) != 1:
            return
        if self.best_val is None:  # first checkpoint of this attempt: what the earlier records selected
            earlier = [IIDAccuracySelectionMethod.step_acc(r) for r in self.folder.read_records()[:-1]]
            best = max((acc for acc in earlier if acc is not None), key=lambda acc: acc.val_acc, default=None)
            self.best_val = best.val_acc if best else -math.inf
            self.best_val_step = best.step if best else None
        accuracy = IIDAccuracySelectionMethod.step_acc(record)
        if accuracy is not None and accuracy.val_acc > self.best_val:
            self.files.submit(model_record(self.algorithm, self.config.record_args(), record["step"]),
                               self.folder.best_val_model)
            self.best_val, self.best_val_step = accuracy.val_acc, record["step"]

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

    @contextlib.contextmanager
    def _background_writes(self):
        """Checkpoint files are written by a background thread (``BackgroundWriter``): the step loop
        goes on while the last checkpoint reaches the disk. However the loop ends, pending writes
        finish first, so an interrupted run keeps its latest checkpoint."""
        self.files = BackgroundWriter()
        try:
            yield
        finally:
            self.files.close()

    def _finish(self) -> None:
        if self.dist_env.is_main:
            if not self.config.skip_model_save:
                save_model(self.folder.model, self.algorithm, self.config.record_args(), self.n_steps - 1)
            if self.best_val_step == self.n_steps - 1:  # model.pkl is that checkpoint already
                self.folder.best_val_model.unlink(missing_ok=True)
            self.folder.mark_done()
            self.folder.state.unlink(missing_ok=True)  # the resume state is only needed until `done`
        self.dist_env.barrier()


class RunTerminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption or time limit) stops the run like Ctrl-C: the error goes to
    err.txt with the step reached and the checkpoint kept."""


@contextlib.contextmanager
def _terminated_on_sigterm():
    """While the run lives, SIGTERM raises RunTerminated in the main thread (elsewhere: unchanged)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise RunTerminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_state_of_same_run(folder: RunFolder, identity: dict) -> dict | None:
    """The folder's resume state (None if it has none), after checking that it belongs to a run of
    this very configuration: resuming another one would mix two configurations' records (or fail
    deep inside ``load_state_dict``). A mismatch is a RunError naming what differs; nothing in the
    folder has been touched yet."""
    if not folder.state.exists():
        return None
    try:
        state = torch.load(folder.state, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RunError(f"{folder.state} cannot be read ({str(error).strip().splitlines()[0]}); delete it to start "
                       "this run afresh, or choose another --output_dir") from None
    saved = state.get("identity")
    if saved is None:  # written before resume states carried their identity: the records say it
        records = folder.read_records()
        if not records:
            return state
        last = records[-1]
        saved = {"args": {name: last["args"].get(name) for name in identity["args"]},
                 "hparams": last.get("hparams", {})}
        saved = json.loads(json.dumps(saved))
        saved["args"]["test_envs"] = sorted(set(saved["args"]["test_envs"] or []))
        for name in ("steps", "checkpoint_freq"):  # records keep the flag as given (None: the default)
            if saved["args"][name] is None:
                saved["args"][name] = identity["args"][name]
    differences = identity_differences(saved, identity)
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise RunError(f"{folder.path} holds an interrupted run of another configuration ({shown}); rerun its own "
                       "command to resume it, or choose another --output_dir")
    return state


def _rank_rng_fallback(saved: dict, config: TrainConfig, dist_env: DistEnv) -> dict:
    """Resuming on a different number of processes: process 0 continues the saved stream, the
    others start fresh ones (the run stays valid but no longer repeats the original exactly)."""
    if dist_env.is_main:
        print("warning: resuming on a different number of processes; random streams restart")
        return saved
    seed_everything(seed_hash(config.seed, "rank", dist_env.rank, "resumed"))
    return capture_rng_state()
