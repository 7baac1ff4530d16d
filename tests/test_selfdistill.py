"""Privileged-information self-distillation: OPSD, π-Distill, TT-OPD (algorithms.md §2 and §5).

Pure math against hand-computed values (with gradients), the exact-zero property with empty
privileged information, the EMA teacher's closed form, and smoke runs through the real loop.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

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

ENV = "DistillGym/Household-v0"

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


def test_tt_opd_warns_when_mean_abs_d_exceeds_collapse_threshold():
    from agents.types import Episode, EpisodeGroup, Turn
    from trainers.methods.base import build_batch
    from trainers.methods.tt_opd import TTOPD, TTOPDConfig

    def episode(reward: float, teacher: float) -> Episode:
        turn = Turn(index=0, prompt_ids=[1, 2], completion_ids=[3, 4], sampler_logprobs=[-1.0, -1.0],
                    loss_mask=[1, 1], action_text="", action="", action_valid=True,
                    teacher_logprobs=[teacher, teacher])
        return Episode(env_id="e", task_id="t", seed=0, turns=[turn], reward=reward)

    method = TTOPD(TTOPDConfig(model="tiny"))
    calm = build_batch([EpisodeGroup("g", "t", [episode(1.0, -1.2), episode(0.0, -0.9)])], 0,
                       with_teacher=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = method.step_stats(calm)
    assert stats["mean_abs_d"] == pytest.approx(0.15)  # |d| = 0.2 and 0.1 on two tokens each
    drifting = build_batch([EpisodeGroup("g", "t", [episode(1.0, -3.0), episode(0.0, -1.0)])], 0,
                           with_teacher=True)
    with pytest.warns(RuntimeWarning, match="collapse_threshold"):
        assert method.step_stats(drifting)["mean_abs_d"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ EMA teacher


def test_ema_teacher_closed_form_and_never_gets_gradients():
    from agents.ema import EMATeacher

    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    theta0 = [p.detach().clone() for p in student.parameters()]
    ema = EMATeacher(student, decay=0.9)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # the student moves once, then stays
    for _ in range(3):
        ema.update(student)
    for t, s, t0 in zip(ema.model.parameters(), student.parameters(), theta0):
        torch.testing.assert_close(t, 0.9**3 * t0 + (1 - 0.9**3) * s.detach())  # closed form
        assert not t.requires_grad
    x = torch.randn(4, 3)
    (ema.model(x) * student(x)).sum().backward()
    assert all(p.grad is None for p in ema.model.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_tt_opd_schedules_ema_updates_and_hard_copies(tiny, ctx_factory):
    from trainers.methods.tt_opd import TTOPD, TTOPDConfig

    model = copy.deepcopy(tiny[0])
    ctx = ctx_factory(model)
    method = TTOPD(TTOPDConfig(model="tiny", ema_decay=0.5, ema_interval=2, hard_copy_every=5))
    method.setup(ctx)
    teacher = method.view.model
    name = "model.norm.weight"
    theta0 = dict(teacher.named_parameters())[name].detach().clone()
    with torch.no_grad():
        dict(model.named_parameters())[name].add_(1.0)
    target = dict(model.named_parameters())[name].detach()
    for step in range(4):  # steps 2 and 4 (1-based) are EMA updates
        method.after_step(ctx, step, [])
    now = dict(teacher.named_parameters())[name]
    torch.testing.assert_close(now, 0.25 * theta0 + 0.75 * target)
    method.after_step(ctx, 4, [])  # step 5: hard copy
    torch.testing.assert_close(dict(teacher.named_parameters())[name], target)
    assert method.view.ema.updates == 2


# ------------------------------------------------------- privileged scoring on real rollouts


@pytest.fixture(scope="module")
def ctx_factory(tiny):
    from agents.backends import HFBackend
    from agents.renderers import Renderer
    from trainers.methods.base import TrainContext
    from trainers.methods.opsd import OPSDConfig

    def make(model=None, **cfg):
        model = model if model is not None else tiny[0]
        return TrainContext(cfg=OPSDConfig(model="tiny", **cfg), model=model, tokenizer=tiny[1],
                            backend=HFBackend(model, tiny[1]), env_id=ENV,
                            renderer_factory=lambda env, info: Renderer.for_env(tiny[1], env, info))

    return make


@pytest.fixture(scope="module")
def rollouts(tiny, ctx_factory):
    """``rollouts(privileged_strength)``: 2 tasks x 2 episodes x 2 turns from the tiny model."""
    from agents.backends import SamplingParams
    from agents.rollout import RolloutConfig, collect_groups

    ctx = ctx_factory()

    def make(privileged: str | None = None):
        cfg = RolloutConfig(group_size=2, max_turns=2, max_context_tokens=2048,
                            sampling=SamplingParams(max_tokens=6, seed=0),
                            privileged_strength=privileged)
        return collect_groups(ENV, ["train-000000", "train-000001"], ctx.backend, ctx.renderer_factory,
                              cfg, seed=0)

    return make


def _batch(groups):
    from trainers.methods.base import build_batch

    return build_batch(groups, 0, with_teacher=True)


def test_empty_privileged_info_teacher_is_student_and_terms_are_exactly_zero(tiny, ctx_factory, rollouts):
    from agents.scoring import sequence_logprobs
    from trainers.methods.opsd import (
        OPSD,
        TeacherView,
        score_privileged,
        teacher_logits_for_batch,
    )

    groups = rollouts()
    ctx = ctx_factory(opsd_mode="divergence")
    episodes = [ep for g in groups for ep in g.episodes]
    # (1) a separate copy of the same weights with an empty privileged block *is* the student
    frozen = TeacherView("frozen", copy.deepcopy(tiny[0]))
    score_privileged(ctx, frozen, episodes, lambda e, t: "", 1.0)
    for ep in episodes:
        lp = sequence_logprobs(tiny[0], [ep.full_ids])[0]
        for turn in ep.turns:
            s = len(turn.prompt_ids)
            torch.testing.assert_close(torch.tensor(turn.teacher_logprobs), lp[s - 1 : s - 1 + turn.num_tokens],
                                       atol=1e-5, rtol=0)
    # (2) the current-weights teacher with empty info: every distillation term is exactly zero
    method = OPSD(ctx.cfg)
    method.setup(ctx)
    current = TeacherView("current", tiny[0])
    score_privileged(ctx, current, episodes, lambda e, t: "", 1.0)
    batch = _batch(groups)
    assert torch.equal(sampled_logratio(batch.old_logp_BT, batch.teacher_logp_BT, batch.loss_mask_BT),
                       torch.zeros_like(batch.old_logp_BT))
    assert torch.equal(opsd_shaped_advantages(batch.adv_B, batch.old_logp_BT, batch.teacher_logp_BT,
                                              batch.loss_mask_BT, beta=1.0), batch.adv_B)
    b_N, _, _ = teacher_logits_for_batch(ctx, current, batch, lambda e, t: "")
    assert b_N.numel() == 0
    method.text = lambda e, t: ""  # the episode carries no privileged text
    logits = torch.randn(*batch.input_ids_BT.shape, 11, requires_grad=True)
    div = method.divergence(ctx, batch, lambda: logits)
    assert div.item() == 0.0
    div.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # (3) with the plan in context the teacher differs (so the checks above can fail)
    score_privileged(ctx, current, episodes, lambda e, t: t.privileged.plan, 1.0)
    differs = _batch(groups)
    assert (differs.teacher_logp_BT - differs.old_logp_BT).abs().max() > 1e-3


def test_teacher_logits_realign_to_student_positions(tiny, ctx_factory, rollouts):
    from trainers.methods.opsd import TeacherView, score_privileged, teacher_logits_for_batch

    groups = rollouts()
    ctx = ctx_factory()
    view = TeacherView("current", tiny[0])
    plan = lambda e, t: t.privileged.plan  # noqa: E731
    score_privileged(ctx, view, [ep for g in groups for ep in g.episodes], plan, 1.0)
    batch = _batch(groups)
    b_N, t_N, z_NV = teacher_logits_for_batch(ctx, view, batch, plan)
    assert b_N.numel() == int(batch.loss_mask_BT.sum())
    lp_N = torch.log_softmax(z_NV, -1).gather(-1, batch.input_ids_BT[b_N, t_N][:, None]).squeeze(-1)
    # two independent paths (agents.scoring vs logits_to_keep rows) give the same teacher log-probs
    torch.testing.assert_close(lp_N, batch.teacher_logp_BT[b_N, t_N], atol=1e-4, rtol=0)


def test_pi_distill_student_view_removes_the_privileged_block(tiny, rollouts):
    from agents.rollout import student_view
    from agents.scoring import score_turns
    from trainers.methods.base import build_batch
    from trainers.methods.pi_distill import student_view_ids, student_view_logprobs

    groups = rollouts("plan")
    batch = build_batch(groups, 0)
    ep = batch.episodes[0]
    pos, n = ep.privileged_span
    assert n > 0 and student_view_ids(ep)[0] == ep.full_ids[:pos] + ep.full_ids[pos + n :]
    lp_BT = student_view_logprobs(tiny[0], batch, 1.0, with_grad=False)
    for b, episode in enumerate(batch.episodes):
        plain = student_view(episode)
        score_turns(tiny[0], [plain])
        for turn, orig in zip(plain.turns, episode.turns):
            s = len(orig.prompt_ids)
            m = torch.tensor(orig.loss_mask, dtype=torch.bool)
            torch.testing.assert_close(lp_BT[b, s : s + len(m)][m], torch.tensor(turn.teacher_logprobs)[m],
                                       atol=1e-4, rtol=0)
    # the student view really differs from the privileged (sampler) view
    assert (lp_BT - batch.old_logp_BT).abs().max() > 1e-3


# ------------------------------------------------------------------ smoke runs (real loop)


def _train(tmp_path, method: str, **overrides):
    from trainers.loop import train
    from trainers.methods import get_method

    kw: dict[str, Any] = dict(method=method, model="tiny", steps=2, tasks_per_step=1, group_size=2, max_turns=2,
              max_new_tokens=6, max_context_tokens=1024, token_budget=4096, backend="hf",
              finetune="lora", lr=1e-4, checkpoint_every=0, progress=False, num_train_tasks=2,
              output_dir=str(tmp_path), store=f"sqlite:///{tmp_path / 'store.db'}")
    kw.update(overrides)
    rows = train(get_method(method).config_cls(**kw)).metrics
    assert len(rows) == 2 and not any(r["skipped"] for r in rows)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    return rows


def test_smoke_opsd_divergence_with_frozen_teacher(tmp_path):
    rows = _train(tmp_path, "opsd", opsd_mode="divergence", self_teacher="frozen", privileged="next_action")
    assert all(r["distill_loss"] > 0 for r in rows)


def test_smoke_pi_distill(tmp_path):
    rows = _train(tmp_path, "pi-distill", privileged="plan")
    assert all("kl_teacher_student" in r and r["clip_frac_student"] >= 0 for r in rows)


def test_smoke_tt_opd_with_ema_updates(tmp_path):
    rows = _train(tmp_path, "tt-opd", ema_interval=1, hard_copy_every=0, tt_turns=1, length_shaping=True)
    assert all(r["mean_abs_d"] >= 0 and "kl_ref" in r for r in rows)
