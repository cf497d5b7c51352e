"""What a run folder's logs say across attempts and stops: a header per attempt in out.txt and err.txt
(the part of err.txt after its last header is the last attempt's), SIGTERM's reason and the step it
stopped at, and output folders that cannot be written refused before any work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domainbed.run.folder import RunFolder
from domainbed.run.trainer import RunError
from domainbed.scripts import sweep, train
from domainbed.scripts._cli import run_main

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--dataset", "RotatedDigits", "--test_envs", "0", "--hparams", '{"batch_size": 4, "image_size": 16}',
         "--no-progress"]


def last_attempt(err: Path) -> list[str]:
    lines = err.read_text().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith(RunFolder.ATTEMPT_HEADER)]
    return lines[headers[-1] + 1:]


def test_err_txt_shows_which_attempt_an_error_belongs_to(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):  # attempt 1 diverges...
        run_main(lambda: train.main([*FLAGS, "--steps", "4", "--hparams", '{"batch_size": 4, "lr": 1e30}',
                                     "--output_dir", str(out)]), (RunError,))
    assert "became nan" in last_attempt(out / "err.txt")[-1]
    (out / "checkpoint.pt").unlink(missing_ok=True)
    (out / "results.jsonl").unlink(missing_ok=True)
    train.main([*FLAGS, "--steps", "4", "--output_dir", str(out)])  # ...attempt 2, same folder, succeeds
    err = (out / "err.txt").read_text()
    assert "became nan" in err  # the history is kept
    assert last_attempt(out / "err.txt") == []  # and the last attempt says nothing went wrong
    assert RunFolder(out).attempt_number() == 3
    assert (out / "out.txt").read_text().count(RunFolder.ATTEMPT_HEADER) == 2


@pytest.mark.slow
def test_sigterm_stops_with_its_reason_and_step_in_err_txt_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "domainbed.scripts.train", *FLAGS, "--steps", "40", "--checkpoint_freq", "4",
               "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    line = last_attempt(out / "err.txt")[-1]
    assert line.startswith("error: terminated by SIGTERM at step ")
    assert "is kept: rerun the same command to resume" in line and stderr.strip().endswith(line[len("error: "):])
    assert not (out / "done").exists()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)  # resumes and finishes
    assert (out / "done").exists() and last_attempt(out / "err.txt") == []


def test_an_output_folder_under_a_file_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train.main([*FLAGS, "--steps", "2", "--output_dir", str(blocker / "run")]), (RunError,))
    assert exit_info.value.code == 2
    assert f"cannot write the run folder {blocker / 'run'}: {blocker} is a file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_read_only_output_folder_is_refused_before_anything_runs(command, tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == read_only else real_access(path, mode))
    if command == "train":
        main, argv, expected = train.main, [*FLAGS, "--steps", "2", "--output_dir", str(read_only / "run")], (RunError,)
    else:
        main, argv = sweep.main, ["launch", "--datasets", "RotatedDigits", "--algorithms", "ERM", "--n_hparams", "1",
                                  "--n_trials", "1", "--steps", "2", "--output_dir", str(read_only / "sweep"),
                                  "--command_launcher", "local", "--skip_confirmation"]
        expected = (ValueError, PermissionError)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv), expected)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: cannot write the run folder {read_only / ('run' if command == 'train' else 'sweep')}: "
        f"{read_only} is not writable")
    assert list(read_only.iterdir()) == []
