"""The gradient-based methods (AND-mask, SAND-mask, IGA, Fishr, RSC, MLDG, TRM) against hand
computations and explicit loops, on hand-made gradients and the tiny dense ViT."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from domainbed.algorithms import RunInfo
from domainbed.algorithms.fishr import per_sample_gradients
from domainbed.algorithms.gradient_agreement import (and_mask, gradient_variance_penalty, masked_mean_gradient,
                                                     sand_mask)
from domainbed.algorithms.mldg import MLDG, split_meta_train_test
from domainbed.algorithms.rsc import spared_samples, top_gradient_mask
from domainbed.algorithms.trm import TRM, inverse_hessian_vector_product

from conftest import as_floats


def record_step_gradients(algorithm, monkeypatch) -> list:
    """The gradients in the network's ``.grad`` each time the optimizer steps."""
    steps = []
    step = algorithm.optimizer.step

    def recording_step(*args, **kwargs):
        steps.append([p.grad.clone() for p in algorithm.network.parameters()])
        return step(*args, **kwargs)

    monkeypatch.setattr(algorithm.optimizer, "step", recording_step)
    return steps


def domain_gradients(network, minibatches):
    params = list(network.parameters())
    return [torch.autograd.grad(F.cross_entropy(network(x), y), params) for x, y in minibatches]


# ------------------------------------------------------------------ AND-mask and SAND-mask
GRADIENTS = torch.tensor([[1.0, -2.0, 3.0, 0.5],     # one row per domain
                          [2.0, -1.0, -1.0, 0.1],
                          [0.5, -3.0, 2.0, -0.2]])


def test_and_mask_keeps_the_components_whose_signs_agree():
    # |mean sign| per component: 1, 1, 1/3, 1/3
    assert and_mask(GRADIENTS, 1.0).tolist() == [1, 1, 0, 0]
    assert and_mask(GRADIENTS, 0.3).tolist() == [1, 1, 1, 1]
    # mean gradient (7/6, -2, 4/3, 2/15), half the components kept: rescaled by 2
    combined = masked_mean_gradient(GRADIENTS, and_mask(GRADIENTS, 1.0))
    assert combined.tolist() == pytest.approx([7 / 3, -4.0, 0.0, 0.0])


def test_sand_mask_by_hand():
    gradients = torch.tensor([[1.0, 1.0, 2.0], [3.0, -1.0, 2.0]])
    # |mean sign| = 1, 0, 1; unbiased variance over the two domains = 2, 2, 0
    mask = sand_mask(gradients, tau=0.5, k=2.0)
    assert mask.tolist() == pytest.approx([math.tanh(2 * 0.5 / 2), 0.0, 1.0])  # 0.5/0 -> tanh(inf)
    # tau = 1 (DomainBed's default): no agreement exceeds it; 0/0 where the domains are equal -> 1e-17
    assert sand_mask(gradients, tau=1.0, k=2.0).tolist() == pytest.approx([0.0, 0.0, 1e-17], abs=1e-20)


def test_and_mask_update_steps_with_the_masked_mean_of_the_domain_gradients(kit, monkeypatch):
    algorithm = kit.algorithm("ANDMask", tau=1.0)
    minibatches = kit.minibatches()
    expected_loss = np.mean([F.cross_entropy(algorithm.network(x), y).item() for x, y in minibatches])
    per_domain = domain_gradients(copy.deepcopy(algorithm.network), minibatches)
    steps = record_step_gradients(algorithm, monkeypatch)
    values = as_floats(algorithm.update(minibatches))
    assert values["loss"] == pytest.approx(expected_loss, rel=1e-6)
    for got, grads in zip(steps[0], zip(*per_domain)):
        stacked = torch.stack(grads)
        agree = ((stacked > 0).all(0) | (stacked < 0).all(0)).float()  # tau = 1: every domain, same sign
        expected = agree * stacked.mean(0) * agree.numel() / agree.sum().clamp_min(1e-10)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert any(0 < (g != 0).float().mean() < 1 for g in steps[0])  # the mask did mask something


def test_sand_mask_update_uses_the_smooth_mask(kit, monkeypatch):
    tau, k = 0.4, 0.5
    algorithm = kit.algorithm("SANDMask", tau=tau, k=k)
    minibatches = kit.minibatches()
    per_domain = domain_gradients(copy.deepcopy(algorithm.network), minibatches)
    steps = record_step_gradients(algorithm, monkeypatch)
    algorithm.update(minibatches)
    for got, grads in zip(steps[0], zip(*per_domain)):
        stacked = torch.stack(grads)
        n = len(stacked)
        variance = ((stacked - stacked.mean(0)) ** 2).sum(0) / (n - 1)
        mask = torch.tanh(k / variance * (stacked.sign().mean(0).abs() - tau)).clamp_min(0)
        expected = mask * stacked.mean(0) / (1e-10 + mask.mean())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ IGA
def test_iga_penalty_by_hand():
    domain_a = (torch.tensor([1.0, 2.0]), torch.tensor([[0.0]]))
    domain_b = (torch.tensor([3.0, 0.0]), torch.tensor([[4.0]]))
    # means (2, 1) and 2: (1 + 1) + 4 for each domain
    assert gradient_variance_penalty([domain_a, domain_b]).item() == pytest.approx(12.0)


def test_iga_step_is_domainbeds_objective(kit, monkeypatch):
    """DomainBed subtracts the gradient of the mean loss (no graph through it); the step's gradient
    must be that of mean loss + penalty x sum ||g_e - g_mean||^2."""
    algorithm = kit.algorithm("IGA", penalty=10.0)
    minibatches = kit.minibatches()
    network = copy.deepcopy(algorithm.network).double()  # the reference in float64
    params = list(network.parameters())
    with sdpa_kernel(SDPBackend.MATH):
        losses = [F.cross_entropy(network(x.double()), y) for x, y in minibatches]
    grads = [torch.autograd.grad(loss, params, create_graph=True) for loss in losses]
    mean_loss = sum(losses) / len(losses)
    mean_grad = torch.autograd.grad(mean_loss, params, retain_graph=True)
    penalty = sum((g - m).pow(2).sum() for domain in grads for g, m in zip(domain, mean_grad))
    expected = torch.autograd.grad(mean_loss + 10.0 * penalty, params)

    steps = record_step_gradients(algorithm, monkeypatch)
    values = as_floats(algorithm.update(minibatches))
    assert values["penalty"] == pytest.approx(penalty.item(), rel=1e-4)
    assert values["loss"] == pytest.approx(mean_loss.item(), rel=1e-5)
    for got, want in zip(steps[0], expected):  # gradients reach ~2e3: float32 error relative to the scale
        assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()


# ------------------------------------------------------------------ Fishr
def explicit_per_sample_gradients(classifier, features, y):
    rows = []
    for i in range(len(y)):
        loss = F.cross_entropy(classifier(features[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(classifier.parameters()), create_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_fishr_per_sample_gradients_match_a_loop_and_stay_differentiable(nonlinear):
    torch.manual_seed(0)
    classifier = (nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)) if nonlinear else nn.Linear(8, 3))
    features = torch.randn(5, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    got = per_sample_gradients(classifier, features, y)
    want = explicit_per_sample_gradients(classifier, features, y)
    torch.testing.assert_close(got, want)
    inputs = [features, *classifier.parameters()]
    for a, b in zip(torch.autograd.grad(got.var(0).sum(), inputs), torch.autograd.grad(want.var(0).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fishr_moving_average_and_penalty(kit):
    ema = 0.9
    algorithm = kit.algorithm("Fishr", ema=ema, penalty_anneal_iters=100)
    minibatches = kit.minibatches()
    sizes = [len(x) for x, _ in minibatches]
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])

    averages = torch.zeros_like(algorithm.grad_variance_ema)
    for _ in range(2):
        network = copy.deepcopy(algorithm.network)
        gradients = explicit_per_sample_gradients(network[1], network[0](x), y).detach()
        variances = torch.stack([((g - g.mean(0)) ** 2).mean(0) for g in gradients.split(sizes)])
        averages = ema * averages + (1 - ema) * variances
        corrected = averages / (1 - ema)
        expected_penalty = np.mean([((corrected[d] - corrected.mean(0)) ** 2).mean().item()
                                    for d in range(len(sizes))])
        values = as_floats(algorithm.update(minibatches))
        torch.testing.assert_close(algorithm.grad_variance_ema, averages, rtol=1e-4, atol=1e-9)
        assert values["penalty"] == pytest.approx(expected_penalty, rel=1e-3)
        assert values["loss"] == pytest.approx(values["nll"])  # annealing: penalty weight 0


def test_fishr_penalty_comes_on_with_a_fresh_adam(kit):
    algorithm = kit.algorithm("Fishr", penalty_anneal_iters=2, **{"lambda": 50.0})
    minibatches = kit.minibatches()
    for _ in range(2):
        values = as_floats(algorithm.update(minibatches))
        assert values["loss"] == pytest.approx(values["nll"])
    before = algorithm.optimizer
    values = as_floats(algorithm.update(minibatches))
    assert values["loss"] == pytest.approx(values["nll"] + 50.0 * values["penalty"], rel=1e-5)
    assert algorithm.optimizer is not before
    assert {int(s["step"]) for s in algorithm.optimizer.state.values()} == {1}
    algorithm.update(minibatches)  # no second reset
    assert {int(s["step"]) for s in algorithm.optimizer.state.values()} == {2}


def test_fishr_never_resets_adam_without_annealing(kit):
    algorithm = kit.algorithm("Fishr", penalty_anneal_iters=0)
    optimizer = algorithm.optimizer
    algorithm.update(kit.minibatches())
    assert algorithm.optimizer is optimizer


# ------------------------------------------------------------------ RSC
def test_rsc_feature_mask_mutes_the_top_third_of_each_row():
    gradients = torch.tensor([[0.1, 0.5, -0.2, 0.9, 0.3, 0.0],
                              [3.0, 1.0, 2.0, -1.0, 0.0, 5.0]])
    keep = top_gradient_mask(gradients, 1 / 3)
    assert keep.sum(1).tolist() == [4, 4]                       # 2 of 6 muted in each row
    assert (~keep[0]).nonzero().flatten().tolist() == [1, 3]    # the two largest gradients
    assert (~keep[1]).nonzero().flatten().tolist() == [0, 5]
    thresholds = np.percentile(gradients.numpy(), 100 * (1 - 1 / 3), axis=1)[:, None]  # DomainBed's
    assert keep.numpy().tolist() == (gradients.numpy() < thresholds).tolist()


def test_rsc_spares_all_but_the_samples_hurt_most():
    drops = torch.tensor([0.05, 0.30, -0.10, 0.20, 0.00, 0.10])
    spared = spared_samples(drops, 1 / 3)
    assert spared.tolist() == [True, False, True, False, True, True]


def test_rsc_update_trains_on_the_muted_features(kit):
    # drop factors whose quantiles fall between two of the 16 features and 18 samples: an exact
    # position (16 features, 1/3) makes the mask hinge on the rounding of the quantile
    algorithm = kit.algorithm("RSC", rsc_f_drop_factor=0.3, rsc_b_drop_factor=0.3)
    minibatches = kit.minibatches()
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    featurizer, classifier = copy.deepcopy(algorithm.featurizer), copy.deepcopy(algorithm.classifier)

    features = featurizer(x)
    one_hot = F.one_hot(y, kit.num_classes).float()
    logits = classifier(features)
    gradients = torch.autograd.grad((logits * one_hot).sum(), features)[0].numpy()
    keep_f = gradients < np.percentile(gradients, 70, axis=1)[:, None]
    muted = classifier(features * torch.from_numpy(keep_f).float())
    drops = ((logits.softmax(1) - muted.softmax(1)) * one_hot).sum(1).detach().numpy()
    keep_b = drops < np.percentile(drops, 70)
    mask = torch.from_numpy(keep_f | keep_b[:, None]).float()
    assert 0 < mask.mean() < 1
    expected = F.cross_entropy(classifier(features * mask), y).item()
    assert algorithm.update(minibatches)["loss"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ MLDG
def test_split_meta_train_test_pairs_each_meta_train_domain_with_meta_test_ones():
    minibatches = [(torch.full((n,), float(d)), torch.full((n,), d)) for d, n in enumerate([4, 3, 5])]
    torch.manual_seed(0)
    order = torch.randperm(3).tolist()
    torch.manual_seed(0)
    pairs = split_meta_train_test(minibatches, num_meta_test=1)
    assert [(int(xi[0]), int(xj[0])) for (xi, _), (xj, _) in pairs] == [(order[0], order[2]), (order[1], order[2])]
    for (xi, yi), (xj, yj) in pairs:
        n = min(len(minibatches[int(xi[0])][0]), len(minibatches[int(xj[0])][0]))
        assert len(xi) == len(yi) == len(xj) == len(yj) == n
    torch.manual_seed(0)
    pairs = split_meta_train_test(minibatches, num_meta_test=2)
    assert [(int(xi[0]), int(xj[0])) for (xi, _), (xj, _) in pairs] == [(order[0], order[1])]


def test_mldg_steps_with_gi_plus_beta_gj(kit, monkeypatch):
    """DomainBed's computation: per pair, a copy of the network takes one step of a new Adam on
    domain i; Gi is the copy's gradient before the step, Gj its gradient on domain j after."""
    beta, lr, weight_decay = 0.7, 1e-2, 1e-3
    algorithm = kit.algorithm("MLDG", mldg_beta=beta, n_meta_test=1, lr=lr, weight_decay=weight_decay)
    minibatches = kit.minibatches()
    torch.manual_seed(5)
    pairs = split_meta_train_test(minibatches, num_meta_test=1)
    expected = [torch.zeros_like(p) for p in algorithm.network.parameters()]
    objective = 0.0
    for (xi, yi), (xj, yj) in pairs:
        inner = copy.deepcopy(algorithm.network)
        optimizer = torch.optim.Adam(inner.parameters(), lr=lr, weight_decay=weight_decay)
        loss_i = F.cross_entropy(inner(xi), yi)
        optimizer.zero_grad()
        loss_i.backward()
        optimizer.step()
        loss_j = F.cross_entropy(inner(xj), yj)
        grads_j = torch.autograd.grad(loss_j, list(inner.parameters()))
        for total, p, g_j in zip(expected, inner.parameters(), grads_j):
            total += p.grad / len(minibatches) + beta * g_j / len(minibatches)
        objective += loss_i.item() + beta * loss_j.item()

    steps = record_step_gradients(algorithm, monkeypatch)
    torch.manual_seed(5)
    values = as_floats(algorithm.update(minibatches))
    assert values["loss"] == pytest.approx(objective / len(minibatches), rel=1e-5)
    for got, want in zip(steps[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


def test_mldg_refuses_runs_without_a_meta_train_domain(kit):
    hparams = kit.hparams("MLDG", n_meta_test=2)
    with pytest.raises(ValueError, match="n_meta_test=2"):
        MLDG.check_run(hparams, RunInfo(steps=10, checkpoint_freq=5, num_train_domains=2))
    MLDG.check_run(hparams, RunInfo(steps=10, checkpoint_freq=5, num_train_domains=3))


# ------------------------------------------------------------------ TRM
def hessian(classifier: nn.Linear, features, y) -> torch.Tensor:
    def loss(weight):
        return F.cross_entropy(F.linear(features, weight.view_as(classifier.weight), classifier.bias), y)
    n = classifier.weight.numel()
    return torch.autograd.functional.hessian(loss, classifier.weight.detach().flatten()).view(n, n)


def domainbed_neumann(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """2 (I - H) v + (I - H)^2 v + ... + (I - H)^10 v, stopping once an entry exceeds 10."""
    term, estimate = v, None
    for _ in range(10):
        term = term - h @ term
        estimate = 2 * term if estimate is None else estimate + term
        if estimate.abs().max() > 10:
            break
    return estimate


def test_trm_inverse_hessian_series_against_the_explicit_hessian():
    torch.manual_seed(0)
    classifier = nn.Linear(4, 3)
    features, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    h = hessian(classifier, features, y)
    v = 0.1 * torch.randn(12)
    got = inverse_hessian_vector_product(classifier, features, y, v)
    torch.testing.assert_close(got, domainbed_neumann(h, v), rtol=1e-4, atol=1e-6)
    first = 2 * (v - h @ v)
    assert not torch.allclose(got, first)  # several terms were summed...
    big = 10 * torch.ones(12)
    # ...but a series that exceeds the bound at once stops at its first term
    torch.testing.assert_close(inverse_hessian_vector_product(classifier, features, y, big),
                               2 * (big - h @ big), rtol=1e-4, atol=1e-5)


def test_trm_transfer_step_by_hand(kit):
    eta, cos_lambda = 0.1, 0.5
    algorithm = kit.algorithm("TRM", iters=0, groupdro_eta=eta, cos_lambda=cos_lambda)
    minibatches = kit.minibatches()
    n = len(minibatches)
    featurizer = copy.deepcopy(algorithm.featurizer)
    classifiers = copy.deepcopy(algorithm.domain_classifiers)
    with torch.no_grad():
        features = [featurizer(x) for x, _ in minibatches]
    labels = [y for _, y in minibatches]
    nll = F.cross_entropy(algorithm.classifier(torch.cat(features)), torch.cat(labels)).item()

    for _ in range(30):  # each domain classifier: 30 plain gradient steps of lr 0.1 on its domain
        for classifier, f, y in zip(classifiers, features, labels):
            grads = torch.autograd.grad(F.cross_entropy(classifier(f), y), list(classifier.parameters()))
            with torch.no_grad():
                for p, g in zip(classifier.parameters(), grads):
                    p -= 0.1 * g

    alpha = torch.full((n, n), 1 / (n - 1)).fill_diagonal_(0)  # normalised rows of ones - eye
    total, new_alpha = 0.0, alpha.clone()
    for q, classifier in enumerate(classifiers):
        others = [i for i in range(n) if i != q]
        weighted = {i: alpha[q, i] * F.cross_entropy(classifier(features[i]), labels[i]) for i in others}
        own = torch.autograd.grad(F.cross_entropy(classifier(features[q]), labels[q]), classifier.weight)[0]
        transfer = torch.autograd.grad(sum(weighted.values()), classifier.weight)[0]
        preconditioned = domainbed_neumann(hessian(classifier, features[q], labels[q]), transfer.flatten())
        total += sum(weighted.values()).item() - cos_lambda * (preconditioned @ own.flatten()).item()
        for i in others:
            new_alpha[q, i] *= math.exp(eta * weighted[i].item())

    values = as_floats(algorithm.update(minibatches))
    assert values["nll"] == pytest.approx(nll, rel=1e-5)
    assert values["trm_loss"] == pytest.approx(total / n, rel=1e-4)
    torch.testing.assert_close(algorithm.alpha, new_alpha)
    for got, want in zip(algorithm.domain_classifiers.parameters(), classifiers.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_trm_is_erm_before_iters_and_trains_the_featurizer_through_the_transfer_loss(kit):
    erm_phase = kit.algorithm("TRM", iters=5)
    values = as_floats(erm_phase.update(kit.minibatches()))
    assert values["trm_loss"] == 0.0
    assert torch.equal(erm_phase.alpha, torch.ones(3, 3) - torch.eye(3))

    gmoe = kit.algorithm("TRM", "gmoe", iters=0)
    featurizer = copy.deepcopy(gmoe.featurizer)
    values = as_floats(gmoe.update(kit.minibatches()))
    assert values["trm_loss"] != 0.0 and values["moe_aux_loss_per_forward"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(featurizer.parameters(), gmoe.featurizer.parameters()))


def test_trm_refuses_a_nonlinear_classifier(kit):
    with pytest.raises(ValueError, match="linear classifier"):
        TRM.check_run(kit.hparams("TRM", nonlinear_classifier=True), RunInfo(10, 5, 3))
