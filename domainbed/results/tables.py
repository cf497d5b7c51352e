"""Result tables (text and LaTeX) from training records, laid out like DomainBed's collect_results.

Numbers and layout follow DomainBed so results stay comparable line by line: a cell is
"mean +/- err" of the per-trial accuracies x100 with err = 100 * std(x / sqrt(n)) (ddof 0);
text columns are left-justified to 20 characters (25 in the "Averages" table) and joined by
two spaces. One deliberate difference: a cell wider than its column widens the column instead of
being cut off, so long algorithm names stay readable. One addition: a table with missing cells ("X")
ends with one line saying why they are missing (``missing_note``).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..algorithms import ALGORITHMS
from ..data.catalog import CATALOG, DATASETS, describe_folder_dataset
from .records import (Record, base_algorithm, group_by, label_methods, n_environments,
                      selection_groups)
from .selection import SELECTION_METHODS, LeaveOneOutSelectionMethod, SelectionMethod

DATASET_COLWIDTH = 20
AVERAGES_COLWIDTH = 25


# ---------------------------------------------------------------- names (torch-free)

def registered_datasets() -> list[str]:
    """Dataset names in the package's canonical order."""
    return list(DATASETS)


def registered_algorithms() -> list[str]:
    """Algorithm names in the package's canonical order (DomainBed's, then ours)."""
    return list(ALGORITHMS)


def environment_names(dataset_name: str, n_envs: int, data_dirs: Iterable[str] = ()) -> list[str]:
    """Column names for a dataset: its environments if known (a dataset of one's own images: its
    ``n_envs`` domain folders in one of ``data_dirs``, its runs' ``--data_dir``), else env0..env{n_envs-1}."""
    info = CATALOG.get(dataset_name)
    if info is not None:
        return list(info.environments)
    for data_dir in data_dirs:
        try:
            info = describe_folder_dataset(data_dir, dataset_name)
        except ValueError:  # the folder has changed since: its names may not be the runs' any more
            continue
        if info is not None and len(info.environments) == n_envs:
            return list(info.environments)
    return [f"env{i}" for i in range(n_envs)]


def ordered_datasets(records: list[Record]) -> list[str]:
    """Datasets in registry order, then unknown ones alphabetically (DomainBed drops those)."""
    present = {r["args"]["dataset"] for r in records}
    known = [d for d in registered_datasets() if d in present]
    return known + sorted(present - set(known))


def ordered_algorithms(records: list[Record]) -> list[str]:
    """Algorithms (or their labels, "ALGORITHM (backbone)", ``label_methods``) in registry order, then
    unknown ones in order of first appearance; labels of one algorithm sorted."""
    present = list(dict.fromkeys(r["args"]["algorithm"] for r in records))
    order = {name: i for i, name in enumerate(registered_algorithms())}
    known = sorted((a for a in present if base_algorithm(a) in order), key=lambda a: (order[base_algorithm(a)], a))
    return known + [a for a in present if a not in known]


def dataset_environments(records: list[Record], dataset: str) -> list[str]:
    of_dataset = [r for r in records if r["args"]["dataset"] == dataset]
    n_envs = max((n_environments(r) for r in of_dataset), default=0)
    data_dirs = dict.fromkeys(r["args"]["data_dir"] for r in of_dataset if isinstance(r["args"].get("data_dir"), str))
    return environment_names(dataset, n_envs, data_dirs)


# ---------------------------------------------------------------- numbers

@dataclass(frozen=True)
class SweepResult:
    """The selected test accuracy of one (trial_seed, dataset, algorithm, test_env) group."""

    trial_seed: int
    dataset: str
    algorithm: str
    test_env: int
    acc: float


def sweep_results(records: list[Record], method: type[SelectionMethod]) -> list[SweepResult]:
    """Apply a selection method to every group; groups it cannot score are left out."""
    results = []
    for (trial_seed, dataset, algorithm, test_env), group in selection_groups(records).items():
        acc = method.sweep_acc(group)
        if acc is not None:
            results.append(SweepResult(trial_seed, dataset, algorithm, test_env, acc))
    return results


def trial_accuracies(
    results: list[SweepResult], dataset: str, algorithm: str, test_env: int
) -> list[float]:
    """One accuracy per trial for a table cell."""
    return [
        r.acc for r in results
        if (r.dataset, r.algorithm, r.test_env) == (dataset, algorithm, test_env)
    ]


def trial_dataset_averages(results: list[SweepResult], dataset: str, algorithm: str) -> list[float]:
    """Per trial, the mean accuracy over the test environments it has (the Averages table)."""
    selected = [r for r in results if (r.dataset, r.algorithm) == (dataset, algorithm)]
    by_trial = group_by(selected, lambda r: r.trial_seed)
    return [float(np.mean([r.acc for r in group])) for group in by_trial.values()]


def mean_and_error(values: list[float]) -> tuple[float, float] | None:
    """(100 * mean, 100 * std(x / sqrt(n))) as DomainBed reports them; None if no values."""
    if len(values) == 0:
        return None
    x = np.asarray(values, dtype=float)
    return float(100 * np.mean(x)), float(100 * np.std(x / np.sqrt(len(x))))


def format_mean(values: list[float], latex: bool = False) -> str:
    """A table cell: "mean +/- err" (LaTeX: "mean $\\pm$ err"), or "X" without values."""
    summary = mean_and_error(values)
    if summary is None:
        return "X"
    pm = "$\\pm$" if latex else "+/-"
    return f"{summary[0]:.1f} {pm} {summary[1]:.1f}"


def _format_average(means: list[float | None]) -> str:
    if not means or any(m is None for m in means):
        return "X"
    return f"{sum(means) / len(means):.1f}"


# ---------------------------------------------------------------- why a cell is missing

NO_RUN = "no run holds out the domain"
NO_DATASET_RUN = "no run on the dataset"
NO_PAIR_RUNS = "no leave-one-domain-out pair runs"
PAIR_RUNS_INCOMPLETE = "pair runs missing for some training domains or steps"
NOT_SCORED = "the runs could not be scored"
# the whole leave-one-domain-out table is X when no run holds out two domains
NO_PAIRS_AT_ALL = ("no leave-one-domain-out pair runs (runs holding out two domains; "
                   "a sweep with --single_test_envs launches none)")
AVG_NEEDS_ALL = "a row's Avg needs all its cells"


@dataclass(frozen=True)
class Coverage:
    """Which runs a sweep has, to say why a selection method left a cell empty."""

    single: frozenset[tuple[str, str, int]]  # (dataset, algorithm, test_env) of single-test-env runs
    paired: frozenset[tuple[str, str, int]]  # ... of runs holding out test_env and one more domain

    @classmethod
    def of(cls, records: list[Record]) -> Coverage:
        single, paired = set(), set()
        for (_, dataset, algorithm, test_env), group in selection_groups(records).items():
            n_test = {len(r["args"]["test_envs"]) for r in group}
            if 1 in n_test:
                single.add((dataset, algorithm, test_env))
            if 2 in n_test:
                paired.add((dataset, algorithm, test_env))
        return cls(frozenset(single), frozenset(paired))

    def has_pairs(self, dataset: str | None = None) -> bool:
        """Whether any run (of ``dataset``, if given) holds out two domains."""
        return any(dataset in (None, d) for d, _, _ in self.paired)


def needs_pair_runs(method: type[SelectionMethod]) -> bool:
    """Whether ``method`` validates on runs that hold out two domains (leave-one-domain-out)."""
    return issubclass(method, LeaveOneOutSelectionMethod)


def missing_reason(coverage: Coverage, method: type[SelectionMethod], dataset: str, algorithm: str,
                   test_env: int) -> str:
    """Why ``method`` has no accuracy for (dataset, algorithm, test_env): the first missing ingredient."""
    if (dataset, algorithm, test_env) not in coverage.single:
        return NO_RUN
    if needs_pair_runs(method):
        return PAIR_RUNS_INCOMPLETE if (dataset, algorithm, test_env) in coverage.paired else NO_PAIR_RUNS
    return NOT_SCORED


def missing_dataset_reason(coverage: Coverage, method: type[SelectionMethod], dataset: str,
                           algorithm: str) -> str:
    """Why the Averages table has no accuracy for (algorithm, dataset)."""
    if not any((d, a) == (dataset, algorithm) for d, a, _ in coverage.single):
        return NO_DATASET_RUN
    if needs_pair_runs(method):
        paired = any((d, a) == (dataset, algorithm) for d, a, _ in coverage.paired)
        return PAIR_RUNS_INCOMPLETE if paired else NO_PAIR_RUNS
    return NOT_SCORED


def reason_rank(reason: str) -> int:
    """Reasons in the order notes list them: the most basic missing ingredient first."""
    order = [NO_RUN, NO_DATASET_RUN, NO_PAIR_RUNS, PAIR_RUNS_INCOMPLETE, NOT_SCORED]
    return order.index(reason) if reason in order else len(order)


def missing_note(reasons: list[str], no_pairs_at_all: bool = False) -> str | None:
    """The line under a table: why its X cells are missing, with how many cells each reason
    leaves empty; None when nothing is missing. ``no_pairs_at_all``: a leave-one-domain-out table
    with no pair runs to use, where that one reason says it all."""
    if not reasons:
        return None
    if no_pairs_at_all:
        return f"X: {NO_PAIRS_AT_ALL}"
    present = sorted(set(reasons), key=reason_rank)
    counts = {reason: reasons.count(reason) for reason in present}
    parts = [f"{reason} ({n} cell{'s' if n > 1 else ''})" for reason, n in counts.items()]
    return "X: " + "; ".join(parts) + f"; {AVG_NEEDS_ALL}"


def latex_note(note: str) -> str:
    """A note line as LaTeX text: escaped, "--" kept as two hyphens, in small type."""
    return "\\\\[2pt]{\\footnotesize " + latex_escape(note).replace("--", "-{}-") + "}"


# ---------------------------------------------------------------- layout

def latex_escape(text: str) -> str:
    for char in ("&", "%", "_", "#"):
        text = text.replace(char, "\\" + char)
    return text


def format_table(
    cells: list[list[str]],
    header_text: str,
    row_labels: list[str],
    col_labels: list[str],
    colwidth: int = DATASET_COLWIDTH,
    latex: bool = False,
    note: str | None = None,
) -> list[str]:
    """Lines of one table: a blank line, a header, then one line per row, then ``note`` (why
    cells are missing) if given: in LaTeX under the tabular, inside the centred block."""
    lines = [""]
    if latex:
        lines += [
            "\\begin{center}",
            "\\adjustbox{max width=\\textwidth}{%",
            "\\begin{tabular}{l" + "c" * (len(col_labels) - 1) + "}",
            "\\toprule",
        ]
        col_labels = ["\\textbf{" + latex_escape(c) + "}" for c in col_labels]
        row_labels = [latex_escape(r) for r in row_labels]
        sep, end = " & ", " \\\\"
    else:
        lines.append("-------- " + header_text)
        sep, end = "  ", " "
    rows = [list(col_labels)] + [[label, *row] for label, row in zip(row_labels, cells)]
    widths = [max([colwidth] + [len(row[c]) for row in rows]) for c in range(len(col_labels))]
    for r, row in enumerate(rows):
        lines.append(sep.join(cell.ljust(w) for cell, w in zip(row, widths)) + end)
        if latex and r == 0:
            lines.append("\\midrule")
    if latex:
        lines += ["\\bottomrule", "\\end{tabular}}"]
        if note:
            lines.append(latex_note(note))
        lines.append("\\end{center}")
    elif note:
        lines.append(note)
    return lines


def results_tables(
    records: list[Record], method: type[SelectionMethod], latex: bool = False
) -> list[str]:
    """One table per dataset, then the Averages table, for one selection method."""
    results = sweep_results(records, method)
    algorithms = ordered_algorithms(records)
    datasets = ordered_datasets(records)
    coverage = Coverage.of(records)
    lines: list[str] = []

    for dataset in datasets:
        if latex:
            lines += ["", f"\\subsubsection{{{latex_escape(dataset)}}}"]
        envs = dataset_environments(records, dataset)
        cells, reasons = [], []
        for algorithm in algorithms:
            accs = [trial_accuracies(results, dataset, algorithm, t) for t in range(len(envs))]
            means = [(mean_and_error(a) or (None,))[0] for a in accs]
            cells.append([format_mean(a, latex) for a in accs] + [_format_average(means)])
            reasons += [missing_reason(coverage, method, dataset, algorithm, t)
                        for t, a in enumerate(accs) if not a]
        note = missing_note(reasons, needs_pair_runs(method) and not coverage.has_pairs(dataset))
        header = f"Dataset: {dataset}, model selection method: {method.name}"
        lines += format_table(
            cells, header, algorithms, ["Algorithm", *envs, "Avg"], DATASET_COLWIDTH, latex, note
        )

    if latex:
        lines += ["", "\\subsubsection{Averages}"]
    cells, reasons = [], []
    for algorithm in algorithms:
        accs = [trial_dataset_averages(results, d, algorithm) for d in datasets]
        means = [(mean_and_error(a) or (None,))[0] for a in accs]
        cells.append([format_mean(a, latex) for a in accs] + [_format_average(means)])
        reasons += [missing_dataset_reason(coverage, method, d, algorithm)
                    for d, a in zip(datasets, accs) if not a]
    note = missing_note(reasons, needs_pair_runs(method) and not coverage.has_pairs())
    header = f"Averages, model selection method: {method.name}"
    lines += format_table(
        cells, header, algorithms, ["Algorithm", *datasets, "Avg"], AVERAGES_COLWIDTH, latex, note
    )
    return lines


def format_results(
    records: list[Record],
    latex: bool = False,
    methods: tuple[type[SelectionMethod], ...] = SELECTION_METHODS,
) -> str:
    """The whole collect_results report: text, or a standalone LaTeX document."""
    records = label_methods(records)
    if latex:
        lines = [
            "\\documentclass{article}",
            "\\usepackage{booktabs}",
            "\\usepackage{adjustbox}",
            "\\begin{document}",
            "\\section{Full DomainBed results}",
            f"% Total records: {len(records)}",
        ]
    else:
        lines = [f"Total records: {len(records)}"]
    for method in methods:
        if latex:
            lines += ["", f"\\subsection{{Model selection: {method.name}}}"]
        lines += results_tables(records, method, latex)
    if latex:
        lines.append("\\end{document}")
    return "\n".join(lines) + "\n"
