"""Figures: the bars carry the table's numbers, the curves average trials, PNGs get written."""
import math

import numpy as np
import pytest
from matplotlib.container import BarContainer

from domainbed import plots
from domainbed.model_selection import IIDAccuracySelectionMethod, LeaveOneOutSelectionMethod
from domainbed.records import load_records
from test_collect_results import RUNS, make_record, registry, write_sweep  # noqa: F401

SWEEP = [make_record(*run) for run in RUNS]


def test_bar_figure_matches_table(registry):  # noqa: F811
    fig = plots.selection_bar_figure(SWEEP, IIDAccuracySelectionMethod, "ToyA")
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["ERM", "GMOE"]  # Zeta has no ToyA runs
    assert [t.get_text() for t in ax.get_xticklabels()] == ["R", "G", "B"]
    # same numbers as the ToyA table (see test_collect_results): ERM 85.0 62.0 70.0,
    # GMOE 95.0 X 75.0 (the missing cell is a NaN bar)
    np.testing.assert_allclose([p.get_height() for p in bars[0]], [85.0, 62.0, 70.0])
    gmoe = [p.get_height() for p in bars[1]]
    assert gmoe[0] == pytest.approx(95.0) and math.isnan(gmoe[1]) and gmoe[2] == pytest.approx(75.0)
    # error bars: 100*std(x/sqrt n) -> 3.54, 1.41, 0 for ERM
    half_lengths = [(seg[1][1] - seg[0][1]) / 2 for seg in bars[0].errorbar.lines[2][0].get_segments()]
    np.testing.assert_allclose(half_lengths, [10 / (2 * 2 ** 0.5), 4 / (2 * 2 ** 0.5), 0], atol=1e-9)
    # LODO cannot score anything in ToyA (no pair runs): no empty chart
    assert plots.selection_bar_figure(SWEEP, LeaveOneOutSelectionMethod, "ToyA") is None


def test_training_curves_average_trials(registry):  # noqa: F811
    run = ("ToyA", "GMOE", [0])
    records = [  # env0 in-acc per (trial, step); trial 1 stopped after step 100
        make_record(*run, 0, 0, {"in0": .2}, step=0),
        make_record(*run, 0, 0, {"in0": .4}, step=100),
        make_record(*run, 0, 0, {"in0": .6}, step=200),
        make_record(*run, 1, 0, {"in0": .4}, step=0),
        make_record(*run, 1, 0, {"in0": .8}, step=100),
    ]
    fig = plots.training_curve_figure(records, "t")
    assert len(fig.axes) == 3  # one panel per environment
    assert [ax.get_title() for ax in fig.axes] == ["R (test)", "G", "B"]
    in_line, out_line = fig.axes[0].get_lines()
    # mean over trials that reached the step: (.2+.4)/2, (.4+.8)/2, .6 alone
    np.testing.assert_allclose(in_line.get_xdata(), [0, 100, 200])
    np.testing.assert_allclose(in_line.get_ydata(), [30.0, 60.0, 60.0])
    np.testing.assert_allclose(out_line.get_ydata(), [50.0, 50.0, 50.0])  # test-env out default .5
    assert out_line.get_linestyle() == "--" and in_line.get_linestyle() == "-"


def test_save_plots_writes_pngs(registry, tmp_path):  # noqa: F811
    records = load_records(write_sweep(tmp_path / "sweep")).records
    paths = plots.save_plots(records, tmp_path / "figs", dpi=40)
    # bars: ToyA IID + oracle (LODO has nothing), ToyB all three = 5
    # curves: one per (dataset, algorithm, test_envs, hparams_seed) = 10 (see RUNS)
    bars = [p for p in paths if p.name.startswith("bars_")]
    curves = [p for p in paths if p.parent.name == "curves"]
    assert len(bars) == 5 and len(curves) == 10 and len(paths) == 15
    assert tmp_path / "figs" / "bars_ToyA_training-domain_validation_set.png" in bars
    assert tmp_path / "figs" / "curves" / "ToyB_ERM_test0-1_hp0.png" in curves
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert 3_000 < len(data) < 500_000
