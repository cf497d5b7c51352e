"""Mixup, SagNet, SelfReg and CAD/CondCAD against hand computations on tiny tensors."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed.algorithms import RunInfo, get_algorithm_class
from domainbed.algorithms.contrastive import (BASE_TEMPERATURE, SELFREG_FEATURE_WEIGHT, contrastive_bottleneck_loss,
                                              same_class_partners, selfreg_regularizer)
from domainbed.algorithms.mixup import random_domain_pairs
from domainbed.algorithms.sagnet import EPS, randomize_content, randomize_style

from conftest import as_floats


def _distinct_label_minibatches(kit):
    """The kit's batches with each domain's examples rotated, so that paired domains disagree on
    the label at every position, and domain 1 one example shorter (pairs are cut to the shorter)."""
    batches = []
    for d, (x, y) in enumerate(kit.minibatches()):
        x, y = torch.roll(x, d, 0), torch.roll(y, d, 0)
        batches.append((x[:-1], y[:-1]) if d == 1 else (x, y))
    return batches


# ------------------------------------------------------------------ Mixup
def test_random_domain_pairs_follow_a_random_cycle_cut_to_the_shorter_batch():
    minibatches = [(torch.full((n, 1), float(d)), torch.full((n,), d)) for d, n in enumerate([4, 6, 5])]
    torch.manual_seed(7)
    order = torch.randperm(3).tolist()
    torch.manual_seed(7)
    pairs = random_domain_pairs(minibatches)
    assert len(pairs) == 3
    for position, ((xi, yi), (xj, yj)) in enumerate(pairs):
        i, j = order[position], order[(position + 1) % 3]
        assert yi.unique().tolist() == [i] and yj.unique().tolist() == [j]
        assert len(xi) == len(yi) == len(xj) == len(yj) == min([4, 6, 5][i], [4, 6, 5][j])
    # a cycle: every domain is first once and second once
    assert sorted(int(a[1][0]) for a, _ in pairs) == sorted(int(b[1][0]) for _, b in pairs) == [0, 1, 2]


def test_mixup_mixes_inputs_and_losses_with_the_drawn_lambda(kit, monkeypatch):
    lam = 0.3
    draws = []
    monkeypatch.setattr(np.random, "beta", lambda a, b: draws.append((a, b)) or lam)
    mixup = kit.algorithm("Mixup", mixup_alpha=0.7, lr=1e-3)
    minibatches = _distinct_label_minibatches(kit)
    before = copy.deepcopy(mixup.network)
    inputs = []
    mixup.featurizer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))

    torch.manual_seed(3)
    order = torch.randperm(3).tolist()
    torch.manual_seed(3)
    values = as_floats(mixup.update(minibatches))

    assert draws == [(0.7, 0.7)] * 3
    objective = 0.0
    for position in range(3):
        (xi, yi), (xj, yj) = minibatches[order[position]], minibatches[order[(position + 1) % 3]]
        n = min(len(xi), len(xj))
        mixed = lam * xi[:n] + (1 - lam) * xj[:n]
        torch.testing.assert_close(inputs[position], mixed)
        logits = before(mixed)
        objective = objective + lam * F.cross_entropy(logits, yi[:n]) + (1 - lam) * F.cross_entropy(logits, yj[:n])
    objective = objective / 3
    assert values["loss"] == pytest.approx(objective.item(), rel=1e-5)

    # Adam's first step moves each weight by lr * g / (|g| + eps) of this very objective
    gradients = torch.autograd.grad(objective, list(before.parameters()))
    for old, new, g in zip(before.parameters(), mixup.network.parameters(), gradients):
        torch.testing.assert_close(new, old - 1e-3 * g / (g.abs() + 1e-8), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ SagNet
def _features():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([[1.0], [3.0], [0.5], [2.0], [1.5]])
    offsets = torch.tensor([[0.0], [4.0], [-2.0], [1.0], [10.0]])
    return torch.randn(5, 8, generator=generator) * scales + offsets


def _row_stats(row):
    values = row.tolist()
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, var


def test_style_randomization_keeps_the_content_and_mixes_mean_and_variance_by_alpha():
    features = _features()
    torch.manual_seed(11)
    out = randomize_style(features)
    torch.manual_seed(11)
    alpha, other = torch.rand(5, 1)[:, 0].tolist(), torch.randperm(5).tolist()

    for i in range(5):
        mean_i, var_i = _row_stats(features[i])
        mean_o, var_o = _row_stats(features[other[i]])
        new_mean = alpha[i] * mean_i + (1 - alpha[i]) * mean_o
        new_var = alpha[i] * var_i + (1 - alpha[i]) * var_o
        expected = [(v - mean_i) / math.sqrt(var_i + EPS) * math.sqrt(new_var + EPS) + new_mean
                    for v in features[i].tolist()]
        assert out[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        # the output's own statistics are the mixed ones, its standardized values the input's
        out_mean, out_var = _row_stats(out[i])
        assert out_mean == pytest.approx(new_mean, abs=1e-5)
        assert out_var == pytest.approx(new_var, rel=1e-4)
        torch.testing.assert_close((out[i] - out_mean) / math.sqrt(out_var),
                                   (features[i] - mean_i) / math.sqrt(var_i), rtol=0, atol=1e-4)


def test_content_randomization_swaps_the_standardized_values_and_keeps_the_style():
    features = _features().requires_grad_()
    torch.manual_seed(5)
    out = randomize_content(features)
    torch.manual_seed(5)
    other = torch.randperm(5).tolist()

    for i in range(5):
        mean_i, var_i = _row_stats(features[i].detach())
        mean_o, var_o = _row_stats(features[other[i]].detach())
        expected = [(v - mean_o) / math.sqrt(var_o + EPS) * math.sqrt(var_i + EPS) + mean_i
                    for v in features[other[i]].tolist()]
        assert out[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert _row_stats(out[i].detach())[0] == pytest.approx(mean_i, abs=1e-5)

    # gradients reach the features only through each row's own mean and variance
    weights = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((out * weights).sum(), features)
    mean = features.mean(1, keepdim=True)
    var = features.var(1, keepdim=True)
    frozen_content = out.detach() - mean.detach()
    frozen_content = frozen_content / (var.detach() + EPS).sqrt()
    (expected,) = torch.autograd.grad(((frozen_content * (var + EPS).sqrt() + mean) * weights).sum(), features)
    torch.testing.assert_close(grad, expected)


def test_sagnet_content_step_and_the_adversary_moves_only_the_featurizer(kit):
    minibatches = kit.minibatches()
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    trained = {}
    for weight in (0.0, 1.0):
        sagnet = kit.algorithm("SagNet", sag_w_adv=weight)
        before = copy.deepcopy(sagnet)
        kit.seed_all(2)
        values = as_floats(sagnet.update(minibatches))
        kit.seed_all(2)
        expected_c = F.cross_entropy(before.classifier(randomize_style(before.featurizer(x))), y)
        assert values["loss_c"] == pytest.approx(expected_c.item(), rel=1e-5)
        trained[weight] = sagnet
    # the adversarial step (the only one sag_w_adv changes) updates the featurizer, nothing else
    for name in ("classifier", "style_classifier"):
        for a, b in zip(getattr(trained[0.0], name).parameters(), getattr(trained[1.0], name).parameters()):
            assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(trained[0.0].featurizer.parameters(),
                                                     trained[1.0].featurizer.parameters()))
    # the style classifier itself was trained in step (2)
    fresh = kit.algorithm("SagNet")
    assert any(not torch.equal(a, b) for a, b in zip(fresh.style_classifier.parameters(),
                                                     trained[1.0].style_classifier.parameters()))
    # per update: two featurizer steps (content, adversary), one content and one style step
    trained[1.0].update(minibatches)
    steps = {name: {int(s["step"]) for s in getattr(trained[1.0], name).state.values()}
             for name in ("optimizer_f", "optimizer_c", "optimizer_s")}
    assert steps == {"optimizer_f": {4}, "optimizer_c": {2}, "optimizer_s": {2}}


# ------------------------------------------------------------------ SelfReg
def test_same_class_partners_are_class_wise_permutations_drawn_class_by_class():
    y = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0])
    torch.manual_seed(4)
    first, second = same_class_partners(y)
    for partner in (first, second):
        assert torch.equal(y[partner], y)
        for label in (0, 1, 2):
            members = (y == label).nonzero()[:, 0].tolist()
            assert sorted(partner[members].tolist()) == members  # a permutation within the class
    # DomainBed's draws: class by class (0, 1, 2), two permutations each, over the sorted positions
    order = [1, 3, 7, 2, 6, 0, 4, 5]  # examples sorted by label, stable
    torch.manual_seed(4)
    shuffles = ([], [])
    for start, size in ((0, 3), (3, 2), (5, 3)):
        for shuffle in shuffles:
            shuffle += (torch.randperm(size) + start).tolist()
    for partner, shuffle in zip((first, second), shuffles):
        for position, example in enumerate(order):
            assert partner[example].item() == order[shuffle[position]]


def test_selfreg_regularizer_against_an_explicit_loop():
    generator = torch.Generator().manual_seed(0)
    logits, features, projections = (torch.randn(4, 3, generator=generator), torch.randn(4, 2, generator=generator),
                                     torch.randn(4, 2, generator=generator))
    first, second, lam = torch.tensor([1, 0, 3, 2]), torch.tensor([0, 1, 2, 3]), 0.25

    def mse(rows):
        return sum(sum(v * v for v in row) for row in rows) / sum(len(row) for row in rows)

    L, Z, P = logits.tolist(), features.tolist(), projections.tolist()
    f, s = first.tolist(), second.tolist()
    ind_logit = mse([[L[i][k] - L[f[i]][k] for k in range(3)] for i in range(4)])
    ind_feat = mse([[Z[i][k] - P[f[i]][k] for k in range(2)] for i in range(4)])
    hdl_logit = mse([[L[i][k] - (lam * L[f[i]][k] + (1 - lam) * L[s[i]][k]) for k in range(3)] for i in range(4)])
    hdl_feat = mse([[Z[i][k] - (lam * P[f[i]][k] + (1 - lam) * P[s[i]][k]) for k in range(2)] for i in range(4)])
    expected = (lam * (ind_logit + SELFREG_FEATURE_WEIGHT * ind_feat)
                + (1 - lam) * (hdl_logit + SELFREG_FEATURE_WEIGHT * hdl_feat))
    assert SELFREG_FEATURE_WEIGHT == 0.3
    got = selfreg_regularizer(logits, features, projections, first, second, lam)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("confident", [False, True], ids=["cross-entropy>1", "cross-entropy<1"])
def test_selfreg_update_scales_the_regularizer_and_trains_the_projection_layer(kit, monkeypatch, confident):
    """The regularizer's weight is min(cross-entropy, 1): 1 on the fresh network, the cross-entropy
    once the classifier is confident (here: made so, on labels set to its own predictions)."""
    draws = []
    monkeypatch.setattr(np.random, "beta", lambda a, b: draws.append((a, b)) or 0.4)
    selfreg = kit.algorithm("SelfReg")
    minibatches = kit.minibatches()
    if confident:
        with torch.no_grad():
            selfreg.classifier.weight.mul_(2.0)  # cross-entropy about 0.2
            minibatches = [(x, selfreg.network(x).argmax(1)) for x, _ in minibatches]
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    before = copy.deepcopy(selfreg)
    torch.manual_seed(8)
    values = as_floats(selfreg.update(minibatches))
    assert draws == [(0.5, 0.5)]

    torch.manual_seed(8)
    features = before.featurizer(x)
    projections, logits = before.cdpl(features), before.classifier(features)
    first, second = same_class_partners(y)
    classification = F.cross_entropy(logits, y)
    assert (classification.item() < 1.0) == confident
    regularizer = selfreg_regularizer(logits, features, projections, first, second, 0.4)
    expected = classification + min(classification.item(), 1.0) * regularizer
    assert values["loss"] == pytest.approx(expected.item(), rel=1e-5)
    # DomainBed issue #62: the projection layer is trained (DomainBed's optimizer leaves it out)
    optimized = {id(p) for group in selfreg.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in selfreg.cdpl.parameters())
    assert not torch.equal(before.cdpl[-1].weight, selfreg.cdpl[-1].weight)
    assert not torch.equal(before.cdpl[0].weight, selfreg.cdpl[0].weight)


# ------------------------------------------------------------------ CAD / CondCAD
def _explicit_bottleneck_loss(z, y, d, temperature, conditional, flipped):
    """The loop the docstring describes, in Python floats."""
    n, losses = len(z), []
    dot = [[sum(a * b for a, b in zip(z[i], z[j])) / temperature for j in range(n)] for i in range(n)]
    for i in range(n):
        if not conditional and not any(y[j] == y[i] for j in range(n) if j != i):
            continue  # CAD skips anchors with no other example of their class
        candidates = [j for j in range(n) if j != i and (y[j] == y[i] or not conditional)]
        targets = [j for j in candidates if (d[j] != d[i]) == flipped]
        if not targets:
            continue
        mass = sum(math.exp(dot[i][j]) for j in targets) / sum(math.exp(dot[i][j]) for j in candidates)
        scale = temperature / BASE_TEMPERATURE
        losses.append(-scale * math.log(mass) if flipped else scale * math.log(mass))
    return sum(losses) / len(losses) if losses else 0.0, len(losses)


Z = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.2], [0.3, -0.7], [0.8, 0.9], [0.1, 0.1]]
Y = [0, 0, 1, 1, 0, 1, 2]   # class 2 has one example
D = [0, 1, 0, 1, 0, 0, 1]   # example 1 has no same-class partner in its domain, example 6 no class mate


@pytest.mark.parametrize("conditional", [False, True], ids=["CAD", "CondCAD"])
@pytest.mark.parametrize("flipped", [True, False], ids=["flipped", "not-flipped"])
def test_contrastive_bottleneck_loss_against_an_explicit_pairwise_loop(conditional, flipped):
    expected, anchors = _explicit_bottleneck_loss(Z, Y, D, 0.1, conditional, flipped)
    assert 0 < anchors < len(Z)  # some anchors are skipped, some count
    got = contrastive_bottleneck_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(D), 0.1, conditional, flipped)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_bottleneck_loss_by_hand():
    """One class, domains (0, 0, 1), orthogonal z_1, z_2 and z_3 = 0: every similarity is 0, so
    anchors 1 and 2 put mass 1/2 on the other domain and anchor 3 mass 1: the flipped loss is
    (0.1 / 0.07) x (log 2 + log 2 + 0) / 3."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    y, d = torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1])
    for conditional in (False, True):  # one class: CAD and CondCAD coincide
        got = contrastive_bottleneck_loss(z, y, d, 0.1, conditional, flipped=True)
        assert got.item() == pytest.approx(0.1 / 0.07 * 2 * math.log(2) / 3, rel=1e-6)
    # not flipped: only anchors 1 and 2 have a same-domain partner, each with mass 1/2
    got = contrastive_bottleneck_loss(z, y, d, 0.1, False, flipped=False)
    assert got.item() == pytest.approx(0.1 / 0.07 * math.log(0.5), rel=1e-6)
    # a single domain leaves no anchor: no bottleneck
    assert contrastive_bottleneck_loss(z, y, torch.zeros(3, dtype=torch.long), 0.1, False, True).item() == 0.0


@pytest.mark.parametrize("name", ["CAD", "CondCAD"])
def test_cad_update_projects_normalizes_and_weights_the_bottleneck(kit, name):
    cad = kit.algorithm(name, is_project=True, is_normalized=True, lmbda=10.0, temperature=0.05)
    minibatches = kit.minibatches()
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    domains = torch.arange(3).repeat_interleave(kit.batch)
    before = copy.deepcopy(cad)
    values = as_floats(cad.update(minibatches))

    features = before.featurizer(x)
    z = F.normalize(before.projection(features), dim=1)
    assert z.shape == (len(x), 128)
    expected_bn = contrastive_bottleneck_loss(z, y, domains, 0.05, name == "CondCAD", flipped=True)
    expected_clf = F.cross_entropy(before.classifier(features), y)
    assert values["bn_loss"] == pytest.approx(expected_bn.item(), rel=1e-5)
    assert values["clf_loss"] == pytest.approx(expected_clf.item(), rel=1e-5)
    assert values["total_loss"] == pytest.approx(expected_clf.item() + 10.0 * expected_bn.item(), rel=1e-5)
    # the projection head is trained with the rest
    assert all(not torch.equal(a, b) for a, b in zip(before.projection.parameters(), cad.projection.parameters()))


@pytest.mark.parametrize("name, hparam", [("Mixup", "mixup_alpha"), ("CAD", "temperature")])
def test_zero_distribution_parameters_are_refused_before_the_run(kit, name, hparam):
    run = RunInfo(steps=10, checkpoint_freq=5, num_train_domains=2)
    get_algorithm_class(name).check_run(kit.hparams(name), run)
    with pytest.raises(ValueError, match=f"{hparam} must be > 0"):
        get_algorithm_class(name).check_run(kit.hparams(name, **{hparam: 0.0}), run)
