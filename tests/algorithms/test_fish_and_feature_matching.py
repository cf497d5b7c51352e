"""Fish's meta step and the feature-distribution distances, against hand computations."""

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed.algorithms.distribution_matching import coral_distance, gaussian_kernel, mmd_distance, GAMMAS

from conftest import as_floats


def test_coral_distance_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0]])   # mean (1, 1), covariance [[2, 2], [2, 2]]
    y = torch.tensor([[1.0, 0.0], [1.0, 2.0]])   # mean (1, 1), covariance [[0, 0], [0, 2]]
    # mean difference 0; covariance difference [[2, 2], [2, 0]] -> mean of squares (4+4+4+0)/4 = 3
    assert coral_distance(x, y).item() == pytest.approx(3.0)
    shifted = y + torch.tensor([3.0, 0.0])         # means differ by (3, 0): mean of squares 9/2
    assert coral_distance(x, shifted).item() == pytest.approx(3.0 + 4.5)


def test_mmd_distance_against_an_explicit_double_loop():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=generator), torch.randn(5, 3, generator=generator) + 0.5

    def k(a, b):
        d = float(((a - b) ** 2).sum())
        return sum(np.exp(-g * d) for g in GAMMAS)

    def mean_kernel(a, b):
        return np.mean([k(u, v) for u in a for v in b])

    expected = mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)
    assert mmd_distance(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert gaussian_kernel(x, x).diagonal().tolist() == pytest.approx([len(GAMMAS)] * 4)  # k(a, a) = 7


@pytest.mark.parametrize("name, distance", [("CORAL", coral_distance), ("MMD", mmd_distance)])
def test_feature_matching_penalty_is_the_mean_over_domain_pairs(kit, name, distance):
    algorithm = kit.algorithm(name)
    features = [torch.randn(6, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    pairs = [distance(features[i], features[j]) for i, j in itertools.combinations(range(3), 2)]
    assert algorithm.penalty(features).item() == pytest.approx((sum(pairs) / 3).item(), rel=1e-6)


def test_causirl_compares_the_two_halves_of_a_random_cut(kit):
    algorithm = kit.algorithm("CausIRL_CORAL")
    features = [torch.randn(6, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    np.random.seed(3)
    cuts = [np.random.randint(0, 6) for _ in features]
    first = torch.cat([f[:c] for f, c in zip(features, cuts)])
    second = torch.cat([f[c:] for f, c in zip(features, cuts)])
    np.random.seed(3)
    assert algorithm.penalty(features).item() == pytest.approx(coral_distance(first, second).item(), rel=1e-6)


def test_fish_moves_meta_lr_of_the_way_to_the_inner_steps(kit):
    """One domain, fresh Adam: the inner step is -lr * g / (|g| + eps) (Adam's first step), so
    the network moves by meta_lr times that."""
    fish = kit.algorithm("Fish", num_domains=1, meta_lr=0.5, lr=1e-3)
    (x, y), = kit.minibatches(num_domains=1)
    before = copy.deepcopy(fish.network)
    gradients = torch.autograd.grad(F.cross_entropy(before(x), y), list(before.parameters()))
    fish.update([(x, y)])
    for old, new, g in zip(before.parameters(), fish.network.parameters(), gradients):
        expected = old - 0.5 * 1e-3 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(new, expected, rtol=0, atol=1e-6)
    # the inner optimizer's state carries over to the next step, as in DomainBed's reference
    fish.update([(x, y)])
    steps = {int(s["step"]) for s in fish.optimizer_inner.state.values()}
    assert steps == {2}


def test_fish_takes_one_inner_step_per_domain_in_order(kit):
    fish = kit.algorithm("Fish")
    minibatches = kit.minibatches()
    inner = copy.deepcopy(fish.network)
    optimizer = torch.optim.Adam(inner.parameters(), lr=fish.hparams["lr"], weight_decay=fish.hparams["weight_decay"])
    inner_losses = []
    for x, y in minibatches:
        optimizer.zero_grad()
        loss = F.cross_entropy(inner(x), y)
        loss.backward()
        optimizer.step()
        inner_losses.append(loss.item())
    expected = [w + 0.5 * (v - w) for w, v in zip(fish.network.parameters(), inner.parameters())]
    values = as_floats(fish.update(minibatches))
    for new, want in zip(fish.network.parameters(), expected):
        torch.testing.assert_close(new, want, rtol=1e-5, atol=1e-6)
    # the record is the mean of the inner losses (DomainBed's is the last one; see Fish)
    assert values["loss"] == pytest.approx(np.mean(inner_losses), rel=1e-5)
    assert abs(inner_losses[-1] - np.mean(inner_losses)) > 1e-3  # the two choices differ here
