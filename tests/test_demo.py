"""The demo (make demo) on a few steps: both algorithms, the table, the figures, reuse on rerun."""

from domainbed.scripts import demo


def test_demo_trains_both_prints_the_table_and_draws_maps(tmp_path, capsys):
    argv = ["--output_dir", str(tmp_path), "--steps", "3", "--checkpoint_freq", "2", "--batch_size", "8"]
    rows = demo.main(argv)
    assert [(r[0], r[1]) for r in rows] == [("ERM", "vit_micro_patch4_32"), ("SFMOE", "gmoe_micro_patch4_32")]
    for _, _, held_out, in_domain, _ in rows:
        assert 0.0 <= held_out <= 1.0 and 0.0 <= in_domain <= 1.0
    out = capsys.readouterr().out
    assert "held-out domain 75" in out and "HParams" not in out  # the runs' own logs go to out.txt
    assert (tmp_path / "ERM" / "out.txt").read_text().count("HParams") == 1
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert len(figures) == 6 and sum(name.endswith("_experts.png") for name in figures) == 3

    again = demo.main(argv)  # finished runs are reused, not retrained
    assert again == rows
    assert "Reusing the finished ERM run" in capsys.readouterr().out


def test_summary_is_held_out_in_split_and_mean_of_training_out_splits():
    record = {f"env{i}_{s}_acc": 0.0 for i in range(3) for s in ("in", "out")}
    record.update(env2_in_acc=0.5, env0_out_acc=0.6, env1_out_acc=0.8)
    assert demo.summarize(record, test_env=2, n_envs=3) == (0.5, 0.7)
