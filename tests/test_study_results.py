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
