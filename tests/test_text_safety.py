"""Unencodable text (unpaired surrogates, NUL) is made storable where it enters a rollout.

A real rollout on the household world with the tiny model, where the env's observations and the
backend's decoded text carry code points no database stores; the episodes then go through the
real store's background writer and back. Before the fix the tokenizer refused the observation
mid-rollout, and the store's writer refused the row only at the next flush (``WriterError``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest

import envs
from agents.backends import HFBackend, SamplingParams
from agents.renderers import Renderer
from agents.rollout import RolloutConfig, collect_groups
from agents.text_safety import REPLACEMENT, record_text, storable, storable_text
from data import Store
from envs.household.env import HouseholdEnv

ENV_ID = "DistillGymTest/SurrogateHousehold-v0"


class SurrogateHousehold(HouseholdEnv):
    """The household world, observing through a tool that echoes undecodable bytes the way
    ``bytes.decode(errors="surrogateescape")`` does (a third-party env, not sanitized by TextEnv)."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return obs + " [file \udc80.txt]", info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs + " \udcff", reward, terminated, truncated, info


class SurrogateBackend(HFBackend):
    """The real HF backend whose text decoding lets an unpaired surrogate and a NUL through."""

    def generate(self, prompts, params):
        return [dataclasses.replace(c, text=c.text + "\ud800\x00") for c in super().generate(prompts, params)]


def _has_unstorable(text: str) -> bool:
    return "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text)


def test_helpers_replace_and_count() -> None:
    assert storable_text("plain ascii") == ("plain ascii", 0)
    assert storable_text("héllo ☃") == ("héllo ☃", 0)
    assert storable_text("a\ud800b\x00c\udfff") == (f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}", 3)
    assert storable({"k\udc80": ["x\ud800", ("\x00",), 3, None]}) == {
        f"k{REPLACEMENT}": [f"x{REPLACEMENT}", (REPLACEMENT,), 3, None]
    }
    record: dict = {}
    assert record_text("ok", record, "observation") == "ok" and record == {}
    record_text("\ud800\ud800", record, "observation")
    assert record == {"unstorable_chars": {"observation": 2}}


@pytest.fixture
def surrogate_env():
    envs.register_env(ENV_ID, SurrogateHousehold, max_episode_steps=50)
    yield ENV_ID
    envs.unregister_env(ENV_ID)


def test_rollout_makes_unencodable_text_storable_and_records_it(
    tiny, surrogate_env: str, tmp_path: Path
) -> None:
    model, tok = tiny
    cfg = RolloutConfig(group_size=2, max_turns=2, max_context_tokens=1024,
                        sampling=SamplingParams(temperature=1.0, max_tokens=8))
    groups = collect_groups(surrogate_env, ["train-000001"], SurrogateBackend(model, tok),
                            functools.partial(Renderer.for_env, tok), cfg, seed=0)
    episodes = groups[0].episodes
    assert all(ep.end_reason == "max_turns" and ep.num_turns == 2 for ep in episodes)
    for ep in episodes:
        assert ep.info["unstorable_chars"] == {"initial_observation": 1}
        assert ep.initial_observation.endswith(f"[file {REPLACEMENT}.txt]")
        for turn in ep.turns:
            assert turn.info["unstorable_chars"] == {"action_text": 2, "observation": 1}
            assert turn.action_text.endswith(REPLACEMENT * 2)
            assert turn.observation.endswith(" " + REPLACEMENT)
            assert not _has_unstorable(turn.action_text + turn.action + turn.observation)
    with Store(tmp_path / "s.db") as store:  # the writer thread commits them: nothing fails late
        run_id = store.create_run("surrogates", "grpo", {}, 0)
        store.add_episodes(run_id, 0, episodes)
        store.flush()
        assert list(store.episodes(run_id)) == episodes
