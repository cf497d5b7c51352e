"""Model selection: which hyperparameters and checkpoint count, judged only on validation data.

Each method turns the records of one (trial_seed, dataset, algorithm, test_env) group (see
``records.selection_groups``) into one test accuracy: every hparams_seed gets a
(val_acc, test_acc); the test_acc of the best val_acc is the group's result.

Ties are broken deterministically (DomainBed leaves them to file-system order): among equal
val_acc the smaller hparams_seed wins, and within a run the earlier checkpoint wins.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple

import numpy as np

from .records import Record, group_by, n_environments, single_test_env_records

__all__ = ["Accuracy", "SelectionMethod", "OracleSelectionMethod", "IIDAccuracySelectionMethod",
           "LeaveOneOutSelectionMethod", "SELECTION_METHODS", "Selection", "selected_checkpoints", "selected_runs"]


class Accuracy(NamedTuple):
    val_acc: float
    test_acc: float
    step: int | None = None  # the checkpoint these accuracies are of (the one a method selects)


class Selection(NamedTuple):
    """The checkpoint a selection method picks for one (trial_seed, dataset, algorithm, test_env)."""
    run_dir: str  # the selected single-test-env run (its ``args.output_dir``)
    step: int
    last_step: int  # the run's last recorded step (model.pkl holds that one)
    val_acc: float
    test_acc: float
    hparams_seed: int


def _best(accs: list[Accuracy]) -> Accuracy | None:
    # max() keeps the first of equal values, i.e. the earliest step
    return max(accs, key=lambda a: a.val_acc) if accs else None


def _by_step(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: r["step"])


class SelectionMethod:
    """Base class: subclasses define ``name`` and ``run_acc``."""

    name: ClassVar[str] = ""

    @classmethod
    def run_acc(cls, run_records: list[Record]) -> Accuracy | None:
        """(val_acc, test_acc) of one hparams_seed's records, or None if it cannot be scored."""
        raise NotImplementedError

    @classmethod
    def hparams_accs(cls, records: list[Record]) -> list[tuple[Accuracy, list[Record]]]:
        """Scored hparams_seeds of one group, best val_acc first."""
        runs = group_by(records, lambda r: r["args"]["hparams_seed"])
        scored = []
        for _, run_records in sorted(runs.items(), key=lambda kv: kv[0]):
            acc = cls.run_acc(run_records)
            if acc is not None:
                scored.append((acc, run_records))
        # stable sort: equal val_acc keeps the smaller hparams_seed first
        return sorted(scored, key=lambda item: -item[0].val_acc)

    @classmethod
    def sweep_acc(cls, records: list[Record]) -> float | None:
        """Test accuracy of the selected hparams_seed, or None if none can be scored."""
        scored = cls.hparams_accs(records)
        return scored[0][0].test_acc if scored else None


class OracleSelectionMethod(SelectionMethod):
    """Peeks at the test domain's held-out split, at the last checkpoint only."""

    name = "test-domain validation set (oracle)"

    @classmethod
    def run_acc(cls, run_records: list[Record]) -> Accuracy | None:
        single = _by_step(single_test_env_records(run_records))
        if not single:
            return None
        last = single[-1]
        test_env = last["args"]["test_envs"][0]
        return Accuracy(last[f"env{test_env}_out_acc"], last[f"env{test_env}_in_acc"], last["step"])


class IIDAccuracySelectionMethod(SelectionMethod):
    """Validates on the held-out splits of the training domains; best checkpoint counts."""

    name = "training-domain validation set"

    @staticmethod
    def step_acc(record: Record) -> Accuracy | None:
        test_env = record["args"]["test_envs"][0]
        val_accs = [
            record[f"env{i}_out_acc"] for i in range(n_environments(record)) if i != test_env
        ]
        if not val_accs:
            return None
        return Accuracy(float(np.mean(val_accs)), record[f"env{test_env}_in_acc"], record["step"])

    @classmethod
    def run_acc(cls, run_records: list[Record]) -> Accuracy | None:
        steps = [cls.step_acc(r) for r in _by_step(single_test_env_records(run_records))]
        return _best([a for a in steps if a is not None])


class LeaveOneOutSelectionMethod(SelectionMethod):
    """Validates on each training domain j with a model trained without it ([test, j] run)."""

    name = "leave-one-domain-out cross-validation"

    @staticmethod
    def step_acc(step_records: list[Record]) -> Accuracy | None:
        """Score one checkpoint step from the single run and all its [test, j] runs."""
        single = single_test_env_records(step_records)
        if len(single) != 1:
            return None
        test_env = single[0]["args"]["test_envs"][0]
        held_out_acc: dict[int, float] = {}
        for r in step_records:
            envs = set(r["args"]["test_envs"])
            if len(envs) == 2 and test_env in envs:
                (j,) = envs - {test_env}
                held_out_acc[j] = r[f"env{j}_in_acc"]
        others = [j for j in range(n_environments(step_records[0])) if j != test_env]
        if not others or any(j not in held_out_acc for j in others):
            return None
        val_acc = sum(held_out_acc[j] for j in others) / len(others)
        return Accuracy(float(val_acc), single[0][f"env{test_env}_in_acc"], single[0]["step"])

    @classmethod
    def run_acc(cls, run_records: list[Record]) -> Accuracy | None:
        by_step = group_by(run_records, lambda r: r["step"])
        steps = [cls.step_acc(by_step[s]) for s in sorted(by_step)]
        return _best([a for a in steps if a is not None])


# the order collect_results prints them in
SELECTION_METHODS: tuple[type[SelectionMethod], ...] = (
    IIDAccuracySelectionMethod,
    LeaveOneOutSelectionMethod,
    OracleSelectionMethod,
)


def selected_checkpoints(records: list[Record], method: type[SelectionMethod]) -> dict[tuple, Selection]:
    """The checkpoint each (trial_seed, dataset, algorithm, test_env) group selects: in the
    single-test-env run of the hparams_seed with the best validation accuracy, the step that
    validation accuracy was measured at (the last one for the oracle)."""
    from .records import selection_groups

    chosen = {}
    for key, group in selection_groups(records).items():
        scored = method.hparams_accs(group)
        if scored:
            accuracy, run_records = scored[0]
            single = single_test_env_records(run_records)
            chosen[key] = Selection(single[0]["args"]["output_dir"], accuracy.step, max(r["step"] for r in single),
                                    accuracy.val_acc, accuracy.test_acc, single[0]["args"]["hparams_seed"])
    return chosen


def selected_runs(records: list[Record], method: type[SelectionMethod]) -> dict[tuple, str]:
    """The run folder each (trial_seed, dataset, algorithm, test_env) group selects."""
    return {key: selection.run_dir for key, selection in selected_checkpoints(records, method).items()}
