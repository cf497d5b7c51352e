"""Tables of collect_results on a hand-built sweep; every expected number is worked out below.

The sweep (one checkpoint per run; default accuracies: in .9, out .7, test-env out .5):
  ToyA (3 envs, registry names R G B)
    ERM  trial 0  [0] hp0: in0 .80, out0 .50 (IID val: out1, out2 = .70)
         trial 0  [0] hp1: in0 .99, out0 .60, out1 = out2 = .65 (IID val .65)
         trial 0  [1] hp0: in1 .60      trial 0 [2] hp0: in2 .70
         trial 1  [0] hp0: in0 .90      trial 1 [1] hp0: in1 .64      (no [2] run)
    GMOE trial 0  [0]: in0 .95          trial 0 [2]: in2 .75
  ToyB (2 envs, unknown to the registry -> env0 env1)
    ERM  trial 0  [0]: in0 .50   [1]: in1 .40   [0, 1]: pair run (in0 = in1 = .9)
         trial 1  [0]: in0 .54   [1]: in1 .46
    Zeta trial 0  [0]: in0 .30   (not registered; run not done; its file ends in a torn line)
14 records.
"""
import json
import runpy
import sys

import pytest

from domainbed import reporting
from domainbed.model_selection import (
    IIDAccuracySelectionMethod,
    LeaveOneOutSelectionMethod,
    OracleSelectionMethod,
)
from domainbed.records import load_records
from domainbed.scripts import collect_results

N_ENVS = {"ToyA": 3, "ToyB": 2}

# (dataset, algorithm, test_envs, trial_seed, hparams_seed, accuracy overrides)
RUNS = [
    ("ToyA", "ERM", [0], 0, 0, {"in0": .80, "out0": .50}),
    ("ToyA", "ERM", [0], 0, 1, {"in0": .99, "out0": .60, "out1": .65, "out2": .65}),
    ("ToyA", "ERM", [1], 0, 0, {"in1": .60}),
    ("ToyA", "ERM", [2], 0, 0, {"in2": .70}),
    ("ToyA", "ERM", [0], 1, 0, {"in0": .90}),
    ("ToyA", "ERM", [1], 1, 0, {"in1": .64}),
    ("ToyA", "GMOE", [0], 0, 0, {"in0": .95}),
    ("ToyA", "GMOE", [2], 0, 0, {"in2": .75}),
    ("ToyB", "ERM", [0], 0, 0, {"in0": .50}),
    ("ToyB", "ERM", [1], 0, 0, {"in1": .40}),
    ("ToyB", "ERM", [0, 1], 0, 0, {}),
    ("ToyB", "ERM", [0], 1, 0, {"in0": .54}),
    ("ToyB", "ERM", [1], 1, 0, {"in1": .46}),
    ("ToyB", "Zeta", [0], 0, 0, {"in0": .30}),
]


def make_record(dataset, algorithm, test_envs, trial_seed, hparams_seed, accs, step=0):
    r = {"args": {"dataset": dataset, "algorithm": algorithm, "test_envs": test_envs,
                  "trial_seed": trial_seed, "hparams_seed": hparams_seed, "seed": 0},
         "hparams": {"lr": 1e-4}, "step": step, "epoch": 0.0, "step_time": 0.1, "mem_gb": 0.0,
         "loss": 0.5, "routing": {"block10": [0.5, 0.5]}}
    for i in range(N_ENVS[dataset]):
        r[f"env{i}_in_acc"] = accs.get(f"in{i}", .9)
        r[f"env{i}_out_acc"] = accs.get(f"out{i}", .5 if i in test_envs else .7)
    return r


def write_sweep(root):
    for k, run in enumerate(RUNS):
        run_dir = root / f"run{k:02d}"
        run_dir.mkdir(parents=True)
        text = json.dumps(make_record(*run)) + "\n"
        if run[1] == "Zeta":
            text += '{"args": {"dataset": "ToyB", "alg'  # torn last line, no `done`
        else:
            (run_dir / "done").write_text("")
        (run_dir / "results.jsonl").write_text(text)
    return root


@pytest.fixture
def registry(monkeypatch):
    """Pin the registries so the expected tables do not depend on other modules."""
    monkeypatch.setattr(reporting, "registered_datasets", lambda: ["Other", "ToyA"])
    monkeypatch.setattr(reporting, "registered_algorithms", lambda: ["GMOE_X", "ERM", "GMOE"])
    monkeypatch.setattr(reporting, "registered_environments", {"ToyA": ["R", "G", "B"]}.get)


@pytest.fixture
def sweep_dir(tmp_path):
    return write_sweep(tmp_path / "sweep")


def block(text, header):
    """The lines of one table, from its header line to the blank line after it."""
    lines = text.splitlines()
    start = lines.index(header)
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


IID_TOYA = [
    "-------- Dataset: ToyA, model selection method: training-domain validation set",
    "Algorithm             R                     G                     B                     Avg",
    # R: trials .80, .90 -> mean 85.0, err 100*std([.8, .9]/sqrt 2) = 100*.1/(2*sqrt 2) = 3.54
    # G: .60, .64 -> 62.0 +/- 100*.04/2.83 = 1.41;  B: .70 -> 70.0 +/- 0.0
    # Avg (85 + 62 + 70) / 3 = 72.33
    "ERM                   85.0 +/- 3.5          62.0 +/- 1.4          70.0 +/- 0.0          72.3",
    "GMOE                  95.0 +/- 0.0          X                     75.0 +/- 0.0          X",
    "Zeta                  X                     X                     X                     X",
]
IID_TOYB = [
    "-------- Dataset: ToyB, model selection method: training-domain validation set",
    "Algorithm             env0                  env1                  Avg",
    # env0: .50, .54 -> 52.0 +/- 100*.04/2.83 = 1.41; env1: .40, .46 -> 43.0 +/- 2.12; Avg 47.5
    # the [0, 1] pair run does not count for training-domain validation
    "ERM                   52.0 +/- 1.4          43.0 +/- 2.1          47.5",
    "GMOE                  X                     X                     X",
    "Zeta                  30.0 +/- 0.0          X                     X",
]
IID_AVERAGES = [
    "-------- Averages, model selection method: training-domain validation set",
    "Algorithm                  ToyA                       ToyB                       Avg",
    # ToyA per trial: t0 (.80+.60+.70)/3 = .70, t1 (.90+.64)/2 = .77 -> 73.5 +/- 100*.07/2.83 = 2.47
    # ToyB per trial: t0 (.50+.40)/2 = .45, t1 (.54+.46)/2 = .50 -> 47.5 +/- 1.77; Avg 60.5
    "ERM                        73.5 +/- 2.5               47.5 +/- 1.8               60.5",
    "GMOE                       85.0 +/- 0.0               X                          X",
    "Zeta                       X                          30.0 +/- 0.0               X",
]
ORACLE_TOYA_ERM = (
    # trial 0 test env 0: hp1 has the higher test-domain out acc (.60 > .50) -> .99; trial 1 .90
    # -> 94.5 +/- 100*.09/2.83 = 3.18; Avg (94.5 + 62 + 70) / 3 = 75.5
    "ERM                   94.5 +/- 3.2          62.0 +/- 1.4          70.0 +/- 0.0          75.5")
ORACLE_AVERAGES_ERM = (
    # ToyA: t0 (.99+.60+.70)/3 = .7633, t1 .77 -> 76.67 +/- 100*.00667/2.83 = 0.24
    # Avg (76.67 + 47.5) / 2 = 62.08
    "ERM                        76.7 +/- 0.2               47.5 +/- 1.8               62.1")
LODO_TOYB = [
    "-------- Dataset: ToyB, model selection method: leave-one-domain-out cross-validation",
    "Algorithm             env0                  env1                  Avg",
    # trial 0 only (trial 1 has no pair run): the [0, 1] run validates both test env 0 and 1
    "ERM                   50.0 +/- 0.0          40.0 +/- 0.0          45.0",
    "GMOE                  X                     X                     X",
    "Zeta                  X                     X                     X",
]


def test_text_tables(registry, sweep_dir):
    records = load_records(sweep_dir).records
    text = reporting.format_results(records)
    lines = text.splitlines()
    assert lines[0] == "Total records: 14" and lines[1] == ""
    headers = [line for line in lines if line.startswith("--------")]
    assert [h.split("method: ")[1] for h in headers] == (
        [IIDAccuracySelectionMethod.name] * 3 + [LeaveOneOutSelectionMethod.name] * 3
        + [OracleSelectionMethod.name] * 3)
    assert [h.split(",")[0] for h in headers] == [
        "-------- Dataset: ToyA", "-------- Dataset: ToyB", "-------- Averages"] * 3

    iid_toya = block(text, IID_TOYA[0])
    assert [line.rstrip() for line in iid_toya] == IID_TOYA
    # DomainBed's layout: cells left-justified to 20 chars, joined by 2 spaces, one trailing space
    assert iid_toya[1] == ("Algorithm" + " " * 13 + "R" + " " * 21 + "G" + " " * 21 + "B"
                           + " " * 21 + "Avg" + " " * 17 + " ")
    assert all(len(line) == 5 * 20 + 4 * 2 + 1 for line in iid_toya[1:])
    assert [line.rstrip() for line in block(text, IID_TOYB[0])] == IID_TOYB
    averages = block(text, IID_AVERAGES[0])
    assert [line.rstrip() for line in averages] == IID_AVERAGES
    assert all(len(line) == 4 * 25 + 3 * 2 + 1 for line in averages[1:])

    lodo_toya = block(text, IID_TOYA[0].replace(IIDAccuracySelectionMethod.name,
                                                LeaveOneOutSelectionMethod.name))
    assert all(line.split()[1:] == ["X"] * 4 for line in lodo_toya[2:])  # no pair runs in ToyA
    assert [line.rstrip() for line in block(text, LODO_TOYB[0])] == LODO_TOYB

    oracle = OracleSelectionMethod.name
    assert block(text, IID_TOYA[0].replace(IIDAccuracySelectionMethod.name, oracle))[2].rstrip() \
        == ORACLE_TOYA_ERM
    assert block(text, IID_AVERAGES[0].replace(IIDAccuracySelectionMethod.name, oracle))[2] \
        .rstrip() == ORACLE_AVERAGES_ERM


def test_latex_tables(registry, sweep_dir):
    text = reporting.format_results(load_records(sweep_dir).records, latex=True)
    lines = text.splitlines()
    assert lines[:6] == ["\\documentclass{article}", "\\usepackage{booktabs}",
                         "\\usepackage{adjustbox}", "\\begin{document}",
                         "\\section{Full DomainBed results}", "% Total records: 14"]
    assert lines[-1] == "\\end{document}"
    assert [line for line in lines if line.startswith("\\subsection")] == [
        f"\\subsection{{Model selection: {m.name}}}" for m in
        (IIDAccuracySelectionMethod, LeaveOneOutSelectionMethod, OracleSelectionMethod)]
    assert lines.count("\\subsubsection{ToyB}") == 3 and lines.count("\\subsubsection{Averages}") == 3
    assert not any(line.startswith("--------") for line in lines)

    # the LODO ToyB table (second \subsubsection{ToyB})
    start = [i for i, line in enumerate(lines) if line == "\\subsubsection{ToyB}"][1]
    assert lines[start:start + 13] == [
        "\\subsubsection{ToyB}",
        "",
        "\\begin{center}",
        "\\adjustbox{max width=\\textwidth}{%",
        "\\begin{tabular}{lccc}",
        "\\toprule",
        "\\textbf{Algorithm}   & \\textbf{env0}        & \\textbf{env1}        & \\textbf{Avg}         \\\\",
        "\\midrule",
        "ERM                  & 50.0 $\\pm$ 0.0       & 40.0 $\\pm$ 0.0       & 45.0                 \\\\",
        "GMOE                 & X                    & X                    & X                    \\\\",
        "Zeta                 & X                    & X                    & X                    \\\\",
        "\\bottomrule",
        "\\end{tabular}}",
    ]
    assert lines[start + 13] == "\\end{center}"
    assert "\\begin{tabular}{lcccc}" in lines  # ToyA: 3 envs + Avg


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


def test_environment_names_fallback(monkeypatch):
    monkeypatch.setattr(reporting, "registered_environments", {"PACS": ["A", "C", "P", "S"]}.get)
    assert reporting.environment_names("PACS", 4) == ["A", "C", "P", "S"]
    assert reporting.environment_names("NoSuchDataset", 3) == ["env0", "env1", "env2"]


def test_environment_names_from_dataset_registry():
    datasets = pytest.importorskip("domainbed.datasets")
    name = datasets.DATASETS[0]
    assert reporting.environment_names(name, 99) == list(datasets.get_dataset_class(name).ENVIRONMENTS)
    assert reporting.environment_names("NoSuchDataset", 2) == ["env0", "env1"]


def test_script_prints_and_writes_results(registry, sweep_dir, capsys):
    report = collect_results.main(["--input_dir", str(sweep_dir)])
    out, err = capsys.readouterr()
    assert out == report == (sweep_dir / "results.txt").read_text()
    assert out.splitlines()[0] == "Total records: 14"
    assert "1 of 14 runs are not done" in err and "skipped 1 " in err
    report = collect_results.main(["--input_dir", str(sweep_dir), "--latex"])
    assert (sweep_dir / "results.tex").read_text() == report
    assert report.startswith("\\documentclass{article}")


@pytest.mark.parametrize("make_dir", [lambda p: p / "missing", lambda p: p])
def test_script_bad_input_dir_is_one_line_error(tmp_path, capsys, monkeypatch, make_dir):
    monkeypatch.setattr(sys, "argv", ["collect_results", "--input_dir", str(make_dir(tmp_path))])
    sys.modules.pop("domainbed.scripts.collect_results", None)  # avoid runpy's re-import warning
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("domainbed.scripts.collect_results", run_name="__main__")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--input_dir" in err
