"""Tables of collect_results on a hand-built sweep; every expected number is worked out below.

Names are real: rows and columns come from the package's own registries (the algorithm registry
and the torch-free dataset catalog), which nothing here patches.

The sweep (one checkpoint per run; default accuracies: in .9, out .7, test-env out .5):
  PACS (registry names A C P S)
    ERM  trial 0  [2]: in2 .66
  ColoredDigits (registry names +90% +80% -90%)
    SFMOE trial 0  [0]: in0 .95         trial 0 [2]: in2 .75   (listed first: rows follow the registry)
    CORAL trial 0  [1]: in1 .55
    ERM  trial 0  [0] hp0: in0 .80, out0 .50 (IID val: out1, out2 = .70)
         trial 0  [0] hp1: in0 .99, out0 .60, out1 = out2 = .65 (IID val .65)
         trial 0  [1] hp0: in1 .60      trial 0 [2] hp0: in2 .70
         trial 1  [0] hp0: in0 .90      trial 1 [1] hp0: in1 .64      (no [2] run)
  AcmeShapes (2 envs, unknown to the catalog -> env0 env1; sorts first by name, comes last)
    ERM  trial 0  [0]: in0 .50   [1]: in1 .40   [0, 1]: pair run (in0 = in1 = .9)
         trial 1  [0]: in0 .54   [1]: in1 .46
    MyMethod trial 0 [0]: in0 .30 (not registered; run not done; its file ends in a torn line)
16 records.

Registry order: datasets PACS (6th), ColoredDigits (14th), then unknown ones; algorithms ERM
(1st), CORAL (8th), SFMOE (last), then unknown ones -- neither alphabetical nor the order the runs
appear in.
"""
import json
import re
import runpy
import sys

import pytest

from domainbed.data.catalog import CATALOG
from domainbed.model_selection import (
    IIDAccuracySelectionMethod,
    LeaveOneOutSelectionMethod,
    OracleSelectionMethod,
)
from domainbed.results import tables as reporting
from domainbed.results.records import label_methods, load_records
from domainbed.results.tables import NO_PAIRS_AT_ALL
from domainbed.scripts import collect_results

N_ENVS = {"PACS": 4, "ColoredDigits": 3, "AcmeShapes": 2}

# (dataset, algorithm, test_envs, trial_seed, hparams_seed, accuracy overrides)
RUNS = [
    ("AcmeShapes", "ERM", [0], 0, 0, {"in0": .50}),
    ("AcmeShapes", "ERM", [1], 0, 0, {"in1": .40}),
    ("AcmeShapes", "ERM", [0, 1], 0, 0, {}),
    ("AcmeShapes", "ERM", [0], 1, 0, {"in0": .54}),
    ("AcmeShapes", "ERM", [1], 1, 0, {"in1": .46}),
    ("AcmeShapes", "MyMethod", [0], 0, 0, {"in0": .30}),
    ("ColoredDigits", "SFMOE", [0], 0, 0, {"in0": .95}),
    ("ColoredDigits", "SFMOE", [2], 0, 0, {"in2": .75}),
    ("ColoredDigits", "CORAL", [1], 0, 0, {"in1": .55}),
    ("ColoredDigits", "ERM", [0], 0, 0, {"in0": .80, "out0": .50}),
    ("ColoredDigits", "ERM", [0], 0, 1, {"in0": .99, "out0": .60, "out1": .65, "out2": .65}),
    ("ColoredDigits", "ERM", [1], 0, 0, {"in1": .60}),
    ("ColoredDigits", "ERM", [2], 0, 0, {"in2": .70}),
    ("ColoredDigits", "ERM", [0], 1, 0, {"in0": .90}),
    ("ColoredDigits", "ERM", [1], 1, 0, {"in1": .64}),
    ("PACS", "ERM", [2], 0, 0, {"in2": .66}),
]


def make_record(dataset, algorithm, test_envs, trial_seed, hparams_seed, accs, step=0, backbone=None):
    r = {"args": {"dataset": dataset, "algorithm": algorithm, "test_envs": test_envs,
                  "trial_seed": trial_seed, "hparams_seed": hparams_seed, "seed": 0},
         "hparams": {"lr": 1e-4}, "step": step, "epoch": 0.0, "step_time": 0.1, "mem_gb": 0.0,
         "loss": 0.5, "routing": {"block10": [0.5, 0.5]}}
    if backbone is not None:
        r["hparams"]["backbone"] = backbone
    for i in range(N_ENVS[dataset]):
        r[f"env{i}_in_acc"] = accs.get(f"in{i}", .9)
        r[f"env{i}_out_acc"] = accs.get(f"out{i}", .5 if i in test_envs else .7)
    return r


def write_sweep(root):
    for k, run in enumerate(RUNS):
        run_dir = root / f"run{k:02d}"
        run_dir.mkdir(parents=True)
        text = json.dumps(make_record(*run)) + "\n"
        if run[1] == "MyMethod":
            text += '{"args": {"dataset": "AcmeShapes", "alg'  # torn last line, no `done`
        else:
            (run_dir / "done").write_text("")
        (run_dir / "results.jsonl").write_text(text)
    return root


@pytest.fixture
def sweep_dir(tmp_path):
    return write_sweep(tmp_path / "sweep")


def block(text, header):
    """The lines of one table, from its header line to the blank line after it."""
    lines = text.splitlines()
    start = lines.index(header)
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


def rows(table_lines):
    """{row label: [cells]} of a text table (cells are separated by 2+ spaces), in row order; the
    note under the table (why cells are X) is not a row."""
    return {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in table_lines[2:]
                                              if not line.startswith("X: "))}


def note(table_lines):
    """The line under a table saying why its X cells are missing (None without one)."""
    notes = [line for line in table_lines[2:] if line.startswith("X: ")]
    assert len(notes) <= 1 and (not notes or table_lines[-1] == notes[0])  # one line, the last
    return notes[0] if notes else None


AVG_NOTE = "a row's Avg needs all its cells"


IID = IIDAccuracySelectionMethod.name
IID_PACS = [
    "-------- Dataset: PACS, model selection method: training-domain validation set",
    "Algorithm             A                     C                     P                     S                     Avg",
    # one run: test env 2 (P) -> 66.0 +/- 0.0; a row with a missing cell has no average
    "ERM                   X                     X                     66.0 +/- 0.0          X                     X",
    "CORAL                 X                     X                     X                     X                     X",
    "SFMOE                 X                     X                     X                     X                     X",
    "MyMethod              X                     X                     X                     X                     X",
    # why: 4 rows x 4 environments, one cell filled; nobody else held out a PACS domain
    f"X: no run holds out the domain (15 cells); {AVG_NOTE}",
]
IID_DIGITS = [
    "-------- Dataset: ColoredDigits, model selection method: training-domain validation set",
    "Algorithm             +90%                  +80%                  -90%                  Avg",
    # +90%: trials .80, .90 -> mean 85.0, err 100*std([.8, .9]/sqrt 2) = 100*.1/(2*sqrt 2) = 3.54
    # +80%: .60, .64 -> 62.0 +/- 100*.04/2.83 = 1.41;  -90%: .70 -> 70.0 +/- 0.0
    # Avg (85 + 62 + 70) / 3 = 72.33
    "ERM                   85.0 +/- 3.5          62.0 +/- 1.4          70.0 +/- 0.0          72.3",
    "CORAL                 X                     55.0 +/- 0.0          X                     X",
    "SFMOE                 95.0 +/- 0.0          X                     75.0 +/- 0.0          X",
    "MyMethod              X                     X                     X                     X",
    # CORAL +90% -90%, SFMOE +80%, MyMethod's three: 6 cells; the Avg column's X follow from them
    f"X: no run holds out the domain (6 cells); {AVG_NOTE}",
]
IID_ACME = [
    "-------- Dataset: AcmeShapes, model selection method: training-domain validation set",
    "Algorithm             env0                  env1                  Avg",
    # env0: .50, .54 -> 52.0 +/- 100*.04/2.83 = 1.41; env1: .40, .46 -> 43.0 +/- 2.12; Avg 47.5
    # the [0, 1] pair run does not count for training-domain validation
    "ERM                   52.0 +/- 1.4          43.0 +/- 2.1          47.5",
    "CORAL                 X                     X                     X",
    "SFMOE                 X                     X                     X",
    "MyMethod              30.0 +/- 0.0          X                     X",
    f"X: no run holds out the domain (5 cells); {AVG_NOTE}",
]
IID_AVERAGES = [
    "-------- Averages, model selection method: training-domain validation set",
    "Algorithm                  PACS                       ColoredDigits              AcmeShapes                 Avg",
    # PACS: trial 0 alone .66 -> 66.0 +/- 0.0
    # ColoredDigits per trial: t0 (.80+.60+.70)/3 = .70, t1 (.90+.64)/2 = .77 -> 73.5 +/- 100*.07/2.83 = 2.47
    # AcmeShapes per trial: t0 (.50+.40)/2 = .45, t1 (.54+.46)/2 = .50 -> 47.5 +/- 1.77
    # Avg (66 + 73.5 + 47.5) / 3 = 62.33
    "ERM                        66.0 +/- 0.0               73.5 +/- 2.5               47.5 +/- 1.8               62.3",
    "CORAL                      X                          55.0 +/- 0.0               X                          X",
    "SFMOE                      X                          85.0 +/- 0.0               X                          X",
    "MyMethod                   X                          X                          30.0 +/- 0.0               X",
    # CORAL and SFMOE: PACS, AcmeShapes; MyMethod: PACS, ColoredDigits
    f"X: no run on the dataset (6 cells); {AVG_NOTE}",
]
ORACLE_DIGITS_ERM = (
    # trial 0 test env 0: hp1 has the higher test-domain out acc (.60 > .50) -> .99; trial 1 .90
    # -> 94.5 +/- 100*.09/2.83 = 3.18; Avg (94.5 + 62 + 70) / 3 = 75.5
    "ERM                   94.5 +/- 3.2          62.0 +/- 1.4          70.0 +/- 0.0          75.5")
ORACLE_AVERAGES_ERM = (
    # ColoredDigits: t0 (.99+.60+.70)/3 = .7633, t1 .77 -> 76.67 +/- 100*.00667/2.83 = 0.24
    # Avg (66 + 76.67 + 47.5) / 3 = 63.39
    "ERM                        66.0 +/- 0.0               76.7 +/- 0.2               47.5 +/- 1.8               63.4")
LODO_ACME = [
    "-------- Dataset: AcmeShapes, model selection method: leave-one-domain-out cross-validation",
    "Algorithm             env0                  env1                  Avg",
    # trial 0 only (trial 1 has no pair run): the [0, 1] run validates both test env 0 and 1
    "ERM                   50.0 +/- 0.0          40.0 +/- 0.0          45.0",
    "CORAL                 X                     X                     X",
    "SFMOE                 X                     X                     X",
    "MyMethod              X                     X                     X",
    # CORAL, SFMOE (4 cells) and MyMethod env1 never held out; MyMethod holds out env0 but has no
    # [0, 1] pair run
    f"X: no run holds out the domain (5 cells); no leave-one-domain-out pair runs (1 cell); {AVG_NOTE}",
]


def test_text_tables(sweep_dir):
    records = load_records(sweep_dir).records
    text = reporting.format_results(records)
    lines = text.splitlines()
    assert lines[0] == "Total records: 16" and lines[1] == ""
    headers = [line for line in lines if line.startswith("--------")]
    assert [h.split("method: ")[1] for h in headers] == (
        [IID] * 4 + [LeaveOneOutSelectionMethod.name] * 4 + [OracleSelectionMethod.name] * 4)
    # datasets in registry order, then the unknown one (not alphabetical, not order of appearance)
    assert [h.split(",")[0] for h in headers] == [
        "-------- Dataset: PACS", "-------- Dataset: ColoredDigits", "-------- Dataset: AcmeShapes",
        "-------- Averages"] * 3

    assert [line.rstrip() for line in block(text, IID_PACS[0])] == IID_PACS
    iid_digits = block(text, IID_DIGITS[0])
    assert [line.rstrip() for line in iid_digits] == IID_DIGITS
    # DomainBed's layout: cells left-justified to 20 chars, joined by 2 spaces, one trailing space
    assert iid_digits[1] == ("Algorithm" + " " * 13 + "+90%" + " " * 18 + "+80%" + " " * 18 + "-90%"
                             + " " * 18 + "Avg" + " " * 17 + " ")
    assert all(len(line) == 5 * 20 + 4 * 2 + 1 for line in iid_digits[1:-1])  # then the note
    assert [line.rstrip() for line in block(text, IID_ACME[0])] == IID_ACME
    averages = block(text, IID_AVERAGES[0])
    assert [line.rstrip() for line in averages] == IID_AVERAGES
    assert all(len(line) == 5 * 25 + 4 * 2 + 1 for line in averages[1:-1])

    lodo_digits = block(text, IID_DIGITS[0].replace(IID, LeaveOneOutSelectionMethod.name))
    assert list(rows(lodo_digits)) == ["ERM", "CORAL", "SFMOE", "MyMethod"]
    assert all(cells == ["X"] * 4 for cells in rows(lodo_digits).values())  # no pair runs there
    assert note(lodo_digits) == f"X: {NO_PAIRS_AT_ALL}"  # the one reason, not a count of X
    assert [line.rstrip() for line in block(text, LODO_ACME[0])] == LODO_ACME
    # LODO averages: ERM has PACS and ColoredDigits runs but no pair run there
    assert note(block(text, IID_AVERAGES[0].replace(IID, LeaveOneOutSelectionMethod.name))) == (
        f"X: no run on the dataset (6 cells); no leave-one-domain-out pair runs (5 cells); {AVG_NOTE}")

    oracle = OracleSelectionMethod.name
    assert block(text, IID_DIGITS[0].replace(IID, oracle))[2].rstrip() == ORACLE_DIGITS_ERM
    assert block(text, IID_AVERAGES[0].replace(IID, oracle))[2].rstrip() == ORACLE_AVERAGES_ERM


def test_latex_tables(sweep_dir):
    text = reporting.format_results(load_records(sweep_dir).records, latex=True)
    lines = text.splitlines()
    assert lines[:6] == ["\\documentclass{article}", "\\usepackage{booktabs}",
                         "\\usepackage{adjustbox}", "\\begin{document}",
                         "\\section{Full DomainBed results}", "% Total records: 16"]
    assert lines[-1] == "\\end{document}"
    assert [line for line in lines if line.startswith("\\subsection")] == [
        f"\\subsection{{Model selection: {m.name}}}" for m in
        (IIDAccuracySelectionMethod, LeaveOneOutSelectionMethod, OracleSelectionMethod)]
    assert [line for line in lines if line.startswith("\\subsubsection")] == [
        "\\subsubsection{PACS}", "\\subsubsection{ColoredDigits}", "\\subsubsection{AcmeShapes}",
        "\\subsubsection{Averages}"] * 3
    assert not any(line.startswith("--------") for line in lines)

    # the LODO AcmeShapes table (second \subsubsection{AcmeShapes})
    start = [i for i, line in enumerate(lines) if line == "\\subsubsection{AcmeShapes}"][1]
    assert lines[start:start + 15] == [
        "\\subsubsection{AcmeShapes}",
        "",
        "\\begin{center}",
        "\\adjustbox{max width=\\textwidth}{%",
        "\\begin{tabular}{lccc}",
        "\\toprule",
        "\\textbf{Algorithm}   & \\textbf{env0}        & \\textbf{env1}        & \\textbf{Avg}         \\\\",
        "\\midrule",
        "ERM                  & 50.0 $\\pm$ 0.0       & 40.0 $\\pm$ 0.0       & 45.0                 \\\\",
        "CORAL                & X                    & X                    & X                    \\\\",
        "SFMOE                & X                    & X                    & X                    \\\\",
        "MyMethod             & X                    & X                    & X                    \\\\",
        "\\bottomrule",
        "\\end{tabular}}",
        # the note, escaped, in small type under the tabular
        ("\\\\[2pt]{\\footnotesize X: no run holds out the domain (5 cells); no leave-one-domain-out pair runs "
         "(1 cell); a row's Avg needs all its cells}"),
    ]
    assert lines[start + 15] == "\\end{center}"
    # ColoredDigits: 3 envs + Avg, the catalog's names with "%" escaped; PACS: 4 envs + Avg
    start = lines.index("\\subsubsection{ColoredDigits}")
    assert lines[start + 4] == "\\begin{tabular}{lcccc}"
    assert lines[start + 6] == ("\\textbf{Algorithm}   & \\textbf{+90\\%}       & \\textbf{+80\\%}       "
                                "& \\textbf{-90\\%}       & \\textbf{Avg}         \\\\")
    assert lines[lines.index("\\subsubsection{PACS}") + 4] == "\\begin{tabular}{lccccc}"


def single_test_env_sweep():
    """What `sweep --single_test_envs` gives: every ColoredDigits domain held out alone, no pair run."""
    return [make_record("ColoredDigits", algorithm, [env], 0, 0, {f"in{env}": .5 + .1 * env})
            for algorithm in ("ERM", "SFMOE") for env in range(3)]


def test_single_test_env_sweep_says_why_leave_one_out_is_empty():
    text = reporting.format_results(single_test_env_sweep())
    lodo = LeaveOneOutSelectionMethod.name
    for header in (IID_DIGITS[0].replace(IID, lodo), IID_AVERAGES[0].replace(IID, lodo)):
        table = block(text, header)
        assert all(set(cells) == {"X"} for cells in rows(table).values())
        assert note(table) == ("X: no leave-one-domain-out pair runs (runs holding out two domains; a sweep "
                               "with --single_test_envs launches none)")
    # complete tables carry no note: DomainBed's layout unchanged
    for method in (IID, OracleSelectionMethod.name):
        for header in (IID_DIGITS[0].replace(IID, method), IID_AVERAGES[0].replace(IID, method)):
            table = block(text, header)
            assert note(table) is None and all("X" not in cells for cells in rows(table).values())
    assert rows(block(text, IID_DIGITS[0]))["ERM"] == ["50.0 +/- 0.0", "60.0 +/- 0.0", "70.0 +/- 0.0", "60.0"]

    latex = reporting.format_results(single_test_env_sweep(), latex=True).splitlines()
    notes = [line for line in latex if "footnotesize" in line]
    # the two LODO tables (ColoredDigits, Averages); "--" stays two hyphens, "_" is escaped
    assert notes == [("\\\\[2pt]{\\footnotesize X: no leave-one-domain-out pair runs (runs holding out two "
                      "domains; a sweep with -{}-single\\_test\\_envs launches none)}")] * 2
    assert all(latex[latex.index(n) - 1] == "\\end{tabular}}" and latex[latex.index(n) + 1] == "\\end{center}"
               for n in notes)


def test_format_mean_and_table_layout():
    # [.2, .4, .6]: mean 40.0; std = sqrt((.2^2 + 0 + .2^2) / 3) = .1633, / sqrt 3 = .0943
    assert reporting.format_mean([.2, .4, .6]) == "40.0 +/- 9.4"
    assert reporting.format_mean([.2, .4, .6], latex=True) == "40.0 $\\pm$ 9.4"
    assert reporting.format_mean([]) == "X"
    # a cell wider than the column widens the whole column (DomainBed would cut it off)
    long_name = "SFMOE_with_a_long_name_v2"  # 25 characters
    lines = reporting.format_table([["1.0 +/- 0.0"]], "T", [long_name], ["Algorithm", "E"], 20)
    assert lines == ["", "-------- T", "Algorithm".ljust(25) + "  " + "E".ljust(20) + " ",
                     long_name + "  " + "1.0 +/- 0.0".ljust(20) + " "]
    latex = reporting.format_table([["1.0"]], "T", ["A_b"], ["Algorithm", "+90%"], 10, latex=True)
    # columns widen to the bold labels: 18 = len("\\textbf{Algorithm}"), 14 = len("\\textbf{+90\\%}")
    assert latex[5:8] == ["\\textbf{Algorithm} & \\textbf{+90\\%} \\\\", "\\midrule",
                          "A\\_b" + " " * 14 + " & 1.0" + " " * 11 + " \\\\"]


def test_environment_names_come_from_the_catalog_with_a_fallback():
    assert reporting.environment_names("PACS", 4) == ["A", "C", "P", "S"]
    assert reporting.environment_names("TerraIncognita", 2) == ["L100", "L38", "L43", "L46"]  # the catalog wins
    assert reporting.environment_names("NoSuchDataset", 3) == ["env0", "env1", "env2"]


def test_catalog_environment_names_are_the_dataset_classes():
    datasets = pytest.importorskip("domainbed.datasets")
    assert list(CATALOG) == list(datasets.DATASETS)
    for name in datasets.DATASETS:
        assert reporting.environment_names(name, 99) == list(datasets.get_dataset_class(name).ENVIRONMENTS), name


# ------------------------------------------------------------------ several backbones
# ColoredDigits, test env 0 only (columns +80% and -90% stay X). With more than one backbone in
# the records, an algorithm on each backbone is its own method: its own row, its own selection.
BACKBONE_RUNS = [  # (algorithm, backbone, trial_seed, hparams_seed, accuracy overrides)
    ("SFMOE", "gmoe_micro_patch4_32", 0, 0, {"in0": .95}),
    ("ERM", "vit_micro_patch4_32", 0, 0, {"in0": .60, "out1": .90, "out2": .90}),  # IID val .90
    ("ERM", "vit_micro_patch4_32", 1, 0, {"in0": .64}),
    ("ERM", "resnet18", 0, 0, {"in0": .80, "out0": .50}),  # IID val .70
    ("ERM", "resnet18", 0, 1, {"in0": .84, "out0": .60, "out1": .60, "out2": .60}),  # IID val .60
    ("ERM", "resnet18", 1, 0, {"in0": .90}),
    ("ERM", None, 0, 2, {"in0": .50, "out1": .65, "out2": .65}),  # DomainBed's: no backbone; val .65
]


def backbone_records():
    return [make_record("ColoredDigits", algorithm, [0], trial, hp, accs, backbone=backbone)
            for algorithm, backbone, trial, hp, accs in BACKBONE_RUNS]


def test_records_on_several_backbones_get_a_row_per_algorithm_and_backbone():
    records = backbone_records()
    text = reporting.format_results(records)
    assert all("(" not in r["args"]["algorithm"] for r in records)  # the caller's records stay as they were

    iid = rows(block(text, IID_DIGITS[0]))
    # registry order of the algorithms (ERM before SFMOE although SFMOE comes first), each
    # algorithm's labels sorted by backbone (the record without one keeps the plain name)
    assert list(iid) == ["ERM", "ERM (resnet18)", "ERM (vit_micro_patch4_32)", "SFMOE (gmoe_micro_patch4_32)"]
    assert iid == {
        "ERM": ["50.0 +/- 0.0", "X", "X", "X"],
        # trial 0: hp0 (val .70) beats hp1 (val .60) -> .80 -- the vit run's val .90 does not
        # compete, it is another method; trial 1 .90 -> 85.0 +/- 100*.1/(2*sqrt 2) = 3.54
        "ERM (resnet18)": ["85.0 +/- 3.5", "X", "X", "X"],
        # .60, .64 -> 62.0 +/- 100*.04/(2*sqrt 2) = 1.41
        "ERM (vit_micro_patch4_32)": ["62.0 +/- 1.4", "X", "X", "X"],
        "SFMOE (gmoe_micro_patch4_32)": ["95.0 +/- 0.0", "X", "X", "X"],
    }
    # the label is wider than the 20-character column: the column widens to it (28 characters)
    assert block(text, IID_DIGITS[0])[1].startswith("Algorithm" + " " * 19 + "  +90%")
    oracle = rows(block(text, IID_DIGITS[0].replace(IID, OracleSelectionMethod.name)))
    # trial 0: hp1 has the higher test-domain out acc (.60 > .50) -> .84; trial 1 .90
    # -> 87.0 +/- 100*.06/(2*sqrt 2) = 2.12
    assert oracle["ERM (resnet18)"] == ["87.0 +/- 2.1", "X", "X", "X"]
    averages = rows(block(text, IID_AVERAGES[0]))
    assert note(block(text, IID_AVERAGES[0])) is None  # nothing missing there
    # 4 rows, each without +80% and -90% (test env 0 only)
    assert note(block(text, IID_DIGITS[0])) == f"X: no run holds out the domain (8 cells); {AVG_NOTE}"
    assert averages == {"ERM": ["50.0 +/- 0.0", "50.0"], "ERM (resnet18)": ["85.0 +/- 3.5", "85.0"],
                        "ERM (vit_micro_patch4_32)": ["62.0 +/- 1.4", "62.0"],
                        "SFMOE (gmoe_micro_patch4_32)": ["95.0 +/- 0.0", "95.0"]}


def test_records_on_one_backbone_keep_the_algorithm_names():
    records = [r for r in backbone_records() if r["hparams"].get("backbone") in ("resnet18", None)]
    assert label_methods(records) == records
    iid = rows(block(reporting.format_results(records), IID_DIGITS[0]))
    # one method: the DomainBed record (val .65, in0 .50) competes with resnet18's hp0 (val .70,
    # in0 .80) and hp1 (val .60) -> .80; trial 1 .90 -> 85.0 +/- 3.5
    assert iid == {"ERM": ["85.0 +/- 3.5", "X", "X", "X"]}


# ------------------------------------------------------------------ several MoE configurations
# The paper's ablations on one backbone: an MoE configuration other than the paper's GMoE is its own
# method, named by what differs; a drawn hparam (aux_loss_weight) does not split a row.
GMOE = "gmoe_micro_patch4_32"
PAPER_MOE = {"num_experts": 6, "top_k": 1, "router": "cosine", "moe_blocks": "last2"}
MOE_RUNS = [  # (MoE hparams set in the run, hparams_seed, accuracy overrides)
    ({}, 0, {"in0": .80, "out1": .70, "out2": .70}),  # val .70
    ({"aux_loss_weight": .05}, 1, {"in0": .75, "out1": .60, "out2": .60}),  # val .60: the paper's row keeps .80
    ({"top_k": 2}, 0, {"in0": .50, "out1": .95, "out2": .95}),  # the best val: not the paper's row's
    ({"moe_blocks": "every2"}, 0, {"in0": .60}),
    ({"moe_blocks": [0, 2]}, 0, {"in0": .66}),
]


def moe_records():
    records = []
    for moe, hp, accs in MOE_RUNS:
        r = make_record("ColoredDigits", "SFMOE", [0], 0, hp, accs, backbone=GMOE)
        r["hparams"].update({**PAPER_MOE, "aux_loss_weight": .01, **moe})
        records.append(r)
    return records


def test_records_of_several_moe_configurations_get_a_row_per_configuration():
    iid = rows(block(reporting.format_results(moe_records()), IID_DIGITS[0]))
    assert iid == {"SFMOE": ["80.0 +/- 0.0", "X", "X", "X"],
                   "SFMOE (moe_blocks=[0,2])": ["66.0 +/- 0.0", "X", "X", "X"],
                   "SFMOE (moe_blocks=every2)": ["60.0 +/- 0.0", "X", "X", "X"],
                   "SFMOE (top_k=2)": ["50.0 +/- 0.0", "X", "X", "X"]}


def test_moe_labels_join_the_backbone_label_and_labelling_twice_changes_nothing():
    dense = make_record("ColoredDigits", "ERM", [0], 0, 0, {}, backbone="vit_micro_patch4_32")
    labelled = label_methods([dense, *moe_records()])
    assert [r["args"]["algorithm"] for r in labelled] == [
        "ERM (vit_micro_patch4_32)", f"SFMOE ({GMOE})", f"SFMOE ({GMOE})", f"SFMOE ({GMOE}, top_k=2)",
        f"SFMOE ({GMOE}, moe_blocks=every2)", f"SFMOE ({GMOE}, moe_blocks=[0,2])"]
    assert label_methods(labelled) == labelled
    # one configuration throughout, even not the paper's, is one method: names stay DomainBed's
    top2 = [r for r in moe_records() if r["hparams"]["top_k"] == 2]
    assert label_methods(top2) == top2


def test_script_prints_and_writes_results(sweep_dir, capsys):
    report = collect_results.main(["--input_dir", str(sweep_dir)])
    out, err = capsys.readouterr()
    assert out == report == (sweep_dir / "results.txt").read_text()
    assert out == reporting.format_results(load_records(sweep_dir).records)
    assert out.splitlines()[0] == "Total records: 16"
    assert "1 of 16 runs are not done" in err
    torn = [k for k, run in enumerate(RUNS) if run[1] == "MyMethod"]
    assert f"skipped 1 unreadable or incomplete record line in {sweep_dir / f'run{torn[0]:02d}' / 'results.jsonl'}" in err
    report = collect_results.main(["--input_dir", str(sweep_dir), "--latex"])
    assert (sweep_dir / "results.tex").read_text() == report
    assert report == reporting.format_results(load_records(sweep_dir).records, latex=True)


def test_script_plots_compare_algorithms_and_draws_runs_on_request(sweep_dir, tmp_path, capsys):
    figures = tmp_path / "figures"
    collect_results.main(["--input_dir", str(sweep_dir), "--plots", str(figures)])
    # per dataset: bars and accuracy curves (the records' routing is in an older format: no
    # routing figure), no per-run curves
    written = sorted(p.relative_to(figures).as_posix() for p in figures.rglob("*") if p.is_file())
    assert written == sorted(f"{kind}_{d}.png" for kind in ("bars", "curves")
                             for d in ("PACS", "ColoredDigits", "AcmeShapes"))
    assert "wrote 6 figures" in capsys.readouterr().err
    collect_results.main(["--input_dir", str(sweep_dir), "--plots", str(figures), "--per_run_curves"])
    per_run = sorted(p.name for p in (figures / "per_run").iterdir())
    # one per (dataset, algorithm, test_envs, hparams_seed), its trials averaged: 12 of the 16 runs
    assert len(per_run) == len({(d, a, tuple(e), hp) for d, a, e, _, hp, _ in RUNS}) == 12
    assert "ColoredDigits_ERM_test0_hp1.png" in per_run and "AcmeShapes_ERM_test0-1_hp0.png" in per_run
    with pytest.raises(ValueError, match="--per_run_curves draws into the --plots directory"):
        collect_results.main(["--input_dir", str(sweep_dir), "--per_run_curves"])


@pytest.mark.parametrize("make_dir", [lambda p: p / "missing", lambda p: p])
def test_script_bad_input_dir_is_one_line_error(tmp_path, capsys, monkeypatch, make_dir):
    monkeypatch.setattr(sys, "argv", ["collect_results", "--input_dir", str(make_dir(tmp_path))])
    sys.modules.pop("domainbed.scripts.collect_results", None)  # avoid runpy's re-import warning
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("domainbed.scripts.collect_results", run_name="__main__")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--input_dir" in err
