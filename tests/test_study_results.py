"""The digits study's committed numbers are exactly what its scripts print from its committed records
(tables: collect_results; statistics: study_statistics.py; cost: run_costs.py), and the READMEs quote
them."""

import subprocess
import sys
from pathlib import Path

from domainbed.results.records import load_records
from domainbed.results.tables import format_results

STUDY = Path(__file__).resolve().parent.parent / "results" / "digits"


def _script_output(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(STUDY / name), *args], capture_output=True, text=True, check=True)
    return result.stdout


def test_committed_tables_are_what_collect_results_prints_from_the_committed_records():
    records = load_records(STUDY / "runs").records
    assert (STUDY / "tables.txt").read_text() == format_results(records)
    assert (STUDY / "tables.tex").read_text() == format_results(records, latex=True)


def test_committed_statistics_and_costs_are_what_the_scripts_print():
    assert (STUDY / "statistics.txt").read_text() == _script_output("study_statistics.py", "--input_dir", str(STUDY / "runs"))
    assert (STUDY / "costs.txt").read_text() == _script_output("run_costs.py", "--input_dir", str(STUDY / "runs"))


def test_the_readmes_headline_numbers_are_the_committed_numbers():
    lines = set()
    for name in ("tables.txt", "statistics.txt"):
        lines |= {line.rstrip() for line in (STUDY / name).read_text().splitlines()}
    for readme in (STUDY / "README.md", STUDY.parent.parent / "README.md"):
        quoted = [line for line in readme.read_text().splitlines() if line.startswith("    ") and "+/-" in line]
        assert quoted, f"{readme} quotes no table line"
        for line in quoted:
            assert line[4:].rstrip() in lines, f"{readme}: {line.strip()!r} is not a line of tables.txt or statistics.txt"


def test_finished_runs_split_complete_trials_from_the_trial_in_progress(tmp_path, monkeypatch):
    """publish.sh reports complete trials only (a table mixing trials would pair nothing); the finished
    runs of the trial in progress are kept apart, so that no session trains them twice."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("study", STUDY / "study.py")
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "study", study)  # dataclasses resolve annotations through it
    spec.loader.exec_module(study)
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
