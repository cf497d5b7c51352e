"""Figures of a sweep that compare algorithms, one set per dataset.

Rows are the tables' rows: algorithms, named "ALGORITHM (backbone)" when the records span several
backbones and "ALGORITHM (top_k=2)" when they span several MoE configurations (``label_methods``;
every figure function applies it, so a function called directly never mixes them). Per dataset:

- ``selection_bar_figure``: the selected test accuracy per held-out domain and algorithm, with error
  bars, one panel per selection method: the tables as bars. A missing cell is an "X" on the axis,
  and the reason is written under the panel (the tables' reasons: no run, no pair runs...).
- ``accuracy_curve_figure``: held-out accuracy against the training step per algorithm, mean and
  spread over runs: for every held-out domain and trial, the hparams draw that training-domain
  validation selects.
- ``routing_figure``: for MoE runs (records with ``routing``), the share of token choices of each
  expert and the share dropped, per MoE layer, against the step.
- ``training_curve_figure``: one run's curves (every environment, in and out splits, mean over
  trials); ``save_plots`` draws them only when asked (``per_run_curves``): a sweep has thousands.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so no display backend
is needed, nothing is kept in a global figure list, and callers can inspect them before saving.
Like the rest of ``results``, this module imports neither torch nor timm; matplotlib is imported
only when a figure is drawn.
"""
from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .records import (Record, group_by, label_methods, n_environments,
                      selection_groups, single_test_env_records)
from .selection import SELECTION_METHODS, IIDAccuracySelectionMethod, SelectionMethod
from .tables import (NO_PAIRS_AT_ALL, Coverage, dataset_environments, mean_and_error, missing_reason,
                     needs_pair_runs, ordered_algorithms, ordered_datasets, reason_rank, sweep_results,
                     trial_accuracies)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CurveKey = tuple[str, str, tuple[int, ...], int]  # dataset, algorithm, test_envs, hparams_seed
Methods = type[SelectionMethod] | Sequence[type[SelectionMethod]]

# inches: fixed margins (tight_layout costs more than drawing the figure, and moves things around)
CHAR_INCHES = 0.058  # width of one character at fontsize 7, for wrapping and the legend's width
LINE_INCHES = 0.14   # height of one line of fontsize-7 text


# ---------------------------------------------------------------------------- shared pieces

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # matplotlib only when a figure is drawn

    return Figure(figsize=(width, height))


def _of_dataset(records: list[Record], dataset: str) -> list[Record]:
    selected = [r for r in records if r["args"]["dataset"] == dataset]
    if not selected:
        raise ValueError(f"no records of dataset {dataset!r} (datasets: {ordered_datasets(records)})")
    return selected


def _methods(methods: Methods) -> list[type[SelectionMethod]]:
    return [methods] if isinstance(methods, type) else list(methods)


def algorithm_colours(algorithms: list[str]) -> dict[str, tuple]:
    """One colour per algorithm (tab10, tab20 beyond ten), the same in every figure of a dataset."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(algorithms) <= 10 else "tab20"]
    return {a: cmap(i % cmap.N) for i, a in enumerate(algorithms)}


def _wrap(text: str, width_inches: float) -> list[str]:
    return textwrap.wrap(text, max(20, int(width_inches / CHAR_INCHES)), break_on_hyphens=False) or [""]


def _legend_inches(labels: list[str]) -> float:
    return 0.55 + CHAR_INCHES * max((len(label) for label in labels), default=0)


def selected_runs_by_algorithm(
    records: list[Record], dataset: str, method: type[SelectionMethod] = IIDAccuracySelectionMethod
) -> dict[str, dict[tuple[int, int], list[Record]]]:
    """{algorithm: {(test_env, trial_seed): the records of the run ``method`` selects, by step}}.

    For every held-out domain and trial, the single-test-env run of the hparams draw with the best
    validation accuracy (DomainBed's selection; its tie-breaks). A step recorded twice (a resumed
    run) counts once, its last record.
    """
    runs: dict[str, dict[tuple[int, int], list[Record]]] = {}
    for (trial, ds, algorithm, test_env), group in selection_groups(records).items():
        if ds != dataset:
            continue
        scored = method.hparams_accs(group)
        if not scored:
            continue
        by_step = {r["step"]: r for r in single_test_env_records(scored[0][1])}
        runs.setdefault(algorithm, {})[(test_env, trial)] = [by_step[s] for s in sorted(by_step)]
    return {a: dict(sorted(runs[a].items())) for a in ordered_algorithms(records) if a in runs}


def mean_and_spread(curves: list[tuple[list[int], list[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps (the union of the curves'), and at each step the mean, the std (ddof 0) and the number
    of curves that reached it."""
    steps = sorted({s for xs, _ in curves for s in xs})
    at = {s: [] for s in steps}
    for xs, ys in curves:
        for s, y in zip(xs, ys):
            at[s].append(y)
    return (np.array(steps), np.array([np.mean(at[s]) for s in steps]),
            np.array([np.std(at[s]) for s in steps]), np.array([len(at[s]) for s in steps]))


# ---------------------------------------------------------------------------- selected accuracy

def selection_bar_figure(records: list[Record], methods: Methods, dataset: str) -> Figure:
    """The tables' cells of ``dataset`` as bars: test accuracy per held-out domain (x) and
    algorithm (bars, mean over trials, error bars DomainBed's std / sqrt(n)); one panel per
    selection method in ``methods`` (one method or several).

    Algorithms are those with records of ``dataset``, in the tables' order. A missing cell is a
    NaN-height bar with an "X" at its foot, and the line under the panel says why (the reasons of
    the tables' notes); a leave-one-domain-out panel without any pair run says so across the panel.
    """
    records = _of_dataset(label_methods(records), dataset)
    methods = _methods(methods)
    envs = dataset_environments(records, dataset)
    algorithms = ordered_algorithms(records)
    colours = algorithm_colours(algorithms)
    coverage = Coverage.of(records)

    panels = []  # (method, {algorithm: [summary or None per env]}, note lines, no pairs at all)
    for method in methods:
        results = sweep_results(records, method)
        cells = {a: [mean_and_error(trial_accuracies(results, dataset, a, t)) for t in range(len(envs))]
                 for a in algorithms}
        no_pairs = needs_pair_runs(method) and not coverage.has_pairs(dataset)
        panels.append((method, cells, _bar_note(coverage, method, dataset, envs, cells, no_pairs), no_pairs))

    group_inches = max(0.9, 0.18 * len(algorithms) + 0.35)
    left, right = 0.65, _legend_inches(algorithms)
    axes_width = max(3.0, group_inches * len(envs))
    width = left + axes_width + right
    title_h, axes_h, ticks_h = 0.3, 2.1, 0.45
    wrapped = [[line for note in notes for line in _wrap(note, width - 0.3)] for _, _, notes, _ in panels]
    heights = [title_h + axes_h + ticks_h + LINE_INCHES * len(lines) + 0.1 for lines in wrapped]
    title = _wrap(f"{dataset}: selected test accuracy per held-out domain (mean +/- std/sqrt(n) over "
                  "trials, as in the tables)", (width - 0.3) * 7 / 9)  # fontsize 9
    top = 0.3 + 0.16 * len(title)
    height = top + sum(heights)
    fig = _new_figure(width, height)
    fig.suptitle("\n".join(title), fontsize=9, y=1 - 0.1 / height, va="top")
    x = np.arange(len(envs))
    bar_width = 0.8 / max(1, len(algorithms))
    y_top = height - top
    for (method, cells, _, no_pairs), lines, panel_h in zip(panels, wrapped, heights):
        axes_bottom = y_top - title_h - axes_h
        ax = fig.add_axes((left / width, axes_bottom / height, axes_width / width, axes_h / height))
        ax.set_title(method.name, fontsize=8)
        highest = max((s[0] + s[1] for row in cells.values() for s in row if s), default=0.0)
        ax.set_ylim(0, max(100.0, highest) + 2)
        for k, algorithm in enumerate(algorithms):
            summaries = cells[algorithm]
            heights_ = [s[0] if s else np.nan for s in summaries]
            errors = [s[1] if s else np.nan for s in summaries]
            offsets = x + (k - (len(algorithms) - 1) / 2) * bar_width
            ax.bar(offsets, heights_, bar_width, yerr=errors, capsize=2, color=colours[algorithm],
                   label=algorithm, error_kw={"elinewidth": 0.8})
            for offset, summary in zip(offsets, summaries):
                if summary is None:
                    ax.text(offset, 1.5, "X", ha="center", va="bottom", fontsize=8, fontweight="bold",
                            color=colours[algorithm])
        if no_pairs:
            message = _wrap("no leave-one-domain-out pair runs: nothing to validate on", (axes_width - 0.3) * 7 / 8)
            ax.text(0.5, 0.55, "\n".join(message), transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    color="0.3")
        ax.set_xticks(x, envs)
        ax.set_xlabel("held-out domain", fontsize=7, labelpad=1)
        ax.set_xlim(-0.5, len(envs) - 0.5)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
        ax.set_axisbelow(True)
        if lines:
            fig.text(0.15 / width, (axes_bottom - ticks_h) / height, "\n".join(lines), fontsize=7,
                     va="top", ha="left", color="0.2")
        y_top -= panel_h
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="upper right", fontsize=7, frameon=False,
               bbox_to_anchor=(1, 1 - top / height))
    return fig


def _bar_note(coverage: Coverage, method: type[SelectionMethod], dataset: str, envs: list[str],
              cells: dict[str, list], no_pairs: bool) -> list[str]:
    """Lines saying why the panel's X cells are missing: per reason, which algorithm at which domain."""
    missing = [(a, t) for a, row in cells.items() for t, s in enumerate(row) if s is None]
    if not missing:
        return []
    if no_pairs:
        return [f"X: {NO_PAIRS_AT_ALL}."]
    by_reason = group_by(missing, lambda cell: missing_reason(coverage, method, dataset, *cell))
    parts = []
    for reason, group in sorted(by_reason.items(), key=lambda item: reason_rank(item[0])):
        per_algorithm = group_by(group, lambda cell: cell[0])
        where = ", ".join(f"{a} at {' '.join(envs[t] for _, t in cells_)}" for a, cells_ in per_algorithm.items())
        parts.append(f"{reason}: {where}")
    return ["X: " + "; ".join(parts) + "."]


# ---------------------------------------------------------------------------- accuracy over steps

def accuracy_curve_figure(
    records: list[Record], dataset: str, method: type[SelectionMethod] = IIDAccuracySelectionMethod
) -> Figure | None:
    """Held-out accuracy against the training step, one line per algorithm: the mean over runs,
    with a band of +/- one std over them. First panel: every held-out domain and trial; then one
    panel per held-out domain (its trials). The runs are the ones ``method`` selects: for every
    (held-out domain, trial), the hparams draw with the best validation accuracy. Accuracy is the
    held-out domain's "in" split, the tables' test accuracy. None when no run can be selected.
    """
    records = _of_dataset(label_methods(records), dataset)
    runs = selected_runs_by_algorithm(records, dataset, method)
    if not runs:
        return None
    envs = dataset_environments(records, dataset)
    colours = algorithm_colours(ordered_algorithms(records))
    held_out = sorted({t for per_run in runs.values() for t, _ in per_run})
    panels = [("every held-out domain", None)] + [(f"held out: {envs[t]}", t) for t in held_out]

    n_cols = min(4, len(panels))
    n_rows = -(-len(panels) // n_cols)
    panel_w, panel_h = 2.6, 2.0
    left, right, gap_w, gap_h = 0.6, _legend_inches([f"{a} (99 runs)" for a in runs]), 0.25, 0.65
    width = left + n_cols * panel_w + (n_cols - 1) * gap_w + right
    caption = (f"Runs: for every held-out domain and trial, the hparams draw that {method.name} selects. "
               "Line: mean over those runs; band: +/- 1 std. Accuracy of the held-out domain's 'in' "
               "split (the tables' test accuracy).")
    uneven = any(len({tuple(r["step"] for r in run) for run in per_run.values()}) > 1 for per_run in runs.values())
    if uneven:
        caption += " Steps some runs have not reached average fewer runs."
    lines = _wrap(caption, width - 0.3)
    top, bottom = 0.5, 0.45 + LINE_INCHES * len(lines)
    height = top + n_rows * panel_h + (n_rows - 1) * gap_h + bottom
    fig = _new_figure(width, height)
    fig.suptitle(f"{dataset}: held-out accuracy during training", fontsize=9, y=1 - 0.12 / height, va="top")
    fig.text(0.15 / width, 0.1 / height, "\n".join(lines), fontsize=7, va="bottom", ha="left", color="0.2")

    for i, (title, env) in enumerate(panels):
        row, col = divmod(i, n_cols)
        x0 = left + col * (panel_w + gap_w)
        y0 = height - top - (row + 1) * panel_h - row * gap_h
        ax = fig.add_axes((x0 / width, y0 / height, panel_w / width, panel_h / height))
        for algorithm, per_run in runs.items():
            curves = [([r["step"] for r in run], [100 * r[f"env{t}_in_acc"] for r in run])
                      for (t, _), run in per_run.items() if env in (None, t)]
            if not curves:
                continue
            steps, mean, std, _ = mean_and_spread(curves)
            label = f"{algorithm} ({len(curves)} run{'s' if len(curves) > 1 else ''})" if env is None else algorithm
            ax.plot(steps, mean, "-", marker=".", markersize=3, linewidth=1.2, color=colours[algorithm], label=label)
            if len(curves) > 1:  # fainter bands when many algorithms overlap
                ax.fill_between(steps, mean - std, mean + std, color=colours[algorithm], linewidth=0,
                                alpha=max(0.05, 0.18 * min(1.0, 4 / len(runs))))
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(linewidth=0.4, alpha=0.5)
        ax.set_xlabel("step", fontsize=7)
        if col == 0:
            ax.set_ylabel("held-out accuracy (%)", fontsize=7)
        else:
            ax.tick_params(labelleft=False)
    # one accuracy scale for every panel, so that panels compare at a glance
    low = min(ax.get_ylim()[0] for ax in fig.axes)
    high = max(ax.get_ylim()[1] for ax in fig.axes)
    for ax in fig.axes:
        ax.set_ylim(max(0.0, low), min(100.0, high))
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="upper right", fontsize=7, frameon=False,
               bbox_to_anchor=(1, 1 - top / height))
    return fig


# ---------------------------------------------------------------------------- MoE routing

def routing_of(record: Record) -> dict[str, tuple[list[float], float]]:
    """{layer: (expert shares, dropped share)} of a record; layers in another format are left out."""
    routing = record.get("routing")
    if not isinstance(routing, dict):
        return {}
    out = {}
    for layer, stats in routing.items():
        if isinstance(stats, dict) and isinstance(stats.get("expert_share"), list) and "dropped_share" in stats:
            out[layer] = ([float(s) for s in stats["expert_share"]], float(stats["dropped_share"]))
    return out


def _layer_order(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def routing_figure(
    records: list[Record], dataset: str, method: type[SelectionMethod] = IIDAccuracySelectionMethod
) -> Figure | None:
    """MoE routing over training: one panel per (algorithm, MoE layer), rows the algorithms with
    routing records. Lines: the share of token choices that went to each expert, sorted largest
    first at every checkpoint ("1st" is the busiest expert, whichever it is), and the share of
    choices dropped by the capacity limit (black, dashed), against the step; dotted: the uniform
    share 1/E. Each record's shares count the training batches since the previous checkpoint.
    Runs as in ``accuracy_curve_figure`` (selected by ``method``); values are means over them
    (sorted before averaging, since expert k of one run is unrelated to expert k of another).
    None when no selected run records routing.
    """
    records = _of_dataset(label_methods(records), dataset)
    runs = selected_runs_by_algorithm(records, dataset, method)
    per_algorithm: dict[str, dict[str, list[tuple[list[int], list[list[float]], list[float]]]]] = {}
    for algorithm, per_run in runs.items():
        for run in per_run.values():
            layers: dict[str, tuple[list[int], list[list[float]], list[float]]] = {}
            for r in run:
                for layer, (shares, dropped) in routing_of(r).items():
                    steps, sorted_shares, drops = layers.setdefault(layer, ([], [], []))
                    steps.append(r["step"])
                    sorted_shares.append(sorted(shares, reverse=True))
                    drops.append(dropped)
            for layer, curve in layers.items():
                per_algorithm.setdefault(algorithm, {}).setdefault(layer, []).append(curve)
    if not per_algorithm:
        return None
    layers = sorted({layer for by_layer in per_algorithm.values() for layer in by_layer}, key=_layer_order)
    n_experts = max(len(s) for by_layer in per_algorithm.values() for curves in by_layer.values()
                    for _, shares, _ in curves for s in shares)

    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    rank_colours = [cmap(0.85 * k / max(1, n_experts - 1)) for k in range(n_experts)]
    panel_w, panel_h, gap_w, gap_h = 2.8, 1.9, 0.35, 0.6
    left, right = 0.6, 1.55
    width = left + len(layers) * panel_w + (len(layers) - 1) * gap_w + right
    caption = (f"Runs: for every held-out domain and trial, the hparams draw that {method.name} selects; "
               "means over them. Expert shares are sorted largest first at every checkpoint before "
               "averaging (expert k of one run is unrelated to expert k of another). Shares of the token "
               "choices of the training batches since the previous checkpoint; dropped: over capacity.")
    lines = _wrap(caption, width - 0.3)
    top, bottom = 0.5, 0.45 + LINE_INCHES * len(lines)
    n_rows = len(per_algorithm)
    height = top + n_rows * panel_h + (n_rows - 1) * gap_h + bottom
    fig = _new_figure(width, height)
    fig.suptitle(f"{dataset}: MoE routing during training", fontsize=9, y=1 - 0.12 / height, va="top")
    fig.text(0.15 / width, 0.1 / height, "\n".join(lines), fontsize=7, va="bottom", ha="left", color="0.2")
    for row, (algorithm, by_layer) in enumerate(per_algorithm.items()):
        for col, layer in enumerate(layers):
            x0 = left + col * (panel_w + gap_w)
            y0 = height - top - (row + 1) * panel_h - row * gap_h
            ax = fig.add_axes((x0 / width, y0 / height, panel_w / width, panel_h / height))
            curves = by_layer.get(layer, [])
            ax.set_title(f"{algorithm}: {layer}", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(linewidth=0.4, alpha=0.5)
            if col == 0:
                ax.set_ylabel("share of token choices", fontsize=7)
            ax.set_xlabel("step", fontsize=7)
            if not curves:
                ax.text(0.5, 0.5, "no routing records", transform=ax.transAxes, ha="center", fontsize=7)
                continue
            experts = max(len(s) for _, shares, _ in curves for s in shares)
            for k in range(experts):
                rank_curves = [(steps, [s[k] if k < len(s) else 0.0 for s in shares]) for steps, shares, _ in curves]
                steps, mean, _, _ = mean_and_spread(rank_curves)
                ax.plot(steps, mean, "-", linewidth=1.1, color=rank_colours[k],
                        label=f"{_ordinal(k + 1)} expert" + (" (busiest)" if k == 0 else ""))
            steps, mean, _, _ = mean_and_spread([(steps_, drops) for steps_, _, drops in curves])
            ax.plot(steps, mean, "--", color="black", linewidth=1.1, label="dropped")
            ax.text(0.98, 0.97, f"dropped at step {steps[-1]}: {100 * mean[-1]:.1f}%", transform=ax.transAxes,
                    ha="right", va="top", fontsize=6)
            ax.axhline(1 / experts, linestyle=":", color="0.4", linewidth=0.9, label=f"uniform 1/{experts}")
    # one share scale for every panel: from 0 to a little above the largest value (1 at most)
    high = max(float(np.max(line.get_ydata())) for ax in fig.axes for line in ax.get_lines())
    for ax in fig.axes:
        ax.set_ylim(0, min(1.0, max(0.3, 1.15 * high)))
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=7, frameon=False,
               bbox_to_anchor=(1, 1 - top / height))
    return fig


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ---------------------------------------------------------------------------- one run's curves

def curve_groups(records: list[Record]) -> dict[CurveKey, list[Record]]:
    """Records per (dataset, algorithm, test_envs, hparams_seed); trials are averaged later."""
    return group_by(
        label_methods(records),
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
    """One run's curves (its trials averaged): one panel per environment, in-split (solid) and
    out-split (dashed) accuracy vs step. ``records`` must be one (dataset, algorithm, test_envs,
    hparams_seed) group (``curve_groups``), an algorithm on two backbones being two algorithms."""
    groups = curve_groups(records)
    if len(groups) > 1:
        raise ValueError(f"records of {len(groups)} different runs (dataset, algorithm, test_envs, hparams_seed): "
                         f"{', '.join(str(k) for k in list(groups)[:3])}...; draw one group of curve_groups(records) "
                         "per figure")
    n_envs = max(n_environments(r) for r in records)
    if n_envs == 0:
        raise ValueError("records hold no env{i}_out_acc keys; pass records written by train")
    first = records[0]["args"]
    names = dataset_environments(records, first["dataset"])
    test_envs = set(first["test_envs"])
    n_cols = min(3, n_envs)
    n_rows = -(-n_envs // n_cols)
    fig = _new_figure(3.2 * n_cols, 2.6 * n_rows)
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
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / height, top=1 - 0.6 / height,
                        wspace=0.08, hspace=0.6)
    return fig


# ---------------------------------------------------------------------------- files

def save_plots(
    records: list[Record],
    out_dir: str | Path,
    methods: tuple[type[SelectionMethod], ...] = SELECTION_METHODS,
    per_run_curves: bool = False,
    dpi: int = 100,
) -> list[Path]:
    """Per dataset (the tables' order): ``bars_<dataset>.png`` (``selection_bar_figure``, a panel
    per method), ``curves_<dataset>.png`` (``accuracy_curve_figure``) and, for MoE runs,
    ``routing_<dataset>.png`` (``routing_figure``); with ``per_run_curves``, one
    ``per_run/<dataset>_<algorithm>_test<envs>_hp<seed>.png`` per run (``training_curve_figure``).
    Returns the paths written, in that order."""
    records = label_methods(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Figure | None, path: Path) -> None:
        if fig is not None:
            fig.savefig(path, dpi=dpi)
            paths.append(path)

    for dataset in ordered_datasets(records):
        slug = _slug(dataset)
        save(selection_bar_figure(records, methods, dataset), out / f"bars_{slug}.png")
        save(accuracy_curve_figure(records, dataset), out / f"curves_{slug}.png")
        save(routing_figure(records, dataset), out / f"routing_{slug}.png")
    if per_run_curves:
        (out / "per_run").mkdir(exist_ok=True)
        for (dataset, algorithm, test_envs, hparams_seed), group in curve_groups(records).items():
            envs = "-".join(str(e) for e in test_envs)
            title = f"{dataset} {algorithm} test_envs={list(test_envs)} hparams_seed={hparams_seed}"
            save(training_curve_figure(group, title),
                 out / "per_run" / f"{_slug(dataset)}_{_slug(algorithm)}_test{envs}_hp{hparams_seed}.png")
    return paths
