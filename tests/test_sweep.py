"""Sweeps: DomainBed's job list, folders and seeds; job states; launching with every launcher."""

import concurrent.futures
import fcntl
import hashlib
import io
import json
import os
import re
import sys
import time

import pytest

from domainbed.run.folder import RunFolder
from domainbed.sweep.launchers import (ALREADY_RUNNING, JobSpec,
                                 LauncherOptions, is_running, pool_launcher, run_job)
from domainbed.results.records import load_records
from domainbed.results.tables import format_results
from domainbed.scripts import sweep as sweep_cli
from domainbed.sweep import (JobState, count_states, delete_incomplete, job_folder_name, jobs_to_launch, make_jobs,
                             make_train_args, status_report, all_test_env_combinations)

TINY = ["--datasets", "RotatedDigits", "--algorithms", "ERM", "--n_trials", "1", "--single_test_envs",
        "--steps", "3", "--hparams", '{"batch_size": 8}', "--skip_confirmation"]


def tiny_sweep(output_dir, *extra):
    return ["launch", *TINY, "--output_dir", str(output_dir), *extra]


def domainbed_seed(*args):
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % 2**31


# ----------------------------------------------------------------------------------------------
# job list, seeds, folders

def test_job_counts_follow_domainbed():
    # RotatedDigits has 6 environments: 6 single test envs + C(6, 2) = 15 pairs
    assert len(all_test_env_combinations(6)) == 21
    assert all_test_env_combinations(3) == [[0], [0, 1], [0, 2], [1], [1, 2], [2]]  # DomainBed's order
    full = make_train_args(["RotatedDigits"], ["ERM", "SFMOE"], "data", n_trials=2,
                           n_hparams_from=1, n_hparams=3)
    assert len(full) == 2 * 2 * 21 * 2
    single = make_train_args(["RotatedDigits", "PACS"], ["ERM"], "data", n_trials=3, n_hparams=20,
                             single_test_envs=True)
    assert len(single) == 3 * (6 + 4) * 20
    # --test_envs 1: env 1 alone, plus its 5 pairs (leave-one-domain-out selection needs them)
    limited = make_train_args(["RotatedDigits"], ["ERM"], "data", n_trials=1, n_hparams=1, test_envs=[1])
    assert [a["test_envs"] for a in limited] == [[0, 1], [1], [1, 2], [1, 3], [1, 4], [1, 5]]
    assert {a["hparams_seed"] for a in full} == {1, 2} and {a["trial_seed"] for a in full} == {0, 1}


def test_train_args_seed_and_folder_follow_domainbed_formulas(tmp_path):
    args_list = make_train_args(["RotatedDigits"], ["ERM"], "/data", n_trials=2, n_hparams=2,
                                test_envs=[2], steps=7, hparams='{"lr": 0.1}')
    pair = next(a for a in args_list if a["test_envs"] == [2, 4] and a["trial_seed"] == 1
                and a["hparams_seed"] == 1)
    expected = {"dataset": "RotatedDigits", "algorithm": "ERM", "test_envs": [2, 4],
                "holdout_fraction": 0.2, "hparams_seed": 1, "data_dir": "/data",
                "task": "domain_generalization", "trial_seed": 1,
                "seed": domainbed_seed("RotatedDigits", "ERM", [2, 4], 1, 1), "steps": 7,
                "hparams": '{"lr": 0.1}'}
    assert pair == expected
    # without --steps/--hparams those keys are absent (so DomainBed's folders are reproduced)
    plain = make_train_args(["RotatedDigits"], ["ERM"], "/data", n_trials=1, n_hparams=1, test_envs=[2],
                            single_test_envs=True)
    assert set(plain[0]) == set(expected) - {"steps", "hparams"}

    job = next(j for j in make_jobs(args_list, str(tmp_path / "sweep")) if j.train_args["test_envs"] == [2, 4]
               and j.train_args["trial_seed"] == 1 and j.train_args["hparams_seed"] == 1)
    folder = hashlib.md5(json.dumps(expected, sort_keys=True).encode("utf-8")).hexdigest()
    assert job.output_dir == str(tmp_path / "sweep" / folder)
    command = list(job.command)
    assert command[1:3] == ["-m", "domainbed.scripts.train"]
    assert command[command.index("--test_envs"):][:3] == ["--test_envs", "2", "4"]
    assert command[command.index("--output_dir") + 1] == job.output_dir
    # a non-zero sweep --seed changes every job's seed, hence its folder
    reseeded = make_train_args(["RotatedDigits"], ["ERM"], "/data", n_trials=1, n_hparams=1,
                               single_test_envs=True, test_envs=[2], sweep_seed=5)
    assert reseeded[0]["seed"] != plain[0]["seed"]


@pytest.mark.parametrize("bad, message", [
    (dict(datasets=["Nope"]), "unknown dataset"),
    (dict(algorithms=["Nope"]), "Nope"),
    (dict(test_envs=[6]), "out of range"),
    (dict(n_hparams_from=3, n_hparams=3), "n_hparams_from"),
    (dict(hparams="{lr: 1}"), "not valid JSON"),
])
def test_bad_sweep_arguments_are_named(bad, message):
    kwargs = dict(datasets=["RotatedDigits"], algorithms=["ERM"], data_dir="d") | bad
    with pytest.raises(ValueError, match=message):
        make_train_args(**kwargs)


def test_states_status_and_delete_incomplete_on_a_hand_built_tree(tmp_path):
    jobs = make_jobs(make_train_args(["RotatedDigits"], ["ERM"], "d", n_trials=1, n_hparams=4,
                                     single_test_envs=True, test_envs=[0]), str(tmp_path))
    done, incomplete, running, new = jobs
    for job in (done, incomplete, running):
        os.makedirs(job.output_dir)
    open(os.path.join(done.output_dir, "done"), "w").close()
    assert [j.state for j in jobs] == [JobState.DONE, JobState.INCOMPLETE, JobState.INCOMPLETE,
                                       JobState.NOT_LAUNCHED]
    assert count_states(jobs) == {JobState.DONE: 1, JobState.INCOMPLETE: 2, JobState.NOT_LAUNCHED: 1}
    report = status_report(jobs)
    assert report.splitlines()[0] == "4 jobs: 1 done, 2 incomplete, 1 not launched"
    assert report.splitlines()[-1].split()[-4:] == ["ERM", "1", "2", "1"]
    assert jobs_to_launch(jobs) == [incomplete, running, new]  # incomplete ones resume, not restart

    with open(RunFolder(running.output_dir).lock, "a") as lock:  # a live job holds its lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert status_report(jobs).splitlines()[0] == \
            "4 jobs: 1 done, 2 incomplete (1 running now), 1 not launched"
        deleted, kept = delete_incomplete(jobs)
    assert deleted == [incomplete] and kept == [running]
    assert not os.path.exists(incomplete.output_dir) and os.path.exists(running.output_dir)
    assert os.path.exists(done.output_dir)


def test_launch_without_a_terminal_asks_for_skip_confirmation(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    argv = [a for a in tiny_sweep(tmp_path / "sweep") if a != "--skip_confirmation"]
    with pytest.raises(ValueError, match="--skip_confirmation"):
        sweep_cli.main(argv)
    assert not (tmp_path / "sweep").exists()


def test_dummy_launcher_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    sweep_cli.main(tiny_sweep(tmp_path / "sweep", "--n_hparams", "2", "--test_envs", "3",
                              "--command_launcher", "dummy"))
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("Dummy launcher:")]
    assert len(lines) == 2 and all("-m domainbed.scripts.train" in l and "--test_envs 3" in l for l in lines)
    assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------------------------
# launching real (tiny) jobs

def check_collectable(output_dir, n_runs, test_env):
    loaded = load_records(output_dir)
    assert loaded.n_runs == n_runs and loaded.n_incomplete_runs == 0
    assert len(loaded.records) == 2 * n_runs  # steps 0 and 2 of each run
    table = format_results(loaded.records)
    erm_row = next(line for line in table.splitlines() if line.startswith("ERM"))
    cells = re.split(r"\s{2,}", erm_row.strip())[1:]  # "mean +/- err" or "X" per env, then Avg
    assert all(cell == "X" for i, cell in enumerate(cells[:6]) if i != test_env)  # no other env held out
    # training-domain validation (one trial): the test domain's "in" accuracy of the checkpoint,
    # over every run, whose training domains' "out" splits score best (any of them on a tie)
    def validation(record):
        return sum(record[f"env{i}_out_acc"] for i in range(6) if i != test_env) / 5
    best = max(validation(r) for r in loaded.records)
    selected = {f"{100 * r[f'env{test_env}_in_acc']:.1f} +/- 0.0" for r in loaded.records
                if abs(validation(r) - best) < 1e-9}
    assert cells[test_env] in selected, (cells[test_env], selected)


@pytest.mark.slow
def test_pool_sweep_resumes_incomplete_jobs_and_skips_done_ones(tmp_path, monkeypatch, capsys, read_records):
    out = tmp_path / "sweep"
    argv = tiny_sweep(out, "--n_hparams", "2", "--test_envs", "0", "--command_launcher", "pool",
                      "--max_parallel", "2")

    def steps(folder):
        return [r["step"] for r in read_records(folder)]

    fresh, interrupted = make_jobs(make_train_args(["RotatedDigits"], ["ERM"], "./domainbed/data",
                                                   n_trials=1, n_hparams=2, single_test_envs=True,
                                                   test_envs=[0], steps=3, hparams='{"batch_size": 8}'),
                                   str(out))
    # interrupt the second job after its step-0 checkpoint, as a crash or a kill would
    from domainbed.algorithms.erm import ERM
    from domainbed.scripts import train
    original_update, calls = ERM.update, []

    def crash_at_step_1(self, minibatches, unlabeled=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original_update(self, minibatches, unlabeled)

    with monkeypatch.context() as patch:
        patch.setattr(ERM, "update", crash_at_step_1)
        with pytest.raises(KeyboardInterrupt):
            train.main(list(interrupted.command[3:]))
    assert interrupted.state == JobState.INCOMPLETE and steps(interrupted.output_dir) == [0]

    results = sweep_cli.main(argv)
    assert [r.returncode for r in results] == [0, 0]
    assert fresh.state == interrupted.state == JobState.DONE
    assert steps(fresh.output_dir) == steps(interrupted.output_dir) == [0, 2]
    with open(os.path.join(interrupted.output_dir, "out.txt")) as handle:
        assert "Resuming from the checkpoint of step 0" in handle.read()
    with open(os.path.join(fresh.output_dir, "out.txt")) as handle:
        assert "Resuming" not in handle.read()

    stamps = [os.stat(os.path.join(j.output_dir, "results.jsonl")).st_mtime_ns for j in (fresh, interrupted)]
    capsys.readouterr()
    assert sweep_cli.main(argv) == []  # everything done: nothing runs again
    assert "nothing to launch" in capsys.readouterr().out
    assert stamps == [os.stat(os.path.join(j.output_dir, "results.jsonl")).st_mtime_ns
                      for j in (fresh, interrupted)]
    check_collectable(out, 2, test_env=0)


@pytest.mark.slow
def test_a_failing_job_is_reported_and_does_not_stop_the_sweep(tmp_path, capsys):
    argv = ["launch", "--datasets", "RotatedDigits", "--algorithms", "ERM", "--n_trials", "1",
            "--n_hparams", "1", "--single_test_envs", "--test_envs", "0", "--steps", "3",
            "--hparams", '{"lr": 1e30, "batch_size": 8}', "--skip_confirmation", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:  # a failure no pre-flight can foresee: the loss diverges
        sweep_cli.main(argv)
    assert exit_info.value.code == 1
    report = capsys.readouterr().out
    assert "0 of 1 jobs finished, 1 failed" in report
    assert "error: loss became nan" in report  # the job's own one-line error
    (folder,) = [p for p in tmp_path.iterdir()]
    assert RunFolder(folder).sweep_err.exists() and not (folder / "done").exists()


@pytest.mark.slow
def test_ray_sweep_on_a_local_ray(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = sweep_cli.main(tiny_sweep(tmp_path, "--n_hparams", "1", "--test_envs", "1",
                                            "--command_launcher", "ray"))
        assert ray.is_initialized()  # a Ray the caller started is left running for the caller
    finally:
        ray.shutdown()
    assert [r.returncode for r in results] == [0]
    check_collectable(tmp_path, 1, test_env=1)


@pytest.mark.slow
def test_slurm_sweep_through_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit")
    results = sweep_cli.main(tiny_sweep(tmp_path / "sweep", "--n_hparams", "1", "--test_envs", "2",
                                        "--command_launcher", "slurm", "--slurm_executor", "local",
                                        "--slurm_time", "10", "--slurm_log_dir", str(tmp_path / "logs")))
    assert [r.returncode for r in results] == [0]
    assert list((tmp_path / "logs").glob("*_result.pkl"))  # it did go through submitit
    check_collectable(tmp_path / "sweep", 1, test_env=2)


# ----------------------------------------------------------------------------------------------
# launcher mechanics, with stand-in commands instead of training

def stand_in_job(folder, code):
    return JobSpec((sys.executable, "-c", code), str(folder), os.getcwd())


def test_pool_runs_jobs_side_by_side_each_on_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = ("import os, time; start = time.time(); time.sleep(1.0); "
            "print(os.environ['CUDA_VISIBLE_DEVICES'], start, time.time())")
    jobs = [stand_in_job(tmp_path / f"job{i}", code) for i in range(2)]
    results = pool_launcher(jobs, LauncherOptions())  # default: one job per visible GPU
    assert [r.returncode for r in results] == [0, 0]
    runs = [RunFolder(tmp_path / f"job{i}").sweep_out.read_text().split() for i in range(2)]
    assert sorted(gpu for gpu, _, _ in runs) == ["3", "5"]
    (_, start_a, end_a), (_, start_b, end_b) = [(g, float(s), float(e)) for g, s, e in runs]
    assert start_a < end_b and start_b < end_a  # they overlapped


def test_a_job_folder_is_trained_by_one_process_at_a_time(tmp_path):
    job = stand_in_job(tmp_path / "job", "import time; time.sleep(1.5)")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(run_job, job)
        while not RunFolder(tmp_path / "job").sweep_out.exists():
            time.sleep(0.01)
        assert run_job(job).note == ALREADY_RUNNING and is_running(job.output_dir)
        assert first.result().returncode == 0
    assert not is_running(job.output_dir)
    (tmp_path / "job" / "done").touch()
    assert run_job(job).returncode is None  # done: not run again


# ----------------------------------------------------------------------------------------------
# pre-flight, mixed sweeps, aliases, the status table

@pytest.mark.parametrize("flags, message", [
    (["--datasets", "PACS", "--data_dir", "{tmp}/nodata"],
     r"PACS not found: .*python -m domainbed.scripts.download --data_dir .*nodata --datasets PACS \(4 of 4 jobs\)"),
    (["--hparams", '{"lrr": 0.1}'], r"ERM on RotatedDigits: unknown hparam\(s\) lrr"),
    (["--hparams", '{"lr": "fast"}'], r"lr must be a number, got 'fast'"),
    (["--hparams", '{"batch_size": 0}'], r"batch_size must be >= 1"),
    (["--algorithms", "SWAD", "--steps", "10", "--checkpoint_freq", "9"], r"SWAD's valley search needs n_converge=3"),
])
def test_preflight_stops_a_sweep_its_jobs_would_all_fail_and_launches_nothing(tmp_path, flags, message):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    argv = ["launch", "--datasets", "RotatedDigits", "--algorithms", "ERM", "--n_trials", "1", "--n_hparams", "2",
            "--single_test_envs", "--test_envs", "0", "1", "--steps", "3", "--skip_confirmation",
            "--output_dir", str(tmp_path / "sweep")]
    for i in range(0, len(flags), 2):  # a flag given here replaces the base one
        if flags[i] in argv:
            argv[argv.index(flags[i]) + 1] = flags[i + 1]
        else:
            argv += flags[i:i + 2]
    with pytest.raises(ValueError, match=message + r".*nothing was launched"):
        sweep_cli.main(argv)
    assert not (tmp_path / "sweep").exists() or not any((tmp_path / "sweep").iterdir())


def test_a_data_dir_that_is_a_file_is_named_as_one(tmp_path):
    not_a_folder = tmp_path / "data.tar"
    not_a_folder.write_text("an archive, say")
    with pytest.raises(ValueError, match=rf"--data_dir {not_a_folder} is a file; give the folder"):
        sweep_cli.main(["launch", "--datasets", "PACS", "--algorithms", "ERM", "--data_dir", str(not_a_folder),
                        "--output_dir", str(tmp_path / "sweep"), "--skip_confirmation"])
    assert not (tmp_path / "sweep").exists()


def test_preflight_leaves_out_only_the_jobs_a_method_refuses(tmp_path, capsys):
    from domainbed.sweep.preflight import preflight

    # ColoredDigits has 3 environments: its leave-two-out runs train CORAL on one domain
    args = make_train_args(["ColoredDigits"], ["CORAL", "ERM"], "d", n_trials=1, n_hparams=1)
    checked = preflight(args)
    assert {(a["algorithm"], len(a["test_envs"])) for a in checked.runnable} == {("CORAL", 1), ("ERM", 1), ("ERM", 2)}
    assert checked.notes() == ["left out 3 job(s): CORAL on ColoredDigits: CORAL needs at least 2 training domains, "
                               "got 1; hold out fewer environments (--test_envs)"]


def test_moe_hparams_of_a_mixed_sweep_reach_only_the_moe_backbones():
    mixed = make_train_args(["RotatedDigits"], ["ERM", "SFMOE"], "d", n_trials=1, n_hparams=1,
                            single_test_envs=True, test_envs=[0], hparams='{"num_experts": 4, "lr": 0.01}')
    by_algorithm = {a["algorithm"]: a for a in mixed}
    assert json.loads(by_algorithm["SFMOE"]["hparams"]) == {"num_experts": 4, "lr": 0.01}
    assert json.loads(by_algorithm["ERM"]["hparams"]) == {"lr": 0.01}
    # the ERM job is the very job of a sweep without the MoE setting (same folder)
    plain = make_train_args(["RotatedDigits"], ["ERM"], "d", n_trials=1, n_hparams=1,
                            single_test_envs=True, test_envs=[0], hparams='{"lr": 0.01}')
    assert job_folder_name(by_algorithm["ERM"]) == job_folder_name(plain[0])


def test_an_alias_is_the_same_jobs_and_the_same_row(tmp_path):
    kwargs = dict(n_trials=1, n_hparams=1, single_test_envs=True, test_envs=[0])
    aliased = make_train_args(["RotatedDigits"], ["GMOE"], "d", **kwargs)
    canonical = make_train_args(["RotatedDigits"], ["SFMOE"], "d", **kwargs)
    assert aliased == canonical and aliased[0]["algorithm"] == "SFMOE"
    assert len(make_train_args(["RotatedDigits"], ["GMOE", "SFMOE"], "d", **kwargs)) == 1
    # records an older version wrote under the alias join their canonical row
    from domainbed.results.records import load_records
    for name, folder in (("GMOE", "a"), ("SFMOE", "b")):
        (tmp_path / folder).mkdir()
        record = {"args": {"dataset": "RotatedDigits", "algorithm": name, "test_envs": [0], "trial_seed": 0,
                           "hparams_seed": 0}, "step": 0}
        (tmp_path / folder / "results.jsonl").write_text(json.dumps(record) + "\n")
    assert {r["args"]["algorithm"] for r in load_records(tmp_path).records} == {"SFMOE"}


def test_status_table_columns_line_up():
    jobs = make_jobs(make_train_args(["RotatedDigits", "PACS"], ["ERM", "CausIRL_CORAL"], "d", n_trials=1,
                                     n_hparams=1, single_test_envs=True), "/nonexistent")
    header, *rows = status_report(jobs).splitlines()[1:]
    for column in ("algorithm", "done", "incomplete", "not launched"):
        start = header.index(column)
        end = start + len(column)
        for row in rows:  # names start under their header, counts end under theirs
            if column == "algorithm":
                assert row[start - 1] == " " and row[start] != " ", (header, row)
            else:
                assert row[end - 1].isdigit() and (end == len(row) or row[end] == " "), (header, row)
