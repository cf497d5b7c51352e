"""Auxiliary load-balancing losses for a sparse MoE layer (computed per layer, in float32).

Without them the router collapses onto a few experts early in training, and capacity limits
then drop many tokens.
"""

from __future__ import annotations

import math

import torch

from .dispatch import count_per_expert

_EPS = 1e-10


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Var(v) / (mean(v)^2 + 1e-10), with the unbiased variance (as the authors' MoE library)."""
    values = values.float()
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + _EPS)


def importance_loss(clean_logits: torch.Tensor) -> torch.Tensor:
    """L_imp: Imp_e = sum over tokens of softmax(clean logits)_e."""
    return cv_squared(clean_logits.float().softmax(dim=-1).sum(dim=0))


def load_loss(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, noise_std: float,
              top_k: int) -> torch.Tensor:
    """L_load, V-MoE's smooth estimate of how many tokens each expert receives.

    P_{t,e} = Phi((clean_logit_{t,e} - thr_t) / sigma), thr_t the k-th largest *noisy* logit of
    token t: the probability that expert e would still make token t's top-k if its noise were
    drawn again (V-MoE's code; the authors' library compared a probability with a logit here).
    Without noise (sigma = 0: gate_noise = 0 or eval) there is nothing to smooth over: Load_e
    is then the hard count of token-choices per expert and this term carries no gradient.
    """
    clean_logits, noisy_logits = clean_logits.float(), noisy_logits.float()
    if noise_std <= 0:
        chosen = clean_logits.topk(top_k, dim=-1).indices
        return cv_squared(count_per_expert(chosen, clean_logits.shape[-1]).float())
    threshold = noisy_logits.topk(top_k, dim=-1).values[:, -1:]
    z = (clean_logits - threshold) / noise_std
    prob_in_top_k = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return cv_squared(prob_in_top_k.sum(dim=0))


def importance_load_loss(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, noise_std: float,
                         top_k: int) -> torch.Tensor:
    """l_aux = (L_imp + L_load) / 2 (GMoE's auxiliary loss)."""
    return 0.5 * (importance_loss(clean_logits) + load_loss(clean_logits, noisy_logits, noise_std, top_k))


def switch_balance_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * P_e (Switch / GShard): f_e the share of token-choices sent to e before
    capacity, P_e the mean router probability of e. Equals 1 when routing is uniform."""
    num_experts = probs.shape[-1]
    counts = count_per_expert(expert_index, num_experts).float()
    share = counts / counts.sum().clamp_min(1.0)
    return num_experts * (share * probs.float().mean(dim=0)).sum()
