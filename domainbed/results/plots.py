"""Figures from training records: the result tables as bar charts, and training curves.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so no display backend
is needed, nothing is kept in a global figure list, and callers can inspect them before saving.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .records import Record, group_by, label_algorithms_by_backbone, n_environments
from .selection import SELECTION_METHODS, SelectionMethod
from .tables import (dataset_environments, mean_and_error, ordered_algorithms, ordered_datasets,
                     sweep_results, trial_accuracies)

CurveKey = tuple[str, str, tuple[int, ...], int]  # dataset, algorithm, test_envs, hparams_seed


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def selection_bar_figure(
    records: list[Record], method: type[SelectionMethod], dataset: str
) -> Figure | None:
    """Test accuracy per environment (x) and algorithm (bars) with error bars, as in the table.

    Missing cells are NaN-height bars (invisible). Returns None when the method scores nothing
    for this dataset, so empty charts are not written.
    """
    results = sweep_results(records, method)
    envs = dataset_environments(records, dataset)
    algorithms = ordered_algorithms([r for r in records if r["args"]["dataset"] == dataset])
    summaries = {
        (a, t): mean_and_error(trial_accuracies(results, dataset, a, t))
        for a in algorithms
        for t in range(len(envs))
    }
    if all(s is None for s in summaries.values()):
        return None

    fig = Figure(figsize=(max(4.0, 1.2 * len(envs) * max(1, len(algorithms)) ** 0.5), 3.5))
    ax = fig.add_subplot()
    x = np.arange(len(envs))
    width = 0.8 / max(1, len(algorithms))
    for k, algorithm in enumerate(algorithms):
        cells = [summaries[(algorithm, t)] for t in range(len(envs))]
        heights = [c[0] if c else np.nan for c in cells]
        errors = [c[1] if c else np.nan for c in cells]
        offset = (k - (len(algorithms) - 1) / 2) * width
        ax.bar(x + offset, heights, width, yerr=errors, capsize=3, label=algorithm)
    ax.set_xticks(x, envs)
    ax.set_xlabel("test environment")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: {method.name}", fontsize=9)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)
    return fig


def curve_groups(records: list[Record]) -> dict[CurveKey, list[Record]]:
    """Records per (dataset, algorithm, test_envs, hparams_seed); trials are averaged later."""
    return group_by(
        records,
        lambda r: (
            r["args"]["dataset"],
            r["args"]["algorithm"],
            tuple(r["args"]["test_envs"]),
            r["args"]["hparams_seed"],
        ),
    )


def trial_mean_curve(records: list[Record], key: str) -> tuple[list[int], list[float]]:
    """Steps and the mean of ``key`` over the trials that reached each step."""
    by_step = group_by((r for r in records if key in r), lambda r: r["step"])
    steps = sorted(by_step)
    return steps, [float(np.mean([r[key] for r in by_step[s]])) for s in steps]


def training_curve_figure(records: list[Record], title: str = "") -> Figure:
    """One panel per environment: in-split (solid) and out-split (dashed) accuracy vs step."""
    n_envs = max(n_environments(r) for r in records)
    if n_envs == 0:
        raise ValueError("records hold no env{i}_out_acc keys; pass records written by train")
    first = records[0]["args"]
    names = dataset_environments(records, first["dataset"])
    test_envs = set(first["test_envs"])
    n_cols = min(3, n_envs)
    n_rows = -(-n_envs // n_cols)
    fig = Figure(figsize=(3.2 * n_cols, 2.6 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True)
    for i in range(n_rows * n_cols):
        ax = axes.flat[i]
        if i >= n_envs:
            ax.remove()
            continue
        for split, style in (("in", "-"), ("out", "--")):
            steps, accs = trial_mean_curve(records, f"env{i}_{split}_acc")
            ax.plot(steps, 100 * np.asarray(accs), style, marker=".", label=split)
        name = names[i] if i < len(names) else f"env{i}"
        ax.set_title(f"{name} (test)" if i in test_envs else name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if i % n_cols == 0:
            ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    # fixed margins: tight_layout costs more than drawing the figure
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / height, top=1 - 0.6 / height,
                        wspace=0.08, hspace=0.6)
    return fig


def save_plots(
    records: list[Record],
    out_dir: str | Path,
    methods: tuple[type[SelectionMethod], ...] = SELECTION_METHODS,
    curves: bool = True,
    dpi: int = 100,
) -> list[Path]:
    """Write bar charts (bars_<dataset>_<method>.png) and training curves (curves/...png)."""
    records = label_algorithms_by_backbone(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for dataset in ordered_datasets(records):
        for method in methods:
            fig = selection_bar_figure(records, method, dataset)
            if fig is None:
                continue
            path = out / f"bars_{_slug(dataset)}_{_slug(method.name)}.png"
            fig.savefig(path, dpi=dpi)
            paths.append(path)
    if curves:
        (out / "curves").mkdir(exist_ok=True)
        for (dataset, algorithm, test_envs, hparams_seed), group in curve_groups(records).items():
            envs = "-".join(str(e) for e in test_envs)
            title = f"{dataset} {algorithm} test_envs={list(test_envs)} hparams_seed={hparams_seed}"
            path = out / "curves" / (
                f"{_slug(dataset)}_{_slug(algorithm)}_test{envs}_hp{hparams_seed}.png"
            )
            training_curve_figure(group, title).savefig(path, dpi=dpi)
            paths.append(path)
    return paths
