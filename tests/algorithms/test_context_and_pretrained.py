"""ARM, MTL, ERM++ and MIRO against hand computations on tiny tensors and the tiny ViT."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from domainbed.algorithms import Checkpoint, RunInfo, Validation, get_algorithm_class
from domainbed.algorithms.miro import feature_layers, miro_penalty

from conftest import as_floats


def _capture_inputs(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every input ``module`` receives from now on."""
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    return seen


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _resnet_hparams(kit, name: str, **overrides) -> dict:
    """The tiny-kit hparams with a randomly initialised ResNet-18 (it has BatchNorm)."""
    return {**kit.hparams(name, "dense", **overrides), "backbone": "resnet18", "backbone_kwargs": {}}


def test_erm_plus_plus_refuses_a_run_that_never_leaves_linear_probing(kit):
    algorithm_class, hparams = get_algorithm_class("ERMPlusPlus"), kit.hparams("ERMPlusPlus")
    algorithm_class.check_run(hparams, RunInfo(steps=502, checkpoint_freq=100, num_train_domains=3))
    with pytest.raises(ValueError, match="linear_steps=500"):
        algorithm_class.check_run(hparams, RunInfo(steps=501, checkpoint_freq=100, num_train_domains=3))


# ------------------------------------------------------------------ ARM
def test_arm_predict_appends_the_support_set_mean_of_the_context_map(kit):
    algorithm = kit.algorithm("ARM").eval()  # batch_size 6: support sets of 6 images
    seen = _capture_inputs(algorithm.featurizer)
    x = torch.cat([kit.minibatches(seed=1)[0][0], kit.minibatches(seed=2)[2][0]])  # 12 images, 2 sets
    with torch.no_grad():
        algorithm.predict(x)
        context = algorithm.context_net(x)  # [12, 1, 16, 16]
    augmented = seen[-1]
    assert augmented.shape == (12, 2, 16, 16) and torch.equal(augmented[:, :1], x)
    for start in (0, 6):
        expected = sum(context[i] for i in range(start, start + 6)) / 6
        for i in range(start, start + 6):
            torch.testing.assert_close(augmented[i, 1:], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(augmented[0, 1:], augmented[6, 1:])  # the two sets differ

    with torch.no_grad():  # 7 images do not split into sets of 6: one support set
        algorithm.predict(x[:7])
        context = algorithm.context_net(x[:7])
    expected = sum(context[i] for i in range(7)) / 7
    for i in range(7):
        torch.testing.assert_close(seen[-1][i, 1:], expected, rtol=1e-5, atol=1e-6)


def test_arm_update_makes_each_domain_a_support_set_and_trains_the_context_net(kit):
    algorithm = kit.algorithm("ARM")
    minibatches = [(x[:n], y[:n]) for (x, y), n in zip(kit.minibatches(), (6, 4, 5))]
    x = torch.cat([x for x, _ in minibatches])
    context_net = copy.deepcopy(algorithm.context_net)  # training mode: batch statistics, as the update's
    with torch.no_grad():
        context = context_net(x)
    before = _state(algorithm.context_net)
    seen = _capture_inputs(algorithm.featurizer)
    algorithm.update(minibatches)
    augmented = seen[-1]
    torch.testing.assert_close(augmented[:, :1], x)
    start = 0
    for n in (6, 4, 5):
        expected = sum(context[i] for i in range(start, start + n)) / n
        for i in range(start, start + n):
            torch.testing.assert_close(augmented[i, 1:], expected, rtol=1e-5, atol=1e-6)
        start += n
    changed = [k for k, v in algorithm.context_net.state_dict().items()
               if v.is_floating_point() and "running" not in k and not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed), "the context network's weights did not train"


# ------------------------------------------------------------------ MTL
def test_mtl_embedding_is_an_ema_of_feature_means_and_predict_embeds_its_batch(kit):
    ema = 0.75
    algorithm = kit.algorithm("MTL", mtl_ema=ema)
    minibatches = kit.minibatches()
    expected_embeddings = torch.zeros(kit.num_domains, algorithm.featurizer.num_features)
    for _ in range(2):
        with torch.no_grad():  # the dense tiny ViT is deterministic in training mode
            features = [algorithm.featurizer(x) for x, _ in minibatches]
            expected_loss = 0.0
            for d, (f, (_, y)) in enumerate(zip(features, minibatches)):
                expected_embeddings[d] = ema * f.mean(dim=0) + (1 - ema) * expected_embeddings[d]
                rows = torch.cat([f, expected_embeddings[d].repeat(len(f), 1)], dim=1)
                expected_loss += F.cross_entropy(algorithm.classifier(rows), y).item()
        values = as_floats(algorithm.update(minibatches))
        assert values["loss"] == pytest.approx(expected_loss, rel=1e-5)
        torch.testing.assert_close(algorithm.embeddings, expected_embeddings, rtol=1e-5, atol=1e-6)

    algorithm.eval()
    x = minibatches[1][0]
    with torch.no_grad():
        f = algorithm.featurizer(x)
        expected = algorithm.classifier(torch.cat([f, f.mean(dim=0).repeat(len(f), 1)], dim=1))
        first, second = algorithm.predict(x), algorithm.predict(x)
    torch.testing.assert_close(first, expected)
    assert torch.equal(first, second)  # no noise (DomainBed's normal_ would draw fresh noise)
    torch.testing.assert_close(algorithm.embeddings, expected_embeddings, rtol=1e-5, atol=1e-6)  # untouched


# ------------------------------------------------------------------ ERM++
def test_erm_plus_plus_trains_only_the_classifier_until_linear_steps(kit):
    algorithm = kit.algorithm("ERMPlusPlus", linear_steps=2, linear_lr=1e-3)  # lr is 3e-3
    minibatches = kit.minibatches()
    featurizer, classifier = _state(algorithm.featurizer), _state(algorithm.classifier)
    algorithm.update(minibatches)
    # Adam's first step moves each weight by lr * |g| / (|g| + eps): at most, and nearly, linear_lr
    moved = torch.cat([(v - classifier[k]).abs().flatten() for k, v in algorithm.classifier.state_dict().items()])
    assert 0.99e-3 < moved.max().item() <= 1.0001e-3
    for _ in range(2):  # updates 1 and 2 still probe (update_count <= linear_steps)
        algorithm.update(minibatches)
    assert _same(_state(algorithm.featurizer), featurizer)
    assert not _same(_state(algorithm.classifier), classifier)

    algorithm.update(minibatches)  # update 3: the whole network, fresh Adam at lr
    moved = torch.cat([(v - featurizer[k]).abs().flatten()
                       for k, v in algorithm.featurizer.state_dict().items() if v.is_floating_point()])
    assert 2.9e-3 < moved.max().item() <= 3.0003e-3

    algorithm.eval()  # before update 600 the average is the current network
    x = minibatches[0][0]
    with torch.no_grad():
        torch.testing.assert_close(algorithm.predict(x), algorithm.network(x))


def test_erm_plus_plus_averages_the_weights_from_update_600(kit):
    algorithm = kit.algorithm("ERMPlusPlus", linear_steps=0)
    minibatches = kit.minibatches()
    algorithm.load_state_dict({**algorithm.state_dict(), "update_count": torch.tensor([598])})  # as a resume would
    algorithm.update(minibatches)  # the 599th update: the average is reset to these weights
    first = _state(algorithm.network)
    assert _same(_state(algorithm.network_sma.module), first)
    algorithm.update(minibatches)  # the 600th: averaging starts
    second = _state(algorithm.network)
    averaged = algorithm.network_sma.module.state_dict()
    for key, value in first.items():
        torch.testing.assert_close(averaged[key], (value + second[key]) / 2)
    x = minibatches[0][0]
    with torch.no_grad():
        assert torch.equal(algorithm.predict(x), algorithm.network_sma.module(x))
        assert not torch.allclose(algorithm.predict(x), algorithm.network(x))


def test_erm_plus_plus_divides_the_lr_by_ten_on_each_validation_plateau_and_stops_after_three(kit):
    algorithm = kit.algorithm("ERMPlusPlus", linear_steps=1)
    minibatches = kit.minibatches()
    evaluated = []

    def validation_loss(model):
        evaluated.append(model)
        return losses.pop(0)

    validation = Validation(validation_loss)
    losses = []
    assert algorithm.on_checkpoint(Checkpoint(0, False, validation)) == {"lr": 3e-3}  # probing: not evaluated
    for _ in range(2):
        algorithm.update(minibatches)
    assert not evaluated

    # ReduceLROnPlateau(patience=1): the lr drops when the loss has not improved for 2 checkpoints
    losses = [1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.5, 0.5, 0.5]
    expected_lrs = [3e-3, 3e-3, 3e-3, 3e-4, 3e-4, 3e-4, 3e-5, 3e-5, 0.0]
    for step, (loss, lr) in enumerate(zip(list(losses), expected_lrs)):
        values = algorithm.on_checkpoint(Checkpoint(step, False, validation))
        assert values["sma_val_loss"] == loss
        assert values["lr"] == pytest.approx(lr, rel=1e-9, abs=0.0)
        assert algorithm.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9, abs=0.0)
    assert all(model is algorithm.network_sma for model in evaluated)
    assert int(algorithm.lr_reductions) == 3

    assert algorithm.on_checkpoint(Checkpoint(99, True, validation)) == {"lr": 0.0}  # over: not evaluated
    weights = _state(algorithm.network)
    algorithm.update(minibatches)
    assert _same(_state(algorithm.network), weights)


def test_erm_plus_plus_lars_step_matches_a_hand_computation(kit):
    algorithm = kit.algorithm("ERMPlusPlus", lars=True)
    lars = type(algorithm.optimizer)
    assert lars is type(algorithm.linear_optimizer) and lars is not torch.optim.Adam
    weight, bias = torch.tensor([[3.0, 4.0]]), torch.tensor([2.0])
    optimizer = lars([weight, bias], lr=1.0, weight_decay=0.1)  # momentum 0.9, trust 0.001
    w, momentum_w, b, momentum_b = [3.0, 4.0], [0.0, 0.0], 2.0, 0.0
    for _ in range(2):
        weight.grad, bias.grad = torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])
        optimizer.step()
        step = [1.0 + 0.1 * w[0], 0.0 + 0.1 * w[1]]  # gradient + weight decay
        trust = 0.001 * math.hypot(*w) / math.hypot(*step)
        momentum_w = [0.9 * m + trust * s for m, s in zip(momentum_w, step)]
        w = [p - m for p, m in zip(w, momentum_w)]
        momentum_b = 0.9 * momentum_b + 0.5  # 1-D: no weight decay, no scaling
        b -= momentum_b
        torch.testing.assert_close(weight, torch.tensor([w]))
        torch.testing.assert_close(bias, torch.tensor([b]))
    assert b == pytest.approx(0.55)


def test_erm_plus_plus_batchnorm_statistics_follow_freeze_bn(kit):
    algorithm_class = get_algorithm_class("ERMPlusPlus")
    minibatches = kit.minibatches()
    x = torch.cat([x for x, _ in minibatches])
    for freeze_bn in (False, True):
        torch.manual_seed(0)
        algorithm = algorithm_class(kit.input_shape, kit.num_classes, kit.num_domains,
                                    _resnet_hparams(kit, "ERMPlusPlus", freeze_bn=freeze_bn))
        bn = algorithm.featurizer.bn1
        before = bn.running_mean.clone()
        algorithm.update(minibatches)
        averaged_bn = algorithm.network_sma.module[0].bn1
        if freeze_bn:
            assert not bn.training and torch.equal(bn.running_mean, before)
            assert torch.equal(averaged_bn.running_mean, bn.running_mean)
        else:
            # the average copied the network's statistics, then took one more batch (momentum 0.1)
            with torch.no_grad():
                batch_mean = algorithm.network_sma.module[0].conv1(x).mean(dim=(0, 2, 3))
            torch.testing.assert_close(averaged_bn.running_mean, 0.9 * bn.running_mean + 0.1 * batch_mean,
                                       rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ MIRO
def test_miro_penalty_matches_a_hand_computation():
    # layer 1: one example, two channels: ((1-0)^2/0.5 + ln 0.5 + (3-1)^2/2 + ln 2) / 2 / 2 = 1
    features = [torch.tensor([1.0, 3.0]).view(1, 2, 1, 1), torch.tensor([2.0, 0.0]).view(2, 1, 1, 1)]
    pre_features = [torch.tensor([0.0, 1.0]).view(1, 2, 1, 1), torch.zeros(2, 1, 1, 1)]
    variances = [torch.tensor([0.5, 2.0]).view(1, 2, 1, 1), torch.ones(1, 1, 1, 1)]
    # layer 2: two examples, one channel: ((2-0)^2/1 + 0 + 0) / 2 / 2 = 1
    assert miro_penalty(features, pre_features, variances).item() == pytest.approx(2.0)


def test_miro_update_regularises_towards_the_initial_features(kit):
    algorithm = kit.algorithm("MIRO", ld=0.5)
    minibatches = kit.minibatches()
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    assert algorithm.layers == [0, 1]  # depth 2: the blocks ending its quarters
    # at the start the features are the pre-trained ones and every variance is 0.1: the penalty
    # is sum over the 2 layers of log(0.1) / 2
    with torch.no_grad():
        ce = F.cross_entropy(algorithm.network(x), y).item()
    values = as_floats(algorithm.update(minibatches))
    assert values["reg_loss"] == pytest.approx(math.log(0.1), rel=1e-4)
    assert values["loss"] == pytest.approx(ce + 0.5 * math.log(0.1), rel=1e-4)

    with torch.no_grad():  # after a step: explicit computation on the blocks' whole outputs (B, L, C)
        features, pre_features = _block_outputs(algorithm.featurizer, x), _block_outputs(algorithm.pre_featurizer.module, x)
        expected = 0.0
        for f, pre, encoder in zip(features, pre_features, algorithm.var_encoders):
            var = (torch.log1p(torch.exp(encoder.b)) + 1e-5).view(1, 1, 16)  # per channel
            expected += (((f - pre) ** 2) / var + torch.log(var)).mean().item() / 2
    assert algorithm.update(minibatches)["reg_loss"] == pytest.approx(expected, rel=1e-4)


def _block_outputs(vit, x) -> list[torch.Tensor]:
    """Every block's output (B, tokens, C), class token first, from forward hooks."""
    outputs = []
    handles = [block.register_forward_hook(lambda _, __, out: outputs.append(out)) for block in vit.blocks]
    try:
        vit(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def test_miro_regularises_the_class_token_of_a_vit(kit):
    """The regularised feature of a ViT block is its whole output, class token included (MIRO's
    CLIP-ViT features are the full [HW + 1, B, C] block outputs): a featurizer that differs from the
    pre-trained one only in the class token's output is penalised for it."""
    algorithm = kit.algorithm("MIRO", ld=1.0)
    assert algorithm.layers == [0, 1]
    last = algorithm.featurizer.blocks[-1]
    # shift the last block's class-token output only: the patch tokens stay the pre-trained ones
    shift = torch.zeros(1, 17, 16)
    shift[:, 0] = 1.0
    last.register_forward_hook(lambda _, __, out: out + shift)
    values = as_floats(algorithm.update(kit.minibatches()))
    # layer 0 unchanged: log(0.1) / 2; layer 1: (shift^2 / 0.1 + log 0.1) averaged over the B x 17 x 16
    # entries, of which B x 16 (the class token's) are shifted by 1
    expected = math.log(0.1) / 2 + (1 / 17 / 0.1 + math.log(0.1)) / 2
    assert values["reg_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("backbone", ["dense", "gmoe"])
def test_miro_frozen_featurizer_never_changes(kit, backbone):
    algorithm = kit.algorithm("MIRO", backbone)
    initial = _state(algorithm.featurizer)
    assert _same(_state(algorithm.pre_featurizer.module), initial)
    for _ in range(3):
        algorithm.update(kit.minibatches())
    algorithm.train()
    assert not algorithm.pre_featurizer.training and not algorithm.pre_featurizer.module.training
    assert not any(p.requires_grad for p in algorithm.pre_featurizer.parameters())
    assert _same(_state(algorithm.pre_featurizer.module), initial)
    assert not _same(_state(algorithm.featurizer), initial)
    groups = algorithm.optimizer.param_groups
    assert groups[1]["lr"] == pytest.approx(3e-3 * 10.0)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in algorithm.var_encoders.parameters()}


def test_miro_layers_per_architecture(kit):
    vit = timm.create_model("vit_micro_patch4_32", num_classes=0, in_chans=1, img_size=16, embed_dim=16,
                            depth=12, num_heads=2)
    assert feature_layers(vit) == [2, 5, 8, 11]
    algorithm = get_algorithm_class("MIRO")(kit.input_shape, kit.num_classes, kit.num_domains,
                                            _resnet_hparams(kit, "MIRO"))
    assert algorithm.layers == [0, 1, 2, 3, 4]  # stem and the four stages
    assert [encoder.b.shape[1] for encoder in algorithm.var_encoders] == [64, 64, 128, 256, 512]
    assert not algorithm.featurizer.bn1.training  # frozen BatchNorm, as MIRO's ResNet
    values = as_floats(algorithm.update(kit.minibatches()))
    assert values["reg_loss"] == pytest.approx(5 * math.log(0.1) / 2, rel=1e-4)
