"""The digits study's committed tables are exactly what collect_results prints from its committed
records, and the README quotes them."""

from pathlib import Path

from domainbed.results.records import load_records
from domainbed.results.tables import format_results

STUDY = Path(__file__).resolve().parent.parent / "results" / "digits"


def test_committed_tables_are_what_collect_results_prints_from_the_committed_records():
    records = load_records(STUDY / "runs").records
    assert (STUDY / "tables.txt").read_text() == format_results(records)
    assert (STUDY / "tables.tex").read_text() == format_results(records, latex=True)


def test_the_readmes_headline_numbers_are_the_tables():
    tables = [line.rstrip() for line in (STUDY / "tables.txt").read_text().splitlines()]
    for readme in (STUDY / "README.md", STUDY.parent.parent / "README.md"):
        quoted = [line for line in readme.read_text().splitlines() if line.startswith("    ") and "+/-" in line]
        assert quoted, f"{readme} quotes no table line"
        for line in quoted:
            assert line[4:].rstrip() in tables, f"{readme}: {line.strip()!r} is not a line of tables.txt"
