"""Trainer math against hand-computed examples; gradients checked, not only values."""

from __future__ import annotations

import math

import pytest
import torch

from agents.types import Episode, EpisodeGroup, Turn
from trainers.config import ConfigError
from trainers.losses import aggregate, clipped_surrogate, group_advantages, k3_kl, token_logprobs
from trainers.methods.base import build_batch, policy_loss
from trainers.methods.opd import OPDConfig, opd_advantages
from trainers.methods.sft import demo_nll
from trainers.methods.sod import SODConfig, sod_advantages, sod_step_weights, step_divergences
from trainers.train_config import TrainConfig


def test_group_advantages_hand_example():
    # R = [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> ±0.8660
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv, torch.tensor([0.8660, -0.8660, -0.8660, 0.8660]), atol=1e-4)
    assert torch.allclose(group_advantages(torch.tensor([1.0, 0, 0, 1]), std_norm=False),
                          torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.3, 0.3])), torch.zeros(3))
    assert torch.equal(group_advantages(torch.tensor([2.0])), torch.zeros(1))
    # R = [3, 1, 2]: mean 2, std 1 -> [1, -1, 0] (up to eps)
    assert torch.allclose(group_advantages(torch.tensor([3.0, 1.0, 2.0])), torch.tensor([1.0, -1.0, 0.0]), atol=1e-5)


@pytest.mark.parametrize(
    "ratio, adv, lo, hi, dual, loss, grad, clipped",
    [
        (1.5, 1.0, 0.2, 0.2, 0.0, -1.2, 0.0, 1.0),  # clipped above: no gradient
        (1.5, -1.0, 0.2, 0.2, 0.0, 1.5, 1.5, 0.0),  # negative adv, ratio up: unclipped
        (0.5, 1.0, 0.2, 0.2, 0.0, -0.5, -0.5, 0.0),  # pessimistic branch: unclipped
        (0.5, -1.0, 0.2, 0.2, 0.0, 0.8, 0.0, 1.0),  # clipped below
        (1.25, 1.0, 0.2, 0.28, 0.0, -1.25, -1.25, 0.0),  # DAPO clip-high 0.28 lets 1.25 through
        (1.25, 1.0, 0.2, 0.2, 0.0, -1.2, 0.0, 1.0),  # symmetric 0.2 clips it
        (4.0, -1.0, 0.2, 0.2, 3.0, 3.0, 0.0, 1.0),  # dual clip caps the loss at c*|A|
        (2.0, -1.0, 0.2, 0.2, 3.0, 2.0, 2.0, 0.0),  # below the dual cap: ordinary
    ],
)
def test_clipped_surrogate_values_and_grads(ratio, adv, lo, hi, dual, loss, grad, clipped):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old = torch.zeros(1, 1)
    l_BT, c_BT = clipped_surrogate(logp, old, torch.tensor([[adv]]), clip_low=lo, clip_high=hi, dual_clip=dual)
    l_BT.sum().backward()
    assert l_BT.item() == pytest.approx(loss, abs=1e-6)
    # d/dlogp of -A * exp(logp - old) = -A * ratio
    assert logp.grad.item() == pytest.approx(grad, abs=1e-6)
    assert c_BT.item() == clipped


def test_aggregation_modes_hand_example():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(loss, mask, "token-mean", num_tokens=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(loss, mask, "bogus")


def test_k3_value_and_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0])
    k3 = k3_kl(logp, ref)
    d = ref - logp.detach()
    assert torch.allclose(k3, torch.exp(d) - d - 1)
    assert (k3 >= 0).all()
    k3.sum().backward()
    assert torch.allclose(logp.grad, 1 - torch.exp(d))


def test_token_logprobs_alignment_and_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    out = token_logprobs(logits, ids, temperature=0.7)
    assert out.shape == (2, 5) and torch.all(out[:, 0] == 0)
    ref = torch.log_softmax(logits[1, 2] / 0.7, -1)[ids[1, 3]]
    assert out[1, 3].item() == pytest.approx(ref.item(), abs=1e-6)


def test_opd_gradient_is_reverse_kl_policy_gradient():
    """At ratio 1, the OPD surrogate's gradient equals that of mean(sg(ℓ)·log π) with
    ℓ = log π_old − log π_T: the sampled-token reverse-KL gradient, not the k1 term."""
    torch.manual_seed(1)
    V, T = 6, 5
    z = torch.randn(1, T, V, requires_grad=True)
    ids = torch.randint(0, V, (1, T))
    mask = torch.tensor([[0.0, 1, 1, 0, 1]])
    teacher = torch.log_softmax(torch.randn(1, T, V), -1)
    teacher_lp = torch.nn.functional.pad(torch.gather(teacher[:, :-1], -1, ids[:, 1:, None]).squeeze(-1), (1, 0))
    logp = token_logprobs(z, ids)
    old = logp.detach()
    adv = opd_advantages(teacher_lp * mask, old * mask, mask)
    assert torch.allclose(adv, (teacher_lp - old) * mask)
    loss_BT, _ = clipped_surrogate(logp, old, adv)
    aggregate(loss_BT, mask).backward()
    g_opd = z.grad.clone()
    z.grad = None
    logp2 = token_logprobs(z, ids)
    ell = (old - teacher_lp).detach()
    aggregate(ell * logp2, mask).backward()
    assert torch.allclose(g_opd, z.grad, atol=1e-6)
    assert g_opd.abs().sum() > 0
    # The k1 term itself (ℓ with gradient) has a different gradient: it is not what we train on.
    z.grad = None
    aggregate(token_logprobs(z, ids) - teacher_lp, mask).backward()
    assert not torch.allclose(g_opd, z.grad, atol=1e-4)


def test_sod_step_weights_hand_example():
    d = torch.tensor([[0.5, 1.0, 0.25, 0.5]])
    w = sod_step_weights(d, delta=0.2, eps=1e-6)
    # w_1 = 1; 0.5/1.0 = 0.5; 0.5/0.25 = 2 capped at 1.2; 0.5/0.5 = 1
    assert torch.allclose(w, torch.tensor([[1.0, 0.5, 1.2, 1.0]]), atol=1e-5)
    # the product form of the paper telescopes to the ratio form
    prod = [1.0]
    for k in range(1, 4):
        prod.append(prod[-1] * (d[0, k - 1] + 1e-6) / (d[0, k] + 1e-6))
    assert torch.allclose(w, torch.clamp(torch.tensor([prod]), max=1.2), atol=1e-5)
    assert torch.allclose(sod_step_weights(d, delta=0.5), torch.tensor([[1.0, 0.5, 1.5, 1.0]]), atol=1e-5)


def _sod_row():
    # tokens: pos0 prompt | turn0: 2 tokens | obs | turn1: 2 tokens | turn2: 1 token
    turn = torch.tensor([[-1, 0, 0, -1, 1, 1, 2]])
    mask = (turn >= 0).float()
    old = torch.tensor([[0.0, -1.0, -1.0, 0.0, -2.0, -2.0, -1.0]])
    # |ℓ| per token: turn0 {0.2, 0.8} -> d=0.5; turn1 {1.0, 1.0} -> 1.0; turn2 {0.25} -> 0.25
    teacher = torch.tensor([[0.0, -0.8, -1.8, 0.0, -1.0, -3.0, -0.75]])
    return old, teacher, mask, turn


def test_sod_step_divergences_and_advantages():
    old, teacher, mask, turn = _sod_row()
    d = step_divergences(old, teacher, mask, turn, 3)
    assert torch.allclose(d, torch.tensor([[0.5, 1.0, 0.25]]), atol=1e-6)
    adv_B = torch.tensor([0.7])
    A, w = sod_advantages(adv_B, teacher, old, mask, turn, delta=0.2, eps=1e-6, coef=1.0)
    w_exp = torch.tensor([[0, 1, 1, 0, 0.5, 0.5, 1.2]])
    assert torch.allclose(w, w_exp, atol=1e-5)
    A_exp = (0.7 + w_exp * (teacher - old)) * mask
    assert torch.allclose(A, A_exp, atol=1e-5)
    # gradient of the SOD loss at ratio 1 (nothing clipped): dL/dlogp_t = -A_t / N_tok
    logp = old.clone().requires_grad_(True)
    cfg = SODConfig(teacher="x")
    batch = _batch_from(old, mask, turn, A)
    loss, stats = policy_loss(cfg, batch, logp)
    loss.backward()
    assert torch.allclose(logp.grad, -A / mask.sum(), atol=1e-6)
    assert stats["clip_frac"] == 0.0


def _batch_from(old, mask, turn, adv_BT):
    from trainers.methods.base import TrainBatch

    B, T = old.shape
    return TrainBatch(
        input_ids_BT=torch.zeros(B, T, dtype=torch.long), attention_mask_BT=torch.ones(B, T, dtype=torch.long),
        loss_mask_BT=mask, old_logp_BT=old, turn_BT=turn, adv_B=torch.zeros(B), reward_B=torch.zeros(B),
        won_B=torch.zeros(B), group_B=torch.zeros(B, dtype=torch.long), num_tokens=int(mask.sum()),
        num_seqs=B, advantages_BT=adv_BT,
    )


def test_sft_nll_gradient():
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss = demo_nll(logp, mask)
    loss.backward()
    assert loss.item() == pytest.approx(1.5)
    assert torch.allclose(logp.grad, -mask / 2)


def _turn(k, prompt, completion, lp, mask, teacher=None):
    return Turn(index=k, prompt_ids=prompt, completion_ids=completion, sampler_logprobs=lp, loss_mask=mask,
                action_text="", action="", action_valid=True, teacher_logprobs=teacher)


def _episode(tokens_per_turn, reward, base=100):
    """An episode whose turn k completion has tokens_per_turn[k] tokens (last one appended, mask 0)."""
    prompt = [base, base + 1]
    turns = []
    for k, n in enumerate(tokens_per_turn):
        comp = list(range(base + 10 * (k + 1), base + 10 * (k + 1) + n))
        mask = [1] * (n - 1) + [0]
        lp = [-0.5 * (i + 1) for i in range(n - 1)] + [0.0]
        turns.append(_turn(k, list(prompt), comp, lp, mask, teacher=[-1.0] * n))
        prompt = prompt + comp + [base + 99]
    return Episode(env_id="e", task_id="t", seed=0, turns=turns, reward=reward, won=reward > 0)


def test_build_batch_layout_and_micro_batches_add_up():
    groups = [
        EpisodeGroup("g0", "t0", [_episode([3, 2], 1.0), _episode([2], 0.0)]),
        EpisodeGroup("g1", "t1", [_episode([4, 3, 2], 1.0), _episode([2, 2], 1.0)]),
    ]
    batch = build_batch(groups, pad_id=0, with_teacher=True)
    assert batch.input_ids_BT.shape[0] == 4
    ep0 = groups[0].episodes[0]
    assert batch.input_ids_BT[0, : len(ep0.full_ids)].tolist() == ep0.full_ids
    assert batch.loss_mask_BT[0].tolist()[: len(ep0.full_ids)] == [float(m) for m in ep0.loss_mask]
    # turn index on trained tokens: turn 0 at positions 2,3 ; turn 1 at 6
    assert batch.turn_BT[0, :8].tolist() == [-1, -1, 0, 0, -1, -1, 1, -1]
    assert batch.old_logp_BT[0, 2:4].tolist() == [-0.5, -1.0]
    assert torch.allclose(batch.adv_B, torch.tensor([0.7071, -0.7071, 0.0, 0.0]), atol=1e-4)
    assert batch.num_tokens == int(sum(sum(e.loss_mask) for g in groups for e in g.episodes))
    # micro-batches: losses normalised by global counts add up to the full-batch loss
    cfg = TrainConfig(max_context_tokens=8, max_new_tokens=4, token_budget=16)
    torch.manual_seed(0)
    logp_full = batch.old_logp_BT + 0.1 * torch.randn_like(batch.old_logp_BT)
    batch.advantages_BT = batch.adv_B[:, None] * batch.loss_mask_BT + batch.loss_mask_BT * 0.3
    full, _ = policy_loss(cfg, batch, logp_full)
    parts = batch.micro_batches(token_budget=16)
    assert len(parts) > 1 and all(p.input_ids_BT.numel() <= 16 for p in parts)
    total = 0.0
    for p in parts:
        rows = [batch.episodes.index(e) for e in p.episodes]
        lp = logp_full[rows][:, : p.input_ids_BT.shape[1]]
        total += policy_loss(cfg, p, lp)[0].item()
    assert total == pytest.approx(full.item(), rel=1e-5)


def test_micro_batch_refuses_row_over_budget():
    from trainers.errors import BatchTooLargeError

    batch = build_batch([EpisodeGroup("g", "t", [_episode([6, 6], 1.0)])], pad_id=0)
    with pytest.raises(BatchTooLargeError, match="token_budget=8"):
        batch.micro_batches(8)


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="token_budget"):
        TrainConfig(token_budget=512, max_context_tokens=1024)
    with pytest.raises(ConfigError, match="teacher"):
        OPDConfig()
    with pytest.raises(ConfigError, match="delta"):
        SODConfig(teacher="t", delta=-1)
    assert SODConfig(teacher="t").clip_high == 0.28 and SODConfig(teacher="t").use_grpo
