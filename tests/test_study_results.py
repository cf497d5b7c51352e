"""The digits study's committed numbers are exactly what its scripts print from its committed records
(tables: collect_results; statistics: study_statistics.py; cost: run_costs.py), and the READMEs quote
them."""

import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.results.records import load_records
from domainbed.results.tables import format_results

STUDY = Path(__file__).resolve().parent.parent / "results" / "digits"


def _script_output(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(STUDY / name), *args], capture_output=True, text=True, check=True)
    return result.stdout


# each study folder, and the records its statistics read (the ablations pair with the main study's rows)
STUDIES = {"main": (STUDY, [STUDY / "runs"]),
           "ablations": (STUDY / "ablations", [STUDY / "runs", STUDY / "ablations" / "runs"])}


@pytest.mark.parametrize("study", STUDIES)
def test_committed_tables_statistics_and_costs_are_what_the_scripts_print(study):
    folder, statistics_inputs = STUDIES[study]
    assert (folder / "tables.txt").read_text() == format_results(load_records(folder / "runs").records)
    assert (folder / "statistics.txt").read_text() == _script_output(
        "study_statistics.py", "--input_dir", *map(str, statistics_inputs))
    assert (folder / "costs.txt").read_text() == _script_output("run_costs.py", "--input_dir", str(folder / "runs"))


def test_committed_latex_table_is_what_collect_results_prints():
    assert (STUDY / "tables.tex").read_text() == format_results(load_records(STUDY / "runs").records, latex=True)


def test_the_readmes_headline_numbers_are_the_committed_numbers():
    lines = set()
    for folder, _ in STUDIES.values():
        for name in ("tables.txt", "statistics.txt"):
            lines |= {line.rstrip() for line in (folder / name).read_text().splitlines()}
    for readme in (STUDY / "README.md", STUDY.parent.parent / "README.md"):
        quoted = [line for line in readme.read_text().splitlines() if line.startswith("    ") and "+/-" in line]
        assert quoted, f"{readme} quotes no table line"
        for line in quoted:
            assert line[4:].rstrip() in lines, f"{readme}: {line.strip()!r} is not a line of tables.txt or statistics.txt"


def _study_module(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("study", STUDY / "study.py")
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "study", study)  # dataclasses resolve annotations through it
    spec.loader.exec_module(study)
    return study


def _statistics_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_statistics", STUDY / "study_statistics.py")
    statistics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(statistics)
    return statistics


def test_the_designs_rows_are_the_rows_their_runs_make_and_ablations_pair_with_sf_moe(monkeypatch):
    """The records the launches make (hparams resolved as ``train`` resolves them) get the rows'
    labels, main study and ablations together, and each ablation is compared with SF-MoE."""
    import json

    from domainbed.hparams_registry import resolve_hparams
    from domainbed.results.records import label_methods

    study = _study_module(monkeypatch)
    records = []
    for design in (study.DESIGNS["main"], study.DESIGNS["ablations"]):
        for command in study.launches(design)[:len(design.rows)]:  # one learning rate, every row
            algorithm = command[command.index("--algorithms") + 1]
            overrides = json.loads(command[command.index("--hparams") + 1])
            hparams = resolve_hparams(algorithm, study.DATASET, 1, 0, overrides)
            records.append({"args": {"algorithm": algorithm}, "hparams": hparams})
    labels = [r["args"]["algorithm"] for r in label_methods(records)]
    assert labels == [row.label for row in study.ROWS + study.ABLATION_ROWS]
    assert len(set(labels)) == len(labels)
    sf_moe = study.Row("SFMOE", study.GMOE).label
    assert _statistics_module().ablation_comparisons(label_methods(records)) == sorted(
        (row.label, sf_moe) for row in study.ABLATION_ROWS)


def test_finished_runs_split_complete_trials_from_the_trial_in_progress(tmp_path, monkeypatch):
    """publish.sh reports complete trials only (a table mixing trials would pair nothing); the finished
    runs of the trial in progress are kept apart, so that no session trains them twice."""
    import json

    study = _study_module(monkeypatch)
    design = study.Design("t", (1e-3,), steps=10, checkpoint_freq=5, n_trials=2, test_envs=(0,), sweep_dir=str(tmp_path))
    assert study.runs_per_trial(design) == len(study.ROWS)
    folders = {}
    for trial, n_runs in ((0, len(study.ROWS)), (1, 2)):
        for i in range(n_runs):
            folder = tmp_path / f"t{trial}r{i}"
            folder.mkdir()
            (folder / "results.jsonl").write_text(json.dumps({"args": {"trial_seed": trial}}) + "\n")
            (folder / "done").write_text("done\n")
            folders.setdefault(trial, []).append(str(folder))
    (tmp_path / "unfinished").mkdir()  # no done file: in neither list
    split = study.finished_runs(design, str(tmp_path))
    assert split == {"complete": folders[0], "pending": folders[1]}


def test_paired_comparison_is_the_t_interval_and_test_of_the_per_trial_differences():
    import math

    statistics = _statistics_module()
    # trials 0-2 in both rows (trial 3 only in one: not paired); differences 0.10, 0.02, 0.06
    a, b = {0: 0.80, 1: 0.70, 2: 0.90, 3: 0.50}, {0: 0.70, 1: 0.68, 2: 0.84}
    result = statistics.paired(a, b)
    assert result["trials"] == [0, 1, 2]
    assert [round(d, 12) for d in result["diffs"]] == [0.1, 0.02, 0.06]
    se = 0.04 / math.sqrt(3)  # s.d. of (0.10, 0.02, 0.06) is 0.04
    t_975_df2 = 4.302652729911275
    assert math.isclose(result["mean"], 0.06) and math.isclose(result["high"] - result["mean"], t_975_df2 * se)
    t = 0.06 / se  # with 2 degrees of freedom Student's two-sided p is 1 - t / sqrt(2 + t^2)
    assert math.isclose(result["p"], 1 - t / math.sqrt(2 + t * t), rel_tol=1e-9)
    assert statistics.paired({0: 0.8}, {0: 0.7}) is None  # one common trial: no interval, no test


def test_holm_adjustment_is_the_step_down_bonferroni_in_the_given_order():
    holm = _statistics_module().holm
    # sorted: .01 x 4 = .04; .03 x 3 = .09; .04 x 2 = .08, raised to .09 (non-decreasing); .5 x 1
    assert [round(p, 12) for p in holm([0.01, 0.04, 0.03, 0.5])] == [0.04, 0.09, 0.09, 0.5]
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
