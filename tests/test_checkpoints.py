"""model.pkl loading: ours, the authors' layout, and refusing files that would run code."""

import argparse
import re
import pickle
import os
import subprocess
import sys

import pytest
import timm
import torch

from domainbed.checkpoints import UnsafeCheckpointError, load_checkpoint, read_checkpoint_file
from domainbed.scripts import evaluate, train
from domainbed.scripts._cli import run_main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train.main(["--dataset", "RotatedDigits", "--algorithm", "SFMOE", "--test_env", "1", "--steps", "2",
                "--checkpoint_freq", "5", "--hparams", '{"batch_size": 8}', "--output_dir", str(out)])
    return out


def test_our_checkpoint_predicts_like_the_trained_model(trained_run):
    algorithm = load_checkpoint(trained_run / "model.pkl")
    assert type(algorithm).__name__ == "SFMOE" and algorithm.checkpoint_args["test_envs"] == [1]
    saved = torch.load(trained_run / "model.pkl", weights_only=True)["model_dict"]
    assert all(torch.equal(saved[k], v) for k, v in algorithm.state_dict().items())
    x = torch.rand(5, 1, 32, 32)
    assert algorithm.predict(x).shape == (5, 10)


def test_evaluate_prints_every_environment(trained_run, capsys):
    results = evaluate.main(["--checkpoint", str(trained_run / "model.pkl")])
    assert [r.name for r in results] == ["0", "15", "30", "45", "60", "75"]
    assert sum(r.n for r in results) == 1797
    out = capsys.readouterr().out
    assert "(test)" in out.splitlines()[2] and out.count("(test)") == 1  # env 1 is the test env


def _authors_state_dict(reference: torch.nn.Module, moe_blocks: list[int]) -> dict:
    """The authors' model_dict of ``reference`` written out by hand from method.md's layout."""
    state = {}
    for key, value in reference.state_dict().items():
        block = key.split(".")[1] if key.startswith("blocks.") else None
        if block is not None and int(block) in moe_blocks and ".mlp." in key:
            continue
        state["model." + key] = value.clone()
    for i in moe_blocks:
        layer = reference.blocks[i].mlp
        router, experts = layer.router, layer.experts
        prefix = f"model.blocks.{i}.mlp."
        state[prefix + "gates.0.temperature"] = router.log_scale.detach().clone().reshape(1)
        state[prefix + "gates.0.cosine_projector.weight"] = router.projection.weight.detach().clone()
        state[prefix + "gates.0.cosine_projector.bias"] = router.projection.bias.detach().clone()
        state[prefix + "gates.0.sim_matrix"] = router.expert_embeddings.detach().clone()
        state[prefix + "experts.batched_fc1_w"] = experts.fc1_weight.detach().clone()      # [E, H, D]
        state[prefix + "experts.batched_fc1_bias"] = experts.fc1_bias.detach().clone()
        state[prefix + "experts.batched_fc2_w"] = experts.fc2_weight.detach().transpose(1, 2).clone()  # in x out
        state[prefix + "experts.batched_fc2_bias"] = experts.fc2_bias.detach().clone()
    return state


def _authors_file(tmp_path, embed_dim: int, num_heads: int, hparams: dict):
    """A checkpoint as the authors' code writes it, of a small model of their shape (timm ViT, MoE FFN
    with a cosine router and 4 experts in blocks 2 and 4), and that model."""
    torch.manual_seed(0)
    reference = timm.create_model("gmoe_small_patch16_224", num_classes=7, img_size=32, patch_size=8,
                                  embed_dim=embed_dim, depth=6, num_heads=num_heads, moe_blocks=[2, 4],
                                  num_experts=4, drop_path_rate=0.0).eval()
    for p in reference.parameters():  # make the experts differ, as after training
        p.data.add_(0.02 * torch.randn_like(p))
    saved = {"args": argparse.Namespace(dataset="PACS", algorithm="GMOE", test_envs=[0]),
             "model_input_shape": (3, 32, 32), "model_num_classes": 7, "model_num_domains": 3,
             "model_hparams": hparams, "model_dict": _authors_state_dict(reference, [2, 4])}
    path = tmp_path / "authors_model.pkl"
    torch.save(saved, path)
    return path, reference


@pytest.mark.parametrize("embed_dim, num_heads, hparams", [
    (192, 3, {"lr": 3e-5, "batch_size": 32}),        # a standard ViT width: heads from the ViT family
    (64, 4, {"lr": 3e-5, "num_heads": 4}),          # any other width: heads from the file's own hparams
])
def test_authors_checkpoint_loads_and_predicts_like_their_model(tmp_path, embed_dim, num_heads, hparams):
    path, reference = _authors_file(tmp_path, embed_dim, num_heads, hparams)
    algorithm = load_checkpoint(path)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    assert torch.allclose(algorithm.predict(x), expected, atol=1e-5)
    assert algorithm.hparams["moe_blocks"] == [2, 4] and algorithm.hparams["num_experts"] == 4
    assert algorithm.hparams["backbone_kwargs"]["num_heads"] == num_heads


def test_authors_checkpoint_of_unknown_heads_is_refused_clearly(tmp_path):
    path, _ = _authors_file(tmp_path, 64, 4, {"lr": 3e-5})
    with pytest.raises(ValueError, match="cannot tell the attention heads of this width-64 ViT.*num_heads"):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    path = tmp_path / "evil.pkl"
    torch.save({"model_dict": {}, "model_num_classes": 2, "payload": payload}, path)
    with pytest.raises(UnsafeCheckpointError, match="--allow_unsafe_pickle"):
        read_checkpoint_file(path)
    assert not marker.exists()
    # the command line says so in one line, exit code 2, nothing executed
    result = subprocess.run([sys.executable, "-m", "domainbed.scripts.evaluate", "--checkpoint", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.startswith("error: ") and "allow_unsafe_pickle" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------ what a file is
def _torch_file(path, **kwargs):
    torch.save({"model_dict": {"w": torch.zeros(4096)}, "model_num_classes": 2}, path, **kwargs)


def _truncated(path):
    _torch_file(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


NOT_CHECKPOINTS = {
    "a folder": (lambda p: (p.mkdir(), (p / "model.pkl").write_bytes(b"x")), r"is a folder, not a checkpoint file \(a run folder\? pass its model.pkl\)"),
    "an empty file": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    "a truncated file": (_truncated, r"is a truncated or damaged PyTorch file"),
    "random bytes": (lambda p: p.write_bytes(bytes(range(256)) * 4), r"is not a checkpoint \(neither a PyTorch zip file nor a pickle\)"),
    "a text file": (lambda p: p.write_text("lr: 0.001\n"), r"is not a checkpoint"),
    "a pickle not written by torch": (lambda p: p.write_bytes(pickle.dumps({"a": 1})), r"is a pickle but not a PyTorch checkpoint"),
    "a missing file": (lambda p: None, r"checkpoint '.*' does not exist"),
}


@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(kind, tmp_path, capsys):
    """In process, as ``python -m domainbed.scripts.evaluate`` runs it (the subprocess form is tested above)."""
    make, message = NOT_CHECKPOINTS[kind]
    path = tmp_path / "model.pkl"
    make(path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: evaluate.main(["--checkpoint", str(path)]),
                 (FileNotFoundError, ValueError, UnsafeCheckpointError))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert re.search(message, line), line
    assert "allow_unsafe_pickle" not in line  # offered only for a real pickle that needs it


def test_a_legacy_torch_pickle_still_loads(tmp_path):
    path = tmp_path / "old.pkl"
    _torch_file(path, _use_new_zipfile_serialization=False)
    assert read_checkpoint_file(path)["model_num_classes"] == 2


def test_numpy_scalars_from_domainbeds_random_hparams_load_without_unsafe_pickling(tmp_path):
    import numpy as np

    path = tmp_path / "domainbed.pkl"
    hparams = {"lr": np.float64(1e-4), "batch_size": np.int64(32), "nonlinear_classifier": np.bool_(False)}
    torch.save({"model_dict": {}, "model_num_classes": 2, "model_hparams": hparams}, path)
    assert read_checkpoint_file(path)["model_hparams"] == hparams
