"""A run killed with SIGKILL (no chance to clean up) and started again ends exactly like a run that was
never interrupted: same records (timing aside), same weights. For ERM and for the algorithms whose
state goes beyond one network and one optimizer: DANN (two optimizers, a step counter), SWAD (an
averaged model and the segments waiting to join it), MTL (per-domain embeddings) and Fish (an inner
network and its optimizer) on the GMoE twin."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from domainbed.run.trainer import TIMING_KEYS

ROOT = Path(__file__).resolve().parent.parent
STEPS, CHECKPOINT_FREQ = 20, 4
N_RECORDS = len(range(0, STEPS, CHECKPOINT_FREQ)) + 1  # steps 0, 4, ..., 16 and the last, 19


HPARAMS = {
    "ERM": '{"batch_size": 8, "image_size": 16}',
    "DANN": '{"batch_size": 8, "image_size": 16}',
    "SWAD": '{"batch_size": 8, "image_size": 16, "n_converge": 2, "n_tolerance": 2}',
    "MTL": '{"batch_size": 8, "image_size": 16}',
    "Fish": '{"batch_size": 8, "image_size": 16, "backbone": "gmoe_micro_patch4_32"}',
}


def train_command(algorithm: str, output_dir: Path) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "RotatedDigits",
            "--algorithm", algorithm, "--test_envs", "0", "--steps", str(STEPS),
            "--checkpoint_freq", str(CHECKPOINT_FREQ), "--hparams", HPARAMS[algorithm],
            "--output_dir", str(output_dir), "--no-progress"]


def environment() -> dict:
    # one thread each: the two runs share the cores, and the same thread count on both sides
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def n_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def comparable_records(records: list[dict]) -> list[str]:
    """Each record as sorted JSON, without timing and the output folder (the only allowed diffs)."""
    lines = []
    for record in records:
        record = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        record["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
        lines.append(json.dumps(record, sort_keys=True))
    return lines


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("algorithm", list(HPARAMS))
def test_sigkill_at_a_random_point_then_rerun_matches_an_uninterrupted_run(algorithm, tmp_path, read_records):
    rng = random.Random(f"20230501-{algorithm}")
    kill_after = rng.randint(1, N_RECORDS - 2)  # records written before the kill (>= 1 checkpoint)
    extra_delay = rng.uniform(0.0, 0.3)  # lands anywhere: mid-step, mid-eval, mid-save
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"

    reference = subprocess.Popen(train_command(algorithm, reference_dir), env=environment(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = subprocess.Popen(train_command(algorithm, killed_dir), env=environment(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        records, state = killed_dir / "results.jsonl", killed_dir / "checkpoint.pt"
        while n_lines(records) < kill_after or not state.exists():
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run wrote no checkpoint in time"
            time.sleep(0.02)
        time.sleep(extra_delay)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (killed_dir / "done").exists()
    assert n_lines(killed_dir / "results.jsonl") < N_RECORDS

    subprocess.run(train_command(algorithm, killed_dir), env=environment(), check=True, timeout=400,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert reference.wait(timeout=400) == 0
    assert "Resuming from the checkpoint of step" in (killed_dir / "out.txt").read_text()

    expected = comparable_records(read_records(reference_dir))
    assert len(expected) == N_RECORDS
    assert comparable_records(read_records(killed_dir)) == expected

    reference_model = torch.load(reference_dir / "model.pkl", weights_only=True)["model_dict"]
    resumed_model = torch.load(killed_dir / "model.pkl", weights_only=True)["model_dict"]
    assert reference_model.keys() == resumed_model.keys()
    for name, tensor in reference_model.items():
        assert torch.equal(tensor, resumed_model[name]), name
    assert (killed_dir / "done").exists() and not (killed_dir / "checkpoint.pt").exists()
