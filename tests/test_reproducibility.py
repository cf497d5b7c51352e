"""What decides a run's numbers is recorded, and ``--deterministic`` makes them independent of the
CPU's instruction set (PyTorch, MKL and oneDNN kernels)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.run.config import RunError
from domainbed.run.environment import code_version
from domainbed.scripts import sweep as sweep_cli
from domainbed.scripts import train
from domainbed.run.trainer import TIMING_KEYS

ROOT = Path(__file__).resolve().parent.parent
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
DETERMINISTIC_KEYS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "CUBLAS_WORKSPACE_CONFIG")


def train_in_subprocess(output_dir: Path, extra_env: dict, *flags: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in (*DETERMINISTIC_KEYS, *AVX2_MACHINE)}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra_env)
    subprocess.run([sys.executable, "-m", "domainbed.scripts.train", "--dataset", "RotatedDigits", "--algorithm",
                    "SFMOE", "--test_envs", "5", "--steps", "12", "--checkpoint_freq", "6", "--hparams",
                    '{"batch_size": 8, "image_size": 16}', "--skip_model_save", "--no-progress",
                    "--output_dir", str(output_dir), *flags], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]


def numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in (*TIMING_KEYS, "environment", "args")} for r in records]


def test_records_say_what_decides_the_numbers(tmp_path, read_records):
    train.main(["--dataset", "RotatedDigits", "--steps", "1", "--hparams", '{"batch_size": 4}',
                "--output_dir", str(tmp_path / "run")])
    environment = read_records(tmp_path / "run")[-1]["environment"]
    import timm
    import torch
    assert environment["torch"] == torch.__version__ and environment["timm"] == timm.__version__
    assert environment["threads"] == torch.get_num_threads() and environment["device"] == "cpu"
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["code"] == code_version()
    out = (tmp_path / "run" / "out.txt").read_text()
    assert f"\tcpu_capability: {environment['cpu_capability']}" in out and f"\tthreads: {environment['threads']}" in out


def test_code_version_is_the_checkouts_commit_marked_when_the_package_code_differs(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    (tmp_path / "domainbed").mkdir()
    (tmp_path / "domainbed" / "model.py").write_text("width = 64\n")
    (tmp_path / "notes.md").write_text("results\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "--short=12", "HEAD")
    assert code_version(tmp_path) == commit
    (tmp_path / "notes.md").write_text("more results\n")  # not the package's code: still that commit
    (tmp_path / "domainbed" / "new_untracked.py").write_text("")
    assert code_version(tmp_path) == commit
    (tmp_path / "domainbed" / "model.py").write_text("width = 128\n")
    assert code_version(tmp_path) == f"{commit}+modified"
    # not a checkout: the installed package's version (none where the package runs from PYTHONPATH)
    outside = code_version(tmp_path / "domainbed")
    assert outside.startswith("domainbed-sfmoe ") or outside == "unknown"


@pytest.mark.slow
def test_deterministic_runs_give_the_same_numbers_whatever_the_instruction_set(tmp_path):
    # without the switch, a CPU limited to AVX2 computes other numbers than this one...
    plain = train_in_subprocess(tmp_path / "plain", {})
    plain_avx2 = train_in_subprocess(tmp_path / "plain_avx2", AVX2_MACHINE)
    if numbers(plain) == numbers(plain_avx2):
        pytest.skip("this CPU computes the same with and without AVX2 limits: nothing to compare")
    # ...with it, both use the portable kernels and agree to the last bit
    portable = train_in_subprocess(tmp_path / "portable", {}, "--deterministic")
    portable_avx2 = train_in_subprocess(tmp_path / "portable_avx2", AVX2_MACHINE, "--deterministic")
    assert numbers(portable) == numbers(portable_avx2)
    environment = portable[-1]["environment"]
    assert environment["cpu_capability"] == "DEFAULT" and environment["mkl_cbwr"] == "COMPATIBLE"
    assert portable[-1]["args"]["deterministic"] is True


def test_deterministic_in_process_without_the_settings_says_to_use_the_command_line(tmp_path, monkeypatch):
    for key in DETERMINISTIC_KEYS:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RunError, match="--deterministic sets PyTorch's and MKL's kernels before they load"):
        train.main(["--dataset", "RotatedDigits", "--steps", "1", "--deterministic",
                    "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_deterministic_sweep_passes_the_switch_to_every_job(tmp_path, capsys):
    sweep_cli.main(["launch", "--datasets", "RotatedDigits", "--algorithms", "ERM", "--n_trials", "1",
                    "--n_hparams", "1", "--single_test_envs", "--test_envs", "0", "--deterministic",
                    "--command_launcher", "dummy", "--skip_confirmation", "--output_dir", str(tmp_path)])
    (command,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Dummy launcher:")]
    assert command.split()[-1] != "True" and " --deterministic " in command + " "
