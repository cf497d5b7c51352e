"""What a sweep's jobs would fail on, checked once before any job is launched.

A missing data folder, an hparam a job's algorithm does not have, a value of the wrong type or
pretrained weights that cannot be had would fail every job one by one (a whole Slurm array): they
stop the launch, and nothing runs. A run its method refuses (too few training domains in a
leave-two-out run, a random ``n_meta_test`` that leaves MLDG no meta-train domain, a SWAD window
longer than the run) is left out with a note, unless the method refuses every one of its jobs,
which is a flag to fix and stops the launch too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class PreflightError(ValueError):
    """Jobs of the sweep would fail; nothing was launched."""


@dataclass
class Preflight:
    runnable: list[dict] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> jobs

    def notes(self) -> list[str]:
        return [f"left out {n} job(s): {reason}" for reason, n in self.left_out.items()]


class _Checker:
    """Caches what is shared by many jobs: a dataset's folder, a backbone's weights."""

    def __init__(self):
        self.data: dict[tuple, str | None] = {}
        self.weights: dict[str, str | None] = {}

    def data_problem(self, dataset: str, data_dir: str) -> str | None:
        from ..data.registry import get_dataset_class

        if (dataset, data_dir) not in self.data:
            try:
                get_dataset_class(dataset, data_dir).check_data(data_dir)
                self.data[(dataset, data_dir)] = None
            except (FileNotFoundError, ImportError, ValueError) as error:
                self.data[(dataset, data_dir)] = str(error)
        return self.data[(dataset, data_dir)]

    def weights_problem(self, hparams: dict) -> str | None:
        from ..models.backbones import timm_name
        from ..models.pretrained import unavailable_reason

        if hparams.get("pretrained_file"):
            path = hparams["pretrained_file"]
            return None if os.path.isfile(path) else f"pretrained_file '{path}' does not exist"
        if not hparams.get("pretrained"):
            return None
        name = timm_name(hparams["backbone"])
        if name not in self.weights:
            reason = unavailable_reason(name)
            self.weights[name] = (f"pretrained weights for '{name}' cannot be had ({reason}); put them in the "
                                  "Hugging Face cache, or pass --hparams '{\"pretrained_file\": ...}'"
                                  if reason else None)
        return self.weights[name]


def preflight(args_list: list[dict]) -> Preflight:
    """The jobs that can run (and the ones left out, with why); PreflightError (one line) when
    the sweep cannot go ahead."""
    from ..algorithms import RunInfo, get_algorithm_class
    from ..data.catalog import dataset_info
    from ..hparams.registry import resolve_hparams
    from ..hparams.space import parse_hparams_json

    checker, result = _Checker(), Preflight()
    resolved: dict[tuple, dict | str] = {}  # jobs differing only in test envs share their hparams
    stopping: dict[str, int] = {}
    refused_by_algorithm: dict[str, list[str]] = {}
    for args in args_list:
        dataset, algorithm = args["dataset"], args["algorithm"]
        problem = checker.data_problem(dataset, args["data_dir"])
        key = (algorithm, dataset, args["hparams_seed"], args["trial_seed"], args.get("hparams"))
        if not problem and key not in resolved:
            try:
                resolved[key] = resolve_hparams(algorithm, dataset, args["hparams_seed"], args["trial_seed"],
                                                parse_hparams_json(args.get("hparams")))
            except ValueError as error:
                resolved[key] = f"{algorithm} on {dataset}: {error}"
        hparams = None if problem else resolved[key]
        if isinstance(hparams, str):
            problem = hparams
        problem = problem or checker.weights_problem(hparams)
        if problem:
            stopping[problem] = stopping.get(problem, 0) + 1
            continue
        info = dataset_info(dataset, args["data_dir"])
        run = RunInfo(args.get("steps") or info.n_steps, args.get("checkpoint_freq") or info.checkpoint_freq,
                      len(info.environments) - len(set(args["test_envs"])))
        try:
            get_algorithm_class(algorithm).check_run(hparams, run)
        except ValueError as error:
            reason = f"{algorithm} on {dataset}: {error}"
            result.left_out[reason] = result.left_out.get(reason, 0) + 1
            refused_by_algorithm.setdefault(algorithm, []).append(reason)
            continue
        result.runnable.append(args)
    for algorithm, reasons in refused_by_algorithm.items():
        if not any(args["algorithm"] == algorithm for args in result.runnable):
            stopping[reasons[0]] = len(reasons)
    if stopping:
        first, count = next(iter(stopping.items()))
        others = f"; {len(stopping) - 1} other problem(s) too" if len(stopping) > 1 else ""
        raise PreflightError(f"{first} ({count} of {len(args_list)} jobs{others}); nothing was launched")
    return result
