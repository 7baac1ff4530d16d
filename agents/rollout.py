"""Token-in-token-out multi-turn rollouts: many episodes in lock-step, one batched generate per turn.

One trajectory, top to bottom (see ``agents/types.py`` for the token layout)::

    env.reset(seed, task_id)  -> obs0                 (G episodes per task share seed and task)
    prompt0 = renderer.start(obs0)                    (+ replayed prefix actions, + privileged block)
    loop:  completion = backend.generate(all live prompts)          one call per turn
           ids, mask  = renderer.finish_completion(completion)      end-of-turn appended, mask 0
           action     = renderer.parse(completion.text)             never raises
           obs, r, .. = env.step(action)                            an exception ends *that* episode
           prompt_t+1 = renderer.extend(prompt_t + ids, obs)        checked: must extend (TokenDriftError)

Model failures end up as data: a bad reply is ``action_valid=False``; a prompt that no longer
fits (``len(prompt) + max_tokens > max_context_tokens``) ends the episode with
``EndReason.CONTEXT_OVERFLOW``; an env exception with ``EndReason.ENV_ERROR`` and the message in
``episode.info["error"]``; a turn no sampler replica could answer (``finish_reason="infra_error"``
from the server backend) with ``EndReason.INFRA_ERROR``. The rest of the batch continues. Text that no store can hold (unpaired
surrogates, NUL) is replaced where it enters -- the model's text, an observation, privileged text,
an error -- and counted in ``info["unstorable_chars"]`` (:mod:`agents.text_safety`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.backends import INFRA_ERROR, Completion, GenerationBackend, SamplingParams
from agents.errors import BackendError
from agents.renderers import Renderer, check_extends, strip_span
from agents.text_safety import record_text, storable
from agents.types import EndReason, Episode, EpisodeGroup, PrivilegedTexts, Turn
from envs.base import STRENGTHS as _STRENGTHS

__all__ = ["RolloutConfig", "RolloutStats", "collect_groups", "student_view", "STRENGTHS"]

STRENGTHS = _STRENGTHS  # the env's privileged strengths (envs.base.STRENGTHS), re-exported
_INFO_KEYS = ("task_id", "task_type", "action_valid", "won", "reward_breakdown")

RendererSource = Renderer | Callable[[Any, dict[str, Any]], Renderer]


@dataclass
class RolloutConfig:
    """How episodes are sampled.

    ``privileged_strength``: the *sampler* sees the privileged text of that strength (spliced
    after the system message at the start; pi-Distill's teacher-view rollouts); its span is kept
    in ``episode.privileged_span`` (see :func:`student_view`).
    ``record_privileged``: strengths whose text is stored every turn in
    ``turn.privileged`` (``PrivilegedTexts``: the state before the turn's action), for teacher scoring.
    """

    group_size: int = 4
    max_turns: int = 10
    max_context_tokens: int = 2048
    sampling: SamplingParams = field(default_factory=SamplingParams)
    privileged_strength: str | None = None
    record_privileged: tuple[str, ...] = STRENGTHS

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_turns < 1:
            raise ValueError("group_size and max_turns must be >= 1")
        if self.max_context_tokens <= self.sampling.max_tokens:
            raise ValueError("max_context_tokens must exceed sampling.max_tokens")
        unknown = {s for s in (*self.record_privileged, self.privileged_strength) if s} - set(STRENGTHS)
        if unknown:
            raise ValueError(f"unknown privileged strength(s) {sorted(unknown)}; expected {STRENGTHS}")
        self.record_privileged = tuple(self.record_privileged)


@dataclass
class RolloutStats:
    """Wall-clock split of a rollout (filled in when passed to :func:`collect_groups`)."""

    total_s: float = 0.0
    generate_s: float = 0.0
    env_s: float = 0.0
    generate_calls: int = 0
    generated_tokens: int = 0
    turns: int = 0
    episodes: int = 0
    infra_failures: int = 0  # episodes ended by EndReason.INFRA_ERROR

    @property
    def env_share(self) -> float:
        return self.env_s / self.total_s if self.total_s else 0.0


@dataclass
class _Slot:
    """Live state of one episode while the batch is stepped."""

    env: Any
    renderer: Renderer
    episode: Episode
    prompt_ids: list[int] = field(default_factory=list)
    done: bool = False


def _end(slot: _Slot, reason: str, **info: Any) -> None:
    slot.done = True
    slot.episode.end_reason = reason
    slot.episode.info.update(info)


def _error_text(exc: BaseException) -> str:
    return storable(f"{type(exc).__name__}: {exc}")


def _json_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in _INFO_KEYS if k in info}


class _Timer:
    def __init__(self, stats: RolloutStats, attr: str) -> None:
        self.stats, self.attr = stats, attr

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        setattr(self.stats, self.attr, getattr(self.stats, self.attr) + time.perf_counter() - self.t0)


def _base(env: Any) -> Any:
    """The env under gymnasium's wrappers (where ``privileged_text`` and ``family`` live)."""
    return env.unwrapped


def _make_renderer(source: RendererSource, env: Any, info: dict[str, Any]) -> Renderer:
    return source if isinstance(source, Renderer) else source(env.unwrapped, info)


def _start_slot(
    env_id: str, task_id: str, g: int, group_id: str, source: RendererSource, cfg: RolloutConfig,
    seed: int, env_kwargs: dict[str, Any], prefix: list[str], stats: RolloutStats,
) -> _Slot:
    """Make, reset, replay the prefix and render the first prompt of one episode."""
    from envs import make  # imported lazily: agents does not need envs to be importable

    env = make(env_id, **env_kwargs)
    episode = Episode(env_id=env_id, task_id=task_id, seed=seed, group_id=group_id,
                      episode_id=uuid.uuid4().hex, privileged=cfg.privileged_strength)
    episode.info["group_index"] = g
    if env_kwargs:
        episode.info["env_kwargs"] = dict(env_kwargs)  # replay rebuilds the same env from the store
    slot = _Slot(env=env, renderer=None, episode=episode)  # type: ignore[arg-type]
    try:
        with _Timer(stats, "env_s"):
            obs, info = env.reset(seed=seed, options={"task_id": task_id})
        obs = record_text(obs, episode.info, "initial_observation")
        episode.task_type = storable(str(info.get("task_type", "")))
        episode.initial_observation = obs
        slot.renderer = _make_renderer(source, env, info)
        slot.prompt_ids = slot.renderer.start(obs)
        if prefix:
            _replay_prefix(slot, prefix, stats)
        if cfg.privileged_strength and not slot.done:
            with _Timer(stats, "env_s"):
                text = storable(_base(env).privileged_text(cfg.privileged_strength))
            slot.prompt_ids, pos, n = slot.renderer.teacher_ids(slot.prompt_ids, text)
            episode.privileged_span = (pos, n)
    except Exception as exc:  # noqa: BLE001 - an env failure is recorded, the batch goes on
        if slot.renderer is None:
            slot.renderer = source if isinstance(source, Renderer) else None  # type: ignore[assignment]
        _end(slot, EndReason.ENV_ERROR, error=_error_text(exc), error_stage="reset")
    return slot


def _replay_prefix(slot: _Slot, actions: list[str], stats: RolloutStats) -> None:
    """Play expert ``actions`` (no loss): each becomes a closed assistant message in the prompt."""
    slot.episode.info["prefix_actions"] = list(actions)
    reward = 0.0
    for action in actions:
        with _Timer(stats, "env_s"):
            obs, r, terminated, truncated, info = slot.env.step(action)
        obs = record_text(obs, slot.episode.info, "prefix_observation")
        reward += float(r)
        slot.prompt_ids = slot.renderer.extend(slot.prompt_ids + slot.renderer.render_assistant(action), obs)
        if terminated or truncated:
            slot.episode.won = bool(info.get("won", False))
            _end(slot, EndReason.TERMINATED if terminated else EndReason.TRUNCATED, prefix_finished=True)
            break
    slot.episode.info["prefix_reward"] = reward


def _record_privileged(slot: _Slot, strengths: tuple[str, ...], stats: RolloutStats) -> PrivilegedTexts | None:
    if not strengths:
        return None
    with _Timer(stats, "env_s"):
        return PrivilegedTexts(**storable({s: _base(slot.env).privileged_text(s) for s in strengths}))


def _make_turn(slot: _Slot, completion: Completion, version: int, privileged: PrivilegedTexts | None) -> Turn:
    ids, mask = slot.renderer.finish_completion(completion.token_ids, completion.finish_reason)
    logps = list(completion.logprobs) + [0.0] * (len(ids) - len(completion.logprobs))
    info: dict[str, Any] = {}
    text = record_text(completion.text, info, "action_text")
    parsed = slot.renderer.parse(text)
    if parsed.error:
        info["parse_error"] = parsed.error
    return Turn(index=len(slot.episode.turns), prompt_ids=list(slot.prompt_ids), completion_ids=ids,
                sampler_logprobs=logps, loss_mask=mask, action_text=text,
                action=parsed.action, action_valid=parsed.valid,
                finish_reason=completion.finish_reason, policy_version=version, privileged=privileged,
                info=info)


def _step_slot(slot: _Slot, turn: Turn, cfg: RolloutConfig, max_student_turns: int | None,
               stats: RolloutStats) -> None:
    """Send the turn's action to the env, record the answer, end the episode or extend its prompt."""
    episode = slot.episode
    episode.turns.append(turn)
    try:
        with _Timer(stats, "env_s"):
            obs, reward, terminated, truncated, info = slot.env.step(turn.action)
    except Exception as exc:  # noqa: BLE001 - recorded; the other episodes continue
        _end(slot, EndReason.ENV_ERROR, error=_error_text(exc), error_stage=f"step {turn.index}")
        return
    obs = record_text(obs, turn.info, "observation")
    turn.observation, turn.reward = obs, float(reward)
    turn.terminated, turn.truncated = bool(terminated), bool(truncated)
    turn.action_valid = turn.action_valid and bool(info.get("action_valid", True))
    turn.info.update(storable(_json_info(info)))
    episode.reward += turn.reward
    episode.won = bool(info.get("won", episode.won))
    if terminated or truncated:
        _end(slot, EndReason.TERMINATED if terminated else EndReason.TRUNCATED)
    elif max_student_turns is not None and len(episode.turns) >= max_student_turns:
        _end(slot, EndReason.CURRICULUM)
    elif len(episode.turns) >= cfg.max_turns:
        _end(slot, EndReason.MAX_TURNS)
    if slot.done:
        return
    previous = turn.prompt_ids + turn.completion_ids
    slot.prompt_ids = slot.renderer.extend(previous, obs)
    check_extends(previous, slot.prompt_ids, f"episode {episode.episode_id} turn {turn.index + 1}")


def _finalize(slot: _Slot, cfg: RolloutConfig, stats: RolloutStats) -> None:
    if "outcome_hint" in cfg.record_privileged and slot.episode.end_reason != EndReason.ENV_ERROR:
        try:
            slot.episode.final_privileged = _record_privileged(slot, ("outcome_hint",), stats)
        except Exception as exc:  # noqa: BLE001
            slot.episode.info["privileged_final_error"] = _error_text(exc)
    try:
        slot.env.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


def collect_groups(
    env_id: str,
    task_ids: list[str],
    backend: GenerationBackend,
    renderer_factory_or_renderer: RendererSource,
    cfg: RolloutConfig,
    *,
    seed: int,
    policy_version: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    prefix_actions: dict[str, list[str]] | None = None,
    max_student_turns: int | None = None,
    stats: RolloutStats | None = None,
    task_index_offset: int = 0,
) -> list[EpisodeGroup]:
    """Run ``cfg.group_size`` episodes per task (same env seed), all in lock-step.

    Args:
        env_id: a registered id, e.g. ``"DistillGym/Household-v0"``.
        task_ids: tasks to play (``env.unwrapped.task_ids(split, n)``).
        backend: the sampler; one ``generate`` call per turn for all live episodes.
        renderer_factory_or_renderer: a :class:`Renderer`, or ``f(env.unwrapped, reset_info)``
            returning one per episode (e.g. ``functools.partial(Renderer.for_env, tokenizer)``).
        cfg: sampling and limits.
        seed: env seed (shared by the group); per-turn sampling seeds derive from it when
            ``cfg.sampling.seed`` is None, so a rollout is reproducible.
        policy_version: tag for every sample (default: ``backend.policy_version``).
        env_kwargs: passed to ``envs.make``.
        prefix_actions: per task, expert actions replayed before the student plays (TCOD B2F).
        max_student_turns: stop after that many student turns (TCOD F2B), ``EndReason.CURRICULUM``.
        stats: filled with the time split (generation vs env).
        task_index_offset: position of ``task_ids[0]`` in the step's full task list. Episode
            ``g`` of task ``i`` samples from its own stream, seeded by the turn's seed and
            ``(task_index_offset + i) * G + g``, so a rank that plays a share of the step's tasks
            draws exactly what one process playing all of them would.
    """
    window = getattr(backend, "max_model_len", None)
    if window is not None and cfg.max_context_tokens > window:
        raise ValueError(f"cfg.max_context_tokens={cfg.max_context_tokens} exceeds the backend's window {window}")
    stats = stats if stats is not None else RolloutStats()
    t_start = time.perf_counter()
    version = backend.policy_version if policy_version is None else int(policy_version)
    slots: list[_Slot] = []
    groups: list[EpisodeGroup] = []
    stream: dict[int, int] = {}  # id(slot) -> its global episode index (its sampling stream)
    for t, task_id in enumerate(task_ids):
        group_id = f"{task_id}@{seed}-{uuid.uuid4().hex[:8]}"
        prefix = list((prefix_actions or {}).get(task_id, []))
        members = [
            _start_slot(env_id, task_id, g, group_id, renderer_factory_or_renderer, cfg, seed,
                        dict(env_kwargs or {}), prefix, stats)
            for g in range(cfg.group_size)
        ]
        slots.extend(members)
        stream.update({id(s): (task_index_offset + t) * cfg.group_size + g for g, s in enumerate(members)})
        renderer = next((s.renderer for s in members if s.renderer is not None), None)
        groups.append(EpisodeGroup(group_id=group_id, task_id=task_id,
                                   episodes=[s.episode for s in members], renderer=renderer))
    for slot in slots:
        slot.episode.policy_version = version
    turn_index = 0
    while True:
        for slot in slots:
            if not slot.done and len(slot.prompt_ids) + cfg.sampling.max_tokens > cfg.max_context_tokens:
                _end(slot, EndReason.CONTEXT_OVERFLOW, context_tokens=len(slot.prompt_ids))
        live = [s for s in slots if not s.done]
        if not live:
            break
        batch: list[tuple[_Slot, PrivilegedTexts | None]] = []
        for slot in live:
            try:
                batch.append((slot, _record_privileged(slot, cfg.record_privileged, stats)))
            except Exception as exc:  # noqa: BLE001 - the env failed: recorded, the others go on
                _end(slot, EndReason.ENV_ERROR, error=_error_text(exc), error_stage="privileged_text")
        if not batch:
            continue
        params = cfg.sampling
        if params.seed is None:
            turn_seed = (seed * 1_000_003 + turn_index) % (2**31)
            params = dataclasses.replace(params, seed=turn_seed, row_seeds=tuple(
                row_seed(turn_seed, stream[id(s)]) for s, _ in batch))
        with _Timer(stats, "generate_s"):
            completions = backend.generate([s.prompt_ids for s, _ in batch], params)
        if len(completions) != len(batch):
            raise BackendError(f"backend returned {len(completions)} completions for {len(batch)} prompts")
        stats.generate_calls += 1
        for (slot, privileged), completion in zip(batch, completions):
            if completion.finish_reason == INFRA_ERROR:  # no replica answered: not the policy's fault
                _end(slot, EndReason.INFRA_ERROR, error="no sampler replica answered",
                     error_stage=f"turn {len(slot.episode.turns)}")
                stats.infra_failures += 1
                continue
            stats.generated_tokens += len(completion.token_ids)
            stats.turns += 1
            _step_slot(slot, _make_turn(slot, completion, version, privileged), cfg, max_student_turns, stats)
        turn_index += 1
    for slot in slots:
        _finalize(slot, cfg, stats)
    stats.episodes += len(slots)
    stats.total_s += time.perf_counter() - t_start
    return groups


def row_seed(turn_seed: int, stream: int) -> int:
    """Sampling seed of episode ``stream`` at a turn (a fixed mix: no Python ``hash``, which is
    salted per process)."""
    return (turn_seed * 2_654_435_761 + stream * 40_503 + 1) % (2**31 - 1)


def student_view(episode: Episode) -> Episode:
    """A copy of a privileged-sampled episode with the privileged span removed from every prompt.

    The completions are unchanged, so scoring it gives the student-view log-probs of the very
    tokens the teacher-view sampler produced (pi-Distill's ``pi_S(y | x)``).
    """
    span = episode.privileged_span
    if not span or not span[1]:
        return dataclasses.replace(episode, turns=[dataclasses.replace(t) for t in episode.turns])
    pos, n = span
    turns = [dataclasses.replace(t, prompt_ids=strip_span(t.prompt_ids, pos, n)) for t in episode.turns]
    return dataclasses.replace(episode, turns=turns, privileged=None, privileged_span=None)
