"""Every bad input a user can give the train command: a one-line message naming the problem and the
fix, exit code 2, and the work already in the output folder left as it was."""

import subprocess
import sys

import pytest
from PIL import Image

from domainbed.scripts import train
from domainbed.scripts._cli import run_main
from domainbed.run.trainer import RunError

PACS_ENVS = ("art_painting", "cartoon", "photo", "sketch")
SMALL_IMAGES = '{"backbone": "vit_micro_patch4_32", "pretrained": false, "image_size": 32, "batch_size": 4}'


def make_pacs(root, empty_env=None, corrupt=False):
    for env in PACS_ENVS:
        for cls in ("dog", "horse"):
            folder = root / "PACS" / env / cls
            folder.mkdir(parents=True)
            if env == empty_env:
                continue
            for i in range(3):
                Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(folder / f"{i}.png")
    if corrupt:
        (root / "PACS" / "cartoon" / "dog" / "0.png").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """An output folder holding an interrupted run: records and a resume state at step 2."""
    from domainbed.algorithms.erm import ERM

    out = tmp_path_factory.mktemp("bad") / "run"
    original = ERM.update
    calls = {"n": 0}

    def stop_at_step_3(self, minibatches, unlabeled=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, minibatches, unlabeled)

    ERM.update = stop_at_step_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train.main(["--dataset", "RotatedDigits", "--steps", "6", "--checkpoint_freq", "2",
                        "--hparams", '{"batch_size": 4}', "--output_dir", str(out)])
    finally:
        ERM.update = original
    assert (out / "checkpoint.pt").exists() and (out / "results.jsonl").exists()
    return out


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train.main(argv), (RunError,))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err[-1] if err else ""


CASES = {
    "unknown dataset": (["--dataset", "Nope"], r"unknown dataset 'Nope'; known datasets: .*PACS.*RotatedDigits.*; "
                                               r"or put your own images in \./domainbed/data/Nope/<domain>/<class>/"
                                               r"<image> files$"),
    "unknown algorithm": (["--algorithm", "Nope"], r"unknown algorithm 'Nope'; known algorithms: ERM, .*SFMOE"),
    "test env out of range": (["--test_envs", "9"], r"9.*out of range.*0-5|9.*range"),
    "hparams not JSON": (["--hparams", "{lr: 1"], r"--hparams is not valid JSON.*example"),
    "hparams not an object": (["--hparams", "[1]"], r"--hparams must be a JSON object"),
    "unknown hparam": (["--hparams", '{"lrr": 0.1}'], r"unknown hparam\(s\) lrr for ERM on RotatedDigits; known: .*lr"),
    "unknown backbone": (["--hparams", '{"backbone": "resnet9000"}'], r"unknown backbone 'resnet9000'"),
    "pretrained weights unavailable": (["--hparams", '{"backbone": "vit_micro_patch4_32", "pretrained": true}'],
                                       r"could not load pretrained weights .*pretrained_file"),
    "drop_path_rate on a backbone without stochastic depth": (
        ["--hparams", '{"backbone": "ghostnet_050", "drop_path_rate": 0.1}'],
        r"backbone 'ghostnet_050' has no stochastic depth, so drop_path_rate 0.1 cannot apply; set drop_path_rate to 0"),
    "bad backbone_kwargs": (["--hparams", '{"backbone_kwargs": {"depth": "x"}}'],
                            r"cannot build backbone 'vit_micro_patch4_32' with backbone_kwargs \{'depth': 'x'\}"),
    "bad backbone_kwargs and no weights": (["--hparams", '{"backbone": "resnet18", "pretrained": true, '
                                                         '"backbone_kwargs": {"widht": 3}}'],
                                           r"cannot build backbone 'resnet18.tv_in1k' with backbone_kwargs .*'widht'"),
    "missing pretrained file": (["--hparams", '{"pretrained_file": "/nowhere/w.pth"}'],
                                r"pretrained_file '/nowhere/w.pth' does not exist"),
    "hparam of the wrong type": (["--hparams", '{"lr": "fast"}'], r"lr must be a number, got 'fast'"),
    "hparam out of range": (["--hparams", '{"batch_size": 0}'], r"batch_size must be >= 1, got 0"),
    "MoE hparams on a dense backbone": (["--hparams", '{"num_experts": 4}'],
                                        r"num_experts: MoE hparam.*backbone 'vit_micro_patch4_32' has no MoE layers"),
    "one training domain for a method comparing domains": (
        ["--algorithm", "CORAL", "--test_envs", "0 1 2 3 4"], r"CORAL needs at least 2 training domains, got 1"),
    "SWAD window longer than the run": (["--algorithm", "SWAD", "--checkpoint_freq", "5"],
                                        r"SWAD's valley search needs n_converge=3 checkpoints.*give 2"),
    "no steps": (["--steps", "0"], r"--steps must be at least 1, got 0"),
    "data_dir is a file": (["--data_dir", __file__], r"--data_dir .*test_bad_input.py is a file; give the folder"),
    # valid flags, but the folder holds an interrupted run of another configuration
    "resume under other hparams": (["--hparams", '{"batch_size": 4, "lr": 0.5}'],
                                   r"holds an interrupted run of another configuration \(hparam lr 0.001 there, "
                                   r"0.5 here\); rerun its own command"),
    "resume under another algorithm": (["--algorithm", "CORAL"], r"another configuration \(algorithm \"ERM\" "
                                                                  r"there, \"CORAL\" here; hparam mmd_gamma"),
    "resume under another test env": (["--test_envs", "1"], r"another configuration \(test_envs \[0\] there, \[1\] here\)"),
    "resume under another seed": (["--seed", "3"], r"another configuration \(seed 0 there, 3 here\)"),
    "resume under another trial": (["--trial_seed", "1"], r"another configuration \(trial_seed 0 there, 1 here; hparam environment_shuffle_seed"),
    "resume with more steps": (["--steps", "8"], r"another configuration \(steps 6 there, 8 here\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_flags_leave_an_interrupted_run_untouched(case, interrupted_run, capsys):
    flags, message = CASES[case]
    before = snapshot(interrupted_run)
    argv = ["--dataset", "RotatedDigits", "--steps", "6", "--checkpoint_freq", "2",
            "--hparams", '{"batch_size": 4}', "--output_dir", str(interrupted_run)]
    for i in range(0, len(flags), 2):  # a flag given in the case replaces the base one
        values = flags[i + 1].split(" ") if flags[i] == "--test_envs" else [flags[i + 1]]
        if flags[i] in argv:
            at = argv.index(flags[i])
            argv[at + 1:at + 2] = values
        else:
            argv += [flags[i], *values]
    code, line = run_cli(argv, capsys)
    assert code == 2
    assert line.startswith("error: ")
    assert __import__("re").search(message, line), line
    assert snapshot(interrupted_run) == before


def test_a_run_resumes_when_only_how_it_runs_changed(interrupted_run, tmp_path, read_records):
    """Flags that do not change what is computed (evaluation batch, workers, progress) may differ."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(interrupted_run, folder)
    train.main(["--dataset", "RotatedDigits", "--steps", "6", "--checkpoint_freq", "2", "--hparams",
                '{"batch_size": 4}', "--output_dir", str(folder), "--eval_batch_size", "7", "--num_workers", "0"])
    assert [record["step"] for record in read_records(folder)] == [0, 2, 4, 5]
    assert (folder / "done").exists()


def test_missing_data_names_the_download_command(tmp_path, capsys):
    code, line = run_cli(["--dataset", "PACS", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert f"python -m domainbed.scripts.download --data_dir {tmp_path} --datasets PACS" in line
    assert not (tmp_path / "o").exists()


def test_empty_environment_is_named(tmp_path, capsys):
    make_pacs(tmp_path, empty_env="photo")
    code, line = run_cli(["--dataset", "PACS", "--data_dir", str(tmp_path), "--hparams", SMALL_IMAGES,
                          "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "photo" in line and "no images" in line


def test_corrupt_image_stops_with_the_file_name(tmp_path, capsys):
    make_pacs(tmp_path, corrupt=True)
    code, line = run_cli(["--dataset", "PACS", "--data_dir", str(tmp_path), "--test_envs", "0",
                          "--steps", "3", "--hparams", SMALL_IMAGES, "--num_workers", "1",
                          "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "cannot read image" in line and "cartoon/dog/0.png" in line
    assert "no checkpoint was written yet: rerun to start again once the file is fixed" in line  # what is true
    assert not (tmp_path / "o" / "done").exists()
    assert (tmp_path / "o" / "err.txt").read_text().strip().splitlines()[-1] == line  # where cluster users look


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, read_records):
    out = tmp_path / "nan"
    code, line = run_cli(["--dataset", "Debug28", "--steps", "50", "--checkpoint_freq", "1",
                          "--hparams", '{"batch_size": 4, "lr": 1e30}', "--output_dir", str(out)], capsys)
    assert code == 2
    match = __import__("re").search(r"loss became nan or inf at step (\d+); the last good checkpoint \(step (\d+)\)", line)
    assert match, line
    failed, kept = int(match[1]), int(match[2])
    assert kept == failed - 1
    assert (out / "err.txt").read_text().strip().splitlines()[-1] == line
    records = read_records(out)
    assert len(records) == len((out / "results.jsonl").read_text().splitlines())  # no torn line
    assert records[-1]["step"] == kept and not (out / "done").exists()


def test_finished_run_is_kept(tmp_path, capsys):
    out = tmp_path / "done_run"
    train.main(["--dataset", "RotatedDigits", "--steps", "1", "--hparams", '{"batch_size": 4}',
                "--output_dir", str(out)])
    before = snapshot(out)
    code, line = run_cli(["--dataset", "RotatedDigits", "--steps", "1", "--output_dir", str(out)], capsys)
    assert code == 2 and "already holds a finished run" in line
    assert snapshot(out) == before


def test_the_real_command_prints_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", "--dataset", "Nope",
                             "--output_dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: unknown dataset 'Nope'")


def test_unreachable_hub_fails_in_seconds_with_the_ways_to_get_weights(tmp_path, capsys, monkeypatch):
    """No HF_HUB_OFFLINE, no network: the probe answers at once and timm never starts its retries."""
    import socket

    import timm

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    create = timm.create_model

    def no_hub(name, pretrained=False, **kwargs):
        assert not pretrained, "timm should not be asked for weights the hub cannot give"
        return create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_hub)
    code, line = run_cli(["--dataset", "RotatedDigits", "--hparams", '{"backbone": "resnet18", "pretrained": true}',
                          "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "not in the Hugging Face cache and the hub cannot be reached" in line and "pretrained_file" in line
    assert not (tmp_path / "o").exists()


def test_evaluate_finds_the_data_folder_the_model_was_trained_on(tmp_path, capsys):
    make_pacs(tmp_path / "data")
    train.main(["--dataset", "PACS", "--data_dir", str(tmp_path / "data"), "--test_envs", "0", "--steps", "1",
                "--hparams", SMALL_IMAGES, "--num_workers", "0", "--output_dir", str(tmp_path / "run")])
    from domainbed.scripts import evaluate

    capsys.readouterr()
    results = evaluate.main(["--checkpoint", str(tmp_path / "run" / "model.pkl")])  # no --data_dir
    assert [r.name for r in results] == ["A", "C", "P", "S"] and all(r.n == 6 for r in results)


def test_train_help_shows_every_default():
    """ArgumentDefaultsHelpFormatter prints a flag's default only when the flag has a help text."""
    parser = train.build_parser()
    undescribed = [action.option_strings[0] for action in parser._actions if action.dest != "help" and not action.help]
    assert undescribed == []
    text = " ".join(parser.format_help().split())
    for default in ("(default: RotatedDigits)", "(default: ERM)", "(default: train_output)", "(default: [0])"):
        assert default in text
