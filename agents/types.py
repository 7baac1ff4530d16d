"""Typed records passed between stages: env -> rollout -> scoring -> trainer -> store.

These are the only objects that cross module boundaries. The store converts its ORM rows to and
from them at its edge; trainers read them and never look at dicts keyed by strings.

Token layout of one episode (token-in, token-out; history is never re-rendered)::

    turn 0:  prompt_ids = [system + user(obs0) + assistant header]      completion_ids = [a0 ... eot]
    turn 1:  prompt_ids = turn0.prompt_ids + turn0.completion_ids + [user(obs1) + assistant header]
    ...

``Turn.prompt_ids`` always holds the *full* context the sampler saw, so every turn is a ready
training row (TCOD trains one row per turn); ``Episode.full_ids`` is the last prompt plus the last
completion, and ``Episode.loss_mask`` marks exactly the sampled assistant tokens on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from envs.base import STRENGTHS

__all__ = ["Turn", "Episode", "EpisodeGroup", "EndReason", "PrivilegedTexts"]


class EndReason:
    """Why an episode stopped. Model failures are data: they end up here, not in exceptions."""

    TERMINATED = "terminated"  # the env said the task is over (success or failure)
    TRUNCATED = "truncated"  # the env's horizon (max_episode_steps) was reached
    MAX_TURNS = "max_turns"  # the rollout's own turn limit was reached
    CONTEXT_OVERFLOW = "context_overflow"  # the next prompt would not fit in the context window
    ENV_ERROR = "env_error"  # the env raised: recorded with the message in Episode.info
    CURRICULUM = "curriculum"  # a curriculum (TCOD F2B) cut the episode for training
    # no sampler replica answered (died / timed out): not the policy's failure, never trained on,
    # left out of GRPO's group statistics; the message is in Episode.info["error"]
    INFRA_ERROR = "infra_error"
    ALL = (TERMINATED, TRUNCATED, MAX_TURNS, CONTEXT_OVERFLOW, ENV_ERROR, CURRICULUM, INFRA_ERROR)


@dataclass(frozen=True)
class PrivilegedTexts:
    """The privileged texts recorded for one turn (the env's state before the turn's action), one
    field per strength (``envs.Strength``); ``None`` where that strength was not recorded (the rollout
    records only the strengths the method reads). Never shown to the sampler."""

    plan: str | None = None
    next_action: str | None = None
    hint: str | None = None
    answer: str | None = None
    outcome_hint: str | None = None

    def get(self, strength: str) -> str | None:
        """The text at ``strength`` (None when not recorded); unknown strengths are a program error."""
        if strength not in _STRENGTH_FIELDS:
            raise KeyError(f"unknown privileged strength {strength!r}; expected one of {_STRENGTH_FIELDS}")
        return getattr(self, strength)

    def to_dict(self) -> dict[str, str]:
        """The recorded strengths as a JSON-safe dict (the store's edge)."""
        return {k: v for k in _STRENGTH_FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PrivilegedTexts | None:
        """Inverse of ``to_dict`` (``None`` for a missing/empty record); unknown keys are dropped."""
        if not d:
            return None
        return cls(**{k: str(v) for k, v in d.items() if k in _STRENGTH_FIELDS})


_STRENGTH_FIELDS = STRENGTHS
assert tuple(f.name for f in fields(PrivilegedTexts)) == STRENGTHS, "one field per envs.Strength"


@dataclass
class Turn:
    """One assistant message and the env's answer to it.

    Shapes: ``len(completion_ids) == len(sampler_logprobs) == len(loss_mask)``; when present,
    ``teacher_logprobs`` and ``token_weights`` have that length too.
    """

    index: int
    prompt_ids: list[int]  # full context given to the sampler (history + new observation tokens)
    completion_ids: list[int]  # tokens the sampler produced, plus a closing end-of-turn if appended
    sampler_logprobs: list[float]  # log pi_old(y_t) at the training temperature (0.0 where mask 0)
    loss_mask: list[int]  # 1 on sampled assistant tokens, 0 on tokens the renderer appended
    action_text: str  # decoded completion (what the model "said")
    action: str  # parsed action sent to the env ("" when unparseable)
    action_valid: bool  # parser validity AND env's info["action_valid"]
    observation: str = ""  # env text returned after this action
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    finish_reason: str = "stop"  # "stop" | "length" | "empty"
    policy_version: int = 0
    teacher_logprobs: list[float] | None = None
    token_weights: list[float] | None = None
    privileged: PrivilegedTexts | None = None  # teacher-only texts recorded before this action
    info: dict[str, Any] = field(default_factory=dict)  # JSON-safe subset of the env's info

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)


@dataclass
class Episode:
    """A whole multi-turn episode, as sampled (possibly scored by a teacher later)."""

    env_id: str
    task_id: str
    seed: int
    turns: list[Turn] = field(default_factory=list)
    group_id: str = ""
    task_type: str = ""
    reward: float = 0.0  # sum of turn rewards
    won: bool = False
    end_reason: str = EndReason.TERMINATED
    policy_version: int = 0
    privileged: str | None = None  # which privileged strength the *sampler* saw (None = plain)
    # where the sampler's privileged block sits in every prompt: [pos, pos + n) (privileged sampling)
    privileged_span: tuple[int, int] | None = None
    final_privileged: PrivilegedTexts | None = None  # recorded after the episode ended (outcome_hint)
    episode_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    initial_observation: str = ""  # the env's reset() text (store transcripts and replay check it)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def full_ids(self) -> list[int]:
        """Token ids of the whole conversation: the last prompt plus the last completion."""
        if not self.turns:
            return []
        last = self.turns[-1]
        return list(last.prompt_ids) + list(last.completion_ids)

    @property
    def loss_mask(self) -> list[int]:
        """Mask over ``full_ids``: 1 exactly on sampled assistant tokens of every turn."""
        if not self.turns:
            return []
        mask = [0] * len(self.full_ids)
        for turn in self.turns:
            start = len(turn.prompt_ids)
            mask[start : start + len(turn.loss_mask)] = turn.loss_mask
        return mask


@dataclass
class EpisodeGroup:
    """G episodes of the same task and seed: the unit of group-relative advantages."""

    group_id: str
    task_id: str
    episodes: list[Episode]
    # the agents.renderers.Renderer the group was played with (teacher contexts reuse it);
    # not data: never stored, not compared
    renderer: Any = field(default=None, compare=False, repr=False)

    @property
    def rewards(self) -> list[float]:
        return [e.reward for e in self.episodes]
