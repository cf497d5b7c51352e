"""The demo (make demo) on a few steps: both algorithms, the table, the figures, reuse on rerun."""

from domainbed.scripts import demo

BACKBONES = {"ERM": "vit_micro_patch4_32", "SFMOE": "gmoe_micro_patch4_32"}


def test_demo_trains_both_prints_the_table_and_draws_maps(tmp_path, capsys, read_records):
    argv = ["--output_dir", str(tmp_path), "--steps", "3", "--checkpoint_freq", "2", "--batch_size", "8"]
    rows = demo.main(argv)
    out = capsys.readouterr().out
    lines = out.splitlines()
    environment = read_records(tmp_path / "SFMOE")[-1]["environment"]
    # the table says what decided its numbers (they repeat only on such a machine with such settings)
    assert (f"RotatedDigits, held-out domain 75, 3 steps, last checkpoint, one seed, {environment['cpu']} "
            f"({environment['cpu_capability']}), {environment['threads']} threads, torch {environment['torch']}:") in lines
    assert any("another CPU type or" in line for line in lines)
    assert "HParams" not in out  # the runs' own logs go to out.txt
    assert (tmp_path / "ERM" / "out.txt").read_text().count("HParams") == 1

    # the table summarises each run's last record: held-out = the test environment's (5: 75
    # degrees) "in" split; in-domain = mean of the five training environments' "out" splits
    expected_rows = []
    for algorithm, backbone in BACKBONES.items():
        last = read_records(tmp_path / algorithm)[-1]
        assert last["step"] == 2 and last["args"]["test_envs"] == [5] and last["hparams"]["backbone"] == backbone
        held_out = last["env5_in_acc"]
        in_domain = sum(last[f"env{i}_out_acc"] for i in range(5)) / 5
        expected_rows.append((algorithm, backbone, held_out, in_domain, last["step_time"]))
        (line,) = [line for line in lines if line.startswith(algorithm + " ")]
        assert line.split() == [algorithm, backbone, f"{100 * held_out:.1f}%", f"{100 * in_domain:.1f}%",
                                f"{last['step_time']:.3f}"]
    assert rows == expected_rows

    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert len(figures) == 6 and sum(name.endswith("_experts.png") for name in figures) == 3
    assert all(f"  {tmp_path / 'figures' / name}" in lines for name in figures)

    again = demo.main(argv)  # finished runs are reused, not retrained
    assert again == rows
    assert "Reusing the finished ERM run" in capsys.readouterr().out


def test_summary_is_held_out_in_split_and_mean_of_training_out_splits():
    record = {f"env{i}_{s}_acc": 0.0 for i in range(3) for s in ("in", "out")}
    record.update(env2_in_acc=0.5, env0_out_acc=0.6, env1_out_acc=0.8)
    assert demo.summarize(record, test_env=2, n_envs=3) == (0.5, 0.7)
