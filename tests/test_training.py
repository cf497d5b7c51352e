"""End-to-end runs of the train command on the embedded digits data."""

import json

import pytest
import torch

from domainbed.scripts import train
from domainbed.training import TIMING_KEYS, RunError

ARGS_KEYS = {"data_dir", "dataset", "algorithm", "task", "hparams", "hparams_seed", "trial_seed", "seed",
             "steps", "checkpoint_freq", "test_envs", "output_dir", "holdout_fraction",
             "uda_holdout_fraction", "skip_model_save", "save_model_every_checkpoint"}


def read_records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_train_writes_domainbed_records_and_files(tiny_train_args, tmp_path):
    train.main(tiny_train_args)
    run_dir = tmp_path / "run"
    records = read_records(run_dir)
    assert [r["step"] for r in records] == [0, 3, 5]
    envs = 6  # RotatedDigits
    expected = ({"args", "hparams", "step", "epoch", "step_time", "mem_gb", "loss", "environment"}
                | {f"env{i}_{s}_acc" for i in range(envs) for s in ("in", "out")})
    for record in records:
        assert set(record) == expected
        assert ARGS_KEYS <= set(record["args"])
        assert record["args"]["test_envs"] == [0]
        assert record["hparams"]["batch_size"] == 16
        assert all(0.0 <= record[f"env{i}_in_acc"] <= 1.0 for i in range(envs))
    # epoch = step / (smallest training split / batch size): env in-splits hold 240 digits
    assert records[1]["epoch"] == pytest.approx(3 / (240 / 16))
    assert (run_dir / "done").exists() and (run_dir / "out.txt").read_text().count("HParams") == 1
    assert (run_dir / "err.txt").exists()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir / "checkpoint.pt").exists()
    saved = torch.load(run_dir / "model.pkl", weights_only=True)
    assert {"args", "model_input_shape", "model_num_classes", "model_num_domains", "model_hparams",
            "model_dict"} <= set(saved)
    assert saved["model_num_classes"] == 10 and saved["model_num_domains"] == 5


def test_same_seeds_give_the_same_records(tiny_train_args, tmp_path):
    train.main(tiny_train_args)
    first = without_timing(read_records(tmp_path / "run"))
    again = [a if a != str(tmp_path / "run") else str(tmp_path / "again") for a in tiny_train_args]
    train.main(again)
    second = without_timing(read_records(tmp_path / "again"))
    for a, b in zip(first, second):
        a["args"].pop("output_dir"), b["args"].pop("output_dir")
    assert first == second


def test_resume_after_a_crash_gives_the_same_records(tiny_train_args, tmp_path, monkeypatch):
    train.main(tiny_train_args)
    reference = without_timing(read_records(tmp_path / "run"))

    crashed = [a if a != str(tmp_path / "run") else str(tmp_path / "crashed") for a in tiny_train_args]
    from domainbed.algorithms.erm import ERM
    original_update = ERM.update
    calls = {"n": 0}

    def crash_at_step_4(self, minibatches, unlabeled=None):
        calls["n"] += 1
        if calls["n"] == 5:  # steps 0..3 done, state saved at step 3
            raise KeyboardInterrupt
        return original_update(self, minibatches, unlabeled)

    monkeypatch.setattr(ERM, "update", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train.main(crashed)
    assert not (tmp_path / "crashed" / "done").exists()
    assert [r["step"] for r in read_records(tmp_path / "crashed")] == [0, 3]
    monkeypatch.setattr(ERM, "update", original_update)
    train.main(crashed)
    resumed = without_timing(read_records(tmp_path / "crashed"))
    for a, b in zip(reference, resumed):
        a["args"].pop("output_dir"), b["args"].pop("output_dir")
    assert resumed == reference


def test_a_finished_run_is_not_overwritten(tiny_train_args, tmp_path):
    train.main(tiny_train_args)
    before = (tmp_path / "run" / "results.jsonl").read_bytes()
    with pytest.raises(RunError, match="already holds a finished run"):
        train.main(tiny_train_args)
    assert (tmp_path / "run" / "results.jsonl").read_bytes() == before


def test_batch_larger_than_a_split_trains(tmp_path):
    # Debug28's training splits hold 13 examples each
    train.main(["--dataset", "Debug28", "--test_envs", "0", "--steps", "1",
                "--hparams", '{"batch_size": 40}', "--output_dir", str(tmp_path / "big"),
                "--skip_model_save"])
    assert (tmp_path / "big" / "done").exists()
    assert not (tmp_path / "big" / "model.pkl").exists()


def test_sfmoe_records_its_losses(tmp_path):
    train.main(["--dataset", "RotatedDigits", "--algorithm", "SFMOE", "--test_env", "5", "--steps", "2",
                "--checkpoint_freq", "1", "--hparams", '{"batch_size": 8}',
                "--output_dir", str(tmp_path / "moe")])
    record = read_records(tmp_path / "moe")[-1]
    assert record["hparams"]["backbone"] == "gmoe_micro_patch4_32"
    assert record["moe_aux_loss"] > 0 and record["hparams"]["aux_loss_weight"] == 0.01
    # routing statistics of the training tokens since the last checkpoint, per MoE layer
    assert set(record["routing"]) == {"featurizer.blocks.2.mlp", "featurizer.blocks.4.mlp"}
    for layer in record["routing"].values():
        assert len(layer["expert_share"]) == 6
        assert sum(layer["expert_share"]) == pytest.approx(1.0)
        assert 0.0 <= layer["dropped_share"] < 1.0


def test_dropless_hparam_reaches_the_moe_layers():
    from domainbed.algorithms import get_algorithm_class
    from domainbed.hparams_registry import default_hparams
    from domainbed.moe import moe_layers

    hparams = dict(default_hparams("SFMOE", "RotatedDigits"), capacity_factor=None, top_k=2)
    algorithm = get_algorithm_class("SFMOE")((1, 32, 32), 10, 5, hparams)
    layers = moe_layers(algorithm.featurizer).values()
    assert [(m.capacity_factor, m.top_k) for m in layers] == [(None, 2), (None, 2)]


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train.main(["--dataset", "Debug28", "--algorithm", "SFMOE", "--steps", "2", "--checkpoint_freq", "1",
                    "--precision", precision, "--output_dir", str(out), "--skip_model_save"])
        losses[precision] = [r["loss"] for r in read_records(out)]
    # bf16 rounding changes the numbers (autocast is really on) but not the outcome
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)
