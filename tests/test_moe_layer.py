"""SparseMoE as a drop-in FFN: equivalence with the dense Mlp, gradients, precision, records."""

import copy

import pytest
import torch
import torch.nn as nn
from timm.layers import Mlp

from domainbed.moe import SparseMoE, collect_aux_loss, routing_stats
from domainbed.moe.experts import grouped_mm_unavailable_reason

DIM, HIDDEN = 16, 64


def _dense(seed: int = 0) -> Mlp:
    torch.manual_seed(seed)
    return Mlp(DIM, HIDDEN).eval()


def _tokens(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, DIM, generator=torch.Generator().manual_seed(seed))


def test_all_experts_dropless_equals_dense_mlp():
    mlp = _dense()
    moe = SparseMoE.from_mlp(mlp, num_experts=4, top_k=4, capacity_factor=None).eval()
    x = _tokens(3, 10)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), mlp(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("capacity_factor", [None, "dropless", 100.0])
def test_top1_output_is_gate_times_dense_output(capacity_factor):
    mlp = _dense()
    moe = SparseMoE.from_mlp(mlp, num_experts=6, top_k=1, capacity_factor=capacity_factor).eval()
    x = _tokens(2, 9)
    with torch.no_grad():
        out = moe(x)
        probs = moe.router(x.reshape(-1, DIM)).softmax(-1)
        expected = probs.amax(-1, keepdim=True) * mlp(x).reshape(-1, DIM)
    torch.testing.assert_close(out.reshape(-1, DIM), expected, rtol=1e-5, atol=1e-6)
    assert not moe.last_routing.dropped.any()
    torch.testing.assert_close(moe.last_routing.gates[:, 0], probs.amax(-1))


def test_shapes_and_routing_record():
    moe = SparseMoE(DIM, HIDDEN, num_experts=3, top_k=2).train()
    out = moe(_tokens(4, 7))
    assert out.shape == (4, 7, DIM)
    record = moe.last_routing
    assert record.expert_index.shape == record.gates.shape == record.dropped.shape == (28, 2)
    assert record.token_shape == (4, 7) and record.num_experts == 3
    assert (record.expert_index[:, 0] != record.expert_index[:, 1]).all()
    torch.testing.assert_close(record.gates.sum(-1), torch.ones(28))
    assert moe.aux_loss.ndim == 0 and moe.aux_loss.requires_grad


_grouped_reason = grouped_mm_unavailable_reason(torch.zeros(1))
IMPLEMENTATIONS = ["loop", pytest.param("grouped", marks=pytest.mark.skipif(
    _grouped_reason is not None, reason=f"no grouped_mm on the CPU here: {_grouped_reason}"))]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_gradients_reach_router_and_experts_and_idle_experts_get_zero_grads(implementation, capacity_factor):
    # Linear router on positive tokens with expert 3's weights all -1: expert 3 never wins.
    moe = SparseMoE(DIM, HIDDEN, num_experts=4, top_k=1, router="linear", gate_noise=0.0,
                    capacity_factor=capacity_factor, experts_implementation=implementation).train()
    with torch.no_grad():
        moe.router.weight[3] = -1.0
    x = _tokens(2, 12).abs().requires_grad_()
    (moe(x).pow(2).sum() + moe.aux_loss).backward()
    assert (moe.last_routing.expert_index != 3).all()
    for name, param in moe.named_parameters():
        assert param.grad is not None, name
    assert moe.router.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    routing = moe.last_routing
    served = [bool(((routing.expert_index[:, 0] == e) & ~routing.dropped[:, 0]).any()) for e in range(4)]
    assert any(served) and not served[3]
    for grad in (moe.experts.fc1_weight.grad, moe.experts.fc2_weight.grad, moe.experts.fc1_bias.grad):
        for e in range(4):  # exactly zero for an expert that served no token, never garbage
            assert (grad[e].abs().sum() > 0) == served[e]


def test_cosine_router_parameters_get_gradients():
    moe = SparseMoE(DIM, HIDDEN, num_experts=4, top_k=2).train()
    (moe(_tokens(2, 8)).sum() + moe.aux_loss).backward()
    router = moe.router
    for param in (router.projection.weight, router.projection.bias, router.expert_embeddings, router.log_scale):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_same_seed_same_numbers_in_training_mode():
    def run():
        torch.manual_seed(3)
        moe = SparseMoE(DIM, HIDDEN, num_experts=4, top_k=2, expert_dropout=0.2).train()
        out = moe(_tokens(2, 8))
        return out, moe.aux_loss, moe.last_routing.expert_index
    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_bf16_autocast_keeps_router_in_float32():
    moe = SparseMoE(DIM, HIDDEN, num_experts=4, top_k=2).train()
    x = _tokens(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clean, _, probs = moe.route(x.reshape(-1, DIM).bfloat16())
        out = moe(x)
    assert clean.dtype == probs.dtype == torch.float32
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert moe.aux_loss.dtype == torch.float32
    out.float().sum().backward()
    assert moe.router.projection.weight.grad.dtype == torch.float32


def test_collect_aux_loss_and_routing_stats_over_a_model():
    model = nn.Sequential(SparseMoE(DIM, HIDDEN, num_experts=3), nn.Identity(),
                          SparseMoE(DIM, HIDDEN, num_experts=5, capacity_factor=0.5)).train()
    model(_tokens(2, 10))
    total = collect_aux_loss(model)
    torch.testing.assert_close(total, model[0].aux_loss + model[2].aux_loss)
    stats = routing_stats(model)
    assert set(stats) == {"0", "2"}
    shares = stats["2"]["expert_share"]
    assert len(shares) == 5 and abs(sum(shares) - 1.0) < 1e-6
    counts = torch.bincount(model[2].last_routing.expert_index.flatten(), minlength=5)
    assert shares == pytest.approx((counts / 20).tolist())
    # capacity 1 * int(0.5 * ceil(20 / 5)) = 2 per expert: at most 10 of 20 tokens kept
    assert stats["2"]["dropped_share"] >= 0.5
    assert collect_aux_loss(nn.Linear(2, 2)).item() == 0.0


def test_a_copy_taken_after_a_training_forward_has_no_graph_and_routes_alike():
    """Weight averaging (SWAD, SMA) and MIRO deep-copy a network between training forwards: the copy
    must not carry the forward's autograd graph (nor its queued aux losses), must leave the source's
    queue alone, and must route every token as the source does."""
    torch.manual_seed(0)
    moe = SparseMoE(DIM, HIDDEN, num_experts=4, top_k=2).train()
    moe(_tokens(2, 8))
    moe(_tokens(2, 8, seed=2))
    assert moe.aux_loss.grad_fn is not None and len(moe.pending_aux_losses) == 2
    clone = copy.deepcopy(moe)
    assert clone.aux_loss.grad_fn is None and not clone.aux_loss.requires_grad
    assert clone.aux_loss.item() == moe.aux_loss.item() and clone.pending_aux_losses == []
    # the source keeps both queued losses: the step that ran those forwards still adds them
    assert len(moe.pending_aux_losses) == 2 and all(loss.grad_fn is not None for loss in moe.pending_aux_losses)
    for (name, p), (_, q) in zip(moe.named_parameters(), clone.named_parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name  # equal values, own storage

    x = _tokens(3, 5, seed=4)
    for training in (True, False):  # with gate noise (same seed) and without
        moe.train(training), clone.train(training)
        torch.manual_seed(5)
        expected = moe(x)
        torch.manual_seed(5)
        out = clone(x)
        assert torch.equal(out, expected)
        assert torch.equal(clone.last_routing.expert_index, moe.last_routing.expert_index)
        assert torch.equal(clone.last_routing.gates, moe.last_routing.gates)
    # training the copy leaves the source untouched
    moe.pending_aux_losses, clone.pending_aux_losses = [], []
    (out.sum() + clone.aux_loss).backward()
    assert all(p.grad is None for p in moe.parameters())
    assert all(p.grad is not None for p in clone.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_experts=4, top_k=5), "top_k"),
    (dict(router="dot"), "router"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(capacity_factor="unlimited"), "capacity_factor"),
    (dict(aux_loss="zloss"), "aux_loss"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseMoE(DIM, HIDDEN, **kwargs)


def test_wrong_token_width_is_a_clear_error():
    with pytest.raises(ValueError, match="last dimension 16"):
        SparseMoE(DIM, HIDDEN)(torch.randn(2, 3, 8))


# ------------------------------------------------------------------ evaluation capacity
def _images(seed: int = 7, n: int = 12, tokens: int = 9) -> torch.Tensor:
    return _tokens(n, tokens, seed=seed)


def _one_by_one(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([moe(x[i:i + 1]) for i in range(len(x))])


@pytest.mark.parametrize("eval_capacity, batch_independent", [
    ("per_image", True), ("dropless", True), ("batch", False)])
def test_evaluation_capacity_decides_whether_an_image_depends_on_its_batch(eval_capacity, batch_independent):
    torch.manual_seed(0)
    moe = SparseMoE(DIM, HIDDEN, num_experts=3, top_k=1, capacity_factor=0.5, eval_capacity=eval_capacity).eval()
    x = _images()
    with torch.no_grad():
        together, alone = moe(x), _one_by_one(moe, x)
    if batch_independent:
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    else:  # the authors' batch-wide capacity: neighbours take an image's slots
        assert not torch.allclose(together, alone, atol=1e-4)


def test_per_image_evaluation_is_the_batch_rule_on_a_batch_of_one():
    torch.manual_seed(0)
    per_image = SparseMoE(DIM, HIDDEN, num_experts=3, capacity_factor=0.5, eval_capacity="per_image").eval()
    batch = copy.deepcopy(per_image)
    batch.eval_capacity = "batch"
    x = _images(n=1)
    with torch.no_grad():
        assert torch.equal(per_image(x), batch(x))
        per_image(_images())
    # capacity 1 * int(0.5 * ceil(9 / 3)) = 1 per expert per image: at most 3 of 9 tokens kept each
    kept = (~per_image.last_routing.dropped[:, 0]).reshape(12, 9).sum(1)
    assert (kept <= 3).all() and (kept >= 1).all()


def test_training_capacity_stays_batch_wide():
    torch.manual_seed(0)
    moe = SparseMoE(DIM, HIDDEN, num_experts=3, capacity_factor=0.5, gate_noise=0.0).train()
    x = _images()
    moe(x)
    # C = int(0.5 * ceil(108 / 3)) = 18 per expert over the batch: 54 kept in all, unevenly across images
    assert int((~moe.last_routing.dropped).sum()) <= 54
    assert moe.capacity_groups((12, 9)) == 1 and moe.eval().capacity_groups((12, 9)) == 12


# ------------------------------------------------------------------ expert implementations
@pytest.mark.skipif(_grouped_reason is not None, reason=f"no grouped_mm on the CPU here: {_grouped_reason}")
@pytest.mark.parametrize("capacity_factor, top_k", [(None, 1), (0.5, 1), (1.0, 2)])
def test_grouped_and_loop_experts_agree_forward_and_backward(capacity_factor, top_k):
    results = {}
    for implementation in ("loop", "grouped"):
        torch.manual_seed(0)
        moe = SparseMoE(DIM, HIDDEN, num_experts=4, top_k=top_k, capacity_factor=capacity_factor,
                        experts_implementation=implementation).train()
        x = _images().requires_grad_()
        torch.manual_seed(1)
        out = moe(x)
        (out.pow(2).sum() + moe.aux_loss).backward()
        results[implementation] = (out, x.grad, *(p.grad for p in moe.parameters()))
    for loop, grouped in zip(results["loop"], results["grouped"]):
        assert torch.isfinite(grouped).all()
        torch.testing.assert_close(grouped, loop, rtol=1e-4, atol=1e-5)


def test_unknown_experts_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="implementation"):
        SparseMoE(DIM, HIDDEN, experts_implementation="triton")
