"""Dataset classes: registry, image folders on tiny trees, digits, fake MNIST files, WILDS message."""

from __future__ import annotations

import importlib.util
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed import datasets
from domainbed.data import digits as digits_module
from domainbed.data.digits import environment_shares, rotate_images
from domainbed.data.image_folders import ImageFolderDataset
from domainbed.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGE_DATASETS = ["VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet", "SVIRO"]
CLASSES = ["dog", "elephant"]
SMALL = {"image_size": 32}


# ----------------------------------------------------------------------------- fixtures / helpers
def write_image(path, size=16, colour=None, fmt="JPEG", seed=0):
    """A small RGB image: random noise, or one solid colour (saved as PNG to stay exact)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if colour is None:
        pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        pixels = np.tile(np.array(colour, dtype=np.uint8), (size, size, 1))
    Image.fromarray(pixels).save(path, format=fmt)


def make_image_tree(dataset_dir, env_folders, classes=CLASSES):
    """Environment ``i`` gets ``i + 1`` images per class, so its size identifies it."""
    for env_index, env in enumerate(env_folders):
        for class_name in classes:
            for k in range(env_index + 1):
                write_image(os.path.join(dataset_dir, env, class_name, f"img{k}.jpg"), seed=env_index * 10 + k)


@pytest.fixture
def pacs_root(tmp_path):
    make_image_tree(tmp_path / "PACS", datasets.PACS.ENV_FOLDERS)
    return tmp_path


# ----------------------------------------------------------------------------- registry
def test_unknown_dataset_lists_known_datasets():
    with pytest.raises(ValueError, match=r"unknown dataset 'NoSuch'; known datasets: .*PACS.*RotatedDigits"):
        datasets.get_dataset_class("NoSuch")


def test_registry_has_domainbed_names_and_step_defaults():
    expected_envs = {
        "Debug28": 3, "Debug224": 3, "ColoredMNIST": 3, "RotatedMNIST": 6, "VLCS": 4, "PACS": 4,
        "OfficeHome": 4, "TerraIncognita": 4, "DomainNet": 6, "SVIRO": 10, "WILDSCamelyon": 5,
        "WILDSFMoW": 6, "RotatedDigits": 6, "ColoredDigits": 3,
        **{f"Spawrious{kind}_{level}": 3 for kind in ("O2O", "M2M") for level in ("easy", "medium", "hard")},
    }  # fmt: skip
    assert sorted(datasets.DATASETS) == sorted(expected_envs)
    assert {name: datasets.num_environments(name) for name in datasets.DATASETS} == expected_envs
    freq = {name: datasets.get_dataset_class(name).CHECKPOINT_FREQ for name in datasets.DATASETS}
    assert freq["DomainNet"] == 1000 and freq["RotatedMNIST"] == 100 and freq["Debug28"] == 100
    assert all(freq[n] == 300 for n in ["VLCS", "PACS", "OfficeHome", "TerraIncognita", "SVIRO"])
    assert all(datasets.get_dataset_class(n).N_STEPS == 5001 for n in datasets.DATASETS)
    assert datasets.PACS.ENVIRONMENTS == ["A", "C", "P", "S"]
    assert datasets.TerraIncognita.ENVIRONMENTS == ["L100", "L38", "L43", "L46"]


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_environment_folders_are_sorted(name):
    cls = datasets.get_dataset_class(name)
    assert cls.ENV_FOLDERS == sorted(cls.ENV_FOLDERS)
    assert len(cls.ENV_FOLDERS) == len(cls.ENVIRONMENTS)


def test_test_env_out_of_range_names_valid_indices():
    with pytest.raises(ValueError, match=r"test env 9 is out of range for RotatedDigits.*0=0.*5=75"):
        datasets.RotatedDigits("", [9], {})


# ----------------------------------------------------------------------------- image folders
@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_image_folder_environments_classes_and_items(tmp_path, name):
    cls: type[ImageFolderDataset] = datasets.get_dataset_class(name)
    make_image_tree(tmp_path / cls.FOLDER, cls.ENV_FOLDERS)
    ds = cls(str(tmp_path), [0], SMALL)
    assert len(ds) == len(cls.ENVIRONMENTS)
    assert [len(ds[i]) for i in range(len(ds))] == [2 * (i + 1) for i in range(len(ds))]
    assert ds.environment_names == cls.ENVIRONMENTS
    assert ds.num_classes == 2 and ds.classes == CLASSES
    assert ds.input_shape == (3, 32, 32)
    x, y = ds[len(ds) - 1][len(ds[len(ds) - 1]) - 1]
    assert isinstance(x, Image.Image) and x.mode == "RGB" and x.size == (16, 16)
    assert type(y) is int and y == 1  # last item of the sorted list belongs to the last class
    tensor = ds.eval_transform(x)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32


def test_eval_transform_normalises_with_imagenet_statistics(tmp_path):
    make_image_tree(tmp_path / "PACS", datasets.PACS.ENV_FOLDERS)
    colour = (255, 0, 128)
    write_image(str(tmp_path / "PACS" / "photo" / "dog" / "solid.png"), size=8, colour=colour, fmt="PNG")
    ds = datasets.PACS(str(tmp_path), [], SMALL)
    items = [ds[2].samples[i][0] for i in range(len(ds[2]))]
    x, _ = ds[2][items.index(str(tmp_path / "PACS" / "photo" / "dog" / "solid.png"))]
    out = ds.eval_transform(x)
    for channel in range(3):
        expected = (colour[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out[channel], torch.full((32, 32), expected), atol=1e-4)


def test_train_transform_augments_training_envs_only(pacs_root):
    ds = datasets.PACS(str(pacs_root), [0], SMALL)
    x, _ = ds[1][0]
    reference = ds.eval_transform(x)
    assert torch.equal(ds.eval_transform(x), reference)  # evaluation is deterministic
    torch.manual_seed(0)
    augmented = [ds.train_transform(1)(x) for _ in range(3)]
    assert all(a.shape == (3, 32, 32) for a in augmented)
    assert not any(torch.allclose(a, reference) for a in augmented)
    assert torch.equal(ds.train_transform(0)(x), reference)  # test env: no augmentation
    no_aug = datasets.PACS(str(pacs_root), [0], {**SMALL, "data_augmentation": False})
    assert torch.equal(no_aug.train_transform(1)(x), reference)


def test_photometric_augmentation_on_the_device_follows_the_loaders_draws(pacs_root):
    """``--augment_on device``: the loader crops and flips and draws the colour jitter; the device
    applies it. Same seed, same augmentation up to 8-bit rounding (the loader path jitters PIL images)."""
    ds = datasets.PACS(str(pacs_root), [0], SMALL)
    x, _ = ds[1][0]
    assert ds.device_augment(1, False) is None and ds.device_augment(0, True) is None  # test env: none

    def both_ways(seed):
        torch.manual_seed(seed)
        on_host = ds.train_transform(1)(x)
        torch.manual_seed(seed)
        image, params = ds.train_transform(1, photometric_on_device=True)(x)
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        return on_host, ds.device_augment(1, True)(image[None], params[None])[0]

    for seed in range(4):
        on_host, on_device = both_ways(seed)
        assert (on_host - on_device).abs().mean() < 0.06, seed  # measured 0.023-0.030 (1-2 grey levels)
    assert (both_ways(0)[1] - both_ways(1)[1]).abs().mean() > 0.3  # another seed: 0.68-0.81 measured


def test_transforms_and_environments_pickle_for_workers(pacs_root):
    """DataLoader workers receive the environments and transforms pickled: the copies must give the
    same items and the same tensors (the augmentation the same draws for the same seed)."""
    ds = datasets.PACS(str(pacs_root), [0], SMALL)
    clone = pickle.loads(pickle.dumps(ds))
    assert [len(env) for env in clone.datasets] == [len(env) for env in ds.datasets] == [2, 4, 6, 8]
    assert clone.classes == ds.classes and clone.environment_names == ds.environment_names
    for original, copied in zip(ds.datasets, clone.datasets):
        assert copied.samples == original.samples
        for (x, y), (x_copy, y_copy) in zip(original, copied):
            assert y_copy == y and np.array_equal(np.asarray(x_copy), np.asarray(x))
    env = pickle.loads(pickle.dumps(ds[1]))
    assert [y for _, y in env] == [y for _, y in ds[1]] == [0, 0, 1, 1]
    x = ds[1][3][0]
    assert torch.equal(pickle.loads(pickle.dumps(ds.eval_transform))(x), ds.eval_transform(x))
    augment = ds.train_transform(1)
    augment_copy = pickle.loads(pickle.dumps(augment))
    torch.manual_seed(3)
    expected = augment(x)
    torch.manual_seed(3)
    assert torch.equal(augment_copy(x), expected)
    assert not torch.equal(expected, ds.eval_transform(x))  # (the copy really augments)


def test_root_may_be_the_dataset_folder(pacs_root):
    ds = datasets.PACS(str(pacs_root / "PACS"), [0], SMALL)
    assert [len(ds[i]) for i in range(4)] == [2, 4, 6, 8]


@pytest.mark.parametrize("folder_name", ["office_home", "OfficeHome", "my_copy"])
def test_officehome_root_as_dataset_folder_with_any_name(tmp_path, folder_name):
    make_image_tree(tmp_path / folder_name, datasets.OfficeHome.ENV_FOLDERS)
    ds = datasets.OfficeHome(str(tmp_path / folder_name) + "/", [0], SMALL)
    assert [len(ds[i]) for i in range(4)] == [2, 4, 6, 8]
    if folder_name != "my_copy":  # the data root works too for DomainBed's name and the class name
        ds = datasets.OfficeHome(str(tmp_path), [0], SMALL)
        assert len(ds[3]) == 8


def test_missing_dataset_names_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datasets.PACS(str(tmp_path), [0], SMALL)
    message = str(info.value)
    assert "\n" not in message
    assert f"python -m domainbed.scripts.download --data_dir {tmp_path} --datasets PACS" in message


def test_missing_environment_folder_is_named(tmp_path):
    make_image_tree(tmp_path / "PACS", ["art_painting", "cartoon", "sketch"])
    with pytest.raises(FileNotFoundError, match=r"missing environment folder\(s\) photo;.*--datasets PACS"):
        datasets.PACS(str(tmp_path), [0], SMALL)


def test_empty_environment_is_named(tmp_path):
    make_image_tree(tmp_path / "PACS", ["art_painting", "cartoon", "sketch"])
    os.makedirs(tmp_path / "PACS" / "photo" / "dog")
    with pytest.raises(ValueError, match=r"environment folder .*photo contains no images"):
        datasets.PACS(str(tmp_path), [0], SMALL)


def test_class_missing_from_one_environment_keeps_global_labels(tmp_path):
    make_image_tree(tmp_path / "PACS", ["art_painting", "cartoon", "photo"], classes=["dog", "elephant", "horse"])
    write_image(str(tmp_path / "PACS" / "sketch" / "horse" / "a.jpg"))
    ds = datasets.PACS(str(tmp_path), [0], SMALL)
    assert ds.num_classes == 3
    assert [y for _, y in ds[3].samples] == [2]  # 'horse' keeps index 2 although sketch has one class


def test_corrupt_image_error_names_the_file(pacs_root):
    bad = pacs_root / "PACS" / "photo" / "dog" / "zzz_broken.jpg"
    bad.write_bytes(b"not an image at all")
    ds = datasets.PACS(str(pacs_root), [0], SMALL)  # construction stays lazy
    index = [path for path, _ in ds[2].samples].index(str(bad))
    with pytest.raises(ValueError, match=r"cannot read image .*zzz_broken\.jpg"):
        ds[2][index]


# ----------------------------------------------------------------------------- digits
def _clear_digit_caches():
    for cached in (digits_module._digit_tensors, digits_module._rotated_digits, digits_module._coloured_digits):
        cached.cache_clear()


def test_rotated_digits_shapes_shares_and_rotation():
    ds = datasets.get_dataset_class("RotatedDigits")("ignored", [0], {})
    assert ds.input_shape == (1, 32, 32) and ds.num_classes == 10 and len(ds) == 6
    assert sum(len(ds[i]) for i in range(6)) == 1797
    x, y = ds[2][0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and type(y) is int
    base_images, base_labels = digits_module._digit_tensors()
    assert base_images.min() >= 0 and base_images.max() <= 1
    shares = environment_shares(1797, 6)
    assert len(np.unique(np.concatenate(shares))) == 1797  # disjoint and complete
    for env, angle in enumerate([0, 15, 30, 45, 60, 75]):
        assert torch.equal(ds[env].labels, base_labels[shares[env]])
        assert torch.allclose(ds[env].images, rotate_images(base_images[shares[env]], angle))
    assert torch.equal(ds[0].images, base_images[shares[0]])  # angle 0 is the raw share
    same_images = base_images[shares[1]]
    assert (rotate_images(same_images, 15) - same_images).abs().mean() > 0.05  # rotation changes pixels


@pytest.mark.parametrize("name", ["RotatedDigits", "ColoredDigits"])
def test_each_trial_draws_its_own_environments_shared_by_every_algorithm_and_hparams_draw(name):
    from domainbed.hparams_registry import resolve_hparams

    def environments(algorithm, hparams_seed, trial_seed):
        hparams = resolve_hparams(algorithm, name, hparams_seed, trial_seed, {})
        assert hparams["environment_shuffle_seed"] == trial_seed
        return datasets.get_dataset_class(name)("", [0], hparams).datasets

    trial0 = environments("ERM", 0, 0)
    for same_trial in (environments("Fish", 0, 0), environments("ERM", 2, 0)):  # paired within a trial
        assert all(torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
                   for a, b in zip(trial0, same_trial))
    trial1 = environments("ERM", 0, 1)
    assert sum(len(env) for env in trial1) == 1797
    assert not torch.equal(trial0[0].images, trial1[0].images)  # another draw of the benchmark
    seed_given = datasets.get_dataset_class(name)("", [0], {"environment_shuffle_seed": 1}).datasets
    assert torch.equal(seed_given[2].images, trial1[2].images)


def test_digit_image_size_hparam_builds_the_images_at_that_size():
    ds = datasets.RotatedDigits("", [0], {"image_size": 16})
    assert ds.input_shape == (1, 16, 16) and ds[0][0][0].shape == (1, 16, 16)
    small, large = digits_module._digit_tensors(16)[0], digits_module._digit_tensors(32)[0]
    assert 0 <= small.min() and small.max() <= 1
    # the same digits: the 32 px images pooled to 16 px are close to the 16 px ones
    assert (torch.nn.functional.avg_pool2d(large, 2) - small).abs().mean() < 0.02
    for name, size in (("RotatedDigits", 4), ("Debug28", 32)):
        with pytest.raises(ValueError, match="image_size"):
            datasets.get_dataset_class(name)("", [0], {"image_size": size})


def test_rotate_images_by_90_degrees_is_a_counter_clockwise_quarter_turn():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.allclose(rotate_images(image, 90), torch.rot90(image, 1, dims=(-2, -1)), atol=1e-5)


def test_digits_are_deterministic_across_builds():
    first = [(env.images.clone(), env.labels.clone()) for env in datasets.ColoredDigits("", [0], {}).datasets]
    _clear_digit_caches()
    second = datasets.ColoredDigits("", [0], {}).datasets
    for (x1, y1), env in zip(first, second):
        assert torch.equal(x1, env.images) and torch.equal(y1, env.labels)


def test_colored_digits_colour_label_correlation():
    ds = datasets.ColoredDigits("", [2], {})
    assert ds.input_shape == (2, 32, 32) and ds.num_classes == 2
    base_images, base_digits = digits_module._digit_tensors()
    shares = environment_shares(1797, 3)
    for env, expected in enumerate([0.9, 0.8, 0.1]):
        images, labels = ds[env].images, ds[env].labels
        red, green = images[:, 0].flatten(1).amax(1), images[:, 1].flatten(1).amax(1)
        assert torch.all((red == 0) | (green == 0))  # exactly one colour per image
        colour = (green > 0).long()
        assert abs((colour == labels).float().mean().item() - expected) < 0.05
        clean = (base_digits[shares[env]] < 5).long()
        assert abs((labels == clean).float().mean().item() - 0.75) < 0.06
        assert torch.allclose(images.sum(1, keepdim=True), base_images[shares[env]])  # same disjoint shares


def test_debug_datasets_are_seeded_random_tensors():
    a, b = datasets.Debug28("", [0], {}), datasets.Debug28("", [0], {})
    assert a.input_shape == (3, 28, 28) and len(a) == 3 and all(len(env) == 16 for env in a.datasets)
    assert torch.equal(a[1].images, b[1].images) and not torch.equal(a[0].images, a[1].images)
    assert set(a[0].labels.tolist()) <= {0, 1}
    assert datasets.Debug224("", [], {})[0][0][0].shape == (3, 224, 224)


def test_tensor_datasets_collate_and_use_identity_transform():
    ds = datasets.RotatedDigits("", [0], {})
    x, y = next(iter(torch.utils.data.DataLoader(ds[1], batch_size=4)))
    assert x.shape == (4, 1, 32, 32) and y.dtype == torch.int64
    assert ds.eval_transform(x) is x and ds.train_transform(1)(x) is x


# ----------------------------------------------------------------------------- MNIST (fake idx files)
def write_fake_mnist(raw_dir, n_train=48, n_test=12):
    os.makedirs(raw_dir, exist_ok=True)
    rng = np.random.RandomState(0)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.randint(0, 10, n).astype(np.uint8)
        with open(os.path.join(raw_dir, f"{split}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        with open(os.path.join(raw_dir, f"{split}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x0801, n) + labels.tobytes())
        data[split] = (images, labels)
    images = np.concatenate([data["train"][0], data["t10k"][0]])
    labels = np.concatenate([data["train"][1], data["t10k"][1]])
    return torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()


def test_rotated_mnist_from_raw_files(tmp_path):
    images, labels = write_fake_mnist(tmp_path / "MNIST" / "raw")
    ds = datasets.RotatedMNIST(str(tmp_path), [0], {})
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds) == 6
    shares = environment_shares(60, 6)
    assert torch.equal(ds[0].images, images[shares[0]]) and torch.equal(ds[0].labels, labels[shares[0]])
    assert torch.allclose(ds[3].images, rotate_images(images[shares[3]], 45))
    same_root_is_mnist_folder = datasets.RotatedMNIST(str(tmp_path / "MNIST"), [0], {})
    assert torch.equal(same_root_is_mnist_folder[5].images, ds[5].images)


def test_colored_mnist_from_raw_files(tmp_path):
    images, labels = write_fake_mnist(tmp_path / "MNIST" / "raw")
    ds = datasets.ColoredMNIST(str(tmp_path), [0], {})
    assert ds.input_shape == (2, 28, 28) and ds.num_classes == 2 and [len(e) for e in ds.datasets] == [20] * 3
    shares = environment_shares(60, 3)
    assert torch.allclose(ds[1].images.sum(1, keepdim=True), images[shares[1]])
    assert set(ds[1].labels.tolist()) <= {0, 1}


def test_mnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST not found.*--datasets RotatedMNIST"):
        datasets.RotatedMNIST(str(tmp_path), [0], {})
    write_fake_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03broken")
    with pytest.raises(ValueError, match=r"cannot read MNIST file"):
        datasets.ColoredMNIST(str(tmp_path), [0], {})


# ----------------------------------------------------------------------------- WILDS
@pytest.mark.skipif(importlib.util.find_spec("wilds") is not None, reason="wilds is installed")
@pytest.mark.parametrize("name", ["WILDSCamelyon", "WILDSFMoW"])
def test_wilds_without_package_says_how_to_install(tmp_path, name):
    cls = datasets.get_dataset_class(name)
    with pytest.raises(ImportError, match=rf"{name} needs the wilds package: pip install wilds"):
        cls(str(tmp_path), [0], {})
    with pytest.raises(ValueError):  # scripts report it like any bad input
        cls(str(tmp_path), [0], {})
