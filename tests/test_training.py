"""End-to-end runs of the train command on the embedded digits data."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domainbed.checkpoints import load_checkpoint
from domainbed.data.registry import get_dataset_class
from domainbed.run.config import TrainConfig, make_splits
from domainbed.run.trainer import TIMING_KEYS, RunError
from domainbed.scripts import train

ROOT = Path(__file__).resolve().parent.parent
TINY_HPARAMS = '{"batch_size": 16}'

ARGS_KEYS = {"data_dir", "dataset", "algorithm", "task", "hparams", "hparams_seed", "trial_seed", "seed",
             "steps", "checkpoint_freq", "test_envs", "output_dir", "holdout_fraction",
             "uda_holdout_fraction", "skip_model_save", "save_model_every_checkpoint"}


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_train_writes_domainbed_records_and_files(tiny_train_args, tmp_path, read_records):
    train.main(tiny_train_args)
    run_dir = tmp_path / "run"
    records = read_records(run_dir)
    assert [r["step"] for r in records] == [0, 3, 5]
    envs = 6  # RotatedDigits
    expected = ({"args", "hparams", "step", "epoch", "step_time", "data_time", "mem_gb", "loss", "environment"}
                | {f"env{i}_{s}_acc" for i in range(envs) for s in ("in", "out")})
    for record in records:
        assert set(record) == expected
        assert ARGS_KEYS <= set(record["args"])
        assert record["args"]["test_envs"] == [0]
        assert record["hparams"]["batch_size"] == 16
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

    # the last record's accuracies are the saved model's on DomainBed's splits (out: 20% of each
    # environment, drawn with seed_hash(trial_seed, env)), counted here image by image
    algorithm = load_checkpoint(run_dir / "model.pkl").eval()
    dataset = get_dataset_class("RotatedDigits")("", [0], records[-1]["hparams"])
    splits = make_splits(dataset, TrainConfig(dataset="RotatedDigits", test_envs=[0], holdout_fraction=0.2))
    assert sorted(name for name, _ in splits.evals) == sorted(k[:-4] for k in expected if k.endswith("_acc"))
    for name, split in splits.evals:
        correct = 0
        for start in range(0, len(split), 64):  # the run's evaluation batches
            items = [split[i] for i in range(start, min(start + 64, len(split)))]
            x, y = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
            with torch.no_grad():
                correct += (algorithm.predict(x).argmax(1) == y).sum().item()
        assert records[-1][f"{name}_acc"] == correct / len(split), name
    assert len({records[-1][f"env{i}_{s}_acc"] for i in range(envs) for s in ("in", "out")}) > 1


def comparable_lines(records):
    """Each record as its results.jsonl line (sorted JSON), without what may differ between two
    runs of the same command: timing, the environment description and the output folder."""
    lines = []
    for record in records:
        record = {k: v for k, v in record.items() if k not in (*TIMING_KEYS, "environment")}
        record["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
        lines.append(json.dumps(record, sort_keys=True))
    return lines


def test_same_seeds_in_two_processes_give_byte_identical_records(tmp_path, read_records):
    """Two separate interpreters (own hash seeds, own import order, own allocator state) running
    the same command write the same records."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONHASHSEED", None)
    processes = {}
    for name in ("first", "second"):
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "RotatedDigits", "--algorithm", "ERM",
             "--test_envs", "0", "--steps", "3", "--checkpoint_freq", "2", "--seed", "3", "--hparams", TINY_HPARAMS,
             "--output_dir", str(tmp_path / name), "--skip_model_save", "--no-progress"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for process in processes.values():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    first, second = (read_records(tmp_path / name) for name in processes)
    assert [r["step"] for r in first] == [0, 2]
    assert comparable_lines(first) == comparable_lines(second)
    raw = (tmp_path / "first" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in raw] == first  # every line was read


def test_resume_after_a_crash_gives_the_same_records(tiny_train_args, tmp_path, monkeypatch, read_records):
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


def test_batch_larger_than_a_split_trains(tmp_path, monkeypatch):
    # Debug28's training splits hold 13 examples each: a batch of 40 wraps around them
    from domainbed.algorithms.erm import ERM
    update, sizes = ERM.update, []

    def recording_update(self, minibatches, unlabeled=None):
        sizes.append([len(x) for x, _ in minibatches])
        return update(self, minibatches, unlabeled)

    monkeypatch.setattr(ERM, "update", recording_update)
    train.main(["--dataset", "Debug28", "--test_envs", "0", "--steps", "2",
                "--hparams", '{"batch_size": 40}', "--output_dir", str(tmp_path / "big"),
                "--skip_model_save"])
    assert sizes == [[40, 40], [40, 40]]  # both training domains, every step
    assert (tmp_path / "big" / "done").exists()
    assert not (tmp_path / "big" / "model.pkl").exists()


def test_sfmoe_records_its_losses(tmp_path, read_records):
    train.main(["--dataset", "RotatedDigits", "--algorithm", "SFMOE", "--test_env", "5", "--steps", "2",
                "--checkpoint_freq", "1", "--hparams", '{"batch_size": 8}',
                "--output_dir", str(tmp_path / "moe")])
    record = read_records(tmp_path / "moe")[-1]
    assert record["hparams"]["backbone"] == "gmoe_micro_patch4_32"
    assert record["moe_aux_loss_per_forward"] > 0 and record["hparams"]["aux_loss_weight"] == 0.01
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


def test_bf16_autocast_trains_close_to_fp32(tmp_path, read_records):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train.main(["--dataset", "Debug28", "--algorithm", "SFMOE", "--steps", "2", "--checkpoint_freq", "1",
                    "--precision", precision, "--output_dir", str(out), "--skip_model_save"])
        losses[precision] = [r["loss"] for r in read_records(out)]
    # bf16 rounding changes the numbers (autocast is really on) but not the outcome
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_model_files_follow_the_umask_like_every_other_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        train.main(["--dataset", "Debug28", "--steps", "1", "--hparams", '{"batch_size": 4}',
                    "--save_model_every_checkpoint", "--output_dir", str(tmp_path / "run")])
    finally:
        os.umask(old)
    for name in ("model.pkl", "model_step0.pkl", "results.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == mode, name


def test_data_time_is_the_share_of_the_step_spent_waiting_for_batches(tmp_path, monkeypatch, read_records):
    """A loader that takes 3 ms per image (20 images a step) shows in data_time, and within step_time."""
    import time

    from domainbed.data import loaders

    real = loaders.SeededTransform.__getitem__

    def slow(self, key):
        if isinstance(key, tuple):  # a training item (index, augmentation seed); evaluation stays fast
            time.sleep(0.003)
        return real(self, key)

    monkeypatch.setattr(loaders.SeededTransform, "__getitem__", slow)
    train.main(["--dataset", "RotatedDigits", "--steps", "4", "--checkpoint_freq", "2", "--hparams",
                '{"batch_size": 4, "image_size": 16}', "--output_dir", str(tmp_path / "run"), "--no-progress"])
    for record in read_records(tmp_path / "run")[1:]:
        assert 0.06 <= record["data_time"] <= record["step_time"]
