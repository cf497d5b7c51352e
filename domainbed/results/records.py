"""Loading the per-checkpoint records that training writes, and grouping them.

A record is one line of a run's ``results.jsonl``: a plain dict with ``args``, ``hparams``,
``step`` and ``env{i}_{in,out}_acc`` keys. Records stay plain dicts so that the selection rules
read like the protocol; unknown keys (``routing``, loss names, ...) are carried along untouched.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..algorithms import canonical_name
from ..moe.config import MODEL_HPARAMS, SETTINGS
from ..run.folder import RunFolder

# args every record must carry to take part in model selection
REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed")

Record = dict[str, Any]
_MOE_DEFAULTS = {setting.name: setting.default for setting in SETTINGS}


@dataclass
class LoadedRecords:
    """Records of every run found, plus counts worth telling the user about."""

    records: list[Record]
    n_runs: int  # results.jsonl files read
    n_incomplete_runs: int  # runs without a ``done`` file (their records are still used)
    n_skipped_lines: int  # torn or unusable lines that were left out
    skipped_by_file: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> lines left out


def _usable(record: Any) -> bool:
    if not isinstance(record, dict) or "step" not in record:
        return False
    args = record.get("args")
    return isinstance(args, dict) and all(k in args for k in REQUIRED_ARGS)


def read_results_file(path: str | Path) -> tuple[list[Record], int]:
    """Read one results.jsonl; returns (records, number of skipped lines).

    A run killed mid-write leaves a torn last line; skipping it (and counting it) is friendlier
    than refusing to report on a whole sweep.
    """
    records: list[Record] = []
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if _usable(record):
                records.append(_canonical(record))
            else:
                skipped += 1
    return records, skipped


def _canonical(record: Record) -> Record:
    """The record under its algorithm's canonical name (an older run recorded as GMOE is SFMOE)."""
    name = canonical_name(record["args"]["algorithm"])
    if name == record["args"]["algorithm"]:
        return record
    return {**record, "args": {**record["args"], "algorithm": name}}


def load_records(input_dir: str | Path) -> LoadedRecords:
    """Load every ``results.jsonl`` below ``input_dir`` (recursively, in sorted path order).

    Sorted order makes every tie-break downstream deterministic.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"input directory {str(root)!r} does not exist; pass the --output_dir used by "
            "sweep/train as --input_dir"
        )
    paths = sorted(root.rglob(RunFolder.RESULTS))
    if not paths:
        raise ValueError(
            f"no {RunFolder.RESULTS} found under {str(root)!r}; pass the --output_dir used by "
            "sweep/train as --input_dir (runs write <output_dir>/<run>/results.jsonl)"
        )
    records: list[Record] = []
    n_incomplete = 0
    skipped_by_file: dict[str, int] = {}
    for path in paths:
        run_records, skipped = read_results_file(path)
        records.extend(run_records)
        if skipped:
            skipped_by_file[str(path)] = skipped
        if not RunFolder(path.parent).is_done:
            n_incomplete += 1
    return LoadedRecords(records, len(paths), n_incomplete, sum(skipped_by_file.values()), skipped_by_file)


def group_by(items: Iterable[Any], key: Callable[[Any], Hashable]) -> dict[Hashable, list]:
    """Group items by ``key(item)``; groups keep first-appearance order."""
    groups: dict[Hashable, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def single_test_env_records(records: Iterable[Record]) -> list[Record]:
    """Records of runs that hold out exactly one environment (the ones that are scored)."""
    return [r for r in records if len(r["args"]["test_envs"]) == 1]


def n_environments(record: Record) -> int:
    """Number of environments evaluated in a record (contiguous ``env{i}_out_acc`` keys)."""
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return n


def selection_groups(records: Iterable[Record]) -> dict[tuple[int, str, str, int], list[Record]]:
    """Group records by (trial_seed, dataset, algorithm, test_env).

    A record of a run with two test environments belongs to both groups: it is the
    leave-one-domain-out validation run of either one.
    """
    groups: dict[tuple[int, str, str, int], list[Record]] = {}
    for r in records:
        args = r["args"]
        for test_env in args["test_envs"]:
            key = (args["trial_seed"], args["dataset"], args["algorithm"], test_env)
            groups.setdefault(key, []).append(r)
    return groups


def backbone_of(record: Record) -> str | None:
    """The backbone a record's run trained (None for records that do not name one, e.g. DomainBed's)."""
    hparams = record.get("hparams")
    return hparams.get("backbone") if isinstance(hparams, dict) else None


def _model_hparams(record: Record) -> dict[str, Any]:
    """The record's MoE model hparams (``moe.config.MODEL_HPARAMS``; JSON lists as tuples)."""
    hparams = record.get("hparams")
    if not isinstance(hparams, dict):
        return {}
    return {name: tuple(hparams[name]) if isinstance(hparams[name], list) else hparams[name]
            for name in MODEL_HPARAMS if name in hparams}


def model_variant(record: Record) -> dict[str, Any]:
    """The record's MoE model hparams that differ from their defaults: empty for a dense backbone
    and for the paper's GMoE."""
    return {name: value for name, value in _model_hparams(record).items() if value != _MOE_DEFAULTS[name]}


def method_label(algorithm: str, backbone: str | None = None, variant: dict[str, Any] | None = None) -> str:
    """ "ALGORITHM (backbone, name=value, ...)", or the bare algorithm when there is nothing to add."""
    parts = [backbone] if backbone else []
    for name, value in (variant or {}).items():
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))  # a tuple as a list
        parts.append(f"{name}={shown}")
    return f"{algorithm} ({', '.join(parts)})" if parts else algorithm


def label_methods(records: list[Record]) -> list[Record]:
    """Name each method by what makes it one, so that tables give it its own row and model selection
    never mixes its runs: the same algorithm on two backbones, or on two MoE configurations, is two
    methods. When the records span more than one backbone, labels read "ALGORITHM (backbone)"; when
    an MoE model hparam (``moe.config.MODEL_HPARAMS``: top_k, router, moe_blocks...) takes more than
    one value, the runs whose value is not the default add it ("SFMOE (top_k=2)"). A DomainBed sweep
    (one backbone, one configuration) is unchanged; records labelled already are left as they are."""
    def is_fresh(record: Record) -> bool:
        return base_algorithm(record["args"]["algorithm"]) == record["args"]["algorithm"]

    by_backbone = len({backbone_of(r) for r in records} - {None}) > 1
    values: dict[str, set] = {}
    for r in records:
        for name, value in _model_hparams(r).items():
            values.setdefault(name, set()).add(value)
    varying = {name for name, seen in values.items() if len(seen) > 1}
    if not by_backbone and not varying:
        return records
    labelled = []
    for r in records:
        if is_fresh(r):
            variant = {name: value for name, value in model_variant(r).items() if name in varying}
            label = method_label(r["args"]["algorithm"], backbone_of(r) if by_backbone else None, variant)
            r = {**r, "args": {**r["args"], "algorithm": label}}
        labelled.append(r)
    return labelled


def base_algorithm(label: str) -> str:
    """The algorithm name of a row label ("ERM (resnet50)" -> "ERM")."""
    return label.split(" (", 1)[0]
