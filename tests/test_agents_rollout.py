"""Multi-turn rollouts on the real household world: token layout, masks, failures as data."""

from __future__ import annotations

import functools

import pytest
import torch

import envs
from agents.backends import HFBackend, SamplingParams
from agents.errors import TokenDriftError
from agents.renderers import Renderer
from agents.rollout import RolloutConfig, RolloutStats, collect_groups, student_view
from agents.types import EndReason, Episode
from envs.household.env import HouseholdEnv

ENV = "DistillGym/Household-v0"
TASKS = ["train-000001", "train-000002"]


def _cfg(**kw) -> RolloutConfig:
    sampling = kw.pop("sampling", SamplingParams(temperature=1.0, max_tokens=8))
    return RolloutConfig(**{"group_size": 2, "max_turns": 3, "max_context_tokens": 1024, "sampling": sampling, **kw})


def _factory(tok):
    return functools.partial(Renderer.for_env, tok)


def expected_layout(tok, renderer: Renderer, episode: Episode) -> tuple[list[int], list[int]]:
    """Ids and loss mask of the episode rebuilt from the chat template of the whole conversation.

    Non-assistant text is tokenized from the template rendering; each assistant message's
    content is the sampled ids themselves (placeholders mark where they go), so the comparison
    is between real token ids.
    """
    messages = [{"role": "system", "content": renderer.system_text()}]
    first_obs = episode.info["first_observation"]
    messages.append({"role": "user", "content": first_obs})
    contents = []
    for i, turn in enumerate(episode.turns):
        sampled = [t for t, m in zip(turn.completion_ids, turn.loss_mask) if m == 1]
        stop = bool(sampled) and sampled[-1] == renderer.stop_token_id
        contents.append((sampled[:-1] if stop else sampled, stop))
        messages.append({"role": "assistant", "content": f"@@PLACEHOLDER{i}@@"})
        if i + 1 < len(episode.turns):
            messages.append({"role": "user", "content": turn.observation})
    text = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    ids: list[int] = []
    mask: list[int] = []
    for i, (content, stop) in enumerate(contents):
        head, text = text.split(f"@@PLACEHOLDER{i}@@")
        chunk = tok(head, add_special_tokens=False)["input_ids"]
        ids += chunk + content
        mask += [0] * len(chunk) + [1] * len(content)
        if stop:  # the sampled <|im_end|> is the template's closing token: trained
            assert text.startswith(tok.decode([renderer.stop_token_id]))
            ids.append(renderer.stop_token_id)
            mask.append(1)
            text = text[len(tok.decode([renderer.stop_token_id])) :]
    tail = tok(text, add_special_tokens=False)["input_ids"]
    return ids + tail, mask + [0] * len(tail)


@pytest.fixture(scope="module")
def groups(tiny):
    model, tok = tiny
    stats = RolloutStats()
    out = collect_groups(ENV, TASKS, HFBackend(model, tok), _factory(tok), _cfg(), seed=3, stats=stats)
    return out, stats


def _first_obs(task_id: str, seed: int) -> str:
    env = envs.make(ENV)
    return env.reset(seed=seed, options={"task_id": task_id})[0]


def test_groups_shape_and_tags(groups) -> None:
    out, stats = groups
    assert [g.task_id for g in out] == TASKS
    for group in out:
        assert len(group.episodes) == 2 and len({e.episode_id for e in group.episodes}) == 2
        for ep in group.episodes:
            assert ep.task_id == group.task_id and ep.seed == 3 and ep.group_id == group.group_id
            assert ep.task_type and ep.num_turns == 3 and ep.end_reason == EndReason.MAX_TURNS
            assert all(t.policy_version == 0 for t in ep.turns)
    assert stats.generate_calls == 3  # lock-step: one batched call per turn for all 4 episodes
    assert stats.turns == 12 and stats.episodes == 4 and 0 < stats.env_share < 1


def test_token_layout_equals_chat_template(tiny, groups) -> None:
    _, tok = tiny
    out, _ = groups
    for group in out:
        for ep in group.episodes:
            renderer = Renderer.for_env(tok, envs.make(ENV))
            ep.info["first_observation"] = _first_obs(ep.task_id, ep.seed)
            ids, mask = expected_layout(tok, renderer, ep)
            assert ep.full_ids == ids
            assert ep.loss_mask == mask
            for prev, turn in zip(ep.turns, ep.turns[1:]):
                assert turn.prompt_ids[: len(prev.prompt_ids) + len(prev.completion_ids)] == (
                    prev.prompt_ids + prev.completion_ids
                )
            for turn in ep.turns:
                assert len(turn.completion_ids) == len(turn.sampler_logprobs) == len(turn.loss_mask)
                assert all(lp == 0.0 for lp, m in zip(turn.sampler_logprobs, turn.loss_mask) if m == 0)
                assert all(lp < 0.0 for lp, m in zip(turn.sampler_logprobs, turn.loss_mask) if m == 1)


def test_privileged_text_recorded_per_turn(groups) -> None:
    out, _ = groups
    env = envs.make(ENV)
    ep = out[0].episodes[0]
    env.reset(seed=ep.seed, options={"task_id": ep.task_id})
    recorded = ep.turns[0].privileged.to_dict()
    assert set(recorded) == {"plan", "next_action", "hint", "answer", "outcome_hint"}
    assert recorded["next_action"] == env.unwrapped.privileged_text("next_action") != ""
    assert ep.final_privileged is not None


def test_bad_generations_are_data(tiny) -> None:
    """Empty replies and invalid UTF-8 pieces: recorded, the episode goes on to its turn limit."""
    model, tok = tiny
    byte_piece = tok.convert_tokens_to_ids("â")  # the lone byte 0xE2: an incomplete UTF-8 sequence
    results = {}
    for name, favoured in (("empty", tok.eos_token_id), ("utf8", byte_piece)):
        bias = torch.full((model.config.vocab_size,), -1e4)
        bias[favoured] = 0.0
        model.lm_head.bias = torch.nn.Parameter(bias)
        try:
            results[name] = collect_groups(ENV, TASKS[:1], HFBackend(model, tok), _factory(tok),
                                           _cfg(group_size=1, max_turns=2), seed=0)[0].episodes[0]
        finally:
            model.lm_head.bias = None
    empty = results["empty"]
    assert empty.end_reason == EndReason.MAX_TURNS and empty.num_turns == 2
    for turn in empty.turns:
        assert turn.finish_reason == "empty" and turn.action == "" and not turn.action_valid
        assert turn.info["parse_error"] == "empty reply" and turn.loss_mask[0] == 1  # eos is trained
        assert turn.observation == "Nothing happens."
    bad = results["utf8"]
    assert bad.end_reason == EndReason.MAX_TURNS
    for turn in bad.turns:
        assert turn.finish_reason == "length" and "\ufffd" in turn.action_text and not turn.action_valid
        assert turn.completion_ids[:8] == [byte_piece] * 8 and turn.loss_mask == [1] * 8 + [0, 0]


def test_context_overflow_ends_episode(tiny) -> None:
    model, tok = tiny
    start = Renderer.for_env(tok, envs.make(ENV)).start(_first_obs(TASKS[0], 0))
    cfg = _cfg(group_size=1, max_context_tokens=len(start) + 8 + 4)  # room for exactly one turn
    ep = collect_groups(ENV, TASKS[:1], HFBackend(model, tok), _factory(tok), cfg, seed=0)[0].episodes[0]
    assert ep.end_reason == EndReason.CONTEXT_OVERFLOW and ep.num_turns == 1
    assert ep.info["context_tokens"] > len(start)
    tight = _cfg(group_size=1, max_context_tokens=len(start) + 7)  # the first prompt already too long
    ep = collect_groups(ENV, TASKS[:1], HFBackend(model, tok), _factory(tok), tight, seed=0)[0].episodes[0]
    assert ep.end_reason == EndReason.CONTEXT_OVERFLOW and ep.num_turns == 0


class FlakyHousehold(HouseholdEnv):
    """The household world, except that task train-000001 crashes on its second step."""

    def step(self, action):
        if self.task_id == "train-000001" and self.steps_taken >= 1:
            raise RuntimeError("simulator crashed")
        return super().step(action)


def test_env_exception_is_recorded_and_batch_continues(tiny) -> None:
    envs.register_env("DistillGymTest/Flaky-v0", FlakyHousehold, max_episode_steps=50)
    model, tok = tiny
    out = collect_groups("DistillGymTest/Flaky-v0", TASKS, HFBackend(model, tok), _factory(tok),
                         _cfg(group_size=1), seed=0)
    crashed, fine = out[0].episodes[0], out[1].episodes[0]
    assert crashed.end_reason == EndReason.ENV_ERROR and crashed.num_turns == 2
    assert crashed.info["error"] == "RuntimeError: simulator crashed" and crashed.info["error_stage"] == "step 1"
    assert fine.end_reason == EndReason.MAX_TURNS and fine.num_turns == 3


class ReRenderingRenderer(Renderer):
    """A broken renderer that re-tokenizes the history from text (what the check must catch)."""

    def extend(self, context_ids, obs):
        text = self.tokenizer.decode(context_ids).replace("<|im_end|>\n", "<|im_end|> \n")
        return self._encode(text) + self.user_delta_ids(obs)


def test_token_drift_is_loud(tiny) -> None:
    model, tok = tiny
    env = envs.make(ENV)
    broken = ReRenderingRenderer(tok, "household", env.unwrapped.instructions)
    with pytest.raises(TokenDriftError):
        collect_groups(ENV, TASKS[:1], HFBackend(model, tok), broken, _cfg(group_size=1), seed=0)


def _expert_actions(task_id: str, n: int) -> list[str]:
    env = envs.make(ENV)
    env.reset(seed=0, options={"task_id": task_id})
    actions = []
    for _ in range(n):
        action = env.unwrapped.expert_action()
        actions.append(action)
        _, _, terminated, _, _ = env.step(action)
        if terminated:
            break
    return actions


def test_prefix_replay_and_curriculum_cut(tiny) -> None:
    model, tok = tiny
    prefix = {TASKS[0]: _expert_actions(TASKS[0], 2), TASKS[1]: _expert_actions(TASKS[1], 100)}
    out = collect_groups(ENV, TASKS, HFBackend(model, tok), _factory(tok), _cfg(group_size=1), seed=0,
                         prefix_actions=prefix, max_student_turns=1)
    cut, replayed_to_end = out[0].episodes[0], out[1].episodes[0]
    assert cut.end_reason == EndReason.CURRICULUM and cut.num_turns == 1
    assert cut.info["prefix_actions"] == prefix[TASKS[0]]
    prompt = tok.decode(cut.turns[0].prompt_ids)
    for action in prefix[TASKS[0]]:
        assert f"<|im_start|>assistant\n{action}<|im_end|>" in prompt
    assert sum(cut.loss_mask) == sum(cut.turns[0].loss_mask) > 0  # replayed actions carry no loss
    assert replayed_to_end.num_turns == 0 and replayed_to_end.won and replayed_to_end.info["prefix_finished"]


def test_privileged_sampler_and_student_view(tiny) -> None:
    model, tok = tiny
    ep = collect_groups(ENV, TASKS[:1], HFBackend(model, tok), _factory(tok),
                        _cfg(group_size=1, max_turns=2, privileged_strength="plan"), seed=0)[0].episodes[0]
    pos, n = ep.privileged_span
    assert n > 0 and ep.privileged == "plan"
    assert "An expert would take these actions" in tok.decode(ep.turns[0].prompt_ids[pos : pos + n])
    plain = student_view(ep)
    renderer = Renderer.for_env(tok, envs.make(ENV))
    assert plain.turns[0].prompt_ids == renderer.start(_first_obs(TASKS[0], 0))
    assert plain.turns[1].prompt_ids[: len(plain.turns[0].prompt_ids)] == plain.turns[0].prompt_ids
    assert [t.completion_ids for t in plain.turns] == [t.completion_ids for t in ep.turns]


def test_rollout_is_reproducible(tiny) -> None:
    model, tok = tiny
    runs = [
        collect_groups(ENV, TASKS[:1], HFBackend(model, tok), _factory(tok), _cfg(max_turns=2), seed=5)
        for _ in range(2)
    ]
    ids = [[e.full_ids for e in g[0].episodes] for g in runs]
    assert ids[0] == ids[1]


@pytest.mark.slow
def test_smollm2_plays_a_household_episode(smollm2) -> None:
    """A real agent loop through the public API with the bundled model."""
    import agents

    model, tok = smollm2
    backend = agents.make_backend("hf", model=model, tokenizer=tok)
    cfg = agents.RolloutConfig(group_size=1, max_turns=2, sampling=agents.SamplingParams(temperature=0, max_tokens=16))
    ep = agents.collect_groups(ENV, TASKS[:1], backend, _factory(tok), cfg, seed=0)[0].episodes[0]
    assert ep.num_turns >= 1 and ep.end_reason in (EndReason.MAX_TURNS, EndReason.TERMINATED)
    assert any(t.action for t in ep.turns)  # the model wrote something the parser turned into a command
    renderer = Renderer.for_env(tok, envs.make(ENV))
    ep.info["first_observation"] = _first_obs(TASKS[0], 0)
    assert (ep.full_ids, ep.loss_mask) == expected_layout(tok, renderer, ep)
    print([(t.action, t.action_valid, t.observation[:60]) for t in ep.turns])
