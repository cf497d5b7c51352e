"""export_selected: the model each selection method picked, as the tables count it (DomainBed issue #33)."""

import json

import pytest
import torch

from domainbed.results.selection import IIDAccuracySelectionMethod
from domainbed.run import contributors
from domainbed.run.config import TrainConfig, make_splits
from domainbed.run.evaluation import accuracy
from domainbed.scripts import export_selected, list_top_hparams, train
from domainbed.checkpoints import load_checkpoint
from domainbed.data.loaders import eval_loader
from domainbed.data.registry import get_dataset_class

FLAGS = ["--dataset", "RotatedDigits", "--test_envs", "0", "--steps", "7", "--checkpoint_freq", "2",
         "--no-progress"]


def scripted_accuracies(monkeypatch, validation_by_step):
    """Training-domain validation accuracy as scripted per step (the held-out env's as measured)."""
    real = contributors.Accuracies.evaluate
    calls = iter(validation_by_step)

    def evaluate(self, model):
        values = real(self, model)
        val = next(calls)
        return {key: (val if key.endswith("_out_acc") and not key.startswith("env0") else value)
                for key, value in values.items()}

    monkeypatch.setattr(contributors.Accuracies, "evaluate", evaluate)


def test_a_run_keeps_the_checkpoint_training_domain_validation_selects(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    scripted_accuracies(monkeypatch, [0.2, 0.6, 0.6, 0.4, 0.5])  # steps 0, 2, 4, 6: the tie keeps step 2
    train.main([*FLAGS, "--hparams", '{"batch_size": 4, "image_size": 16}', "--output_dir", str(sweep / "a")])
    saved = torch.load(sweep / "a" / "model_best_val.pkl", weights_only=True)
    assert saved["model_step"] == 2
    assert torch.load(sweep / "a" / "model.pkl", weights_only=True)["model_step"] == 6

    lines = export_selected.main(["--input_dir", str(sweep), "--output_dir", str(tmp_path / "out")])
    by_method = {line["selection_method"]: line for line in lines}
    # leave-one-domain-out needs runs holding out pairs: it selects nothing here (an X in the tables)
    assert set(by_method) == {"IIDAccuracySelectionMethod", "OracleSelectionMethod"}
    iid, oracle = by_method["IIDAccuracySelectionMethod"], by_method["OracleSelectionMethod"]
    assert (iid["step"], oracle["step"]) == (2, 6)
    assert torch.load(tmp_path / "out" / iid["model"], weights_only=True)["model_step"] == 2
    assert torch.load(tmp_path / "out" / oracle["model"], weights_only=True)["model_step"] == 6
    index = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert index == lines
    for key in ("dataset", "algorithm", "test_envs", "trial_seed", "selection_method", "run_dir", "step",
                "test_acc", "model"):
        assert key in iid
    assert (iid["dataset"], iid["algorithm"], iid["test_envs"], iid["trial_seed"]) == ("RotatedDigits", "ERM", [0], 0)
    report = list_top_hparams.main(["--input_dir", str(sweep), "--dataset", "RotatedDigits", "--algorithm", "ERM",
                                    "--test_env", "0"])
    assert any("'step': 2}" in line for line in report) and any("'step': 6}" in line for line in report)


def test_the_last_checkpoint_selected_leaves_no_duplicate(tmp_path, monkeypatch):
    scripted_accuracies(monkeypatch, [0.2, 0.3, 0.4, 0.5])
    train.main([*FLAGS, "--hparams", '{"batch_size": 4, "image_size": 16}', "--output_dir", str(tmp_path / "a")])
    assert not (tmp_path / "a" / "model_best_val.pkl").exists()
    lines = export_selected.main(["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                                  "--selection_method", "IIDAccuracySelectionMethod"])
    assert [line["step"] for line in lines] == [6] and lines[0]["model"] is not None


def test_an_exported_model_predicts_what_the_table_counts(tmp_path):
    """The test accuracy in the index (the tables' number) is what the exported model gives on the held-out
    domain's split: evaluating the model of the selected checkpoint, not the run's last."""
    for seed, lr in ((0, 3e-3), (1, 1e-2)):
        train.main([*FLAGS, "--hparams_seed", str(seed), "--hparams", f'{{"batch_size": 8, "image_size": 16, "lr": {lr}}}',
                    "--output_dir", str(tmp_path / "sweep" / f"h{seed}")])
    lines = export_selected.main(["--input_dir", str(tmp_path / "sweep"), "--output_dir", str(tmp_path / "out"),
                                  "--selection_method", "IIDAccuracySelectionMethod", "OracleSelectionMethod"])
    for line in lines:
        algorithm = load_checkpoint(tmp_path / "out" / line["model"], "cpu")
        dataset = get_dataset_class("RotatedDigits")("", [0], algorithm.hparams)
        held_out_in = dict(make_splits(dataset, TrainConfig(test_envs=[0])).evals)["env0_in"]
        measured = accuracy(algorithm.evaluation_model(), eval_loader(held_out_in, dataset.eval_transform, 64),
                            torch.device("cpu"))
        assert measured == pytest.approx(line["test_acc"], abs=1e-12), line


def test_a_checkpoint_the_run_did_not_keep_is_reported_not_replaced(tmp_path):
    from domainbed.results.selection import Selection

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pkl").write_bytes(b"the last step's model, not step 4's")
    model, reason = export_selected.model_of_checkpoint(Selection(str(run), 4, 6, 0.5, 0.5, 0))
    assert model is None and "step 4 is not the run's last (6)" in reason and "--save_model_every_checkpoint" in reason
    (run / "model_step4.pkl").write_bytes(b"x")
    assert export_selected.model_of_checkpoint(Selection(str(run), 4, 6, 0.5, 0.5, 0)) == (run / "model_step4.pkl", "")
