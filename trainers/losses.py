"""Shared loss math: group-relative advantages, the clipped surrogate, aggregation, KL estimators.

Every function is pure: tensors in, tensors out, shapes in the names (``_B`` rows, ``_T`` token
positions, ``_G`` group members, ``_K`` turns, ``_V`` vocabulary). Token tensors are aligned with
``input_ids_BT``: position ``t`` holds quantities of token ``x_t`` predicted from ``x_<t``
(position 0 is never trained). ``mask_BT`` is 1 on trained (sampled assistant) tokens, else 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agents.scoring import token_logprobs  # the one log-prob convention, re-exported here
from kernels.estimators import k3 as k3_kl  # the sampled-token estimators live in kernels

__all__ = [
    "group_advantages",
    "masked_sum",
    "masked_mean",
    "clipped_surrogate",
    "truncated_is",
    "aggregate",
    "k3_kl",
    "kl_old_k3",
    "token_logprobs",
    "entropy_from_logits",
    "AGG_MODES",
]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def group_advantages(rewards_G: Tensor, *, std_norm: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantage of GRPO, one value per episode of a group.

    ``A_i = (R_i − mean(R)) / (std(R) + eps)`` with the unbiased std (as TRL and verl);
    without ``std_norm`` (Dr. GRPO) ``A_i = R_i − mean(R)``. A group of one has advantage 0.

    Shapes: ``rewards_G (G,) -> (G,)``; also works batched on the last dim, ``(..., G)``.
    """
    rewards_G = rewards_G.to(torch.float32)
    centered = rewards_G - rewards_G.mean(dim=-1, keepdim=True)
    if rewards_G.shape[-1] < 2:
        return torch.zeros_like(rewards_G)
    if not std_norm:
        return centered
    return centered / (rewards_G.std(dim=-1, keepdim=True) + eps)


def masked_sum(x_BT: Tensor, mask_BT: Tensor, dim: int | None = None) -> Tensor:
    """``Σ x·m`` over ``dim`` (all dims when None)."""
    prod = x_BT * mask_BT
    return prod.sum() if dim is None else prod.sum(dim=dim)


def masked_mean(x_BT: Tensor, mask_BT: Tensor, dim: int | None = None) -> Tensor:
    """``Σ x·m / max(Σ m, 1)`` over ``dim`` (all dims when None); 0 where the mask is empty."""
    return masked_sum(x_BT, mask_BT, dim) / masked_sum(torch.ones_like(x_BT), mask_BT, dim).clamp(min=1)


def truncated_is(logp_BT: Tensor, sampler_logp_BT: Tensor, cap: float) -> Tensor:
    """Truncated importance weights of the current policy over the (stale) sampler.

    ``w_t = min(exp(sg(log π_θ(x_t)) − log π_sampler(x_t)), C)``: with ``A_t ← w_t·A_t`` and the
    PPO reference set to ``sg(π_θ)`` (the proximal policy of decoupled PPO, Hilton et al. 2022;
    AReaL), the gradient is ``w_t·A_t·∇log π_θ``, the truncated-IS policy gradient (IMPALA's ρ̄;
    Yao et al. 2025 for sampler/trainer mismatch). No gradient. Shapes: ``(B, T) -> (B, T)``.
    """
    return torch.exp(logp_BT.detach() - sampler_logp_BT.detach()).clamp(max=cap)


def clipped_surrogate(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO clipped surrogate loss with asymmetric clip (DAPO) and optional dual clip.

    ``r_t = exp(logp_t − old_logp_t)``,
    ``l_t = −min(r_t·A_t, clip(r_t, 1 − clip_low, 1 + clip_high)·A_t)``;
    dual clip (Ye et al. 2020), for ``A_t < 0`` only: ``l_t ← min(l_t, −c·A_t)``.
    The gradient flows through ``logp_BT`` only (``old_logp`` and ``A`` are constants).

    Returns ``(loss_BT, clipped_BT)``; ``clipped_BT`` is 1.0 where the clipped branch is active
    (zero gradient for that token), for the clip fraction.
    """
    adv_BT = adv_BT.detach()
    ratio_BT = torch.exp(logp_BT - old_logp_BT.detach())
    unclipped_BT = -adv_BT * ratio_BT
    clipped_ratio_BT = torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    clipped_loss_BT = -adv_BT * clipped_ratio_BT
    loss_BT = torch.maximum(unclipped_BT, clipped_loss_BT)
    is_clipped_BT = (clipped_loss_BT > unclipped_BT).to(logp_BT.dtype)
    if dual_clip:
        dual_BT = -adv_BT * dual_clip
        use_dual_BT = (adv_BT < 0) & (dual_BT < loss_BT)
        loss_BT = torch.where(use_dual_BT, dual_BT, loss_BT)
        is_clipped_BT = torch.where(use_dual_BT, torch.ones_like(is_clipped_BT), is_clipped_BT)
    return loss_BT, is_clipped_BT


def aggregate(
    loss_BT: Tensor,
    mask_BT: Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: int | None = None,
    num_seqs: int | None = None,
) -> Tensor:
    """Reduce per-token losses to a scalar.

    - ``token-mean``: ``Σ_{b,t} m·l / N_tok``;
    - ``seq-mean-token-mean``: ``Σ_b (Σ_t m·l / Σ_t m) / N_seq``;
    - ``seq-mean-token-sum``: ``Σ_b Σ_t m·l / N_seq``.

    ``num_tokens``/``num_seqs`` are the *global* counts of the optimizer step (so micro-batches
    sum to the full-batch loss); they default to the counts of this batch.
    """
    if mode == "token-mean":
        n = num_tokens if num_tokens is not None else int(mask_BT.sum().item())
        return masked_sum(loss_BT, mask_BT) / max(n, 1)
    n_seq = num_seqs if num_seqs is not None else loss_BT.shape[0]
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_BT, mask_BT, dim=-1).sum() / max(n_seq, 1)
    if mode == "seq-mean-token-sum":
        return masked_sum(loss_BT, mask_BT, dim=-1).sum() / max(n_seq, 1)
    raise ValueError(f"unknown aggregation mode {mode!r}; allowed: {AGG_MODES}")


def kl_old_k3(logp_BT: Tensor, old_logp_BT: Tensor) -> Tensor:
    """Per-token k3 estimate of ``KL(π_old ‖ π_θ)`` on tokens sampled from ``π_old`` (no gradient).

    With ``r = π_θ(y)/π_old(y)``: ``k3 = r − 1 − log r ≥ 0``, unbiased under ``y ~ π_old``
    (``E[r] = 1``). ``k3_kl(logp, old)`` would be the k3 of ``KL(π_θ‖π_old)``, which needs samples
    from ``π_θ``: biased here. Shapes ``(B, T), (B, T) -> (B, T)``.
    """
    return k3_kl(old_logp_BT.detach(), logp_BT.detach())


def entropy_from_logits(logits_BTV: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy ``H_t = −Σ_v p_v log p_v`` of the distribution that *produced* ``x_t``.

    Aligned like ``token_logprobs`` (position 0 gets 0). Shapes ``(B, T, V) -> (B, T)``.
    """
    logp = torch.log_softmax(logits_BTV[:, :-1].float() / temperature, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return torch.nn.functional.pad(ent, (1, 0), value=0.0)
