"""Routing rules on hand-made cases: top-k gates, capacity, batch priority, aux losses."""

import math

import pytest
import torch
from timm.layers import Mlp

from domainbed.moe import (SparseMoE, expert_capacity, importance_load_loss, importance_loss, load_loss,
                           plan_dispatch, switch_balance_loss, top_k_gating)


def test_capacity_formula():
    assert expert_capacity(10, 6, 1, 1.5) == 3      # 1 * int(1.5 * ceil(10/6) = 2)
    assert expert_capacity(10, 6, 2, 1.5) == 6      # 2 * 3
    assert expert_capacity(6304, 6, 1, 1.5) == 1576  # 32 x 197 tokens: int(1.5 * 1051)
    assert expert_capacity(10, 6, 1, None) is None


def test_top_k_gates():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    index, gates = top_k_gating(probs, 1)
    assert index.tolist() == [[0], [2]]
    torch.testing.assert_close(gates, torch.tensor([[0.5], [0.7]]))
    index, gates = top_k_gating(probs, 2)
    assert index.tolist() == [[0, 1], [2, 1]]
    torch.testing.assert_close(gates, torch.tensor([[0.5 / 0.8, 0.3 / 0.8], [0.7 / 0.9, 0.2 / 0.9]]))


def test_batch_priority_top1_drops_the_least_confident_tokens():
    # 6 tokens, 2 experts, capacity 2; expert 0 is wanted by tokens 0, 1, 2, 4.
    expert_index = torch.tensor([[0], [0], [0], [1], [0], [1]])
    priority = torch.tensor([0.6, 0.9, 0.7, 0.8, 0.95, 0.5])
    plan = plan_dispatch(expert_index, priority, num_experts=2, capacity=2)
    # expert 0 serves tokens in order 4 (.95), 1 (.9), then 2 (.7) and 0 (.6) find it full.
    assert plan.dropped[:, 0].tolist() == [True, False, True, False, False, False]
    assert plan.expert_counts == [2, 2]
    # kept pairs grouped by expert, priority order inside; then the dropped pairs
    assert plan.slot_token.tolist() == [4, 1, 3, 5, 2, 0]
    assert plan.slot_kept.tolist() == [True] * 4 + [False] * 2


def test_batch_priority_top2_second_choices_queue_behind_all_first_choices():
    # 4 tokens, 3 experts, capacity 3 slots per expert.
    expert_index = torch.tensor([[0, 1],   # token 0, priority .9
                                 [1, 0],   # token 1, priority .5
                                 [1, 2],   # token 2, priority .6
                                 [1, 0]])  # token 3, priority .4
    priority = torch.tensor([0.9, 0.5, 0.6, 0.4])
    plan = plan_dispatch(expert_index, priority, num_experts=3, capacity=3)
    # expert 1 first choices: tokens 2, 1, 3 (by priority) fill it; token 0's second choice,
    # though token 0 is the most confident, arrives after every first choice and is dropped.
    # expert 0: first choice of 0, then second choices of 1 and 3 (priority order): all fit.
    assert plan.dropped.tolist() == [[False, True], [False, False], [False, False], [False, False]]
    assert plan.expert_counts == [3, 3, 1]
    slots = list(zip(plan.slot_token.tolist(), plan.slot_choice.tolist()))
    assert slots == [(0, 0), (1, 1), (3, 1), (2, 0), (1, 0), (3, 0), (2, 1), (0, 1)]


def test_capacity_per_group_ranks_tokens_within_their_own_group():
    # 2 groups of 4 tokens, 2 experts, capacity 1 per expert per group. Group 1's tokens are all more
    # confident than group 0's: counted over the batch they would take every slot of expert 0.
    expert_index = torch.tensor([[0], [0], [1], [1], [0], [0], [0], [1]])
    priority = torch.tensor([0.5, 0.6, 0.3, 0.2, 0.9, 0.8, 0.95, 0.7])
    plan = plan_dispatch(expert_index, priority, num_experts=2, capacity=1, num_groups=2)
    # group 0: expert 0 keeps token 1 (.6), expert 1 token 2 (.3); group 1: token 6 (.95) and 7 (.7)
    assert plan.dropped[:, 0].tolist() == [True, False, False, True, True, True, False, False]
    assert plan.expert_counts == [2, 2]
    kept = plan.slot_token[:4].tolist()
    assert sorted(kept[:2]) == [1, 6] and sorted(kept[2:]) == [2, 7]
    # one group of 8 with the same total capacity (2) keeps only the batch's most confident tokens
    batch = plan_dispatch(expert_index, priority, num_experts=2, capacity=2, num_groups=1)
    assert batch.slot_token[:2].tolist() == [6, 4]


def test_plan_makes_no_data_dependent_shapes():
    # every tensor of the plan has a size fixed by (tokens, k, experts): nothing waits for the device
    for capacity in (None, 1, 3):
        expert_index = torch.randint(0, 4, (10, 2))
        plan = plan_dispatch(expert_index, torch.rand(10), num_experts=4, capacity=capacity)
        assert plan.slot_token.shape == plan.slot_choice.shape == plan.slot_kept.shape == (20,)
        assert plan.expert_ends.shape == (4,) and plan.dropped.shape == (10, 2)
        assert int(plan.slot_kept.sum()) == plan.expert_ends[-1] == 20 - int(plan.dropped.sum())


def test_dropless_keeps_every_choice():
    expert_index = torch.zeros(50, 2, dtype=torch.long)
    expert_index[:, 1] = 1
    plan = plan_dispatch(expert_index, torch.rand(50), num_experts=3, capacity=None)
    assert not plan.dropped.any() and plan.expert_counts == [50, 50, 0]


def test_dropped_tokens_output_zero_and_kept_tokens_gate_times_dense():
    torch.manual_seed(0)
    mlp = Mlp(8, 16).eval()
    moe = SparseMoE.from_mlp(mlp, num_experts=2, top_k=1, capacity_factor=0.5).eval()
    x = torch.randn(12, 8)
    with torch.no_grad():
        out = moe(x)
        probs = moe.router(x).softmax(-1)
    dropped = moe.last_routing.dropped[:, 0]
    # capacity int(0.5 * 6) = 3 per expert: at most 6 of 12 tokens kept
    assert dropped.sum() >= 6
    assert torch.count_nonzero(out[dropped]) == 0
    expected = probs.amax(-1, keepdim=True) * mlp(x)
    torch.testing.assert_close(out[~dropped], expected[~dropped], rtol=1e-5, atol=1e-6)
    # the kept tokens of each expert are its most confident ones
    choice = moe.last_routing.expert_index[:, 0]
    top = probs.amax(-1)
    for e in range(2):
        kept, lost = top[(choice == e) & ~dropped], top[(choice == e) & dropped]
        if len(kept) and len(lost):
            assert kept.min() >= lost.max()


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _cv2(values: list[float]) -> float:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return var / (mean ** 2 + 1e-10)


def test_importance_and_load_losses_match_hand_computation():
    ln3 = math.log(3.0)
    clean = torch.tensor([[ln3, 0.0], [ln3, 0.0], [0.0, ln3]])
    # softmax rows: (.75, .25), (.75, .25), (.25, .75) -> Imp = (1.75, 1.25)
    # unbiased var = 2 * .25^2 / 1 = .125, mean^2 = 2.25 -> L_imp = 1/18
    assert importance_loss(clean).item() == pytest.approx(1 / 18, rel=1e-5)

    noisy = torch.tensor([[ln3 + 0.1, 0.0], [ln3 - 0.2, 0.3], [0.0, 0.2]])
    sigma = 0.5
    thresholds = [ln3 + 0.1, ln3 - 0.2, 0.2]  # top-1 noisy logit per token
    load = [sum(_phi((clean[t, e].item() - thresholds[t]) / sigma) for t in range(3)) for e in range(2)]
    expected_load = _cv2(load)
    assert load_loss(clean, noisy, sigma, top_k=1).item() == pytest.approx(expected_load, rel=1e-5)
    assert importance_load_loss(clean, noisy, sigma, 1).item() == pytest.approx(
        (1 / 18 + expected_load) / 2, rel=1e-5)

    # top-2 of 2 experts: the threshold is each token's smaller noisy logit
    thresholds2 = [0.0, 0.3, 0.0]
    load2 = [sum(_phi((clean[t, e].item() - thresholds2[t]) / sigma) for t in range(3)) for e in range(2)]
    assert load_loss(clean, noisy, sigma, top_k=2).item() == pytest.approx(_cv2(load2), rel=1e-5)


def test_load_without_noise_is_the_hard_count():
    ln3 = math.log(3.0)
    clean = torch.tensor([[ln3, 0.0], [ln3, 0.0], [0.0, ln3]])
    # top-1 counts (2, 1): var .5, mean^2 2.25 -> 2/9; l_aux = (1/18 + 2/9) / 2 = 5/36
    assert load_loss(clean, clean, 0.0, 1).item() == pytest.approx(2 / 9, rel=1e-5)
    assert importance_load_loss(clean, clean, 0.0, 1).item() == pytest.approx(5 / 36, rel=1e-5)


def test_switch_balance_loss_hand_computation():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    index = torch.tensor([[0], [0], [1], [0]])
    # f = (3/4, 1/4), P = (0.6, 0.4): 2 * (0.45 + 0.1) = 1.1
    assert switch_balance_loss(probs, index).item() == pytest.approx(1.1, rel=1e-6)


def test_layer_aux_loss_is_the_importance_load_loss_of_its_router():
    torch.manual_seed(0)
    moe = SparseMoE(8, 16, num_experts=3, top_k=1).eval()
    x = torch.randn(20, 8)
    moe(x)
    logits = moe.router(x)
    torch.testing.assert_close(moe.aux_loss, importance_load_loss(logits, logits, 0.0, 1))
