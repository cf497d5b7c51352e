"""IRM, IB_ERM, IB_IRM, VREx, EQRM, RDM, GroupDRO and SD: penalties, update rules and anneal
schedules against hand computations (closed forms, explicit loops, numbers worked out by hand)."""

import copy
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed.algorithms.invariance import feature_variance, irm_penalty
from domainbed.algorithms.risk_distribution import kde_quantile, rdm_terms, risk_variance
from domainbed.algorithms.spectral_decoupling import logit_penalty

from conftest import as_floats


# ------------------------------------------------------------------ helpers
def domain_risks(network, minibatches) -> list[float]:
    """Each domain's cross-entropy under ``network`` (train mode, as in update), without gradient."""
    with torch.no_grad():
        return [F.cross_entropy(network(x), y).item() for x, y in minibatches]


def scale_gradient(logits: torch.Tensor, y: torch.Tensor) -> float:
    """d/ds mean_i CE(s z_i, y_i) at s = 1, in closed form: mean_i (sum_c p_ic z_ic - z_i,y_i)."""
    total = 0.0
    for z, label in zip(logits.tolist(), y.tolist()):
        exps = [math.exp(v) for v in z]
        p = [e / sum(exps) for e in exps]
        total += sum(pc * zc for pc, zc in zip(p, z)) - z[label]
    return total / len(logits)


def irm_penalty_by_hand(logits: torch.Tensor, y: torch.Tensor) -> float:
    return scale_gradient(logits[::2], y[::2]) * scale_gradient(logits[1::2], y[1::2])


def optimizer_steps(optimizer) -> set[int]:
    return {int(state["step"]) for state in optimizer.state.values()}


def kde_quantile_by_newton(values: list[float], alpha: float) -> float:
    """The alpha-quantile of the Gauss-optimal Gaussian KDE, by Newton's method on its CDF."""
    n = len(values)
    h = 1.06 * statistics.stdev(values) * n ** -0.2
    x = statistics.fmean(values)
    for _ in range(100):
        cdf = sum(0.5 * (1 + math.erf((x - v) / (h * math.sqrt(2)))) for v in values) / n
        pdf = sum(math.exp(-0.5 * ((x - v) / h) ** 2) / (h * math.sqrt(2 * math.pi)) for v in values) / n
        x -= (cdf - alpha) / pdf
    return x


# ------------------------------------------------------------------ IRM and the information bottleneck
def test_irm_penalty_on_two_examples_by_hand():
    # even half: z = (2, 0), y = 0 -> d/ds = 2 p_0 - 2 = -2 / (e^2 + 1)
    # odd half:  z = (0, 1), y = 0 -> d/ds = p_1 - 0 = e / (1 + e)
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    expected = (-2 / (math.e ** 2 + 1)) * (math.e / (1 + math.e))
    assert irm_penalty(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_irm_penalty_is_the_product_of_the_half_batch_scale_gradients():
    generator = torch.Generator().manual_seed(0)
    logits, y = 2 * torch.randn(7, 4, generator=generator), torch.randint(0, 4, (7,), generator=generator)
    assert irm_penalty(logits, y).item() == pytest.approx(irm_penalty_by_hand(logits, y), rel=1e-5)
    # differentiable: the penalty trains the logits
    logits.requires_grad_(True)
    irm_penalty(logits, y).backward()
    assert logits.grad.abs().sum() > 0


def test_feature_variance_by_hand():
    # dimension 0: values 1, 3 -> unbiased variance 2; dimension 1: 2, 6 -> 8; mean 5
    assert feature_variance(torch.tensor([[1.0, 2.0], [3.0, 6.0]])).item() == pytest.approx(5.0)


def test_irm_records_the_mean_domain_penalty_and_weighs_it_by_the_schedule(kit):
    irm = kit.algorithm("IRM", irm_penalty_anneal_iters=2, irm_lambda=7.0)
    minibatches = kit.minibatches()
    for step in range(4):
        with torch.no_grad():
            logits = [irm.network(x) for x, _ in minibatches]
        expected = np.mean([irm_penalty_by_hand(z, y) for z, (_, y) in zip(logits, minibatches)])
        values = as_floats(irm.update(minibatches))
        assert values["penalty"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        weight = 1.0 if step < 2 else 7.0
        assert values["loss"] == pytest.approx(values["nll"] + weight * values["penalty"], rel=1e-6)


def test_irm_replaces_adam_exactly_at_the_anneal_step(kit):
    irm = kit.algorithm("IRM", irm_penalty_anneal_iters=3)
    minibatches = kit.minibatches()
    original = irm.optimizer
    for step in range(3):
        irm.update(minibatches)
        assert irm.optimizer is original and optimizer_steps(original) == {step + 1}
    irm.update(minibatches)  # update_count == 3 == irm_penalty_anneal_iters
    fresh = irm.optimizer
    assert fresh is not original and optimizer_steps(fresh) == {1}
    assert irm.training_objects == {"optimizer": fresh}  # the new one is what a checkpoint saves
    assert [p for g in fresh.param_groups for p in g["params"]] == list(irm.network.parameters())
    assert fresh.param_groups[0]["lr"] == irm.hparams["lr"]
    irm.update(minibatches)
    assert irm.optimizer is fresh and optimizer_steps(fresh) == {2}
    assert int(irm.update_count) == 5


def test_ib_erm_adds_the_mean_domain_feature_variance_only_after_annealing(kit):
    ib = kit.algorithm("IB_ERM", ib_penalty_anneal_iters=2, ib_lambda=3.0)
    minibatches = kit.minibatches()
    original = ib.optimizer
    for step in range(3):
        with torch.no_grad():
            variances = [np.var(ib.featurizer(x).numpy(), axis=0, ddof=1).mean() for x, _ in minibatches]
        values = as_floats(ib.update(minibatches))
        assert values["IB_penalty"] == pytest.approx(np.mean(variances), rel=1e-5)
        weight = 0.0 if step < 2 else 3.0
        assert values["loss"] == pytest.approx(values["nll"] + weight * values["IB_penalty"], rel=1e-6)
        assert (ib.optimizer is original) == (step < 2)


def test_ib_irm_weighs_both_penalties_and_resets_adam_at_either_anneal_step(kit):
    ib_irm = kit.algorithm("IB_IRM", irm_penalty_anneal_iters=1, irm_lambda=5.0,
                           ib_penalty_anneal_iters=3, ib_lambda=2.0)
    minibatches = kit.minibatches()
    optimizers = []
    for step in range(5):
        values = as_floats(ib_irm.update(minibatches))
        optimizers.append(ib_irm.optimizer)
        irm_weight = 1.0 if step < 1 else 5.0
        ib_weight = 0.0 if step < 3 else 2.0
        expected = values["nll"] + irm_weight * values["IRM_penalty"] + ib_weight * values["IB_penalty"]
        assert values["loss"] == pytest.approx(expected, rel=1e-6)
    # steps 0 | 1 2 | 3 4: a new Adam at steps 1 and 3
    assert len({id(o) for o in optimizers}) == 3
    assert optimizers[1] is optimizers[2] is not optimizers[0] and optimizers[3] is optimizers[4] is not optimizers[2]


# ------------------------------------------------------------------ VREx
def test_risk_variance_by_hand():
    # risks 1, 2, 6: mean 3, squared deviations 4, 1, 9 -> 14 / 3
    assert risk_variance(torch.tensor([1.0, 2.0, 6.0])).item() == pytest.approx(14 / 3)


def test_vrex_penalty_is_the_variance_of_the_domain_risks_weighted_by_the_schedule(kit):
    vrex = kit.algorithm("VREx", vrex_penalty_anneal_iters=2, vrex_lambda=4.0)
    minibatches = kit.minibatches()
    original = vrex.optimizer
    for step in range(3):
        risks = domain_risks(vrex.network, minibatches)
        values = as_floats(vrex.update(minibatches))
        assert values["nll"] == pytest.approx(np.mean(risks), rel=1e-5)
        assert values["penalty"] == pytest.approx(np.var(risks), rel=1e-3, abs=1e-8)
        weight = 1.0 if step < 2 else 4.0
        assert values["loss"] == pytest.approx(values["nll"] + weight * values["penalty"], rel=1e-6)
        assert (vrex.optimizer is original) == (step < 2)


# ------------------------------------------------------------------ GroupDRO
def test_groupdro_exponentiated_gradient_update_of_q_over_two_steps(kit):
    eta = 0.5
    dro = kit.algorithm("GroupDRO", groupdro_eta=eta)
    minibatches = kit.minibatches()
    assert dro.q.tolist() == [1.0, 1.0, 1.0]

    risks_1 = np.array(domain_risks(dro.network, minibatches))
    values_1 = dro.update(minibatches)
    q_1 = np.exp(eta * risks_1) / np.exp(eta * risks_1).sum()
    np.testing.assert_allclose(dro.q.numpy(), q_1, rtol=1e-5)
    assert values_1["loss"] == pytest.approx(float(q_1 @ risks_1), rel=1e-5)

    risks_2 = np.array(domain_risks(dro.network, minibatches))
    values_2 = dro.update(minibatches)
    q_2 = q_1 * np.exp(eta * risks_2)
    q_2 /= q_2.sum()
    np.testing.assert_allclose(dro.q.numpy(), q_2, rtol=1e-5)
    # the same as a softmax of eta x the cumulative risks
    cumulative = np.exp(eta * (risks_1 + risks_2))
    np.testing.assert_allclose(dro.q.numpy(), cumulative / cumulative.sum(), rtol=1e-5)
    assert values_2["loss"] == pytest.approx(float(q_2 @ risks_2), rel=1e-5)
    assert not np.allclose(q_2, 1 / 3, atol=1e-3)  # the weights did move


def test_groupdro_refuses_a_different_number_of_domains(kit):
    with pytest.raises(ValueError, match="3 training domains, got 2"):
        kit.algorithm("GroupDRO").update(kit.minibatches(num_domains=2))


# ------------------------------------------------------------------ SD
def test_sd_penalty_by_hand():
    # squares 1, 4, 9, 0 -> mean 3.5
    assert logit_penalty(torch.tensor([[1.0, -2.0], [3.0, 0.0]])).item() == pytest.approx(3.5)


def test_sd_step_is_adams_first_step_on_cross_entropy_plus_sd_reg_times_the_penalty(kit):
    sd = kit.algorithm("SD", sd_reg=2.0, lr=1e-3)
    minibatches = kit.minibatches()
    x, y = torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])
    before = copy.deepcopy(sd.network)
    logits = before(x)
    penalty = (logits ** 2).sum() / logits.numel()
    gradients = torch.autograd.grad(F.cross_entropy(logits, y) + 2.0 * penalty, list(before.parameters()))
    values = as_floats(sd.update(minibatches))
    assert values["penalty"] == pytest.approx(penalty.item(), rel=1e-5)
    for old, new, g in zip(before.parameters(), sd.network.parameters(), gradients):
        torch.testing.assert_close(new, old - 1e-3 * g / (g.abs() + 1e-8), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ EQRM
def test_kde_quantile_matches_a_newton_solve_of_the_kde_cdf():
    values = [0.5, 1.0, 2.5]
    for alpha in (0.5, 0.75, 0.95):
        got = kde_quantile(torch.tensor(values, dtype=torch.float64), alpha).item()
        assert got == pytest.approx(kde_quantile_by_newton(values, alpha), rel=1e-7)


def test_kde_quantile_gradient_flows_through_the_bracket_ends_and_the_bandwidth():
    """DomainBed's semantics: q = (1 - t) lo + t hi with lo/hi = min/max + h z_alpha and t fixed."""
    values, alpha = [0.5, 1.0, 2.5], 0.75
    risks = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    quantile = kde_quantile(risks, alpha)
    quantile.backward()
    n, z = len(values), statistics.NormalDist().inv_cdf(alpha)
    std, mean = statistics.stdev(values), statistics.fmean(values)
    h = 1.06 * std * n ** -0.2
    lo, hi = min(values) + h * z, max(values) + h * z
    t = (quantile.item() - lo) / (hi - lo)
    d_h = [1.06 * n ** -0.2 * (v - mean) / ((n - 1) * std) for v in values]  # dh/dv_i
    expected = [z * d for d in d_h]
    expected[0] += 1 - t
    expected[2] += t
    np.testing.assert_allclose(risks.grad.numpy(), expected, rtol=1e-6)


def test_kde_quantile_of_equal_values_is_that_value():
    assert kde_quantile(torch.tensor([0.7, 0.7, 0.7]), 0.9).item() == pytest.approx(0.7)


@pytest.mark.parametrize("burnin", [2, 1.5])  # DomainBed's draws are floats: the reset still comes at step 2
def test_eqrm_is_erm_during_burn_in_then_the_kde_quantile_with_a_fresh_adam(kit, burnin):
    eqrm = kit.algorithm("EQRM", eqrm_burnin_iters=burnin, eqrm_quantile=0.8, eqrm_lr=1e-4)
    minibatches = kit.minibatches()
    original = eqrm.optimizer
    for step in range(4):
        risks = domain_risks(eqrm.network, minibatches)
        values = as_floats(eqrm.update(minibatches))
        expected = np.mean(risks) if step < 2 else kde_quantile_by_newton(risks, 0.8)
        assert values["loss"] == pytest.approx(expected, rel=1e-5)
        assert (eqrm.optimizer is original) == (step < 2)
    assert eqrm.optimizer.param_groups[0]["lr"] == 1e-4 and optimizer_steps(eqrm.optimizer) == {2}


# ------------------------------------------------------------------ RDM
def rdm_terms_by_loops(domain_losses: list[list[float]]) -> tuple[float, float, float]:
    gammas = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # DomainBed's RDM kernel
    risks = [statistics.fmean(losses) for losses in domain_losses]
    worst = domain_losses[risks.index(max(risks))]
    everyone = [v for losses in domain_losses for v in losses]

    def mean_kernel(a, b):
        return statistics.fmean(sum(math.exp(-g * (u - v) ** 2) for g in gammas) for u in a for v in b)

    mmd = mean_kernel(worst, worst) + mean_kernel(everyone, everyone) - 2 * mean_kernel(worst, everyone)
    return statistics.fmean(risks), mmd, statistics.variance(everyone) + statistics.variance(worst)


def test_rdm_terms_by_hand():
    # risks 1 and 1.5: the second domain is the worst; all losses 0, 2, 1, 2 (mean 1.25, unbiased
    # variance 2.75 / 3), the worst's 1, 2 (variance 0.5)
    erm, matching, variance = rdm_terms([torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0])])
    assert erm.item() == pytest.approx(1.25)
    assert variance.item() == pytest.approx(2.75 / 3 + 0.5)
    assert matching.item() == pytest.approx(rdm_terms_by_loops([[0.0, 2.0], [1.0, 2.0]])[1], rel=1e-5)


def test_rdm_terms_against_explicit_loops_with_unequal_domain_sizes():
    generator = torch.Generator().manual_seed(1)
    losses = [torch.rand(n, generator=generator, dtype=torch.float64) * (d + 1) for d, n in enumerate((5, 4, 6))]
    got = [term.item() for term in rdm_terms(losses)]
    np.testing.assert_allclose(got, rdm_terms_by_loops([l.tolist() for l in losses]), rtol=1e-9)


def test_rdm_penalties_start_at_the_anneal_step_with_a_fresh_adam_at_rdm_lr(kit):
    rdm = kit.algorithm("RDM", rdm_penalty_anneal_iters=2, rdm_lambda=3.0, variance_weight=0.5, rdm_lr=2e-4)
    minibatches = kit.minibatches()
    original = rdm.optimizer
    for step in range(3):
        with torch.no_grad():
            per_example = [F.cross_entropy(rdm.network(x), y, reduction="none").tolist() for x, y in minibatches]
        values = as_floats(rdm.update(minibatches))
        erm, matching, variance = rdm_terms_by_loops(per_example)
        assert values["erm_loss"] == pytest.approx(erm, rel=1e-5)
        assert values["matching_penalty"] == pytest.approx(matching, rel=1e-3, abs=1e-6)
        assert values["variance_penalty"] == pytest.approx(variance, rel=1e-4)
        matching_weight, variance_weight = (0.0, 0.0) if step < 2 else (3.0, 0.5)
        expected = (values["erm_loss"] + matching_weight * values["matching_penalty"]
                    + variance_weight * values["variance_penalty"])
        assert values["total_loss"] == pytest.approx(expected, rel=1e-6)
        assert (rdm.optimizer is original) == (step < 2)
    assert rdm.optimizer.param_groups[0]["lr"] == 2e-4
