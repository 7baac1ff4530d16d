"""Conversion at the store's edge: ``Episode``/``Turn`` records <-> row dicts of ``data.models``.

Nothing else in the package builds or reads turn rows, so the binary layout (see
:mod:`data.codec`) and the prompt delta live in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agents.types import Episode, PrivilegedTexts, Turn
from data import codec
from data.errors import StoreError

__all__ = ["episode_to_rows", "rows_to_episode", "check_turn"]


def check_turn(turn: Turn) -> None:
    """Raise :class:`StoreError` when a turn's per-token arrays disagree in length."""
    n = len(turn.completion_ids)
    lengths = {"sampler_logprobs": len(turn.sampler_logprobs), "loss_mask": len(turn.loss_mask)}
    if turn.teacher_logprobs is not None:
        lengths["teacher_logprobs"] = len(turn.teacher_logprobs)
    if turn.token_weights is not None:
        lengths["token_weights"] = len(turn.token_weights)
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise StoreError(f"turn {turn.index}: len(completion_ids)={n} but {bad}")


def episode_to_rows(
    run_id: int, step: int, episode: Episode
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One episode -> (episode row, turn rows without ``episode_id``), token arrays encoded."""
    ep_row = {
        "run_id": run_id,
        "uid": episode.episode_id,
        "step": step,
        "env_id": episode.env_id,
        "task_id": episode.task_id,
        "task_type": episode.task_type,
        "group_id": episode.group_id,
        "seed": int(episode.seed),
        "reward": float(episode.reward),
        "won": bool(episode.won),
        "num_turns": len(episode.turns),
        "end_reason": episode.end_reason,
        "privileged": episode.privileged,
        "policy_version": int(episode.policy_version),
        "initial_observation": episode.initial_observation,
        "info": _episode_info(episode),
    }
    turn_rows = []
    previous: tuple[list[int], list[int]] | None = None  # the previous turn's (prompt, completion)
    for turn in episode.turns:
        check_turn(turn)
        prompt, completion = _as_list(turn.prompt_ids), _as_list(turn.completion_ids)
        prefix_len, suffix = _prompt_delta(prompt, previous)
        previous = (prompt, completion)
        turn_rows.append(
            {
                "index": turn.index,
                "prompt_prefix_len": prefix_len,
                "prompt_suffix": codec.encode_ids(suffix),
                "completion_ids": codec.encode_ids(completion),
                "sampler_logprobs": codec.encode_floats(turn.sampler_logprobs),
                "teacher_logprobs": _opt_floats(turn.teacher_logprobs),
                "loss_mask": codec.encode_mask(turn.loss_mask),
                "token_weights": _opt_floats(turn.token_weights),
                "action_text": turn.action_text,
                "action": turn.action,
                "action_valid": bool(turn.action_valid),
                "observation": turn.observation,
                "reward": float(turn.reward),
                "terminated": bool(turn.terminated),
                "truncated": bool(turn.truncated),
                "finish_reason": turn.finish_reason,
                "policy_version": int(turn.policy_version),
                "info": _turn_info(turn),
            }
        )
    return ep_row, turn_rows


# The typed privileged records travel in the rows' JSON info under the keys runs written before
# they existed used, so old and new runs read back the same (no schema change).


def _episode_info(episode: Episode) -> dict[str, Any]:
    info = dict(episode.info)
    if episode.privileged_span is not None:
        info["privileged_span"] = list(episode.privileged_span)
    if episode.final_privileged is not None:
        info["privileged_final"] = episode.final_privileged.to_dict()
    return info


def _turn_info(turn: Turn) -> dict[str, Any]:
    info = dict(turn.info)
    if turn.privileged is not None:
        info["privileged"] = turn.privileged.to_dict()
    return info


def _as_list(ids: Sequence[int]) -> list[int]:
    return ids if isinstance(ids, list) else list(ids)


def _prompt_delta(
    prompt: list[int], previous: tuple[list[int], list[int]] | None
) -> tuple[int, list[int] | np.ndarray]:
    """(length shared with the previous turn's prompt + completion, suffix).

    The usual case (the prompt extends the previous context) compares list slices without
    building the previous context; anything else goes through :func:`codec.split_prompt`.
    """
    if previous is None:
        return 0, prompt
    prev_prompt, prev_completion = previous
    a, n = len(prev_prompt), len(prev_prompt) + len(prev_completion)
    if len(prompt) >= n and prompt[:a] == prev_prompt and prompt[a:n] == prev_completion:
        return n, prompt[n:]
    return codec.split_prompt(
        np.asarray(prompt, dtype=np.int64), np.asarray(prev_prompt + prev_completion, dtype=np.int64)
    )


def _opt_floats(values: Sequence[float] | None) -> bytes | None:
    return None if values is None else codec.encode_floats(values)


def decode_turn_arrays(
    turn_rows: Sequence[Mapping[str, Any]],
) -> list[dict[str, np.ndarray | None]]:
    """Decode the token arrays of one episode's turn rows (in index order), undoing the delta."""
    out: list[dict[str, np.ndarray | None]] = []
    previous: np.ndarray | None = None
    for row in turn_rows:
        completion = codec.decode(row["completion_ids"])
        assert completion is not None
        suffix = codec.decode(row["prompt_suffix"])
        assert suffix is not None
        prompt = codec.join_prompt(row["prompt_prefix_len"], suffix, previous)
        previous = np.concatenate([prompt, completion])
        out.append(
            {
                "prompt_ids": prompt,
                "completion_ids": completion,
                "sampler_logprobs": codec.decode(row["sampler_logprobs"]),
                "teacher_logprobs": codec.decode(row["teacher_logprobs"]),
                "loss_mask": codec.decode(row["loss_mask"]),
                "token_weights": codec.decode(row["token_weights"]),
            }
        )
    return out


def rows_to_episode(ep_row: Mapping[str, Any], turn_rows: Sequence[Mapping[str, Any]]) -> Episode:
    """(episode row, its turn rows in index order) -> ``Episode`` with plain Python lists."""
    turns = []
    for row, arrays in zip(turn_rows, decode_turn_arrays(turn_rows)):
        turn_info = dict(row["info"] or {})
        turns.append(
            Turn(
                index=row["index"],
                prompt_ids=arrays["prompt_ids"].tolist(),  # type: ignore[union-attr]
                completion_ids=arrays["completion_ids"].tolist(),  # type: ignore[union-attr]
                sampler_logprobs=arrays["sampler_logprobs"].tolist(),  # type: ignore[union-attr]
                loss_mask=arrays["loss_mask"].tolist(),  # type: ignore[union-attr]
                action_text=row["action_text"],
                action=row["action"],
                action_valid=bool(row["action_valid"]),
                observation=row["observation"],
                reward=row["reward"],
                terminated=bool(row["terminated"]),
                truncated=bool(row["truncated"]),
                finish_reason=row["finish_reason"],
                policy_version=row["policy_version"],
                teacher_logprobs=_tolist(arrays["teacher_logprobs"]),
                token_weights=_tolist(arrays["token_weights"]),
                privileged=PrivilegedTexts.from_dict(turn_info.pop("privileged", None)),
                info=turn_info,
            )
        )
    ep_info = dict(ep_row["info"] or {})
    span = ep_info.pop("privileged_span", None)
    return Episode(
        privileged_span=(int(span[0]), int(span[1])) if span else None,
        final_privileged=PrivilegedTexts.from_dict(ep_info.pop("privileged_final", None)),
        env_id=ep_row["env_id"],
        task_id=ep_row["task_id"],
        seed=ep_row["seed"],
        turns=turns,
        group_id=ep_row["group_id"],
        task_type=ep_row["task_type"],
        reward=ep_row["reward"],
        won=bool(ep_row["won"]),
        end_reason=ep_row["end_reason"],
        policy_version=ep_row["policy_version"],
        privileged=ep_row["privileged"],
        episode_id=ep_row["uid"],
        info=ep_info,
        initial_observation=ep_row["initial_observation"],
    )


def _tolist(arr: np.ndarray | None) -> list[float] | None:
    return None if arr is None else arr.tolist()
