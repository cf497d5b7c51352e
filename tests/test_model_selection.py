"""Selection rules on hand-built records whose answers are worked out in the comments."""
import json

import pytest

from domainbed import model_selection as ms
from domainbed.results.records import load_records, selection_groups

N_ENVS = 3


def record(test_envs, hparams_seed, step, accs, trial_seed=0, algorithm="ERM", dataset="Toy"):
    """One checkpoint; ``accs`` maps "in0"/"out2"/... to accuracies, the rest default to 0.1."""
    r = {
        "args": {"dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
                 "hparams_seed": hparams_seed, "trial_seed": trial_seed, "seed": 0},
        "hparams": {}, "step": step, "loss": 1.0, "routing": {"ignored": True},
    }
    for i in range(N_ENVS):
        for split in ("in", "out"):
            r[f"env{i}_{split}_acc"] = accs.get(f"{split}{i}", 0.1)
    return r


# Group (trial 0, Toy, ERM, test_env 0).
# hparams_seed 0, single run [0]:
#   step 0: test in .50, out .55; train-env outs .70, .80 -> IID val (.70+.80)/2 = .75
#   step 1: test in .58, out .52; train-env outs .90, .70 -> IID val .80  (best of run 0)
# hparams_seed 1, single run [0]:
#   step 0: test in .70, out .75; outs .78, .80 -> IID val .79  (best of run 1)
#   step 1: test in .66, out .60; outs .76, .78 -> IID val .77
# IID: run 0 (.80) beats run 1 (.79) -> test .58
# Oracle (last step, val = test out): run 0 .52 vs run 1 .60 -> run 1 -> test .66
# LODO: run 0 has [0,1] (env1 in: .64 at step 0, .66 at step 1) and [0,2] (env2 in: .70, .60)
#   step 0 val (.64+.70)/2 = .67, test .50; step 1 val (.66+.60)/2 = .63 -> step 0, test .50
#   run 1 has only [0,1] -> cannot be scored -> LODO result .50
RUN0 = [
    record([0], 0, 0, {"in0": .50, "out0": .55, "out1": .70, "out2": .80}),
    record([0], 0, 1, {"in0": .58, "out0": .52, "out1": .90, "out2": .70}),
]
RUN1 = [
    record([0], 1, 0, {"in0": .70, "out0": .75, "out1": .78, "out2": .80}),
    record([0], 1, 1, {"in0": .66, "out0": .60, "out1": .76, "out2": .78}),
]
PAIRS0 = [
    record([0, 1], 0, 0, {"in1": .64}), record([0, 1], 0, 1, {"in1": .66}),
    record([2, 0], 0, 0, {"in2": .70}), record([2, 0], 0, 1, {"in2": .60}),
]
PAIRS1 = [record([0, 1], 1, 0, {"in1": .99}), record([0, 1], 1, 1, {"in1": .99})]
GROUP = RUN1 + PAIRS0 + RUN0 + PAIRS1  # order must not matter


def test_names_match_domainbed():
    assert ms.IIDAccuracySelectionMethod.name == "training-domain validation set"
    assert ms.LeaveOneOutSelectionMethod.name == "leave-one-domain-out cross-validation"
    assert ms.OracleSelectionMethod.name == "test-domain validation set (oracle)"
    assert ms.SELECTION_METHODS == (ms.IIDAccuracySelectionMethod,
                                    ms.LeaveOneOutSelectionMethod, ms.OracleSelectionMethod)


def test_iid_picks_best_checkpoint_by_training_domain_validation():
    acc = ms.IIDAccuracySelectionMethod.run_acc(RUN0 + PAIRS0)  # pair runs are ignored
    assert acc.val_acc == pytest.approx(.80) and acc.test_acc == pytest.approx(.58)
    acc = ms.IIDAccuracySelectionMethod.run_acc(RUN1)
    assert acc.val_acc == pytest.approx(.79) and acc.test_acc == pytest.approx(.70)
    assert ms.IIDAccuracySelectionMethod.sweep_acc(GROUP) == pytest.approx(.58)


def test_oracle_uses_last_checkpoint_test_domain_out_split():
    acc = ms.OracleSelectionMethod.run_acc(list(reversed(RUN0)))  # last by step, not by order
    assert acc.val_acc == pytest.approx(.52) and acc.test_acc == pytest.approx(.58)
    assert ms.OracleSelectionMethod.sweep_acc(GROUP) == pytest.approx(.66)


def test_leave_one_out_uses_pair_runs_and_needs_all_of_them():
    acc = ms.LeaveOneOutSelectionMethod.run_acc(RUN0 + PAIRS0)
    assert acc.val_acc == pytest.approx(.67) and acc.test_acc == pytest.approx(.50)
    assert ms.LeaveOneOutSelectionMethod.run_acc(RUN1 + PAIRS1) is None  # [0, 2] missing
    assert ms.LeaveOneOutSelectionMethod.sweep_acc(GROUP) == pytest.approx(.50)
    # a step that lacks one pair record is skipped, the other steps still count:
    # without [2,0] at step 0, only step 1 (val .63, test .58) remains
    partial = [r for r in RUN0 + PAIRS0 if not (r["args"]["test_envs"] == [2, 0] and r["step"] == 0)]
    acc = ms.LeaveOneOutSelectionMethod.run_acc(partial)
    assert acc.val_acc == pytest.approx(.63) and acc.test_acc == pytest.approx(.58)


def test_hparams_accs_sorted_best_first_and_unscorable_left_out():
    scored = ms.LeaveOneOutSelectionMethod.hparams_accs(GROUP)
    assert [run[0]["args"]["hparams_seed"] for _, run in scored] == [0]
    scored = ms.OracleSelectionMethod.hparams_accs(GROUP)
    assert [run[0]["args"]["hparams_seed"] for _, run in scored] == [1, 0]


def test_group_without_single_run_scores_nothing():
    # group (trial 0, test_env 1) only holds the [0, 1] pair records: no method can score it
    groups = selection_groups(GROUP)
    assert len(groups[(0, "Toy", "ERM", 1)]) == 4  # PAIRS0[:2] + PAIRS1
    for method in ms.SELECTION_METHODS:
        assert method.sweep_acc(groups[(0, "Toy", "ERM", 1)]) is None
    assert len(groups[(0, "Toy", "ERM", 0)]) == len(GROUP)


def test_ties_are_deterministic():
    # equal val_acc across hparams seeds: the smaller seed wins, whatever the record order
    a = record([0], 3, 0, {"in0": .40, "out1": .50, "out2": .50})
    b = record([0], 2, 0, {"in0": .60, "out1": .50, "out2": .50})
    assert ms.IIDAccuracySelectionMethod.sweep_acc([a, b]) == pytest.approx(.60)
    assert ms.IIDAccuracySelectionMethod.sweep_acc([b, a]) == pytest.approx(.60)
    # equal val_acc across checkpoints of a run: the earlier step wins
    late = record([0], 0, 200, {"in0": .30, "out1": .50, "out2": .50})
    early = record([0], 0, 100, {"in0": .35, "out1": .50, "out2": .50})
    assert ms.IIDAccuracySelectionMethod.run_acc([late, early]).test_acc == pytest.approx(.35)


def test_load_records_skips_torn_lines_and_counts_incomplete_runs(tmp_path):
    done_run, torn_run = tmp_path / "a" / "run1", tmp_path / "run2"
    done_run.mkdir(parents=True)
    torn_run.mkdir()
    (done_run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RUN0))
    (done_run / "done").write_text("done")
    (torn_run / "results.jsonl").write_text(
        json.dumps(RUN1[0]) + "\n" + json.dumps({"no_args": 1}) + "\n" + json.dumps(RUN1[1])[:40])
    loaded = load_records(tmp_path)
    assert (loaded.n_runs, loaded.n_incomplete_runs, loaded.n_skipped_lines) == (2, 1, 2)
    assert loaded.records == RUN0 + RUN1[:1]  # sorted path order: a/run1 before run2


def test_load_records_bad_input_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--input_dir"):
        load_records(tmp_path / "missing")
    with pytest.raises(ValueError, match="no results.jsonl"):
        load_records(tmp_path)
