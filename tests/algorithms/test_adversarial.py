"""DANN/CDANN, URM, ADRMX and Transfer: schedules, penalties and losses against hand computations."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.adrmx import supervised_contrastive_loss
from domainbed.algorithms.adversarial import class_balanced_weights, gradient_penalty
from domainbed.algorithms.transfer import project_to_ball

from conftest import as_floats


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def pooled(minibatches):
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    domains = torch.cat([torch.full((len(x),), i) for i, (x, _) in enumerate(minibatches)])
    return x, y, domains


# ---------------------------------------------------------------- DANN / CDANN
@pytest.mark.parametrize("name", ["DANN", "CDANN"])
@pytest.mark.parametrize("d_steps, schedule", [(1, "GDGDGD"), (2, "DGDDGD"), (3, "DDGDDDG")])
def test_discriminator_and_generator_take_turns(kit, name, d_steps, schedule):
    """update n (from 1) is a generator step iff n % (d + 1) == d: only that player's optimizer moves."""
    algorithm = kit.algorithm(name, d_steps_per_g_step=d_steps)
    discriminator_side = [algorithm.discriminator] + ([algorithm.class_embeddings] if name == "CDANN" else [])
    minibatches = kit.minibatches()
    for turn in schedule:
        disc_before = [flat(m) for m in discriminator_side]
        net_before = flat(algorithm.network)
        values = as_floats(algorithm.update(minibatches))
        disc_moved = all(not torch.equal(flat(m), b) for m, b in zip(discriminator_side, disc_before))
        disc_still = all(torch.equal(flat(m), b) for m, b in zip(discriminator_side, disc_before))
        net_moved = not torch.equal(flat(algorithm.network), net_before)
        if turn == "D":
            assert set(values) == {"disc_loss"} and disc_moved and not net_moved
        else:
            assert set(values) == {"gen_loss"} and disc_still and net_moved
    assert algorithm.update_count.item() == len(schedule)


def test_gradient_penalty_by_hand():
    """Identity 'discriminator' (logits = inputs): d(sum CE)/d x_i = softmax(x_i) - onehot(d_i).
    x_1 = (0, 0), domain 0: (-1/2, 1/2), |g|^2 = 1/2; x_2 = (ln 3, 0), domain 1: (3/4, -3/4), |g|^2 = 9/8."""
    inputs = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], requires_grad=True)
    penalty = gradient_penalty(inputs * 1.0, torch.tensor([0, 1]), inputs)
    assert penalty.item() == pytest.approx((0.5 + 9 / 8) / 2)
    penalty.backward()  # differentiable (create_graph): the discriminator can be trained on it
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0


def test_class_balanced_weights_by_hand():
    # counts (3, 1, 2) over 3 class slots: each class weighs 1/3 in total
    weights = class_balanced_weights(torch.tensor([0, 0, 0, 1, 2, 2]))
    assert weights.tolist() == pytest.approx([1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6])
    # DomainBed's slots are the labels 0..max(y): an absent class 1 still counts (total weight 2/3)
    assert class_balanced_weights(torch.tensor([0, 2, 2])).tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 6])


def test_cdann_generator_loss_against_an_explicit_loop(kit):
    """gen_loss = CE(task) - lambda * (sum_i w_i CE_i(domain) + grad_penalty * mean_i |dCE_i/dinput_i|^2),
    with w_i = 1 / (n_{y_i} * slots), on features + class embeddings; each term computed per example."""
    algorithm = kit.algorithm("CDANN", d_steps_per_g_step=1, grad_penalty=0.7, **{"lambda": 0.3})
    minibatches = [(x[:4], y[:4]) for x, y in kit.minibatches()]  # labels 0, 1, 2, 0 in every domain
    x, y, domains = pooled(minibatches)
    with torch.no_grad():
        features = algorithm.featurizer(x)
        task = F.cross_entropy(algorithm.classifier(features), y).item()
    counts = {c: int((y == c).sum()) for c in range(3)}
    disc, penalty = 0.0, 0.0
    for i in range(len(y)):
        disc_input = (features[i] + algorithm.class_embeddings.weight[y[i]]).detach().requires_grad_()
        ce = F.cross_entropy(algorithm.discriminator(disc_input[None]), domains[i:i + 1])
        disc += ce.item() / (counts[int(y[i])] * 3)
        penalty += torch.autograd.grad(ce, disc_input)[0].pow(2).sum().item() / len(y)
    values = as_floats(algorithm.update(minibatches))  # update 1 with d = 1: a generator step
    assert values["gen_loss"] == pytest.approx(task - 0.3 * (disc + 0.7 * penalty), rel=1e-5)


# ---------------------------------------------------------------- URM
def test_urm_discriminator_loss_on_hand_made_features(kit):
    """Discriminator D(z) = sum(z): loss = mean softplus(-D(noise)) + lambda * mean softplus(D(features)),
    noise ~ U[-1, 1) (tanh) drawn from the global RNG."""
    urm = kit.algorithm("URM", urm_adv_lambda=0.15)
    width = urm.featurizer.num_features
    urm.discriminator = nn.Linear(width, 1, bias=False)
    nn.init.ones_(urm.discriminator.weight)
    features = torch.linspace(-0.5, 0.5, 3 * width).reshape(3, width)
    torch.manual_seed(5)
    noise = -1 + 2 * torch.rand(3, width)
    expected = (F.softplus(-noise.sum(1)).mean() + 0.15 * F.softplus(features.sum(1)).mean()).item()
    torch.manual_seed(5)
    assert urm.discriminator_loss(features).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("output, low, high", [("tanh", -1.0, 1.0), ("relu", 0.0, 1.0), ("sigmoid", 0.0, 1.0)])
def test_urm_noise_matches_the_generator_output_range(kit, output, low, high):
    urm = kit.algorithm("URM", urm_generator_output=output)
    noise = urm.uniform_noise(torch.zeros(2000, 4))
    assert low <= noise.min().item() < low + 0.01 and high - 0.01 < noise.max().item() < high
    x = kit.minibatches()[0][0]
    activation = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[output]
    with torch.no_grad():  # predictions go through the generator's output activation, as DomainBed's
        torch.testing.assert_close(urm.predict(x), urm.classifier(activation(urm.featurizer(x))))


def test_urm_discriminator_targets(kit):
    features = torch.zeros(5, 3)
    hard = kit.algorithm("URM").discriminator_targets(features)
    assert hard[0].tolist() == [1.0] * 5 and hard[1].tolist() == [0.0] * 5
    smoothed = kit.algorithm("URM", urm_discriminator_label_smoothing=0.2)
    torch.manual_seed(3)
    u_noise, u_features = torch.rand(5), torch.rand(5)
    torch.manual_seed(3)
    noise_targets, feature_targets = smoothed.discriminator_targets(features)
    torch.testing.assert_close(noise_targets, 0.8 + 0.2 * u_noise)  # in [0.8, 1), drawn first
    torch.testing.assert_close(feature_targets, 0.2 * u_features)   # in [0, 0.2)


def test_urm_update_trains_the_discriminator_on_the_pre_step_features(kit):
    """Step (2) sees the features computed before step (1) moved the featurizer, as DomainBed's."""
    urm = kit.algorithm("URM")
    minibatches = kit.minibatches()
    x, _, _ = pooled(minibatches)
    with torch.no_grad():
        features = urm.features(x)
    reference = copy.deepcopy(urm)
    kit.seed_all(2)
    urm.update(minibatches)
    kit.seed_all(2)
    loss = reference.discriminator_loss(features)
    reference.discriminator_opt.zero_grad()
    loss.backward()
    reference.discriminator_opt.step()
    for ours, expected in zip(urm.discriminator.parameters(), reference.discriminator.parameters()):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- ADRMX
def _supcon_loop(features, labels, domains, lam, temperature=0.07):
    """SupConLossLambda written out anchor by anchor, pair by pair, in Python floats."""
    z = F.normalize(features, dim=1).tolist()
    n = len(z)
    s = [[sum(a * b for a, b in zip(z[i], z[j])) / temperature for j in range(n)] for i in range(n)]
    total, anchors = 0.0, 0
    for i in range(n):
        def weight(j):
            return lam if domains[j] == domains[i] else 1 - lam
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denominator = sum(weight(k) * math.exp(s[i][k]) for k in range(n) if k != i) + 1e-5
        total += sum(math.log(weight(j) * math.exp(s[i][j]) / denominator + 1e-5) for j in positives) / len(positives)
        anchors += 1
    return -total / (anchors + 1)


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_supervised_contrastive_loss_against_an_explicit_loop(lam):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(7, 5, generator=generator)
    labels = [0, 1, 0, 2, 1, 0, 3]  # label 2 and 3 have no positive: those anchors are skipped
    domains = [0, 0, 1, 1, 2, 2, 0]
    loss = supervised_contrastive_loss(features, torch.tensor(labels), torch.tensor(domains), in_domain_weight=lam)
    assert loss.item() == pytest.approx(_supcon_loop(features, labels, domains, lam), rel=1e-5)


def test_remix_pairs_two_examples_of_the_same_class(kit):
    """Classifier = identity on 3-d features: invariant_i = e_{y_i}, domain_j = 2 e_{y_j}. A same-class
    pair gives logits 3 e_y (CE = log(1 + 2 e^-3)), a mixed one e_a + 2 e_b (CE >= log(1 + e + e^-1));
    class 2 has one example and adds nothing; the sum is divided by the 3 classes."""
    adrmx = kit.algorithm("ADRMX")
    adrmx.classifier = nn.Identity()
    y = torch.tensor([2, 0, 1, 0, 1, 1])
    onehot = F.one_hot(y, 3).float()
    for seed in range(5):
        torch.manual_seed(seed)
        loss = adrmx.remix_loss(onehot, 2 * onehot, y)
        assert loss.item() == pytest.approx(2 * math.log1p(2 * math.exp(-3)) / 3, rel=1e-5)


def test_adrmx_alternates_discriminator_and_generator(kit):
    """d_steps_per_g_step = 2: updates D, G, D; the generator step moves both featurizers and all
    three classifiers, the discriminator step only the discriminator."""
    adrmx = kit.algorithm("ADRMX")
    generator = [adrmx.featurizer, adrmx.featurizer_domain, adrmx.classifier, adrmx.classifier_invariant,
                 adrmx.classifier_domain]
    minibatches = kit.minibatches()
    for turn in "DGD":
        before_disc, before_gen = flat(adrmx.discriminator), [flat(m) for m in generator]
        values = as_floats(adrmx.update(minibatches))
        disc_moved = not torch.equal(flat(adrmx.discriminator), before_disc)
        gen_moved = [not torch.equal(flat(m), b) for m, b in zip(generator, before_gen)]
        if turn == "D":
            assert set(values) == {"loss_disc"} and disc_moved and not any(gen_moved)
        else:
            assert "loss_remixed" in values and not disc_moved and all(gen_moved)


# ---------------------------------------------------------------- Transfer
def test_projection_onto_the_ball_by_hand():
    center, module = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        center.weight.zero_(), center.bias.fill_(1.0)
        module.weight.copy_(torch.tensor([[3.0, 0.0]])), module.bias.fill_(5.0)  # distance |(3, 0, 4)| = 5
    project_to_ball(module, center, 10.0)  # inside: unchanged, exactly
    assert module.weight.tolist() == [[3.0, 0.0]] and module.bias.tolist() == [5.0]
    project_to_ball(module, center, 2.5)  # halfway to the center
    assert module.weight.flatten().tolist() == pytest.approx([1.5, 0.0]) and module.bias.item() == pytest.approx(3.0)


def test_loss_gap_by_hand(kit):
    """Identity featurizer, identity adversary on 2-d inputs, label 0: per-domain CE ln 2, ln 4/3, ln 4;
    gap = ln 4 - ln 4/3 = ln 3."""
    transfer = kit.algorithm("Transfer")
    transfer.featurizer = nn.Identity()
    transfer.adv_classifier = nn.Linear(2, 2)
    with torch.no_grad():
        transfer.adv_classifier.weight.copy_(torch.eye(2)), transfer.adv_classifier.bias.zero_()
    ln3 = math.log(3.0)
    minibatches = [(torch.tensor([[0.0, 0.0]]), torch.tensor([0])), (torch.tensor([[ln3, 0.0]]), torch.tensor([0])),
                   (torch.tensor([[0.0, ln3]]), torch.tensor([0]))]
    assert transfer.loss_gap(minibatches).item() == pytest.approx(ln3, rel=1e-6)


def test_transfer_update_by_hand_with_gradient_descent_ascent(kit):
    """gda (SGD for the descent side, our intended-semantics fix): the classifier takes exactly one SGD
    step on the task loss (the gap step does not involve it), the featurizer moves, and the
    adversary is the classifier plus one ascent step on t_lambda * gap, projected onto the ball."""
    lr, lr_d, t_lambda, delta = 0.05, 5.0, 0.5, 1e-4
    transfer = kit.algorithm("Transfer", gda=True, lr=lr, lr_d=lr_d, t_lambda=t_lambda, delta=delta, d_steps_per_g=1)
    minibatches = kit.minibatches()
    x, y, _ = pooled(minibatches)
    weight, bias = (p.detach().clone().requires_grad_() for p in transfer.classifier.parameters())
    with torch.no_grad():
        features = transfer.featurizer(x)
    grad_w, grad_b = torch.autograd.grad(F.cross_entropy(features @ weight.T + bias, y), [weight, bias])
    expected_w, expected_b = weight.detach() - lr * grad_w, bias.detach() - lr * grad_b
    featurizer_before = flat(transfer.featurizer)
    values = as_floats(transfer.update(minibatches))
    torch.testing.assert_close(transfer.classifier.weight, expected_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(transfer.classifier.bias, expected_b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(flat(transfer.featurizer), featurizer_before)

    # the adversary: start at the (updated) classifier, ascend the gap on the final features, project
    w = transfer.classifier.weight.detach().clone().requires_grad_()
    b = transfer.classifier.bias.detach().clone().requires_grad_()
    with torch.no_grad():
        domain_features = [transfer.featurizer(xd) for xd, _ in minibatches]
    losses = torch.stack([F.cross_entropy(f @ w.T + b, yd) for f, (_, yd) in zip(domain_features, minibatches)])
    gap = t_lambda * (losses.max() - losses.min())
    assert values["gap"] == pytest.approx(gap.item(), rel=1e-5)
    gw, gb = torch.autograd.grad(gap, [w, b])
    step_w, step_b = lr_d * gw, lr_d * gb
    scale = min(1.0, delta / torch.cat([step_w.flatten(), step_b]).norm().item())
    torch.testing.assert_close(transfer.adv_classifier.weight, w.detach() + scale * step_w, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(transfer.adv_classifier.bias, b.detach() + scale * step_b, rtol=1e-4, atol=1e-6)
    assert scale < 1.0  # the projection was active
