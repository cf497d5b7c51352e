"""A dataset of one's own images without code: ``--dataset Widgets`` reads ``<data_dir>/Widgets/<domain>/
<class>/<image>`` when Widgets is not a built-in name, and every command treats it as any dataset.

The tree (domains written in an unsorted order; classes differ per domain, so a label must index
the union of the classes, not one domain's own list):
  rainy: cog gear    sunny: cog gear nut    foggy: gear nut    (3 images of 16x16 per class)
  -> environments foggy, rainy, sunny (sorted); classes cog, gear, nut; sizes 6, 6, 9
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from domainbed import datasets
from domainbed.data.catalog import check_test_envs, dataset_info, describe_folder_dataset, num_environments
from domainbed.data.image_folders import FolderDataset, ImageFolderDataset
from domainbed.run.trainer import RunError
from domainbed.scripts import train
from domainbed.scripts._cli import run_main

ROOT = Path(__file__).resolve().parent.parent
TREE = {"rainy": ("cog", "gear"), "sunny": ("cog", "gear", "nut"), "foggy": ("gear", "nut")}  # unsorted both ways
DOMAINS = ["foggy", "rainy", "sunny"]
CLASSES = ["cog", "gear", "nut"]
SIZES = [6, 6, 9]
SMALL = '{"backbone": "vit_micro_patch4_32", "pretrained": false, "image_size": 32, "batch_size": 4}'


def make_tree(data_dir: Path, tree=TREE, name="Widgets") -> Path:
    """``data_dir/name/<domain>/<class>/<k>.png``: 3 solid 16x16 PNGs per class (colour = class, shade = domain)."""
    for d, (domain, classes) in enumerate(tree.items()):
        for c, class_name in enumerate(classes):
            folder = data_dir / name / domain / class_name
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (16, 16), (100 * c, 40 * d + 10 * k, 200 - 100 * c)).save(folder / f"{k}.png")
    return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A 3-step run on Widgets (test env 0): its output folder."""
    out = tmp_path_factory.mktemp("runs") / "widgets"
    train.main(["--data_dir", str(data_dir), "--dataset", "Widgets", "--steps", "3", "--test_envs", "0",
                "--hparams", SMALL, "--num_workers", "0", "--output_dir", str(out)])
    return out


def run_cli(main, argv, capsys):
    """(exit code, last stderr line) of a command that must fail."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv), (RunError, ValueError, FileNotFoundError))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err[-1] if err else ""


def write_record(folder: Path, data_dir: str, test_env: int, n_envs: int = 3, acc: float = 0.5) -> None:
    """One finished run of ERM on Widgets holding out ``test_env``, every accuracy ``acc``."""
    record = {"args": {"dataset": "Widgets", "algorithm": "ERM", "test_envs": [test_env], "trial_seed": 0,
                       "hparams_seed": 0, "data_dir": data_dir, "output_dir": str(folder)},
              "hparams": {"backbone": "resnet50"}, "step": 0}
    record.update({f"env{i}_{split}_acc": acc for i in range(n_envs) for split in ("in", "out")})
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n")
    (folder / "done").write_text("done\n")


# ----------------------------------------------------------------------------- the dataset
def test_a_folder_is_a_dataset_of_sorted_domains_and_the_union_of_classes(data_dir):
    cls = datasets.get_dataset_class("Widgets", str(data_dir))
    assert cls.__name__ == "Widgets" and issubclass(cls, FolderDataset) and issubclass(cls, ImageFolderDataset)
    assert cls.ENVIRONMENTS == DOMAINS and cls.ENV_FOLDERS == DOMAINS
    assert (cls.N_STEPS, cls.CHECKPOINT_FREQ) == (5001, 300)  # DomainBed's image-folder datasets'
    ds = cls(str(data_dir), [0], {"image_size": 32})
    assert ds.environment_names == DOMAINS and ds.classes == CLASSES and ds.num_classes == 3
    assert [len(env) for env in ds] == SIZES
    assert ds.input_shape == (3, 32, 32)
    foggy_labels = sorted({label for _, label in ds[0].samples})
    assert foggy_labels == [1, 2]  # gear, nut in the union, not 0, 1 of foggy's own classes
    x, y = ds[0][len(ds[0]) - 1]
    assert isinstance(x, Image.Image) and x.size == (16, 16) and y == 2
    assert ds.eval_transform(x).shape == (3, 32, 32)
    assert ds.train_transform(1) is not ds.eval_transform and ds.train_transform(0) is ds.eval_transform


def test_the_catalog_describes_it_and_default_hparams_are_the_image_datasets(data_dir):
    from domainbed.hparams_registry import default_hparams, random_hparams

    info = dataset_info("Widgets", str(data_dir))
    assert (info.environments, info.folder, info.environment_folders) == (tuple(DOMAINS), "Widgets", tuple(DOMAINS))
    assert (info.n_steps, info.checkpoint_freq, info.image_size) == (5001, 300, 224)
    assert describe_folder_dataset(str(data_dir), "Widgets") == info
    assert num_environments("Widgets", str(data_dir)) == 3
    assert check_test_envs("Widgets", ["2"], str(data_dir)) == [2]
    with pytest.raises(ValueError, match=r"test env 3 is out of range for Widgets, which has 3 environments "
                                         r"\(0=foggy, 1=rainy, 2=sunny\)"):
        check_test_envs("Widgets", [3], str(data_dir))
    defaults = default_hparams("ERM", "Widgets")
    assert defaults == default_hparams("ERM", "PACS")
    assert (defaults["image_size"], defaults["backbone"], defaults["pretrained"]) == (224, "resnet50", True)
    assert random_hparams("ERM", "Widgets", 5) == random_hparams("ERM", "PACS", 5)


def test_the_data_dir_may_be_the_dataset_folder_itself_and_built_in_names_stay_built_in(data_dir, tmp_path):
    cls = datasets.get_dataset_class("Widgets", str(data_dir / "Widgets"))
    assert [len(env) for env in cls(str(data_dir / "Widgets"), [], {"image_size": 32})] == SIZES
    make_tree(tmp_path, name="PACS")  # a folder named like a built-in dataset does not replace it
    assert datasets.get_dataset_class("PACS", str(tmp_path)) is datasets.PACS
    assert datasets.get_dataset_class("PACS") is datasets.PACS
    assert "Widgets" not in datasets.DATASETS
    with pytest.raises(ValueError, match=r"unknown dataset 'Widgets'"):  # nothing remembered: pass the data_dir
        datasets.get_dataset_class("Widgets")


def test_a_class_refuses_another_tree_of_the_same_name(data_dir, tmp_path):
    make_tree(tmp_path, {"north": ("a", "b"), "south": ("a", "b")})
    other = datasets.get_dataset_class("Widgets", str(tmp_path))
    assert other.ENVIRONMENTS == ["north", "south"] and [len(env) for env in other(str(tmp_path), [1])] == [6, 6]
    with pytest.raises(ValueError, match=r"test env 2 is out of range for Widgets, which has 2 environments"):
        other(str(tmp_path), [2])
    with pytest.raises(ValueError, match=r"domain folders of Widgets under .* are not the ones its class was made for"):
        datasets.get_dataset_class("Widgets", str(data_dir))(str(tmp_path), [])


def test_it_pickles_for_loader_workers(data_dir):
    import pickle

    ds = datasets.get_dataset_class("Widgets", str(data_dir))(str(data_dir), [0], {"image_size": 32})
    clone = pickle.loads(pickle.dumps(ds))
    assert type(clone) is type(ds) and clone.classes == CLASSES and clone.test_envs == [0]
    assert [env.samples for env in clone] == [env.samples for env in ds]


def test_save_images_names_the_domains(data_dir, tmp_path):
    from domainbed.scripts import save_images

    saved = save_images.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path), "--datasets", "Widgets",
                              "--n_images", "2"])
    names = sorted(p.name.split("_")[1] for p in saved)
    assert names == ["env0foggy", "env0foggy", "env1rainy", "env1rainy", "env2sunny", "env2sunny"]
    assert all(p.is_file() for p in saved)


# ----------------------------------------------------------------------------- train, evaluate, results
def test_train_records_name_the_folder_dataset(trained, data_dir, read_records):
    records = read_records(trained)
    assert [r["step"] for r in records] == [0, 2]  # steps 0 and the last: a checkpoint every 300 steps
    for record in records:
        assert record["args"]["dataset"] == "Widgets" and record["args"]["data_dir"] == str(data_dir)
        assert record["hparams"]["image_size"] == 32
        assert {f"env{i}_{s}_acc" for i in range(3) for s in ("in", "out")} <= set(record)
        assert "env3_out_acc" not in record
    assert (trained / "model.pkl").is_file() and (trained / "done").is_file()


def test_colour_augmentation_on_the_device_trains_on_the_same_draws(trained, data_dir, tmp_path, read_records):
    """``--augment_on device``: the same run, its colour jitter computed on the training device in float
    (the loader path, ``auto`` on a CPU, rounds to 8 bits): the losses move by rounding only."""
    out = tmp_path / "on_device"
    train.main(["--data_dir", str(data_dir), "--dataset", "Widgets", "--steps", "3", "--test_envs", "0",
                "--hparams", SMALL, "--num_workers", "0", "--output_dir", str(out), "--augment_on", "device"])
    on_loader, on_device = read_records(trained), read_records(out)
    assert on_loader[-1]["args"]["augment_on"] == "loader" and on_device[-1]["args"]["augment_on"] == "device"
    for a, b in zip(on_loader, on_device):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02) and b["loss"] != a["loss"]


def test_evaluate_reads_the_trained_folder_dataset(trained, capsys):
    from domainbed.scripts import evaluate

    results = evaluate.main(["--checkpoint", str(trained / "model.pkl"), "--device", "cpu"])
    assert [(r.index, r.name, r.n) for r in results] == [(0, "foggy", 6), (1, "rainy", 6), (2, "sunny", 9)]
    assert all(0 <= r.accuracy <= 1 for r in results)
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"\s*0\s+foggy\s+6\s+[\d.]+%\s+\(test\)$", lines[1]), lines
    assert re.match(r"\s*2\s+sunny\s+9\s+[\d.]+%$", lines[3]), lines


def test_collect_results_columns_are_the_domain_folders_and_it_stays_torch_free(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    for test_env, acc in ((0, 0.5), (1, 0.25), (2, 0.75)):
        write_record(sweep / f"run{test_env}", str(data_dir), test_env, acc=acc)
    probe = ("import runpy, sys\n"
             f"sys.argv = ['collect_results', '--input_dir', {str(sweep)!r}]\n"
             "runpy.run_module('domainbed.scripts.collect_results', run_name='__main__')\n"
             "print('HEAVY', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == "HEAVY []"
    assert "-------- Dataset: Widgets, model selection method: training-domain validation set" in lines
    header = lines[lines.index("-------- Dataset: Widgets, model selection method: training-domain validation set") + 1]
    assert header.split() == ["Algorithm", "foggy", "rainy", "sunny", "Avg"]
    assert lines[lines.index(header) + 1].split() == ["ERM", "50.0", "+/-", "0.0", "25.0", "+/-", "0.0",
                                                      "75.0", "+/-", "0.0", "50.0"]


def test_column_names_fall_back_when_the_folder_is_not_here_or_has_changed(data_dir, tmp_path):
    from domainbed.results.tables import dataset_environments, environment_names

    assert environment_names("Widgets", 3, [str(data_dir)]) == DOMAINS
    assert environment_names("Widgets", 3, [str(tmp_path / "elsewhere"), str(data_dir)]) == DOMAINS
    assert environment_names("Widgets", 3, [str(tmp_path / "elsewhere")]) == ["env0", "env1", "env2"]
    assert environment_names("Widgets", 4, [str(data_dir)]) == ["env0", "env1", "env2", "env3"]  # not these runs'
    records = [{"args": {"dataset": "Widgets", "data_dir": str(data_dir)}, **{f"env{i}_out_acc": 0 for i in range(3)}}]
    assert dataset_environments(records, "Widgets") == DOMAINS


def test_figures_name_the_domains(data_dir, tmp_path):
    from domainbed.model_selection import IIDAccuracySelectionMethod
    from domainbed.results import plots
    from domainbed.results.records import load_records
    from domainbed.scripts import collect_results

    for test_env in range(3):
        write_record(tmp_path / "sweep" / f"run{test_env}", str(data_dir), test_env)
    records = load_records(tmp_path / "sweep").records
    figure = plots.selection_bar_figure(records, IIDAccuracySelectionMethod, "Widgets")
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == DOMAINS
    collect_results.main(["--input_dir", str(tmp_path / "sweep"), "--plots", str(tmp_path / "figures")])
    assert {"bars_Widgets.png", "curves_Widgets.png"} <= {p.name for p in (tmp_path / "figures").iterdir()}


@pytest.mark.slow
def test_a_sweep_trains_on_the_folder_and_its_table_names_the_domains(data_dir, tmp_path, capsys):
    from domainbed.results.records import load_records
    from domainbed.results.tables import format_results
    from domainbed.scripts import sweep as sweep_cli
    from domainbed.sweep import make_train_args

    args = make_train_args(["Widgets"], ["ERM"], str(data_dir), n_trials=1, n_hparams=1)
    assert [a["test_envs"] for a in args] == [[0], [0, 1], [0, 2], [1], [1, 2], [2]]  # 3 domains
    sweep_cli.main(["launch", "--datasets", "Widgets", "--data_dir", str(data_dir), "--algorithms", "ERM",
                    "--n_trials", "1", "--n_hparams", "1", "--single_test_envs", "--test_envs", "0", "1",
                    "--steps", "3", "--hparams", SMALL, "--skip_confirmation", "--output_dir", str(tmp_path)])
    assert "2 of 2 jobs finished" in capsys.readouterr().out
    records = load_records(tmp_path).records
    assert {r["args"]["dataset"] for r in records} == {"Widgets"}
    table = format_results(records).splitlines()
    header = table[table.index("-------- Dataset: Widgets, model selection method: training-domain validation set") + 1]
    assert header.split() == ["Algorithm", "foggy", "rainy", "sunny", "Avg"]
    row = table[table.index(header) + 1].split()
    assert row[0] == "ERM" and row[1] != "X" and row[4] != "X" and row[7] == "X"  # held out: foggy, rainy


# ----------------------------------------------------------------------------- what goes wrong
def test_an_unknown_name_lists_the_datasets_and_the_folder_layout(data_dir, tmp_path, capsys):
    message = (r"unknown dataset 'Nope'; known datasets: Debug28, .*PACS.*, ColoredDigits; or put your own "
               rf"images in {re.escape(str(data_dir))}/Nope/<domain>/<class>/<image> files$")
    with pytest.raises(ValueError, match=message):
        datasets.get_dataset_class("Nope", str(data_dir))
    (data_dir / "Nope").write_text("a file is not a dataset folder")
    try:
        with pytest.raises(ValueError, match=message):
            datasets.get_dataset_class("Nope", str(data_dir))
    finally:
        (data_dir / "Nope").unlink()
    with pytest.raises(ValueError, match=r"unknown dataset 'Widgets/foggy'"):  # a name, not a path
        datasets.get_dataset_class("Widgets/foggy", str(data_dir))
    with pytest.raises(ValueError, match=r"or put your own images in <data_dir>/NoSuch/<domain>/<class>/<image> files"):
        datasets.get_dataset_class("NoSuch")
    code, line = run_cli(train.main, ["--data_dir", str(data_dir), "--dataset", "Nope", "--output_dir",
                                      str(tmp_path / "o")], capsys)
    assert code == 2 and re.search(message, line), line
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=message):
        from domainbed.sweep import make_train_args

        make_train_args(["Nope"], ["ERM"], str(data_dir))


def _one_domain(root):
    shutil.rmtree(root / "Widgets" / "rainy")
    shutil.rmtree(root / "Widgets" / "foggy")


def _images_without_class_folders(root):
    for folder in (root / "Widgets" / "rainy").iterdir():
        shutil.rmtree(folder)
    Image.new("RGB", (16, 16)).save(root / "Widgets" / "rainy" / "loose.png")


def _no_images(root):
    for image in (root / "Widgets" / "rainy").rglob("*.png"):
        image.unlink()
    (root / "Widgets" / "rainy" / "cog" / "notes.txt").write_text("not an image file")


def _one_class(root):
    for domain in TREE:
        for folder in (root / "Widgets" / domain).iterdir():
            if folder.name != "gear":
                shutil.rmtree(folder)


BAD_FOLDERS = {
    "no domain folder": (lambda root: [shutil.rmtree(root / "Widgets" / d) for d in TREE],
                         r"dataset 'Widgets' at .*Widgets needs at least 2 domain folders, found none; lay out your "
                         r"images as .*/Widgets/<domain>/<class>/<image>$"),
    "one domain folder": (_one_domain, r"needs at least 2 domain folders, found only 'sunny'"),
    "a domain without class folders": (_images_without_class_folders,
                                       r"domain folder .*Widgets/rainy of dataset 'Widgets' has no class folders; "
                                       r"put each class's images in a folder of its own: .*/Widgets/<domain>/<class>/"),
    "a domain without images": (_no_images, r"domain folder .*Widgets/rainy of dataset 'Widgets' has no images in its "
                                            r"class folders \(files ending in .*\.png.*\)"),
    "a single class": (_one_class, r"dataset 'Widgets' has 1 class \(gear\) over all its domains; a classifier needs "
                                   r"at least 2 class folders"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_bad_folder_stops_train_and_sweep_with_one_line(case, tmp_path, capsys):
    from domainbed.scripts import sweep as sweep_cli

    mutate, message = BAD_FOLDERS[case]
    root = make_tree(tmp_path / "data")
    mutate(root)
    code, line = run_cli(train.main, ["--data_dir", str(root), "--dataset", "Widgets", "--steps", "1",
                                      "--hparams", SMALL, "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and line.startswith("error: ") and re.search(message, line), line
    assert not (tmp_path / "o").exists()
    code, line = run_cli(sweep_cli.main, ["launch", "--datasets", "Widgets", "--data_dir", str(root), "--algorithms",
                                          "ERM", "--n_trials", "1", "--n_hparams", "1", "--single_test_envs",
                                          "--steps", "3", "--skip_confirmation", "--output_dir", str(tmp_path / "s")],
                         capsys)
    assert code == 2 and re.search(message, line), line
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_a_file_that_is_not_an_image_stops_the_run_naming_it(tmp_path, capsys):
    root = make_tree(tmp_path / "data")
    (root / "Widgets" / "rainy" / "cog" / "1.png").write_bytes(b"not an image at all")
    code, line = run_cli(train.main, ["--data_dir", str(root), "--dataset", "Widgets", "--steps", "3",
                                      "--hparams", SMALL, "--num_workers", "0", "--output_dir", str(tmp_path / "o")],
                         capsys)
    assert code == 2
    assert re.search(r"cannot read image .*Widgets/rainy/cog/1\.png", line), line
    assert "no checkpoint was written yet: rerun to start again once the file is fixed" in line
    assert not (tmp_path / "o" / "done").exists()
