"""Figures: the bars carry the table's numbers, the curves the records' values, the files are the figures.

The sweep (one checkpoint per run; default accuracies: in .9, out .7, test-env out .5):
  PACS (A C P S)
    SFMOE trial 0 [0]: in0 .95   [2]: in2 .75   [3]: in3 .50   (listed first: bars follow the registry)
    ERM   trial 0 [0]: in0 .80   [1]: in1 .60   [2]: in2 .70
          trial 1 [0]: in0 .90   [1]: in1 .64                  (no run holds out S)
  AcmeShapes (2 envs, unknown to the catalog -> env0 env1)
    Fish  trial 0 [0]: in0 .50   [1]: in1 .40   [0, 1]: pair run (LODO can score it)
"""
import io
import json
import math
import re

import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.image import imread

from domainbed.model_selection import (
    IIDAccuracySelectionMethod,
    LeaveOneOutSelectionMethod,
    OracleSelectionMethod,
)
from domainbed.results import plots
from domainbed.results.records import label_algorithms_by_backbone, load_records
from domainbed.results.tables import format_results

N_ENVS = {"PACS": 4, "AcmeShapes": 2}
RUNS = [  # (dataset, algorithm, test_envs, trial_seed, accuracy overrides)
    ("PACS", "SFMOE", [0], 0, {"in0": .95}),
    ("PACS", "SFMOE", [2], 0, {"in2": .75}),
    ("PACS", "SFMOE", [3], 0, {"in3": .50}),
    ("PACS", "ERM", [0], 0, {"in0": .80}),
    ("PACS", "ERM", [1], 0, {"in1": .60}),
    ("PACS", "ERM", [2], 0, {"in2": .70}),
    ("PACS", "ERM", [0], 1, {"in0": .90}),
    ("PACS", "ERM", [1], 1, {"in1": .64}),
    ("AcmeShapes", "Fish", [0], 0, {"in0": .50}),
    ("AcmeShapes", "Fish", [1], 0, {"in1": .40}),
    ("AcmeShapes", "Fish", [0, 1], 0, {}),
]
METHODS = (IIDAccuracySelectionMethod, LeaveOneOutSelectionMethod, OracleSelectionMethod)


def make_record(dataset, algorithm, test_envs, trial_seed, accs, step=0, backbone=None):
    r = {"args": {"dataset": dataset, "algorithm": algorithm, "test_envs": test_envs,
                  "trial_seed": trial_seed, "hparams_seed": 0, "seed": 0},
         "hparams": {"lr": 1e-4} if backbone is None else {"lr": 1e-4, "backbone": backbone},
         "step": step, "epoch": 0.0, "step_time": 0.1, "mem_gb": 0.0, "loss": 0.5}
    for i in range(N_ENVS[dataset]):
        r[f"env{i}_in_acc"] = accs.get(f"in{i}", .9)
        r[f"env{i}_out_acc"] = accs.get(f"out{i}", .5 if i in test_envs else .7)
    return r


SWEEP = [make_record(*run) for run in RUNS]


def bars_of(fig):
    (ax,) = fig.axes
    return ax, [c for c in ax.containers if isinstance(c, BarContainer)]


def error_half_lengths(container):
    """Half the length of each bar's error bar (NaN where the bar has none)."""
    segments = container.errorbar.lines[2][0].get_segments()
    return [(s[1][1] - s[0][1]) / 2 if len(s) else math.nan for s in segments]


def table_cells(records, method, dataset):
    """{algorithm: [(mean, err) or None per environment]} parsed from the text table."""
    text = format_results(records, methods=(method,))
    lines = text.splitlines()
    start = lines.index(f"-------- Dataset: {dataset}, model selection method: {method.name}")
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    cells = {}
    for line in lines[start + 2:end]:
        label, *values = re.split(r"\s{2,}", line.strip())
        cells[label] = [None if v == "X" else tuple(float(x) for x in v.split(" +/- ")) for v in values[:-1]]
    return cells


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dataset", ["PACS", "AcmeShapes"])
def test_bars_are_the_tables_cells(dataset, method):
    cells = table_cells(SWEEP, method, dataset)
    fig = plots.selection_bar_figure(SWEEP, method, dataset)
    scored = {a: c for a, c in cells.items() if any(c)}
    if not scored:  # nothing to show: no empty chart
        assert fig is None
        return
    _, bars = bars_of(fig)
    assert [c.get_label() for c in bars] == list(scored)  # algorithms without runs here have no bars
    for container in bars:
        expected = scored[container.get_label()]
        heights = [p.get_height() for p in container]
        errors = error_half_lengths(container)
        assert len(heights) == len(expected)
        for height, error, cell in zip(heights, errors, expected):
            if cell is None:
                assert math.isnan(height) and math.isnan(error)
            else:  # the table rounds to 0.1
                assert height == pytest.approx(cell[0], abs=0.05) and error == pytest.approx(cell[1], abs=0.05)


def test_bar_figure_numbers_by_hand():
    fig = plots.selection_bar_figure(SWEEP, IIDAccuracySelectionMethod, "PACS")
    ax, bars = bars_of(fig)
    assert [c.get_label() for c in bars] == ["ERM", "SFMOE"]  # registry order; Fish has no PACS runs
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "C", "P", "S"]
    assert "PACS" in ax.get_title() and IIDAccuracySelectionMethod.name in ax.get_title()
    # ERM: A .80, .90 -> 85.0 +/- 100*std([.8, .9] / sqrt 2) = 10 / (2 sqrt 2); C .60, .64 -> 62.0
    # +/- 4 / (2 sqrt 2); P .70 alone -> 70.0 +/- 0; S no run -> NaN (an invisible bar)
    erm, sfmoe = bars
    np.testing.assert_allclose([p.get_height() for p in erm], [85.0, 62.0, 70.0, np.nan])
    np.testing.assert_allclose(error_half_lengths(erm), [10 / (2 * 2 ** 0.5), 4 / (2 * 2 ** 0.5), 0, np.nan],
                               atol=1e-9)
    np.testing.assert_allclose([p.get_height() for p in sfmoe], [95.0, np.nan, 75.0, 50.0])
    # the two algorithms' bars sit side by side around each environment's tick
    centres = [[p.get_x() + p.get_width() / 2 for p in c] for c in bars]
    np.testing.assert_allclose(np.add(centres[0], centres[1]) / 2, ax.get_xticks())
    assert all(a < b for a, b in zip(*centres))
    # LODO cannot score anything in PACS (no pair runs): no chart
    assert plots.selection_bar_figure(SWEEP, LeaveOneOutSelectionMethod, "PACS") is None


def test_training_curves_are_the_trial_means_of_the_records():
    run = ("PACS", "SFMOE", [0])
    values = {  # (trial, step) -> (env0 in, env2 out); trial 1 stopped after step 100
        (0, 0): (.2, .10), (0, 100): (.4, .30), (0, 200): (.6, .50),
        (1, 0): (.4, .20), (1, 100): (.8, .60),
    }
    records = [make_record(*run, trial, {"in0": a, "out2": b, "in3": .1 * trial + step / 1000}, step=step)
               for (trial, step), (a, b) in values.items()]
    fig = plots.training_curve_figure(records, "the title")
    assert fig._suptitle.get_text() == "the title"
    assert len(fig.axes) == 4  # one panel per environment (the 2x3 grid's spare panels removed)
    assert [ax.get_title() for ax in fig.axes] == ["A (test)", "C", "P", "S"]
    # every panel: in (solid) and out (dashed) accuracy x100, the mean over the trials at each step
    for i, ax in enumerate(fig.axes):
        in_line, out_line = ax.get_lines()
        assert (in_line.get_linestyle(), out_line.get_linestyle()) == ("-", "--")
        for line, split in ((in_line, "in"), (out_line, "out")):
            key = f"env{i}_{split}_acc"
            steps = sorted({r["step"] for r in records})
            expected = [100 * np.mean([r[key] for r in records if r["step"] == s]) for s in steps]
            np.testing.assert_allclose(line.get_xdata(), steps)
            np.testing.assert_allclose(line.get_ydata(), expected, err_msg=key)
    # the same by hand for two of them: (.2+.4)/2, (.4+.8)/2, .6 alone; (.1+.2)/2, (.3+.6)/2, .5
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [30.0, 60.0, 60.0])
    np.testing.assert_allclose(fig.axes[2].get_lines()[1].get_ydata(), [15.0, 45.0, 50.0])


def png_pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def rendered(fig, dpi) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return png_pixels(buffer.getvalue())


def test_save_plots_writes_each_figure_to_its_file(tmp_path):
    root = tmp_path / "sweep"
    for k, run in enumerate(RUNS):
        (root / f"run{k:02d}").mkdir(parents=True)
        (root / f"run{k:02d}" / "results.jsonl").write_text(json.dumps(make_record(*run)) + "\n")
    records = load_records(root).records
    out, dpi = tmp_path / "figs", 30
    paths = plots.save_plots(records, out, dpi=dpi)

    # bars: PACS IID + oracle (LODO has nothing to score), AcmeShapes all three, datasets in
    # catalog order; curves: one per (dataset, algorithm, test_envs, hparams_seed), in the order
    # the runs are read (sorted folders)
    iid, lodo, oracle = ("training-domain_validation_set", "leave-one-domain-out_cross-validation",
                         "test-domain_validation_set_oracle")
    assert paths == [
        out / f"bars_PACS_{iid}.png",
        out / f"bars_PACS_{oracle}.png",
        *[out / f"bars_AcmeShapes_{m}.png" for m in (iid, lodo, oracle)],
        *[out / "curves" / f"PACS_SFMOE_test{e}_hp0.png" for e in (0, 2, 3)],
        *[out / "curves" / f"PACS_ERM_test{e}_hp0.png" for e in (0, 1, 2)],
        *[out / "curves" / f"AcmeShapes_Fish_test{e}_hp0.png" for e in ("0", "1", "0-1")],
    ]
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(paths)  # nothing else written

    # each file holds its figure: the same pixels as the figure drawn again at the same dpi
    bars = png_pixels(paths[0].read_bytes())
    expected = plots.selection_bar_figure(records, IIDAccuracySelectionMethod, "PACS")
    size = np.array([expected.get_figheight(), expected.get_figwidth()]) * dpi
    assert np.abs(np.array(bars.shape[:2]) - size).max() < 1  # inches x dpi pixels
    np.testing.assert_array_equal(bars, rendered(expected, dpi))
    other_method = rendered(plots.selection_bar_figure(records, OracleSelectionMethod, "PACS"), dpi)
    assert not np.array_equal(bars, other_method)  # (the comparison can tell figures apart)
    curve = png_pixels((out / "curves" / "PACS_ERM_test0_hp0.png").read_bytes())
    group = [r for r in records if (r["args"]["algorithm"], r["args"]["test_envs"]) == ("ERM", [0])]
    title = "PACS ERM test_envs=[0] hparams_seed=0"
    np.testing.assert_array_equal(curve, rendered(plots.training_curve_figure(group, title), dpi))
    assert len(np.unique(curve.reshape(-1, curve.shape[-1]), axis=0)) > 10  # not a blank image


def test_save_plots_names_an_algorithm_per_backbone(tmp_path):
    records = [make_record("PACS", "ERM", [0], 0, {"in0": .80}, backbone="resnet18"),
               make_record("PACS", "ERM", [0], 0, {"in0": .60}, backbone="vit_micro_patch4_32")]
    paths = plots.save_plots(records, tmp_path, methods=(IIDAccuracySelectionMethod,), dpi=20)
    assert [p.name for p in paths] == ["bars_PACS_training-domain_validation_set.png",
                                      "PACS_ERM_resnet18_test0_hp0.png", "PACS_ERM_vit_micro_patch4_32_test0_hp0.png"]
    # the figure shows one bar series per (algorithm, backbone), each with its own run's number
    fig = plots.selection_bar_figure(label_algorithms_by_backbone(records), IIDAccuracySelectionMethod, "PACS")
    _, bars = bars_of(fig)
    assert [c.get_label() for c in bars] == ["ERM (resnet18)", "ERM (vit_micro_patch4_32)"]
    assert [c[0].get_height() for c in bars] == pytest.approx([80.0, 60.0])
