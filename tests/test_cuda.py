"""What must hold on a GPU (``pytest -m cuda``; skipped without CUDA). ``benchmarks/gpu/check.py`` runs
these on the H200 machine before it measures anything.

- the MoE layer computes on CUDA what it computes on CPU (fp32, TF32 off);
- grouped-GEMM and loop experts agree, forward and backward (bf16, where grouped_mm runs);
- the router stays float32 under bf16 autocast;
- gate noise is a fresh draw at every step and differs between ranks (an augmentation seed never
  reseeds a CUDA generator);
- a run resumed from its checkpoint ends bit-identical to an uninterrupted one (``--deterministic``);
- one bf16 update of every algorithm on the GMoE twin gives finite values;
- the colour augmentation on the GPU (``--augment_on device``) equals the same draws on the CPU.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from domainbed.algorithms import ALGORITHMS
from domainbed.moe import SparseMoE
from domainbed.moe.experts import grouped_mm_unavailable_reason

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parent.parent
DIM, HIDDEN = 64, 256


@pytest.fixture
def exact_fp32():
    """fp32 matmuls in full precision for comparisons with the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("top_k, capacity_factor", [(1, 1.5), (2, 1.0), (1, None)])
def test_moe_layer_on_cuda_equals_cpu_in_fp32(top_k, capacity_factor, exact_fp32):
    torch.manual_seed(0)
    cpu = SparseMoE(DIM, HIDDEN, num_experts=6, top_k=top_k, capacity_factor=capacity_factor).eval()
    gpu = SparseMoE(DIM, HIDDEN, num_experts=6, top_k=top_k, capacity_factor=capacity_factor).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    x = torch.randn(8, 17, DIM)
    with torch.no_grad():
        expected, out = cpu(x), gpu(x.cuda()).cpu()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(gpu.last_routing.expert_index.cpu(), cpu.last_routing.expert_index)


@pytest.mark.skipif(torch.cuda.is_available() and grouped_mm_unavailable_reason(torch.zeros(1, device="cuda")) is not None,
                    reason="grouped_mm does not run on this GPU or PyTorch")
@pytest.mark.parametrize("capacity_factor, top_k", [(1.5, 1), (0.5, 1), (1.0, 2)])
def test_grouped_and_loop_experts_agree_on_cuda(capacity_factor, top_k):
    results = {}
    for implementation in ("loop", "grouped"):
        torch.manual_seed(0)
        moe = SparseMoE(DIM, HIDDEN, num_experts=6, top_k=top_k, capacity_factor=capacity_factor,
                        experts_implementation=implementation).cuda().train()
        x = torch.randn(8, 17, DIM, device="cuda", requires_grad=True)
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = moe(x)
        (out.float().pow(2).sum() + moe.aux_loss).backward()
        results[implementation] = (out.float(), x.grad, *(p.grad for p in moe.parameters()))
    for loop, grouped in zip(results["loop"], results["grouped"]):
        assert torch.isfinite(grouped).all()
        torch.testing.assert_close(grouped.float(), loop.float(), rtol=2e-2, atol=2e-2)


def test_router_stays_float32_under_bf16_autocast():
    moe = SparseMoE(DIM, HIDDEN, num_experts=6).cuda().train()
    x = torch.randn(4, 17, DIM, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        clean, noisy, probs = moe.route(x.reshape(-1, DIM).bfloat16())
        out = moe(x)
    assert clean.dtype == noisy.dtype == probs.dtype == moe.aux_loss.dtype == torch.float32
    assert out.dtype == torch.bfloat16


def test_colour_augmentation_on_cuda_equals_the_cpu():
    from domainbed.data.device_augment import PhotometricAugment, PhotometricDraw

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 24, 24), dtype=torch.uint8, generator=generator)
    torch.manual_seed(0)
    params = torch.stack([PhotometricDraw()(image)[1] for image in images])
    augment = PhotometricAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(augment(images.cuda(), params).cpu(), augment(images, params), atol=1e-5, rtol=1e-5)


def test_gate_noise_is_fresh_every_step_and_differs_between_ranks(tmp_path):
    """Each step draws augmented images (seeding the CPU generator per example) and then gate noise on
    the GPU: the noise must differ from step to step and between two ranks' seeds."""
    from PIL import Image

    from domainbed.data.loaders import train_loader
    from domainbed.data.transforms import image_train_transform
    from domainbed.seeding import seed_everything, seed_hash

    images = [Image.new("RGB", (20, 20), (10 * i, 50, 90)) for i in range(6)]
    data = [(image, 0) for image in images]
    noise_by_rank = []
    for rank in (0, 1):
        seed_everything(seed_hash(0, "rank", rank))
        batches = train_loader(data, image_train_transform(16), batch_size=4, seed=7)  # same data stream
        noise = []
        for _ in range(3):
            next(batches)
            noise.append(torch.randn(8, device="cuda"))
        assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])
        noise_by_rank.append(noise[0])
    assert not torch.equal(*noise_by_rank)


def _records(folder: Path) -> list[dict]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        for key in ("step_time", "data_time", "mem_gb"):
            record.pop(key)
        record["args"].pop("output_dir")
        out.append(record)
    return out


@pytest.mark.timeout(900)
def test_resume_on_cuda_is_bit_exact_over_two_checkpoints(tmp_path):
    command = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "RotatedDigits", "--algorithm", "SFMOE",
               "--test_envs", "0", "--steps", "30", "--checkpoint_freq", "10", "--device", "cuda",
               "--precision", "bf16", "--deterministic", "--no-progress",
               "--hparams", '{"batch_size": 16, "image_size": 16}']
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*command, "--output_dir", str(tmp_path / "whole")], env=env, check=True, capture_output=True)
    victim = subprocess.Popen([*command, "--output_dir", str(tmp_path / "cut")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records, deadline = tmp_path / "cut" / "results.jsonl", time.time() + 300
    while not records.exists() or records.read_text().count("\n") < 2:  # two checkpoints (steps 0 and 10)
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    subprocess.run([*command, "--output_dir", str(tmp_path / "cut")], env=env, check=True, capture_output=True)
    assert _records(tmp_path / "cut") == _records(tmp_path / "whole")
    whole = torch.load(tmp_path / "whole" / "model.pkl", weights_only=True)["model_dict"]
    cut = torch.load(tmp_path / "cut" / "model.pkl", weights_only=True)["model_dict"]
    assert all(torch.equal(whole[key], cut[key]) for key in whole)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_one_bf16_update_of_every_algorithm_on_the_gmoe_twin(name, kit):
    algorithm = kit.algorithm(name, "gmoe").cuda()
    minibatches = [(x.cuda(), y.cuda()) for x, y in kit.minibatches()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        values = algorithm.update(minibatches)
        predictions = algorithm.evaluation_model().predict(minibatches[0][0])
    assert all(torch.isfinite(torch.as_tensor(value)).all() for value in values.values()), values
    assert predictions.shape == (kit.batch, kit.num_classes)
