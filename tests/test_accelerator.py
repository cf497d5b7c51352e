"""How runs use an accelerator, checked on CPU: which networks --compile compiles (every backbone an
algorithm runs, in training and in evaluation), a compiled run on CPU, and the CUDA-only settings
being no-ops here."""

import pytest
import torch

from domainbed.algorithms import ALGORITHMS
from domainbed.run.accelerator import configure_cuda, networks_to_compile, use_fused_optimizers
from domainbed.scripts import train


def backbones_that_ran(algorithm, minibatches) -> set[int]:
    ran = set()
    hooks = [module.register_forward_hook(lambda m, i, o: ran.add(id(m)))
             for module in algorithm.modules() if hasattr(module, "num_features")]
    try:
        for step in range(2):
            algorithm.update(minibatches)
            algorithm.after_step(step)
        model = algorithm.evaluation_model()
        model.eval()
        with torch.no_grad():
            model.predict(minibatches[0][0])
    finally:
        for hook in hooks:
            hook.remove()
    return ran


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_compile_covers_every_backbone_an_algorithm_runs(name, kit):
    algorithm = kit.algorithm(name, "gmoe")
    compiled = {id(network) for network in networks_to_compile(algorithm)}
    ran = backbones_that_ran(algorithm, kit.minibatches())
    assert ran and ran <= compiled, f"{name}: a backbone runs uncompiled"


def test_a_compiled_run_trains_on_cpu(tmp_path, monkeypatch, read_records, capsys):
    monkeypatch.setenv("DOMAINBED_COMPILE_BACKEND", "aot_eager")  # the graphs inductor gets, without codegen
    hparams = ('{"batch_size": 4, "image_size": 16, "backbone": "gmoe_micro_patch4_32", "moe_blocks": [1], '
               '"num_experts": 3, "backbone_kwargs": {"depth": 2, "embed_dim": 16, "num_heads": 2}}')
    train.main(["--dataset", "RotatedDigits", "--algorithm", "Fish", "--steps", "3", "--checkpoint_freq", "2",
                "--hparams", hparams, "--output_dir", str(tmp_path / "run"), "--compile", "--no-progress"])
    assert "torch.compile: 2 network(s): VisionTransformer, VisionTransformer" in capsys.readouterr().out
    records = read_records(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 2] and all(r["args"]["compile"] for r in records)
    assert all(0 < r["loss"] < 10 for r in records)


def test_cuda_settings_are_no_ops_on_cpu(kit):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    assert configure_cuda(torch.device("cpu"), tf32=True, deterministic=False) == {"tf32": False,
                                                                                    "cudnn_benchmark": False}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == before
    assert use_fused_optimizers(kit.algorithm("ERM"), torch.device("cpu")) == []
