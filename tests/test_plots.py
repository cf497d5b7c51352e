"""Figures: the bars carry the table's numbers and its missing cells' reasons, the curves the selected
runs' values, the routing panels the records' shares, the files are the figures.

The sweep (one checkpoint per run; default accuracies: in .9, out .7, test-env out .5):
  PACS (A C P S)
    SFMOE trial 0 [0]: in0 .95   [2]: in2 .75   [3]: in3 .50   (listed first: bars follow the registry)
    ERM   trial 0 [0]: in0 .80   [1]: in1 .60   [2]: in2 .70
          trial 1 [0]: in0 .90   [1]: in1 .64                  (no run holds out S)
  AcmeShapes (2 envs, unknown to the catalog -> env0 env1)
    Fish  trial 0 [0]: in0 .50   [1]: in1 .40   [0, 1]: pair run (LODO can score it)
    ERM   trial 0 [0]: in0 .60                                 (no pair run, no run holding out env1)
"""
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

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
from domainbed.results.records import label_methods, load_records
from domainbed.results.tables import NO_PAIRS_AT_ALL, format_results

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
    ("AcmeShapes", "ERM", [0], 0, {"in0": .60}),
]
METHODS = (IIDAccuracySelectionMethod, LeaveOneOutSelectionMethod, OracleSelectionMethod)
ROOT = Path(__file__).resolve().parent.parent


def make_record(dataset, algorithm, test_envs, trial_seed, accs, step=0, backbone=None, hparams_seed=0,
                routing=None):
    r = {"args": {"dataset": dataset, "algorithm": algorithm, "test_envs": test_envs,
                  "trial_seed": trial_seed, "hparams_seed": hparams_seed, "seed": 0},
         "hparams": {"lr": 1e-4} if backbone is None else {"lr": 1e-4, "backbone": backbone},
         "step": step, "epoch": 0.0, "step_time": 0.1, "mem_gb": 0.0, "loss": 0.5}
    for i in range(N_ENVS[dataset]):
        r[f"env{i}_in_acc"] = accs.get(f"in{i}", .9)
        r[f"env{i}_out_acc"] = accs.get(f"out{i}", .5 if i in test_envs else .7)
    if routing is not None:
        r["routing"] = routing
    return r


SWEEP = [make_record(*run) for run in RUNS]


def bars_of(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def centres(container):
    return [p.get_x() + p.get_width() / 2 for p in container]


def x_marks(ax):
    """(x, colour) of every "X" drawn on a panel, left to right."""
    return sorted((t.get_position()[0], t.get_color()) for t in ax.texts if t.get_text() == "X")


def figure_texts(fig):
    """The figure's texts, lines wrapped to its width joined again."""
    return [t.get_text().replace("\n", " ") for t in fig.texts]


def error_half_lengths(container):
    """Half the length of each bar's error bar (NaN where the bar has none)."""
    segments = container.errorbar.lines[2][0].get_segments()
    return [(s[1][1] - s[0][1]) / 2 if len(s) else math.nan for s in segments]


def table_cells(records, method, dataset):
    """{algorithm: [(mean, err) or None per environment]} parsed from the text table, and its note."""
    text = format_results(records, methods=(method,))
    lines = text.splitlines()
    start = lines.index(f"-------- Dataset: {dataset}, model selection method: {method.name}")
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    cells, note = {}, None
    for line in lines[start + 2:end]:
        if line.startswith("X: "):
            note = line
            continue
        label, *values = re.split(r"\s{2,}", line.strip())
        cells[label] = [None if v == "X" else tuple(float(x) for x in v.split(" +/- ")) for v in values[:-1]]
    return cells, note


# ------------------------------------------------------------------------------------ bars

@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dataset", ["PACS", "AcmeShapes"])
def test_bars_are_the_tables_cells(dataset, method):
    cells, note = table_cells(SWEEP, method, dataset)
    fig = plots.selection_bar_figure(SWEEP, method, dataset)
    (ax,) = [a for a in fig.axes]  # one method: one panel
    assert ax.get_title() == method.name
    bars = bars_of(ax)
    algorithms = {r["args"]["algorithm"] for r in SWEEP if r["args"]["dataset"] == dataset}
    # the table's rows that have runs on this dataset, in the table's order
    assert [c.get_label() for c in bars] == [a for a in cells if a in algorithms]
    missing_x = []
    for container in bars:
        expected = cells[container.get_label()]
        heights = [p.get_height() for p in container]
        errors = error_half_lengths(container)
        assert len(heights) == len(expected)
        for height, error, cell, x in zip(heights, errors, expected, centres(container)):
            if cell is None:
                assert math.isnan(height) and math.isnan(error)
                missing_x.append((x, container.patches[0].get_facecolor()))
            else:  # the table rounds to 0.1
                assert height == pytest.approx(cell[0], abs=0.05) and error == pytest.approx(cell[1], abs=0.05)
    # an X, in the algorithm's colour, exactly where a cell is missing
    marks = x_marks(ax)
    assert [x for x, _ in marks] == pytest.approx(sorted(x for x, _ in missing_x))
    assert [tuple(c) for _, c in marks] == [tuple(c) for _, c in sorted(missing_x)]
    # and a reason under the panel when the table has one
    notes = [t for t in figure_texts(fig) if t.startswith("X: ")]
    assert len(notes) == (1 if missing_x else 0) and (note is None) == (not missing_x)


def test_bar_figure_numbers_and_x_reasons_by_hand():
    fig = plots.selection_bar_figure(SWEEP, IIDAccuracySelectionMethod, "PACS")
    (ax,) = fig.axes
    erm, sfmoe = bars = bars_of(ax)
    assert [c.get_label() for c in bars] == ["ERM", "SFMOE"]  # registry order; Fish has no PACS runs
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "C", "P", "S"]
    assert "PACS" in fig._suptitle.get_text() and ax.get_title() == IIDAccuracySelectionMethod.name
    # ERM: A .80, .90 -> 85.0 +/- 100*std([.8, .9] / sqrt 2) = 10 / (2 sqrt 2); C .60, .64 -> 62.0
    # +/- 4 / (2 sqrt 2); P .70 alone -> 70.0 +/- 0; S no run -> NaN (an invisible bar, an X)
    np.testing.assert_allclose([p.get_height() for p in erm], [85.0, 62.0, 70.0, np.nan])
    np.testing.assert_allclose(error_half_lengths(erm), [10 / (2 * 2 ** 0.5), 4 / (2 * 2 ** 0.5), 0, np.nan],
                               atol=1e-9)
    np.testing.assert_allclose([p.get_height() for p in sfmoe], [95.0, np.nan, 75.0, 50.0])
    # the two algorithms' bars sit side by side around each environment's tick
    np.testing.assert_allclose(np.add(centres(erm), centres(sfmoe)) / 2, ax.get_xticks())
    assert all(a < b for a, b in zip(centres(erm), centres(sfmoe)))
    # X where ERM has no S and SFMOE no C, and the line under the panel says why and where
    assert [x for x, _ in x_marks(ax)] == pytest.approx(sorted([centres(sfmoe)[1], centres(erm)[3]]))
    assert [t for t in figure_texts(fig) if t.startswith("X")] == [
        "X: no run holds out the domain: ERM at S, SFMOE at C."]


def test_leave_one_out_panel_without_pair_runs_says_so():
    fig = plots.selection_bar_figure(SWEEP, LeaveOneOutSelectionMethod, "PACS")
    (ax,) = fig.axes
    for container in bars_of(ax):
        assert all(math.isnan(p.get_height()) for p in container)
    assert len(x_marks(ax)) == 2 * 4  # every cell an X
    assert "no leave-one-domain-out pair runs" in " ".join(t.get_text() for t in ax.texts if t.get_text() != "X")
    assert [t for t in figure_texts(fig) if t.startswith("X")] == [f"X: {NO_PAIRS_AT_ALL}."]


def test_leave_one_out_reasons_per_cell_where_the_dataset_has_pair_runs():
    fig = plots.selection_bar_figure(SWEEP, LeaveOneOutSelectionMethod, "AcmeShapes")
    (ax,) = fig.axes
    erm, fish = bars_of(ax)
    assert (erm.get_label(), fish.get_label()) == ("ERM", "Fish")
    # Fish's [0, 1] pair run validates both held-out domains: .50 and .40
    np.testing.assert_allclose([p.get_height() for p in fish], [50.0, 40.0])
    np.testing.assert_allclose([p.get_height() for p in erm], [np.nan, np.nan])
    # ERM holds out env0 but has no pair run; it never holds out env1: two reasons, the basic first
    assert [t for t in figure_texts(fig) if t.startswith("X")] == [
        "X: no run holds out the domain: ERM at env1; no leave-one-domain-out pair runs: ERM at env0."]


def test_one_panel_per_method_in_order():
    fig = plots.selection_bar_figure(SWEEP, METHODS, "PACS")
    assert [ax.get_title() for ax in fig.axes] == [m.name for m in METHODS]
    # panels stacked top to bottom, each the same bars as the method's own figure
    assert [ax.get_position().y0 for ax in fig.axes] == sorted((ax.get_position().y0 for ax in fig.axes),
                                                                reverse=True)
    for ax, method in zip(fig.axes, METHODS):
        (alone,) = plots.selection_bar_figure(SWEEP, method, "PACS").axes
        for a, b in zip(bars_of(ax), bars_of(alone)):
            np.testing.assert_array_equal([p.get_height() for p in a], [p.get_height() for p in b])
    # one reason line per panel with an X: IID and oracle (ERM at S, SFMOE at C), LODO (no pairs)
    assert [t for t in figure_texts(fig) if t.startswith("X")] == [
        "X: no run holds out the domain: ERM at S, SFMOE at C.", f"X: {NO_PAIRS_AT_ALL}.",
        "X: no run holds out the domain: ERM at S, SFMOE at C."]
    with pytest.raises(ValueError, match="no records of dataset 'VLCS'"):
        plots.selection_bar_figure(SWEEP, METHODS, "VLCS")


# ------------------------------------------------------------------------------------ several backbones

def two_backbones():
    return [make_record("PACS", "ERM", [0], 0, {"in0": .80}, backbone="resnet18"),
            make_record("PACS", "ERM", [0], 0, {"in0": .60}, backbone="vit_micro_patch4_32")]


def test_figures_called_directly_give_each_backbone_its_row():
    records = two_backbones()
    labels = ["ERM (resnet18)", "ERM (vit_micro_patch4_32)"]
    for given in (records, label_methods(records)):  # labelling twice changes nothing
        (ax,) = plots.selection_bar_figure(given, IIDAccuracySelectionMethod, "PACS").axes
        assert [c.get_label() for c in bars_of(ax)] == labels
        assert [c[0].get_height() for c in bars_of(ax)] == pytest.approx([80.0, 60.0])
        curves = plots.accuracy_curve_figure(given, "PACS")
        assert [line.get_label() for line in curves.axes[0].get_lines()] == [f"{a} (1 run)" for a in labels]
        assert [line.get_ydata()[0] for line in curves.axes[0].get_lines()] == pytest.approx([80.0, 60.0])
    # one run's curves: the two backbones are two runs, not two trials of one
    with pytest.raises(ValueError, match="records of 2 different runs"):
        plots.training_curve_figure(records)
    assert list(plots.curve_groups(records)) == [("PACS", label, (0,), 0) for label in labels]


# ------------------------------------------------------------------------------------ accuracy over steps

def curve_sweep():
    """PACS, steps 0/100/200. ERM [0] trial 0: hp0 (val .70) in0 .9 .9 .9, hp1 (val .80, selected)
    in0 .3 .5 .7; ERM [0] trial 1: in0 .1 .3 .5; ERM [2] trial 0 stopped after step 100: in2 .5 .6;
    SFMOE [1] trial 0: in1 .4 .5 .6."""
    runs = [("ERM", 0, 0, 0, [.9, .9, .9], {}), ("ERM", 0, 0, 1, [.3, .5, .7], {"out1": .8, "out2": .8, "out3": .8}),
            ("ERM", 0, 1, 0, [.1, .3, .5], {}), ("ERM", 2, 0, 0, [.5, .6], {}), ("SFMOE", 1, 0, 0, [.4, .5, .6], {})]
    return [make_record("PACS", algorithm, [env], trial, {f"in{env}": acc, **outs}, step=100 * k, hparams_seed=hp)
            for algorithm, env, trial, hp, accs, outs in runs for k, acc in enumerate(accs)]


def band(ax, colour):
    """{step: (low, high)} of the band drawn in ``colour``."""
    (collection,) = [c for c in ax.collections if np.allclose(c.get_facecolor()[0][:3], colour[:3])]
    vertices = collection.get_paths()[0].vertices
    return {x: (vertices[vertices[:, 0] == x, 1].min(), vertices[vertices[:, 0] == x, 1].max())
            for x in np.unique(vertices[:, 0])}


def test_accuracy_curves_are_mean_and_spread_of_the_selected_runs():
    fig = plots.accuracy_curve_figure(curve_sweep(), "PACS")
    panels = fig.axes
    assert [ax.get_title() for ax in panels] == ["every held-out domain", "held out: A", "held out: C",
                                                 "held out: P"]  # S is never held out: no panel
    every, a, c, p = panels
    erm, sfmoe = every.get_lines()
    assert (erm.get_label(), sfmoe.get_label()) == ("ERM (3 runs)", "SFMOE (1 run)")
    # ERM over its runs: (0, trial 0) the selected hp1 [30 50 70], (0, trial 1) [10 30 50], (2, 0) [50 60]
    np.testing.assert_allclose(erm.get_xdata(), [0, 100, 200])
    np.testing.assert_allclose(erm.get_ydata(), [30.0, (50 + 30 + 60) / 3, 60.0])
    spread = [np.std([30, 10, 50]), np.std([50, 30, 60]), np.std([70, 50])]
    low_high = band(every, erm.get_color())
    for step, mean, std in zip([0, 100, 200], erm.get_ydata(), spread):
        assert low_high[step] == pytest.approx((mean - std, mean + std))
    np.testing.assert_allclose(sfmoe.get_ydata(), [40.0, 50.0, 60.0])
    assert len(every.collections) == 1  # one run: no band for SFMOE
    # per held-out domain: A has ERM's two trials (mean [20 40 60], std 10), C SFMOE alone, P ERM alone
    (erm_a,) = a.get_lines()
    np.testing.assert_allclose(erm_a.get_ydata(), [20.0, 40.0, 60.0])
    assert band(a, erm_a.get_color())[100] == pytest.approx((30.0, 50.0))
    assert [line.get_label() for line in c.get_lines()] == ["SFMOE"]
    np.testing.assert_allclose(p.get_lines()[0].get_ydata(), [50.0, 60.0])
    # the figure says which runs it averages, and that an early stop leaves fewer runs at the end
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert f"the hparams draw that {IIDAccuracySelectionMethod.name} selects" in caption
    assert "every held-out domain and trial" in caption and "+/- 1 std" in caption
    assert "Steps some runs have not reached average fewer runs" in caption
    # one accuracy scale for every panel
    assert len({ax.get_ylim() for ax in panels}) == 1


def test_accuracy_curves_follow_the_selection_method():
    # the oracle picks by the test domain's out split at the last step: there hp0 (.6) beats hp1 (.5)
    records = curve_sweep()
    for r in records:
        if r["args"]["hparams_seed"] == 0 and r["args"]["test_envs"] == [0]:
            r["env0_out_acc"] = .6
    fig = plots.accuracy_curve_figure(records, "PACS", OracleSelectionMethod)
    (erm_a,) = fig.axes[1].get_lines()
    # held out A: trial 0 is now hp0 [90 90 90], trial 1 [10 30 50] -> [50 60 70]
    np.testing.assert_allclose(erm_a.get_ydata(), [50.0, 60.0, 70.0])
    assert OracleSelectionMethod.name in " ".join(t.get_text() for t in fig.texts).replace("\n", " ")


# ------------------------------------------------------------------------------------ routing

def routing(block8, block10):
    return {"blocks.8.mlp": {"expert_share": block8[0], "dropped_share": block8[1]},
            "blocks.10.mlp": {"expert_share": block10[0], "dropped_share": block10[1]}}


def routing_sweep():
    """SFMOE, three experts, two runs (held out A and C, trial 0), steps 0 and 100; ERM: no routing."""
    shares = {  # (test env, step) -> (blocks.8 shares, dropped), (blocks.10 shares, dropped)
        (0, 0): (([.2, .5, .3], .1), ([1 / 3] * 3, 0.0)),
        (0, 100): (([.6, .2, .2], .05), ([1 / 3] * 3, 0.0)),
        (1, 0): (([.1, .1, .8], .3), ([.9, .05, .05], .4)),
        (1, 100): (([.3, .3, .4], 0.0), ([.9, .05, .05], .4)),
    }
    records = [make_record("PACS", "SFMOE", [env], 0, {}, step=step, routing=routing(*value))
               for (env, step), value in shares.items()]
    return records + [make_record("PACS", "ERM", [0], 0, {})]


def test_routing_figure_sorts_shares_then_averages_over_runs():
    fig = plots.routing_figure(routing_sweep(), "PACS")
    # one row (ERM has no routing), layers in block order (8 before 10, not as strings)
    assert [ax.get_title() for ax in fig.axes] == ["SFMOE: blocks.8.mlp", "SFMOE: blocks.10.mlp"]
    block8, block10 = fig.axes
    lines = {line.get_label(): line for line in block8.get_lines()}
    assert list(lines) == ["1st expert (busiest)", "2nd expert", "3rd expert", "dropped", "uniform 1/3"]
    # sorted per checkpoint: A [.5 .3 .2] then [.6 .2 .2]; C [.8 .1 .1] then [.4 .3 .3]; then the mean.
    # (averaging expert k across runs would give [.15 .3 .55] at step 0: balance that is not there)
    for label, expected in (("1st expert (busiest)", [.65, .5]), ("2nd expert", [.2, .25]), ("3rd expert", [.15, .25])):
        np.testing.assert_allclose(lines[label].get_xdata(), [0, 100])
        np.testing.assert_allclose(lines[label].get_ydata(), expected, err_msg=label)
    np.testing.assert_allclose(lines["dropped"].get_ydata(), [.2, .025])
    assert lines["dropped"].get_linestyle() == "--"
    np.testing.assert_allclose(lines["uniform 1/3"].get_ydata(), [1 / 3, 1 / 3])
    # block 10: run C collapsed on one expert (.9), run A uniform -> busiest (.9 + 1/3) / 2
    np.testing.assert_allclose(block10.get_lines()[0].get_ydata(), [(.9 + 1 / 3) / 2] * 2)
    assert "dropped at step 100: 20.0%" in [t.get_text() for t in block10.texts]
    assert block8.get_ylim() == block10.get_ylim() and block8.get_ylim()[0] == 0
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["1st expert (busiest)", "2nd expert"]
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "sorted largest first" in caption and IIDAccuracySelectionMethod.name in caption


def test_routing_figure_needs_routing_records():
    assert plots.routing_figure(SWEEP, "PACS") is None
    # records of another format (a list per layer) are left out rather than misread
    old = [make_record("PACS", "SFMOE", [0], 0, {}, routing={"block10": [0.5, 0.5]})]
    assert plots.routing_figure(old, "PACS") is None


# ------------------------------------------------------------------------------------ one run's curves

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
    with pytest.raises(ValueError, match="records of 2 different runs"):
        plots.training_curve_figure(records + [make_record("PACS", "SFMOE", [1], 0, {})])


# ------------------------------------------------------------------------------------ files

def png_pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def rendered(fig, dpi) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return png_pixels(buffer.getvalue())


def write_sweep(root, records):
    for k, record in enumerate(records):
        (root / f"run{k:02d}").mkdir(parents=True)
        (root / f"run{k:02d}" / "results.jsonl").write_text(json.dumps(record) + "\n")
    return load_records(root).records


def test_save_plots_writes_the_comparisons_and_per_run_curves_only_on_request(tmp_path):
    records = write_sweep(tmp_path / "sweep", SWEEP + routing_sweep()[:1])
    out, dpi = tmp_path / "figs", 30
    paths = plots.save_plots(records, out, dpi=dpi)
    # per dataset, in catalog order: bars (every method), curves, routing where a run records it
    assert paths == [out / "bars_PACS.png", out / "curves_PACS.png", out / "routing_PACS.png",
                     out / "bars_AcmeShapes.png", out / "curves_AcmeShapes.png"]
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(paths)  # nothing else written

    # each file holds its figure: the same pixels as the figure drawn again at the same dpi
    bars = png_pixels(paths[0].read_bytes())
    expected = plots.selection_bar_figure(records, METHODS, "PACS")
    size = np.array([expected.get_figheight(), expected.get_figwidth()]) * dpi
    assert np.abs(np.array(bars.shape[:2]) - size).max() < 1  # inches x dpi pixels
    np.testing.assert_array_equal(bars, rendered(expected, dpi))
    np.testing.assert_array_equal(png_pixels(paths[1].read_bytes()),
                                  rendered(plots.accuracy_curve_figure(records, "PACS"), dpi))
    np.testing.assert_array_equal(png_pixels(paths[2].read_bytes()),
                                  rendered(plots.routing_figure(records, "PACS"), dpi))
    assert not np.array_equal(bars, rendered(plots.selection_bar_figure(records, METHODS, "AcmeShapes"), dpi))

    again = plots.save_plots(records, tmp_path / "with_runs", dpi=dpi, per_run_curves=True)
    per_run = [p.relative_to(tmp_path / "with_runs") for p in again[5:]]
    assert [str(p) for p in per_run] == [  # one per (dataset, algorithm, test_envs, hparams_seed)
        *[f"per_run/PACS_SFMOE_test{e}_hp0.png" for e in (0, 2, 3)],
        *[f"per_run/PACS_ERM_test{e}_hp0.png" for e in (0, 1, 2)],
        *[f"per_run/AcmeShapes_Fish_test{e}_hp0.png" for e in ("0", "1", "0-1")],
        "per_run/AcmeShapes_ERM_test0_hp0.png",
    ]
    curve = png_pixels((tmp_path / "with_runs" / "per_run" / "PACS_ERM_test0_hp0.png").read_bytes())
    group = [r for r in records if (r["args"]["algorithm"], r["args"]["test_envs"]) == ("ERM", [0])
             and r["args"]["dataset"] == "PACS"]
    title = "PACS ERM test_envs=[0] hparams_seed=0"
    np.testing.assert_array_equal(curve, rendered(plots.training_curve_figure(group, title), dpi))


def test_save_plots_names_an_algorithm_per_backbone(tmp_path):
    paths = plots.save_plots(two_backbones(), tmp_path, methods=(IIDAccuracySelectionMethod,), dpi=20,
                             per_run_curves=True)
    assert [p.name for p in paths] == ["bars_PACS.png", "curves_PACS.png", "PACS_ERM_resnet18_test0_hp0.png",
                                      "PACS_ERM_vit_micro_patch4_32_test0_hp0.png"]


def test_plots_module_imports_neither_torch_nor_matplotlib():
    probe = ("import sys, domainbed.results.plots; "
             "print(sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
