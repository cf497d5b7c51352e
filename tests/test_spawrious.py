"""Spawrious: names, DomainBed's environment assembly (O2O / M2M per difficulty) on a fake tree,
errors, a tiny training run, and the download recipe."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import pytest
import torch
from PIL import Image

from domainbed import datasets
from domainbed.data import catalog, download, spawrious

NAMES = ["SpawriousO2O_easy", "SpawriousO2O_medium", "SpawriousO2O_hard",
         "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard"]
PARTS = ("0", "1")
BACKGROUNDS = ("beach", "desert", "dirt", "jungle", "mountain", "snow")
CLASSES = ["bulldog", "corgi", "dachshund", "labrador"]  # DomainBed's class_list: the labels
PER_FOLDER = 10  # images per fake folder; the tests shrink IMAGES_PER_FOLDER (3168) to this
SMALL = {"image_size": 32}

# DomainBed's constructor arguments, copied as they appear in its datasets.py: per breed in the
# order bulldog, dachshund, labrador, corgi (O2O: group, test, filler; M2M: group, test).
DOMAINBED_ARGS = {
    "SpawriousO2O_easy": (["desert", "jungle", "dirt", "snow"], ["dirt", "snow", "desert", "jungle"], "beach"),
    "SpawriousO2O_medium": (["mountain", "beach", "dirt", "jungle"], ["jungle", "dirt", "beach", "snow"], "desert"),
    "SpawriousO2O_hard": (["jungle", "mountain", "snow", "desert"], ["mountain", "snow", "desert", "jungle"], "beach"),
    "SpawriousM2M_easy": (["desert", "mountain", "dirt", "jungle"], ["dirt", "jungle", "mountain", "desert"]),
    "SpawriousM2M_medium": (["beach", "snow", "mountain", "desert"], ["desert", "mountain", "beach", "snow"]),
    "SpawriousM2M_hard": (["dirt", "jungle", "snow", "beach"], ["snow", "beach", "dirt", "jungle"]),
}


def domainbed_combinations(name: str, total: int = 3168):
    """DomainBed's build_type1/2_combination and _create_data_list, unrolled into
    [(part, background, class, limit)] per environment (Test, SC_group_1, SC_group_2)."""
    b, d, la, c = "bulldog", "dachshund", "labrador", "corgi"
    if "O2O" in name:
        group, test, filler = DOMAINBED_ARGS[name]
        counts = [int(0.97 * total), int(0.87 * total)]
        train = {(b,): [(group[0], counts[0]), (group[0], counts[1])],
                 (d,): [(group[1], counts[0]), (group[1], counts[1])],
                 (la,): [(group[2], counts[0]), (group[2], counts[1])],
                 (c,): [(group[3], counts[0]), (group[3], counts[1])],
                 (b, d, la, c): [(filler, total - counts[0]), (filler, total - counts[1])]}
        tests = {(b,): [test[0], test[0]], (d,): [test[1], test[1]], (la,): [test[2], test[2]],
                 (c,): [test[3], test[3]]}
        part_of = lambda index: str(index)  # noqa: E731  (type1: the combination index is the part)
    else:
        group, test = DOMAINBED_ARGS[name]
        train = {(b,): [(group[0], total), (group[1], total)], (d,): [(group[1], total), (group[0], total)],
                 (la,): [(group[2], total), (group[3], total)], (c,): [(group[3], total), (group[2], total)]}
        tests = {(b,): [test[0], test[1]], (d,): [test[1], test[0]], (la,): [test[2], test[3]],
                 (c,): [test[3], test[2]]}
        part_of = lambda index: "0"  # noqa: E731

    def unroll(combinations):
        groups = []
        for index in range(2):
            sources = []
            for classes, entries in combinations.items():
                location, limit = entries[index] if isinstance(entries[index], tuple) else (entries[index], None)
                sources += [(part_of(index), location, cls, limit) for cls in classes]
            groups.append(sources)
        return groups

    test_groups = unroll(tests)
    return [test_groups[0] + test_groups[1], *unroll(train)]


def write_png(path, seed: int = 0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), ((seed * 37) % 256, 80, 160)).save(path, format="PNG")


def make_tree(dataset_dir, parts=PARTS, per_folder=PER_FOLDER) -> None:
    """DomainBed's layout: <part>/<background>/<class>/<background>_<class>_<k>.png, plus a stray file."""
    for part in parts:
        for background in BACKGROUNDS:
            for cls in CLASSES:
                for k in range(per_folder):
                    write_png(os.path.join(dataset_dir, part, background, cls, f"{background}_{cls}_{k}.png"), k)
                with open(os.path.join(dataset_dir, part, background, cls, "notes.txt"), "w") as f:
                    f.write("not an image")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("spawrious_data")
    make_tree(root / "spawrious224")
    return root


@pytest.fixture
def small_folders(monkeypatch):
    monkeypatch.setattr(spawrious, "IMAGES_PER_FOLDER", PER_FOLDER)


def origin(path: str) -> tuple[str, str, str, str]:
    """(part, background, class, file) of a sample path."""
    return tuple(path.split(os.sep)[-4:])


# ----------------------------------------------------------------------------- names
def test_catalog_and_registry_use_domainbed_names_and_defaults():
    assert datasets.DATASETS[datasets.DATASETS.index("WILDSFMoW") + 1:][:6] == NAMES
    for name in NAMES:
        cls = datasets.get_dataset_class(name)
        assert cls.__name__ == name and issubclass(cls, spawrious.SpawriousBenchmark)
        assert cls.ENVIRONMENTS == ["Test", "SC_group_1", "SC_group_2"]
        assert datasets.num_environments(name) == 3
        assert (cls.N_STEPS, cls.CHECKPOINT_FREQ) == (5001, 100)  # DomainBed's defaults, not overridden
        assert catalog.CATALOG[name].folder == "spawrious224"
    assert list(catalog.SPAWRIOUS_CLASSES) == CLASSES
    assert catalog.SPAWRIOUS_BACKGROUNDS == BACKGROUNDS and catalog.SPAWRIOUS_PARTS == PARTS


# ----------------------------------------------------------------------------- assembly rules
@pytest.mark.parametrize("name", NAMES)
def test_sources_are_domainbed_combinations(name):
    ours = [[tuple(source) for source in env] for env in spawrious.environment_sources(name)]
    assert ours == domainbed_combinations(name)


@pytest.mark.parametrize("name", NAMES)
def test_full_size_environments_and_correlation_strengths(name):
    """With 3,168 images per folder (the real dataset): 12,672 training images per group and 25,344
    test images; O2O puts 97% / 87% of each breed on its own background, the rest on the filler."""
    envs = spawrious.environment_sources(name)
    size = lambda env: sum(3168 if s.limit is None else min(s.limit, 3168) for s in env)  # noqa: E731
    assert [size(env) for env in envs] == [25344, 12672, 12672]
    if "O2O" in name:
        assert [sorted({s.limit for s in env}) for env in envs[1:]] == [[96, 3072], [412, 2756]]
        assert {s.part for s in envs[1]} == {"0"} and {s.part for s in envs[2]} == {"1"}
        assert {s.part for s in envs[0]} == {"0", "1"}
    else:
        assert {s.part for env in envs for s in env} == {"0"}
        assert {s.limit for s in envs[1] + envs[2]} == {3168} and {s.limit for s in envs[0]} == {None}


@pytest.mark.parametrize("name", NAMES)
def test_test_backgrounds_never_seen_with_that_class_in_training(name):
    envs = spawrious.environment_sources(name)
    for cls in CLASSES:
        train = {s.background for env in envs[1:] for s in env if s.class_name == cls}
        test = {s.background for s in envs[0] if s.class_name == cls}
        assert test and not train & test, (cls, train, test)
        if "O2O" in name:  # one background of its own plus the shared filler; one test background
            assert len(train) == 2 and len(test) == 1
        else:  # two training backgrounds, swapped between the groups; two test backgrounds
            per_group = [{s.background for s in env if s.class_name == cls} for env in envs[1:]]
            assert len(train) == 2 and per_group[0] != per_group[1] and len(test) == 2


def test_m2m_pairs_share_their_backgrounds():
    group_1, group_2 = spawrious.environment_sources("SpawriousM2M_hard")[1:]
    background = lambda env: {s.class_name: s.background for s in env}  # noqa: E731
    assert background(group_1) == {"bulldog": "dirt", "dachshund": "jungle", "labrador": "snow", "corgi": "beach"}
    assert background(group_2) == {"bulldog": "jungle", "dachshund": "dirt", "labrador": "beach", "corgi": "snow"}


# ----------------------------------------------------------------------------- the fake tree
@pytest.mark.parametrize("name", NAMES)
def test_environments_on_fake_tree(data_dir, small_folders, name):
    ds = datasets.get_dataset_class(name)(str(data_dir), [0], SMALL)
    o2o = "O2O" in name
    # O2O with 10 per folder: int(9.7) = 9 + 1 filler, int(8.7) = 8 + 2 filler per breed
    assert [len(env) for env in ds.datasets] == [80, 40, 40]
    assert ds.num_classes == 4 and ds.classes == CLASSES and ds.input_shape == (3, 32, 32)
    assert ds.environment_names == ["Test", "SC_group_1", "SC_group_2"]
    expected = domainbed_combinations(name, total=PER_FOLDER)
    for env, sources in zip(ds.datasets, expected):
        assert env.targets == [y for _, y in env.samples]
        per_folder = {}
        for path, label in env.samples:
            part, background, cls, file = origin(path)
            assert label == CLASSES.index(cls) and file.endswith(".png")
            per_folder.setdefault((part, background, cls), []).append(file)
        wanted = {(p, b, c): PER_FOLDER if limit is None else limit for p, b, c, limit in sources}
        assert {key: len(files) for key, files in per_folder.items()} == wanted
        for (part, background, cls), files in per_folder.items():  # the first files in sorted order
            assert files == [f"{background}_{cls}_{k}.png" for k in range(len(files))]
        assert [origin(p)[:3] for p, _ in env.samples] == [
            (p, b, c) for p, b, c, limit in sources for _ in range(PER_FOLDER if limit is None else limit)]
    if o2o:
        group_1 = [origin(p) for p, _ in ds[1].samples]
        filler = {"SpawriousO2O_medium": "desert"}.get(name, "beach")
        assert sum(b == filler for _, b, c, _ in group_1 if c == "bulldog") == 1
        assert sum(b == filler for _, b, c, _ in [origin(p) for p, _ in ds[2].samples] if c == "bulldog") == 2
    x, y = ds[1][0]
    assert isinstance(x, Image.Image) and x.mode == "RGB" and type(y) is int
    assert ds.eval_transform(x).shape == (3, 32, 32)


def test_full_size_limits_keep_small_folders_whole(data_dir):
    """With the real limit (3,168 per folder) a fake folder of 10 is used whole: 8 x 10 everywhere."""
    ds = datasets.SpawriousO2O_easy(str(data_dir), [0], SMALL)
    assert [len(env) for env in ds.datasets] == [80, 80, 80]


def test_labels_and_backgrounds_of_o2o_easy(data_dir, small_folders):
    ds = datasets.SpawriousO2O_easy(str(data_dir), [0], SMALL)
    test = {(origin(p)[0], origin(p)[1], y) for p, y in ds[0].samples}
    assert test == {(part, background, CLASSES.index(cls)) for part in PARTS for background, cls in
                    [("dirt", "bulldog"), ("snow", "dachshund"), ("desert", "labrador"), ("jungle", "corgi")]}
    group_2 = {(origin(p)[0], origin(p)[1], origin(p)[2]) for p, _ in ds[2].samples}
    assert group_2 == {("1", "desert", "bulldog"), ("1", "jungle", "dachshund"), ("1", "dirt", "labrador"),
                       ("1", "snow", "corgi")} | {("1", "beach", cls) for cls in CLASSES}


@pytest.mark.parametrize("suffix", ["spawrious224", "spawrious224/", "my_copy"])
def test_root_may_be_the_dataset_folder(tmp_path, small_folders, suffix):
    make_tree(tmp_path / suffix.rstrip("/"), parts=("0",), per_folder=2)
    ds = datasets.SpawriousM2M_medium(f"{tmp_path}/{suffix}", [0], SMALL)
    assert [len(env) for env in ds.datasets] == [16, 8, 8]  # M2M needs part 0 only


def test_augmentation_is_domainbeds_spawrious_one_on_training_envs_only(data_dir):
    ds = datasets.SpawriousM2M_easy(str(data_dir), [0], SMALL)
    steps = [type(t).__name__ for t in ds.train_transform(1).transforms]
    assert steps[:4] == ["Resize", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale"]
    assert "RandomResizedCrop" not in steps
    x, _ = ds[1][0]
    assert ds.train_transform(0) is ds.eval_transform  # the test env is never augmented
    torch.manual_seed(0)
    assert ds.train_transform(2)(x).shape == (3, 32, 32)
    no_aug = datasets.SpawriousM2M_easy(str(data_dir), [0], {**SMALL, "data_augmentation": False})
    assert no_aug.train_transform(1) is no_aug.eval_transform


def test_environments_pickle_for_workers(data_dir, small_folders):
    ds = datasets.SpawriousO2O_hard(str(data_dir), [0], SMALL)
    clone = pickle.loads(pickle.dumps(ds))
    assert [env.samples for env in clone.datasets] == [env.samples for env in ds.datasets]
    x = ds[2][5][0]
    assert torch.equal(clone.eval_transform(x), ds.eval_transform(x))


# ----------------------------------------------------------------------------- errors
def test_missing_dataset_names_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datasets.SpawriousO2O_easy(str(tmp_path), [0], SMALL)
    message = str(info.value)
    assert "\n" not in message and "spawrious224" in message
    assert f"python -m domainbed.scripts.download --data_dir {tmp_path} --datasets SpawriousO2O_easy" in message


def test_missing_folder_is_named(tmp_path):
    make_tree(tmp_path / "spawrious224", parts=("0",), per_folder=1)  # O2O needs part 1 too
    with pytest.raises(FileNotFoundError) as info:
        datasets.SpawriousO2O_medium(str(tmp_path), [0], SMALL)
    message = str(info.value)
    assert "\n" not in message
    assert "missing folder(s) 1/jungle/bulldog, 1/dirt/dachshund, 1/beach/labrador, 1/snow/corgi and 8 more" in message
    assert f"--data_dir {tmp_path} --datasets SpawriousO2O_medium" in message
    # given the dataset folder itself, the command names its parent
    with pytest.raises(FileNotFoundError, match=rf"--data_dir {tmp_path} --datasets SpawriousO2O_medium"):
        datasets.SpawriousO2O_medium(str(tmp_path / "spawrious224"), [0], SMALL)
    assert len(datasets.SpawriousM2M_hard(str(tmp_path), [0], SMALL)[0]) == 8  # part 0 is enough for M2M


def test_empty_folder_is_named(tmp_path):
    make_tree(tmp_path / "spawrious224", parts=("0",), per_folder=1)
    empty = tmp_path / "spawrious224" / "0" / "snow" / "labrador"
    for file in empty.iterdir():
        file.unlink()
    with pytest.raises(ValueError, match=r"folder .*0/snow/labrador contains no images.*--datasets SpawriousM2M_hard"):
        datasets.SpawriousM2M_hard(str(tmp_path), [0], SMALL)


def test_corrupt_image_error_names_the_file(tmp_path):
    make_tree(tmp_path / "spawrious224", parts=("0",), per_folder=1)
    bad = tmp_path / "spawrious224" / "0" / "desert" / "bulldog" / "desert_bulldog_0.png"
    bad.write_bytes(b"not a png")
    ds = datasets.SpawriousM2M_easy(str(tmp_path), [0], SMALL)  # construction stays lazy
    index = [path for path, _ in ds[1].samples].index(str(bad))
    with pytest.raises(ValueError, match=r"cannot read image .*desert_bulldog_0\.png"):
        ds[1][index]


# ----------------------------------------------------------------------------- training
def test_tiny_training_run(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    hparams = {"backbone": "vit_micro_patch4_32", "pretrained": False, "image_size": 32, "batch_size": 4}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.train", "--data_dir", str(data_dir),
         "--dataset", "SpawriousO2O_hard", "--algorithm", "ERM", "--test_envs", "0",
         "--hparams", json.dumps(hparams), "--steps", "2", "--num_workers", "0", "--device", "cpu",
         "--output_dir", str(run_dir)],
        check=False, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == 1
    assert {f"env{i}_{s}_acc" for i in range(3) for s in ("in", "out")} <= set(records[-1])
    assert records[-1]["args"]["dataset"] == "SpawriousO2O_hard" and records[-1]["args"]["test_envs"] == [0]
    assert (run_dir / "done").exists()


# ----------------------------------------------------------------------------- download
def test_download_recipe_lists_domainbeds_archive():
    recipe = download.get_recipe("SpawriousM2M_hard")
    assert {download.get_recipe(name).name for name in NAMES} == {"Spawrious"}  # one archive for all six
    assert recipe.name == "Spawrious" and recipe.folder == "spawrious224"
    assert [f.filename for f in recipe.files] == ["spawrious.tar.gz"]
    assert recipe.files[0].origins == ("https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1",)
    assert set(recipe.required) == {f"{p}/{b}" for p in PARTS for b in BACKGROUNDS}
    lines = download.describe_files()
    assert "Spawrious/spawrious.tar.gz  https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1" in lines
    assert "Spawrious/spawrious.tar.gz  https://mirror.example/Spawrious/spawrious.tar.gz" in \
        download.describe_files(mirror="https://mirror.example")


def test_download_from_mirror_lays_out_what_the_loader_reads(tmp_path, small_folders):
    """A tiny spawrious224.tar.gz (DomainBed's layout) through the real download path, then loaded."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for part in PARTS:
            for background in BACKGROUNDS:
                for cls in CLASSES:
                    image = io.BytesIO()
                    Image.new("RGB", (4, 4)).save(image, format="PNG")
                    info = tarfile.TarInfo(f"spawrious224/{part}/{background}/{cls}/{background}_{cls}_0.png")
                    info.size = len(image.getvalue())
                    tar.addfile(info, io.BytesIO(image.getvalue()))
    mirror = tmp_path / "mirror"
    (mirror / "Spawrious").mkdir(parents=True)
    (mirror / "Spawrious" / "spawrious.tar.gz").write_bytes(buffer.getvalue())
    data = tmp_path / "data"

    download.download_datasets(["SpawriousO2O_easy", "SpawriousM2M_hard"], data,
                               mirror=mirror.as_uri(), progress=False)

    assert sorted(p.name for p in data.iterdir()) == ["spawrious224"]
    assert (data / "spawrious224" / ".complete").is_file()
    ds = datasets.SpawriousO2O_easy(str(data), [0], SMALL)
    assert [len(env) for env in ds.datasets] == [8, 8, 8]
