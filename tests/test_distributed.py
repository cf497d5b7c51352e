"""torchrun with 2 CPU processes (gloo) trains the same model as one process on the same global batch.

Tolerance. Each process takes half of every domain's batch; DDP averages the two gradients, which
equals the full-batch mean gradient exactly in real arithmetic (equal shards, mean cross-entropy).
In float32 only the summation order differs (relative error ~1e-7 per gradient element). Adam
divides each gradient by its running RMS, so a relative gradient error becomes the same relative
error in the step, lr * O(1e-6) -- except for elements whose gradient is itself rounding noise, whose
normalised step can move by up to lr. Over 4 steps with lr = 1e-3 we measured a largest weight
difference of 1.6e-5 (ERM) and 9.4e-6 (SFMOE). We allow 2e-4 = lr / 5: a process that skipped the
gradient all-reduce would step by O(lr) in nearly every weight and fail.

MoE specifics. Gate noise is drawn per process from the same seed, so both processes would add the
same noise to different tokens: it is off here (gate_noise 0). The balancing loss is a batch
statistic (CV^2 of each expert's importance and load summed over the batch's tokens); under DDP each
process computes it on its own tokens and DDP averages the gradients, i.e. the gradient of
mean_rank CV^2(local tokens) rather than of CV^2(all tokens) -- a noisier, somewhat stronger balancing
term. It is switched off here (aux_loss_weight 0) so the comparison is exact; with the default 0.01
the same 4 steps differ by 2.2e-4 in the MoE weights (measured). Dropless routing
(capacity_factor null) makes every token's output independent of which process holds its batch-mates;
with a capacity limit, the tokens dropped would depend on the shard.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
WEIGHT_ATOL = 2e-4
SMALLEST_SPLIT = 59  # RotatedDigits: each environment's "out" split holds 59-60 images
HPARAMS = {
    "ERM": '{"batch_size": 8}',
    "SFMOE": '{"batch_size": 8, "capacity_factor": null, "gate_noise": 0.0, "aux_loss_weight": 0.0}',
}


def train_args(algorithm: str, output_dir: Path) -> list[str]:
    return ["--dataset", "RotatedDigits", "--algorithm", algorithm, "--test_envs", "0", "--steps", "4",
            "--checkpoint_freq", "2", "--hparams", HPARAMS[algorithm], "--output_dir", str(output_dir),
            "--no-progress"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("algorithm", ["ERM", "SFMOE"])
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(algorithm, tmp_path, read_records):
    ddp_dir, single_dir, logs = tmp_path / "ddp", tmp_path / "single", tmp_path / "torchrun_logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--log-dir", str(logs), "-m", "domainbed.scripts.train", *train_args(algorithm, ddp_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # meanwhile, the single-process run (same thread count, so it does not slow torchrun down)
        subprocess.run([sys.executable, "-m", "domainbed.scripts.train", *train_args(algorithm, single_dir)],
                       env=env, check=True, timeout=500, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        output, _ = torchrun.communicate(timeout=500)
    finally:
        if torchrun.poll() is None:
            torchrun.kill()
    assert torchrun.returncode == 0, output[-3000:]
    assert sorted(p.name for p in logs.glob("*/attempt_0/*")) == ["0", "1"]  # two processes ran

    ddp, single = read_records(ddp_dir), read_records(single_dir)
    # written once, by rank 0: one record per checkpoint, one log header, one TensorBoard file
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [0, 2, 3]
    assert (ddp_dir / "out.txt").read_text().count("HParams:") == 1
    assert len(list((ddp_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (ddp_dir / "done").exists() and not (ddp_dir / "checkpoint.pt").exists()
    # the recorded loss is averaged over the processes: the loss of the whole global batch
    for a, b in zip(ddp, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)

    for a, b in zip(ddp, single):
        for key in (k for k in b if k.endswith("_acc")):
            assert abs(a[key] - b[key]) <= 1 / SMALLEST_SPLIT + 1e-9, (a["step"], key)  # <= 1 image

    ddp_model = torch.load(ddp_dir / "model.pkl", weights_only=True)["model_dict"]
    single_model = torch.load(single_dir / "model.pkl", weights_only=True)["model_dict"]
    assert ddp_model.keys() == single_model.keys()  # saved unwrapped (no "module." prefix)
    for name, weight in single_model.items():
        difference = (ddp_model[name].float() - weight.float()).abs().max().item()
        assert difference <= WEIGHT_ATOL, (name, difference)


def test_each_process_takes_its_share_of_the_global_batch():
    from domainbed.run.distributed import DistEnv

    assert [DistEnv(rank=r, world_size=2).shard(8) for r in (0, 1)] == [slice(0, 4), slice(4, 8)]
    assert DistEnv().shard(8) == slice(0, 8)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        DistEnv(rank=0, world_size=3).shard(8)
