"""Expert specialisation: NMI of expert choice with domain and class, and the command over a sweep."""

import json

import numpy as np
import torch
import pytest
from sklearn.metrics import normalized_mutual_info_score

from domainbed.scripts import routing_analysis, train
from domainbed.visualize.specialisation import RunSpecialisation, normalized_mutual_information, representative_run
from domainbed.visualize.usage import ExpertUsage


def labels_from_counts(counts):
    """The (x, y) observations behind a contingency table, as two label arrays."""
    xs, ys = [], []
    for (x, y), n in np.ndenumerate(counts):
        xs += [x] * int(n)
        ys += [y] * int(n)
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize("counts", [
    [[10, 0, 0], [0, 7, 0], [0, 0, 3]],      # the expert tells the group exactly
    [[5, 5], [5, 5]],                        # independent
    [[8, 2, 1], [1, 6, 3], [0, 2, 9]],       # in between
    [[4, 0], [3, 0]],                        # one expert only: no information
])
def test_nmi_from_counts_equals_scikit_learns_on_the_observations(counts):
    counts = np.array(counts)
    expected = normalized_mutual_info_score(*labels_from_counts(counts))
    assert normalized_mutual_information(counts) == pytest.approx(expected, abs=1e-12)


def test_routing_analysis_reads_the_selected_runs_of_a_sweep(tmp_path, capsys):
    for hparams_seed, lr in ((0, 1e-3), (1, 3e-3)):  # two hparams draws: one is selected per group
        train.main(["--dataset", "RotatedDigits", "--algorithm", "SFMOE", "--test_envs", "5", "--steps", "2",
                    "--hparams_seed", str(hparams_seed), "--checkpoint_freq", "1",
                    "--hparams", f'{{"batch_size": 4, "lr": {lr}}}', "--output_dir", str(tmp_path / f"sweep/run{hparams_seed}")])
    runs = routing_analysis.main(["--input_dir", str(tmp_path / "sweep"), "--dataset", "RotatedDigits",
                                  "--algorithm", "SFMOE", "--output_dir", str(tmp_path / "out"),
                                  "--max_per_env", "8"])
    assert len(runs) == 1 and runs[0].test_env == 5
    usage = runs[0].usage
    assert usage.by_domain["blocks.2.mlp"].sum() == 6 * 8 * 64  # 8 images x 64 patches per domain
    summary = json.loads((tmp_path / "out" / "specialisation.json").read_text())
    layer = summary["layers"]["blocks.2.mlp"]
    assert layer["domain"]["mean"] == pytest.approx(normalized_mutual_information(usage.by_domain["blocks.2.mlp"]))
    assert summary["runs"][0]["run"] in ("run0", "run1")  # the run's folder name, not this machine's path
    assert (tmp_path / "out" / "specialisation.png").read_bytes()[:4] == b"\x89PNG"


def test_the_share_maps_show_the_run_of_median_class_nmi():
    def run(name, by_class):
        usage = ExpertUsage(2, ["a", "b"], ["0", "1"], by_domain={"blocks.2.mlp": np.array([[5, 5], [5, 5]])},
                            by_class={"blocks.2.mlp": np.array(by_class)})
        return RunSpecialisation(name, 0, 0, usage)
    runs = [run("peaked", [[10, 0], [0, 10]]), run("flat", [[5, 5], [5, 5]]), run("middle", [[8, 2], [2, 8]])]
    assert representative_run(runs).run_dir == "middle"


ROWS = {"SFMOE (gmoe_micro_patch4_32)", "ERM (vit_micro_patch4_32)", "ERM (vit_micro_wide_patch4_32)", "Fish"}


@pytest.mark.parametrize("asked, row", [
    ("SFMOE", "SFMOE (gmoe_micro_patch4_32)"),          # the algorithm's one row
    ("ERM (vit_micro_patch4_32)", "ERM (vit_micro_patch4_32)"),  # a row label as the tables print it
    ("Fish", "Fish"),
    ("MIRO", None),                                      # not there: the command lists the rows
])
def test_routing_analysis_takes_an_algorithm_name_or_a_row_label(asked, row):
    assert routing_analysis.table_row(asked, ROWS) == row


def test_an_algorithm_on_several_backbones_needs_its_row_named():
    with pytest.raises(ValueError, match=r"ERM ran on several backbones here; name the row: ERM \(vit_micro_patch4_32\), "
                                         r"ERM \(vit_micro_wide_patch4_32\)"):
        routing_analysis.table_row("ERM", ROWS)


def test_routing_baselines_initial_model_and_kmeans_clusters(tmp_path):
    sweep = tmp_path / "sweep"
    for algorithm, hparams in (("SFMOE", '{"batch_size": 4, "lr": 0.0}'), ("ERM", '{"batch_size": 4}')):
        train.main(["--dataset", "RotatedDigits", "--algorithm", algorithm, "--test_envs", "5", "--steps", "2",
                    "--checkpoint_freq", "1", "--hparams", hparams, "--output_dir", str(sweep / algorithm)])
    # lr 0: the trained weights are the initial ones, so the rebuilt initialisation must equal them
    from domainbed.checkpoints import load_checkpoint

    trained = load_checkpoint(sweep / "SFMOE" / "model.pkl", "cpu")
    seed = json.loads((sweep / "SFMOE" / "results.jsonl").read_text().splitlines()[0])["args"]["seed"]
    rebuilt = routing_analysis.initial_model(trained, seed).state_dict()
    assert all(torch.equal(value, rebuilt[key]) for key, value in trained.state_dict().items())
    init = routing_analysis.main(["--input_dir", str(sweep), "--dataset", "RotatedDigits", "--algorithm", "SFMOE",
                                  "--model", "init", "--output_dir", str(tmp_path / "init"), "--max_per_env", "8"])
    assert init[0].usage.by_domain["blocks.2.mlp"].sum() == 6 * 8 * 64
    clusters = routing_analysis.main(["--input_dir", str(sweep), "--dataset", "RotatedDigits", "--algorithm", "ERM",
                                      "--kmeans", "6", "--output_dir", str(tmp_path / "kmeans"), "--max_per_env", "8"])
    usage = clusters[0].usage
    assert set(usage.by_domain) == {"blocks.2.mlp", "blocks.4.mlp"} and usage.num_experts == 6
    assert usage.by_class["blocks.4.mlp"].sum() == 6 * 8 * 64
    assert (usage.by_domain["blocks.2.mlp"].sum(axis=0) > 0).sum() == 6  # every cluster holds tokens
