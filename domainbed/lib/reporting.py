"""DomainBed's ``domainbed.lib.reporting``: ``load_records`` and ``get_grouped_records``, as its
notebooks and scripts call them, on top of ``domainbed.results.records``. Torch-free."""

from __future__ import annotations

from ..results.records import load_records as _load_records
from ..results.records import selection_groups
from .query import Q

__all__ = ["load_records", "get_grouped_records"]


def load_records(path) -> Q:
    """Every record of every run below ``path`` (each ``<run>/results.jsonl``), as a ``Q``; an
    empty ``Q`` when there is none (torn lines are skipped)."""
    try:
        return Q(_load_records(path).records)
    except ValueError:  # no results.jsonl below path: DomainBed gives an empty list
        return Q()


def get_grouped_records(records, hparams_key: str | None = None, hparam=None) -> Q:
    """Records grouped by (trial_seed, dataset, algorithm, test_env): a ``Q`` of dicts with those
    four keys and ``records`` (a ``Q``). A record of a run with two test environments is in both
    groups. With ``hparams_key``, only records whose ``hparams[hparams_key] == hparam``."""
    if hparams_key is not None:
        records = [r for r in records if r["hparams"].get(hparams_key) == hparam]
    return Q({"trial_seed": trial_seed, "dataset": dataset, "algorithm": algorithm, "test_env": test_env,
              "records": Q(group)}
             for (trial_seed, dataset, algorithm, test_env), group in selection_groups(records).items())
