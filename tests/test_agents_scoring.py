"""Teacher scoring: alignment with the student's tokens for every kind of teacher."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from agents.backends import HFBackend, SamplingParams
from agents.ema import EMATeacher, ema_update_
from agents.errors import ScoringError
from agents.renderers import Renderer
from agents.rollout import RolloutConfig, collect_groups
from agents.scoring import score_turns, sequence_logprobs

ENV = "DistillGym/Household-v0"


@pytest.fixture(scope="module")
def rollout(tiny):
    model, tok = tiny
    cfg = RolloutConfig(group_size=2, max_turns=3, max_context_tokens=1024,
                        sampling=SamplingParams(temperature=0.8, max_tokens=6))
    groups = collect_groups(ENV, ["train-000003", "train-000004"], HFBackend(model, tok),
                            functools.partial(Renderer.for_env, tok), cfg, seed=1)
    episodes = [e for g in groups for e in g.episodes]
    import envs

    return episodes, Renderer.for_env(tok, envs.make(ENV))


def _teacher(episodes):
    return [list(t.teacher_logprobs) for e in episodes for t in e.turns]


def test_same_model_teacher_equals_sampler_logprobs(tiny, rollout) -> None:
    model, _ = tiny
    episodes, _ = rollout
    score_turns(model, episodes, temperature=0.8, batch_tokens=600)  # several padded batches
    for ep in episodes:
        for turn in ep.turns:
            assert len(turn.teacher_logprobs) == len(turn.completion_ids)
            sampled = [(s, t) for s, t, m in zip(turn.sampler_logprobs, turn.teacher_logprobs, turn.loss_mask) if m]
            gap = max(abs(s - t) for s, t in sampled)
            assert gap < 1e-4, gap


@pytest.mark.parametrize("mode", ["turn", "episode"])
def test_empty_privileged_text_equals_student_exactly(tiny, rollout, mode) -> None:
    model, _ = tiny
    episodes, renderer = rollout
    score_turns(model, episodes, batch_tokens=1)  # one sequence per forward: no padding effects
    student = _teacher(episodes)
    score_turns(model, episodes, renderer=renderer, privileged_texts=lambda e, t: "", mode=mode, batch_tokens=1)
    if mode == "turn":  # per-turn contexts are prefixes of the episode: compare with direct scoring
        for ep in episodes[:1]:
            for turn in ep.turns:
                lp = sequence_logprobs(model, [turn.prompt_ids + turn.completion_ids])[0]
                assert torch.equal(torch.tensor(turn.teacher_logprobs), lp[-len(turn.completion_ids) :])
    else:
        assert _teacher(episodes) == student


@pytest.mark.parametrize("mode", ["turn", "episode"])
def test_privileged_scores_align_with_completion_tokens(tiny, rollout, mode) -> None:
    model, tok = tiny
    episodes, renderer = rollout
    score_turns(model, episodes, renderer=renderer, privileged_strength="next_action", mode=mode)
    for ep in episodes[:2]:
        text0 = ep.turns[0].privileged.next_action
        assert text0.startswith("The expert's next action is:")
        for turn in ep.turns:
            text = turn.privileged.next_action if mode == "turn" else text0
            teacher, pos, n = renderer.teacher_ids(turn.prompt_ids + turn.completion_ids, text)
            assert n > 0 and teacher[-len(turn.completion_ids) :] == turn.completion_ids
            # independent route: full log-softmax over the teacher sequence, last |completion| rows
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([teacher])).logits[0].float()
            rows = torch.log_softmax(logits[-len(turn.completion_ids) - 1 : -1], -1)
            expected = rows.gather(-1, torch.tensor(turn.completion_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(turn.teacher_logprobs), expected, atol=1e-5)
            assert not torch.allclose(torch.tensor(turn.teacher_logprobs), torch.tensor(turn.sampler_logprobs), atol=1e-3)


def test_missing_recorded_text_is_loud(tiny, rollout) -> None:
    model, _ = tiny
    episodes, renderer = rollout
    with pytest.raises(ScoringError, match="record_privileged"):
        score_turns(model, episodes[:1], renderer=renderer, privileged_strength="subgoals")
    with pytest.raises(ScoringError, match="renderer"):
        score_turns(model, episodes[:1], privileged_strength="plan")
    with pytest.raises(ScoringError, match="PEFT"):
        score_turns(model, episodes[:1], disable_adapter=True)


def test_separate_and_ema_teachers(tiny, rollout) -> None:
    from agents.models import tiny_model

    student, _ = tiny
    episodes, _ = rollout
    teacher, _ = tiny_model(seed=1)
    score_turns(teacher, episodes)
    other = _teacher(episodes)
    score_turns(student, episodes)
    own = _teacher(episodes)
    assert other != own

    ema = EMATeacher(student, decay=0.5)
    assert all(not p.requires_grad for p in ema.model.parameters())
    score_turns(ema.model, episodes)  # a fresh EMA copy scores exactly like the student
    assert _teacher(episodes) == own
    moved = copy.deepcopy(student)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in ema.model.parameters()]
    ema.update(moved)
    for b, p in zip(before, ema.model.parameters()):
        assert torch.allclose(p, b + 0.5, atol=1e-6)  # 0.5 * old + 0.5 * (old + 1)
    ema.hard_copy(moved)
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), moved.parameters()))


def test_ema_update_formula() -> None:
    t, s = [torch.tensor([1.0, 2.0]), torch.tensor([3])], [torch.tensor([3.0, 6.0]), torch.tensor([5])]
    ema_update_(t, s, decay=0.75)
    assert torch.allclose(t[0], torch.tensor([1.5, 3.0])) and t[1].item() == 5  # ints are copied
    with pytest.raises(ValueError):
        ema_update_(t, s, decay=1.5)


def test_lora_base_teacher_via_disable_adapter(tiny, rollout) -> None:
    from peft import LoraConfig, get_peft_model

    base, _ = tiny
    episodes, _ = rollout
    score_turns(base, episodes)
    base_scores = _teacher(episodes)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    score_turns(lora, episodes)
    assert _teacher(episodes) != base_scores
    score_turns(lora, episodes, disable_adapter=True)
    assert torch.allclose(torch.tensor(sum(_teacher(episodes), [])), torch.tensor(sum(base_scores, [])), atol=1e-6)


def test_sequence_logprobs_grad_and_logits(tiny) -> None:
    model, _ = tiny
    seqs = [[1, 5, 9, 200, 3], [1, 7, 8]]
    lps = sequence_logprobs(model, seqs, 1.3, with_grad=True)
    assert [lp.shape[0] for lp in lps] == [4, 2] and lps[0].requires_grad
    lps[0].sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    logits = sequence_logprobs(model, seqs, 1.3, return_logits=True)
    assert logits[1].shape == (2, model.config.vocab_size)
    again = torch.log_softmax(logits[0], -1).gather(-1, torch.tensor(seqs[0][1:])[:, None]).squeeze(-1)
    assert torch.allclose(again, lps[0].detach(), atol=1e-5)
    with pytest.raises(ScoringError):
        sequence_logprobs(model, [[1]])
