"""DomainBed users switch without changing anything: its model.pkl files, hparam names and import paths."""

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from domainbed.checkpoints import load_checkpoint
from domainbed.hparams_registry import random_hparams, resolve_hparams
from domainbed.seeding import seed_hash


# ============================================================ 1. DomainBed's own model.pkl files
def _nonlinear(width: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, width // 4), nn.ReLU(),
                         nn.Linear(width // 4, num_classes))


def _save_domainbed_file(path, featurizer_state: dict, classifier: nn.Module, input_shape, model_hparams: dict,
                         algorithm: str = "ERM", featurizer_prefix="featurizer.", classifier_prefix="classifier.",
                         network_prefixes=("network.0.", "network.1.")):
    """A model.pkl as DomainBed's train.py saves it: vars(args), the shapes, its hparams, and
    algorithm.state_dict() (the featurizer wraps its network as ``.network``; ``network`` repeats
    featurizer and classifier)."""
    state = {}
    for key, value in featurizer_state.items():
        state[featurizer_prefix + key] = value
        if network_prefixes:
            state[network_prefixes[0] + key] = value
    for key, value in classifier.state_dict().items():
        state[classifier_prefix + key] = value
        if network_prefixes:
            state[network_prefixes[1] + key] = value
    args = dict(data_dir="/data", dataset="Debug28", algorithm=algorithm, task="domain_generalization",
                hparams=None, hparams_seed=0, trial_seed=0, seed=0, steps=None, checkpoint_freq=None,
                test_envs=[0], output_dir="out", holdout_fraction=0.2, uda_holdout_fraction=0,
                skip_model_save=False, save_model_every_checkpoint=False)
    torch.save({"args": args, "model_input_shape": tuple(input_shape), "model_num_classes": 2,
                "model_num_domains": 2, "model_hparams": model_hparams, "model_dict": state}, path)


def _domainbed_hparams(**changes) -> dict:
    """DomainBed's default hparams for ERM on an image dataset (its newest registry's names)."""
    hparams = dict(data_augmentation=True, resnet18=False, resnet50_augmix=True, dinov2=False, vit=False,
                   vit_attn_tune=False, freeze_bn=False, lars=False, linear_steps=500, resnet_dropout=0.0,
                   vit_dropout=0.0, class_balanced=False, nonlinear_classifier=False, lr=5e-5, weight_decay=0.0,
                   batch_size=32)
    hparams.update(changes)
    return hparams


def _torchvision_resnet18_file(path, nonlinear: bool, input_shape=(3, 224, 224), **file_options):
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None)
    network.fc = nn.Identity()  # DomainBed's ResNet drops fc
    # move the BatchNorm statistics away from their initial values, so a wrong mapping shows
    with torch.no_grad():
        network.train()
        network(torch.randn(8, 3, 64, 64))
    network.eval()
    classifier = _nonlinear(512, 2) if nonlinear else nn.Linear(512, 2)
    featurizer_state = {"network." + key: value for key, value in network.state_dict().items()}
    hparams = _domainbed_hparams(resnet18=True, resnet50_augmix=False, nonlinear_classifier=nonlinear)
    _save_domainbed_file(path, featurizer_state, classifier, input_shape, hparams, **file_options)
    return network, classifier


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_a_domainbed_resnet18_file_predicts_what_domainbed_computes(tmp_path, nonlinear):
    path = tmp_path / "model.pkl"
    network, classifier = _torchvision_resnet18_file(path, nonlinear)
    algorithm = load_checkpoint(path)
    assert algorithm.hparams["backbone"] == "resnet18" and algorithm.hparams["nonlinear_classifier"] == nonlinear
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = classifier(network(x))  # torchvision forward without fc, then the classifier
        torch.testing.assert_close(algorithm.predict(x), expected, rtol=0, atol=1e-5)


def test_evaluate_accepts_a_domainbed_file(tmp_path, capsys):
    from domainbed.scripts import evaluate

    path = tmp_path / "model.pkl"
    _torchvision_resnet18_file(path, nonlinear=False, input_shape=(3, 28, 28))
    results = evaluate.main(["--checkpoint", str(path), "--data_dir", str(tmp_path)])  # Debug28, from args
    assert [r.n for r in results] == [16, 16, 16]
    assert "(test)" in capsys.readouterr().out


def test_the_methods_that_keep_their_prediction_networks_elsewhere_load_too(tmp_path):
    # ERMPlusPlus predicts with its moving average network_sma; Fish with WholeFish's network.net
    x = torch.randn(2, 3, 64, 64)
    for algorithm, prefixes in (("ERMPlusPlus", ("network_sma.0.", "network_sma.1.")),
                                ("Fish", ("network.net.0.", "network.net.1."))):
        path = tmp_path / f"{algorithm}.pkl"
        network, classifier = _torchvision_resnet18_file(
            path, nonlinear=False, algorithm=algorithm, featurizer_prefix=prefixes[0],
            classifier_prefix=prefixes[1], network_prefixes=None)
        with torch.no_grad():
            torch.testing.assert_close(load_checkpoint(path).predict(x), classifier(network(x)), rtol=0, atol=1e-5)


def _dinov2_reference(weights: dict, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """DomainBed's DinoV2 featurizer written out: torch.hub dinov2's prepare_tokens (bicubic
    position interpolation with the 0.1 offset), its blocks, then get_intermediate_layers(n=4,
    return_class_token=True) concatenated as DomainBed does."""
    patch = weights["patch_embed.proj.weight"]
    tokens = F.conv2d(x, patch, weights["patch_embed.proj.bias"], stride=patch.shape[-1])
    batch, dim, rows, cols = tokens.shape
    tokens = torch.cat([weights["cls_token"].expand(batch, -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1)
    pos = weights["pos_embed"]
    side = int(math.sqrt(pos.shape[1] - 1))
    grid = F.interpolate(pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
                         scale_factor=((cols + 0.1) / side, (rows + 0.1) / side), mode="bicubic", antialias=False)
    tokens = tokens + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    outputs = []
    for i in range(depth):
        w = {k[len(f"blocks.{i}."):]: v for k, v in weights.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(tokens, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv = F.linear(y, w["attn.qkv.weight"], w["attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, -1, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (dim // num_heads) ** -0.5).softmax(-1)
        y = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        tokens = tokens + w["ls1.gamma"] * F.linear(y, w["attn.proj.weight"], w["attn.proj.bias"])
        y = F.layer_norm(tokens, (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"])
        tokens = tokens + w["ls2.gamma"] * y
        outputs.append(F.layer_norm(tokens, (dim,), weights["norm.weight"], weights["norm.bias"], eps=1e-6))
    last = outputs[-4:]
    return torch.cat([out[:, 0] for out in last] + [last[-1][:, 1:].mean(1)], dim=1)


def test_a_domainbed_dinov2_file_predicts_what_domainbed_computes(tmp_path):
    import timm

    # a small DINOv2 (width 192, 4 blocks) with hub dinov2's keys, at its native 518 px grid
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, embed_dim=192, depth=4,
                            num_heads=3)
    weights = {k: v.clone() for k, v in vit.state_dict().items()}
    for key in weights:
        if key.endswith("gamma") or key in ("pos_embed", "cls_token"):
            weights[key] = 0.5 * torch.randn_like(weights[key])
    weights["mask_token"] = torch.zeros(1, 192)  # hub dinov2 has one; DomainBed never uses it
    classifier = nn.Linear(5 * 192, 2)
    path = tmp_path / "model.pkl"
    _save_domainbed_file(path, {"network." + k: v for k, v in weights.items()}, classifier, (3, 224, 224),
                         _domainbed_hparams(vit=True, dinov2=True, resnet50_augmix=False, vit_dropout=0.1))
    algorithm = load_checkpoint(path)
    assert algorithm.hparams["features"] == "dinov2_linear" and algorithm.featurizer.num_features == 960
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = classifier(_dinov2_reference(weights, x, num_heads=3))
        torch.testing.assert_close(algorithm.predict(x), expected, rtol=0, atol=1e-5)


def test_other_domainbed_files_are_refused_with_one_line_naming_what_is_supported(tmp_path):
    mnist_cnn = {f"conv{i}.weight": torch.zeros(4, 4, 3, 3) for i in range(1, 5)}
    mnist_cnn.update({f"bn{i}.weight": torch.ones(4) for i in range(4)})
    path = tmp_path / "mnist.pkl"
    _save_domainbed_file(path, mnist_cnn, nn.Linear(128, 2), (2, 28, 28), _domainbed_hparams())
    with pytest.raises(ValueError, match=r"MNIST_CNN featurizer; supported: DomainBed's ResNet-18 / ResNet-50") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    path = tmp_path / "mtl.pkl"
    _torchvision_resnet18_file(path, nonlinear=False, algorithm="MTL")
    with pytest.raises(ValueError, match="of MTL, which cannot be loaded here .*per-domain embeddings"):
        load_checkpoint(path)


# ============================================================ 2. DomainBed's hparam names
def domainbed_draw(seed: int, name: str, draw):
    """DomainBed's rule: hparam ``name`` comes from RandomState(seed_hash(seed, name))."""
    return draw(np.random.RandomState(int(hashlib.md5(str((seed, name)).encode()).hexdigest(), 16) % 2**31))


def test_domainbed_names_map_onto_ours():
    resolved = resolve_hparams("ERM", "PACS", 0, 0, {"resnet18": True, "resnet_dropout": 0.1, "freeze_bn": True,
                                                     "class_balanced": True, "nonlinear_classifier": True})
    assert (resolved["backbone"], resolved["dropout"], resolved["freeze_bn"], resolved["class_balanced"],
            resolved["nonlinear_classifier"]) == ("resnet18", 0.1, True, True, True)
    assert not {"resnet18", "resnet_dropout"} & set(resolved)  # records name what was trained
    assert resolve_hparams("ERM", "PACS", 0, 0, {"resnet50_augmix": True})["backbone"] == "resnet50.ram_in1k"
    assert resolve_hparams("ERM", "PACS", 0, 0, {"resnet50_augmix": False})["backbone"] == "resnet50"
    dinov2 = resolve_hparams("ERM", "PACS", 0, 0, {"vit": True, "dinov2": True, "vit_dropout": 0.5,
                                                   "vit_attn_tune": True, "resnet_dropout": 0.1})
    assert (dinov2["backbone"], dinov2["features"], dinov2["dropout"], dinov2["drop_path_rate"],
            dinov2["train_attention_only"]) == ("vit_base_patch14_dinov2.lvd142m", "dinov2_linear", 0.5, 0.0, True)
    # DomainBed's full default dict (what its list_top_hparams prints) is accepted as it is
    defaults = resolve_hparams("ERM", "PACS", 0, 0, _domainbed_hparams(resnet50_augmix=False))
    assert defaults["backbone"] == "resnet50" and "lars" not in defaults
    assert resolve_hparams("ERMPlusPlus", "PACS", 0, 0, {"lars": True})["lars"] is True
    # what DomainBed ignores is ignored: dinov2 without vit, vit_attn_tune on a ResNet
    assert resolve_hparams("ERM", "PACS", 0, 0, {"dinov2": True, "vit_attn_tune": True})["backbone"] == "resnet50"


@pytest.mark.parametrize("overrides, message", [
    ({"vit": True}, "vit without dinov2 builds no model in DomainBed"),
    ({"resnet18": True, "resnet50_augmix": True}, "resnet18 and resnet50_augmix are both true"),
    ({"resnet18": True, "backbone": "resnet50"}, "backbone 'resnet50' contradicts DomainBed's resnet18"),
    ({"resnet_dropout": 0.5, "dropout": 0.1}, "dropout 0.1 contradicts resnet_dropout 0.5"),
    ({"resnet18": "yes"}, "resnet18 must be true or false"),
    ({"resnet_dropout": 1.5}, "resnet_dropout must be a number between 0 and 1"),
    ({"features": "dinov2_linear"}, "features 'dinov2_linear' needs a timm ViT backbone"),
])
def test_domainbed_names_we_cannot_honour_are_refused_in_one_line(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        resolve_hparams("ERM", "PACS", 0, 0, overrides)
    assert "\n" not in str(error.value)


def test_dropout_draws_what_domainbed_draws_for_the_same_seeds():
    choice = lambda r: r.choice([0.0, 0.1, 0.5])  # DomainBed's resnet_dropout / vit_dropout
    for seed in (1, 7, 123456):
        assert random_hparams("ERM", "PACS", seed)["dropout"] == domainbed_draw(seed, "resnet_dropout", choice)
    for hparams_seed, trial_seed in ((1, 0), (5, 2)):
        seed = seed_hash(hparams_seed, trial_seed)
        on_resnet18 = resolve_hparams("ERM", "PACS", hparams_seed, trial_seed, {"resnet18": True})
        assert on_resnet18["dropout"] == domainbed_draw(seed, "resnet_dropout", choice)
        on_dinov2 = resolve_hparams("ERM", "PACS", hparams_seed, trial_seed, {"vit": True, "dinov2": True})
        assert on_dinov2["dropout"] == domainbed_draw(seed, "vit_dropout", choice)
    drawn = [random_hparams("ERM", "PACS", seed)["dropout"] for seed in range(1, 30)]
    assert {0.0, 0.1, 0.5} == set(drawn)


def test_freeze_bn_keeps_the_featurizers_batchnorm_in_eval_mode(kit):
    from domainbed.algorithms import get_algorithm_class

    hparams = {**kit.hparams("ERM", freeze_bn=True), "backbone": "resnet18", "backbone_kwargs": {}}
    torch.manual_seed(0)
    algorithm = get_algorithm_class("ERM")(kit.input_shape, kit.num_classes, kit.num_domains, hparams).train()
    norms = [m for m in algorithm.featurizer.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    weight_before = norms[0].weight.detach().clone()
    algorithm.update(kit.minibatches())
    assert norms and not any(m.training for m in norms)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before))
    assert not torch.equal(norms[0].weight, weight_before)  # the affine weights still train
    assert set(algorithm.state_dict()) == set(get_algorithm_class("ERM")(
        kit.input_shape, kit.num_classes, kit.num_domains, {**hparams, "freeze_bn": False}).state_dict())


def test_class_balanced_batches_are_balanced_and_a_pure_function_of_seed_and_step():
    from torch.utils.data import Subset, TensorDataset

    from domainbed.data.loaders import (
        BalancedStepBatchSampler,
        class_balanced_weights,
        dataset_labels,
        train_loader,
    )

    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    environment = TensorDataset(torch.arange(100.0), labels)
    environment.targets = labels.tolist()
    split = Subset(environment, list(range(0, 100, 2)) + [99])  # 45 of class 0, 5 of class 1, 1 of class 2
    assert dataset_labels(split).count(2) == 1
    weights = class_balanced_weights(dataset_labels(split))
    assert weights.sum().item() == pytest.approx(1.0) and weights[-1].item() == pytest.approx(1 / 3)
    sampler = BalancedStepBatchSampler(weights, batch_size=60, seed=3)
    stream = iter(sampler)
    batches = [next(stream) for _ in range(20)]
    resumed = iter(BalancedStepBatchSampler(weights, batch_size=60, seed=3, start_step=7))
    assert next(resumed) == batches[7]  # exact resume
    assert batches[0] != batches[1] and BalancedStepBatchSampler(weights, 60, seed=4).batch(0) != batches[0]
    drawn = [int(labels[split.indices[i]]) for batch in batches for i, _ in batch]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.05)  # DomainBed's weights: each class equally often
    x, _ = next(train_loader(split, None, 8, seed=3, start_step=2, class_balanced=True))
    assert x.tolist() == [float(split.indices[i]) for i, _ in BalancedStepBatchSampler(weights, 8, seed=3).batch(2)]


def test_a_tiny_run_with_domainbed_flags_trains_and_records_a_resnet18(tmp_path, read_records):
    from domainbed.checkpoints import load_checkpoint as load
    from domainbed.scripts import train

    flags = {"resnet18": True, "resnet_dropout": 0.1, "freeze_bn": True, "class_balanced": True, "batch_size": 4}
    out = tmp_path / "run"
    train.main(["--dataset", "Debug28", "--algorithm", "ERM", "--test_envs", "0", "--steps", "2",
                "--checkpoint_freq", "2", "--hparams", json.dumps(flags), "--output_dir", str(out),
                "--data_dir", str(tmp_path)])
    record = read_records(out)[-1]
    assert (record["hparams"]["backbone"], record["hparams"]["dropout"], record["hparams"]["freeze_bn"],
            record["hparams"]["class_balanced"]) == ("resnet18", 0.1, True, True)
    assert json.loads(record["args"]["hparams"]) == flags  # what was asked stays in the args
    assert type(load(out / "model.pkl").featurizer).__name__ == "ResNet"


# ============================================================ 3. DomainBed's import paths
def _write_run(root, name, dataset, algorithm, test_envs, hparams_seed, accs, trial_seed=0):
    """One run folder of records: ``accs`` is a list of (step, {env: (in_acc, out_acc)})."""
    folder = root / name
    folder.mkdir()
    with open(folder / "results.jsonl", "w") as f:
        for step, envs in accs:
            record = {"step": step, "hparams": {"lr": 1e-3 * hparams_seed, "backbone": "resnet50"},
                      "args": {"dataset": dataset, "algorithm": algorithm, "test_envs": test_envs,
                               "trial_seed": trial_seed, "hparams_seed": hparams_seed}}
            for env, (acc_in, acc_out) in envs.items():
                record[f"env{env}_in_acc"], record[f"env{env}_out_acc"] = acc_in, acc_out
            f.write(json.dumps(record) + "\n")
    (folder / "done").write_text("done")


def test_a_notebook_reads_records_with_domainbeds_reporting_and_query(tmp_path):
    from domainbed import model_selection
    from domainbed.lib import query, reporting
    from domainbed.lib.query import Q

    envs = lambda test, train: {0: test, 1: train, 2: train}
    _write_run(tmp_path, "a", "PACS", "ERM", [0], 1, [(0, envs((0.5, 0.5), (0.6, 0.6))),
                                                      (10, envs((0.7, 0.7), (0.8, 0.8)))])
    _write_run(tmp_path, "b", "PACS", "ERM", [0], 2, [(0, envs((0.9, 0.9), (0.5, 0.4)))])
    _write_run(tmp_path, "c", "PACS", "CORAL", [0, 1], 1, [(0, envs((0.2, 0.2), (0.3, 0.3)))])
    records = reporting.load_records(tmp_path)
    assert isinstance(records, Q) and len(records) == 4
    grouped = reporting.get_grouped_records(records)
    keys = sorted((g["trial_seed"], g["dataset"], g["algorithm"], g["test_env"]) for g in grouped)
    assert keys == [(0, "PACS", "CORAL", 0), (0, "PACS", "CORAL", 1), (0, "PACS", "ERM", 0)]
    erm = grouped.filter_equals("algorithm", "ERM")[0]["records"]
    assert isinstance(erm, Q) and erm.select("step").sorted() == [0, 0, 10]
    assert erm.filter(lambda r: r["step"] == 10).select("env0_in_acc") == [0.7]
    by_seed = erm.group("args.hparams_seed")
    assert [seed for seed, _ in by_seed] == [1, 2] and by_seed.map(lambda seed, rs: len(rs)) == [2, 1]
    assert erm.select("args.hparams_seed,step").unique().len() == 3
    assert erm.argmax("env1_out_acc")["step"] == 10
    assert erm.select("env0_in_acc").mean() == pytest.approx(0.7)
    assert erm.select("env0_in_acc").std() == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert Q([1.0, None, float("nan")]).filter_not_none().filter_not_nan() == [1.0]
    assert Q([[1], [2, 3]]).flatten() == [1, 2, 3] and query.hashable([1]) == '{"_": [1]}'
    # DomainBed's model selection on a group: hparams_seed 1 has the best validation (0.8)
    assert model_selection.IIDAccuracySelectionMethod.sweep_acc(erm) == pytest.approx(0.7)
    assert reporting.get_grouped_records(records, "lr", 2e-3).select("algorithm") == ["ERM"]
    (tmp_path / "empty").mkdir()
    assert reporting.load_records(tmp_path / "empty") == []


def test_domainbed_lib_reporting_and_query_import_without_torch():
    code = ("import sys; import domainbed.lib.reporting, domainbed.lib.query, domainbed.lib.misc; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_domainbed_misc_networks_and_command_launchers(tmp_path, capsys):
    from domainbed import command_launchers, networks
    from domainbed.lib import misc

    assert misc.seed_hash(3, "lr") == int(hashlib.md5(str((3, "lr")).encode()).hexdigest(), 16) % 2**31
    misc.print_row(["a", 0.5, 3], colwidth=6)
    assert capsys.readouterr().out == "a       0.5000  3      \n"
    featurizer = networks.Featurizer((3, 28, 28), _domainbed_hparams(resnet18=True, resnet50_augmix=False))
    assert featurizer.n_outputs == 512 and featurizer(torch.randn(2, 3, 28, 28)).shape == (2, 512)
    assert isinstance(networks.Classifier(512, 7, True)[4], nn.Linear)
    assert networks.MLP(10, 4, {"mlp_width": 8, "mlp_depth": 3, "mlp_dropout": 0.0})(torch.randn(2, 10)).shape == (2, 4)
    assert {"local", "dummy", "multi_gpu"} <= set(command_launchers.REGISTRY)
    command = f"python -m domainbed.scripts.train --dataset Debug28 --output_dir {tmp_path / 'job'}"
    results = command_launchers.REGISTRY["dummy"]([command])
    assert "Dummy launcher:" in capsys.readouterr().out and results[0].note == "dummy"
    spec = command_launchers.job_specs([f"CUDA_VISIBLE_DEVICES=1 {command}"])[0]
    assert spec.command[0] == sys.executable and ("CUDA_VISIBLE_DEVICES", "1") in spec.env
    with pytest.raises(ValueError, match="without --output_dir"):
        command_launchers.job_specs(["python -m domainbed.scripts.train"])
