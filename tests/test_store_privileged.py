"""Typed privileged records (``Turn.privileged``, ``Episode.privileged_span`` / ``final_privileged``)
round-trip through a real SQLite store, and runs written before they existed (the texts in the rows'
JSON info) read back into the same typed fields."""

from __future__ import annotations

import dataclasses

from agents.types import Episode, PrivilegedTexts, Turn
from data import Store
from data.convert import episode_to_rows, rows_to_episode


def _episode() -> Episode:
    turn = Turn(index=0, prompt_ids=[1, 2, 3], completion_ids=[4, 5], sampler_logprobs=[-0.5, 0.0],
                loss_mask=[1, 0], action_text="go", action="go", action_valid=True,
                privileged=PrivilegedTexts(plan="1. go to desk 1", hint="look at the desk"),
                info={"task_type": "pick"})
    return Episode(env_id="DistillGym/Household-v0", task_id="train-000001", seed=3, turns=[turn],
                   privileged="plan", privileged_span=(1, 2), episode_id="e1",
                   final_privileged=PrivilegedTexts(outcome_hint="This attempt succeeded."),
                   info={"skill_id": None})


def test_typed_privileged_round_trips_through_sqlite(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run = store.create_run("r", "opsd", {}, seed=0)
    store.add_episodes(run, 0, [_episode()])
    store.flush()
    (back,) = store.episodes(run)
    want = _episode()
    assert back.turns[0].privileged == want.turns[0].privileged
    assert back.turns[0].privileged.get("plan") == "1. go to desk 1" and back.turns[0].privileged.answer is None
    assert back.privileged_span == (1, 2) and back.final_privileged == want.final_privileged
    assert back.info == {"skill_id": None} and back.turns[0].info == {"task_type": "pick"}
    store.close()


def test_rows_written_before_the_typed_fields_read_back_typed():
    ep_row, turn_rows = episode_to_rows(1, 0, _episode())
    # the old writer kept the texts in info and had no typed fields: the rows are the same JSON
    old = dataclasses.replace(_episode(), privileged_span=None, final_privileged=None,
                              info={"skill_id": None, "privileged_span": [1, 2],
                                    "privileged_final": {"outcome_hint": "This attempt succeeded."}})
    old.turns[0] = dataclasses.replace(old.turns[0], privileged=None,
                                       info={"task_type": "pick", "privileged": {
                                           "plan": "1. go to desk 1", "hint": "look at the desk"}})
    old_ep_row, old_turn_rows = episode_to_rows(1, 0, old)
    assert old_ep_row["info"] == ep_row["info"] and old_turn_rows[0]["info"] == turn_rows[0]["info"]
    back = rows_to_episode(old_ep_row, old_turn_rows)
    assert back.privileged_span == (1, 2) and back.turns[0].privileged.hint == "look at the desk"
