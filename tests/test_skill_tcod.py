"""Skill-SD (skill bank, summarizers, UCB, importance-weighted k3) and TCOD (curricula).

Real components throughout: a real SQLite store, a real HTTP server on 127.0.0.1 standing in for an
OpenAI-compatible endpoint, the real household env and its expert, the tiny model through the
real rollout and the real training loop.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from agents.types import EndReason, Episode, EpisodeGroup, Turn
from trainers.methods.skill_sd import pick_for_summary, skill_sdl_loss
from trainers.methods.tcod import (
    b2f_replay_length,
    curriculum_window,
    drop_replay_solved,
    drop_stale,
    expert_actions,
    f2b_student_turns,
)
from trainers.skills import (
    MalformedSkillError,
    OpenAISummarizer,
    Skill,
    SkillBank,
    SkillWorker,
    parse_skill,
    select_skill,
    skill_text,
    summarize_episode,
    ucb_scores,
)

ENV = "DistillGym/Household-v0"
GOOD = {"success_analysis": "went to the sink first", "mistake_analysis": "",
        "golden_workflow": ["go to sinkbasin 1", "clean mug 1 with sinkbasin 1"]}


def _episode(task: str = "train-000001", reward: float = 1.0, won: bool = True, **info) -> Episode:
    turn = Turn(index=0, prompt_ids=[1, 2], completion_ids=[3, 4], sampler_logprobs=[-1.0, -1.0],
                loss_mask=[1, 1], action_text="go to sinkbasin 1", action="go to sinkbasin 1",
                action_valid=True, observation="You arrive at sinkbasin 1.", reward=reward)
    return Episode(env_id=ENV, task_id=task, seed=0, turns=[turn], reward=reward, won=won,
                   episode_id=f"ep-{task}-{reward}", info=dict(info))


# ------------------------------------------------------------------------------- UCB


def test_ucb_scores_hand_computed():
    scores = ucb_scores([0.0, 0.5, 0.2], [0, 3, 1], c=1.0)
    assert scores[0] == math.inf
    assert scores[1] == pytest.approx(0.5 + math.sqrt(math.log(4) / 3))
    assert scores[2] == pytest.approx(0.2 + math.sqrt(math.log(4) / 1))


def test_ucb_selection_order_on_hand_made_bank():
    def bank(*stats: tuple[int, float]) -> list[Skill]:
        return [Skill(i, "t", GOOD, uses=n, mean_reward=m) for i, (n, m) in enumerate(stats)]

    # untried first, the earliest of them
    assert select_skill(bank((3, 0.5), (0, 0.0), (1, 0.2), (0, 0.0))).skill_id == 1
    # N = 4: B = 0.5 + sqrt(ln4/3) = 1.180, C = 0.2 + sqrt(ln4) = 1.377 -> C explores
    assert select_skill(bank((3, 0.5), (1, 0.2)), c=1.0).skill_id == 1
    # with c = 0.1 exploitation wins: B = 0.568, C = 0.318
    assert select_skill(bank((3, 0.5), (1, 0.2)), c=0.1).skill_id == 0
    assert select_skill([]) is None


# ---------------------------------------------------------------------- skill parsing


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    "Here is the skill:\n```json\n" + json.dumps(GOOD) + "\n```\nDone.",
    "Sure! " + json.dumps({**GOOD, "extra": 1}) + " hope it helps",
    json.dumps({**GOOD, "golden_workflow": "go to the sink, then clean"}),
])
def test_parse_skill_accepts_valid_outputs(text):
    skill = parse_skill(text)
    assert set(skill) == {"success_analysis", "mistake_analysis", "golden_workflow"}
    assert skill["success_analysis"] == GOOD["success_analysis"]


@pytest.mark.parametrize("text", [
    "",
    "I could not summarize this trajectory.",
    json.dumps(GOOD)[:-5],  # truncated
    json.dumps({k: v for k, v in GOOD.items() if k != "golden_workflow"}),  # missing key
    json.dumps({**GOOD, "success_analysis": 3}),  # wrong type
    json.dumps({**GOOD, "golden_workflow": []}),  # empty workflow
    json.dumps("a plain string"),  # not an object
    json.dumps([GOOD, GOOD]),  # two objects
])
def test_parse_skill_rejects_malformed_outputs(text):
    with pytest.raises(MalformedSkillError):
        parse_skill(text)


def test_skill_text_lists_the_workflow():
    text = skill_text(GOOD)
    assert "1. go to sinkbasin 1\n2. clean mug 1 with sinkbasin 1" in text
    assert "none noted" in text  # empty mistake analysis


# ----------------------------------------------------------- stub OpenAI-compatible server


class _Stub:
    """A real HTTP server on 127.0.0.1 answering /v1/chat/completions from a list of replies."""

    def __init__(self, replies: list[str | int]) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body})
                reply = stub.replies.pop(0) if stub.replies else "no more replies"
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[type[_Stub]]:
    made: list[_Stub] = []

    def make(replies: list[str | int]) -> _Stub:
        made.append(_Stub(replies))
        return made[-1]

    yield make  # type: ignore[misc]
    for s in made:
        s.close()


def test_http_summarizer_retries_malformed_then_succeeds(stub):
    server = stub(["not json at all", json.dumps(GOOD)])
    summarizer = OpenAISummarizer(server.url + "/v1", model="judge")
    skill = summarize_episode(summarizer, _episode(), max_attempts=2)
    assert skill == GOOD
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2
    body = server.requests[0]["body"]
    assert body["model"] == "judge" and body["messages"][0]["role"] == "system"
    assert "go to sinkbasin 1" in body["messages"][1]["content"]  # the trajectory is sent


def test_http_summarizer_drops_after_max_attempts_and_http_errors(stub):
    server = stub([json.dumps({"success_analysis": "x"}), 500])
    assert summarize_episode(OpenAISummarizer(server.url), _episode(), max_attempts=2) is None
    assert len(server.requests) == 2


# --------------------------------------------------------------- the bank on a real store


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[SkillBank]:
    from data import Store

    store = Store(f"sqlite:///{tmp_path / 'skills.db'}")
    run_id = store.create_run("skill-test", "skill-sd", {}, seed=0)
    yield SkillBank(store, run_id)
    store.close()


def test_bank_stores_validated_skills_and_usage(bank):
    sid = bank.add("train-000001", GOOD)
    with pytest.raises(MalformedSkillError, match="rejected"):  # never stores half a skill
        bank.add("train-000001", {"success_analysis": "only this"})
    bank.record_use(sid, 1.0)
    bank.record_use(sid, 0.0)
    (skill,) = bank.for_task("train-000001")
    assert skill.content == GOOD and skill.uses == 2 and skill.mean_reward == pytest.approx(0.5)
    assert bank.for_task("train-000002") == [] and bank.size() == 1


def test_worker_summarizes_async_and_never_stores_malformed(bank, stub):
    server = stub([json.dumps(GOOD), "garbage", "still garbage"])
    worker = SkillWorker(OpenAISummarizer(server.url), bank, max_attempts=2)
    worker.submit(_episode("train-000001"))
    worker.drain()
    worker.submit(_episode("train-000002", reward=0.0, won=False))
    worker.drain()
    worker.close()
    assert (worker.stats.stored, worker.stats.dropped, worker.stats.errors) == (1, 1, 0)
    assert [s.content for s in bank.for_task("train-000001")] == [GOOD]
    assert bank.for_task("train-000002") == []


def test_policy_model_summarizer_runs_and_its_garbage_is_dropped(bank, tiny):
    from trainers.skills import ModelSummarizer

    summarizer = ModelSummarizer(tiny[0], tiny[1], max_new_tokens=8, structured=False)
    assert isinstance(summarizer.complete([{"role": "user", "content": "hi"}]), str)
    worker = SkillWorker(summarizer, bank, max_attempts=1)
    worker.submit(_episode())
    worker.drain()
    worker.close()
    # a random tiny model cannot write the JSON: recorded as dropped, not as an error
    assert (worker.stats.stored, worker.stats.dropped, worker.stats.errors) == (0, 1, 0)
    assert bank.size() == 0


def test_structured_summarizer_always_writes_json_with_the_schemas_keys(tiny):
    from trainers.skills import SKILL_KEYS, ModelSummarizer

    summarizer = ModelSummarizer(tiny[0], tiny[1], structured=True, field_max_tokens=6)
    for text in ("hi", 'a "quoted" \\ task'):
        out = json.loads(summarizer.complete([{"role": "user", "content": text}]))
        assert list(out) == list(SKILL_KEYS)
        assert all(isinstance(v, str) and '"' not in v and len(v) < 200 for v in out.values())


def _household_win() -> Episode:
    steps = [("go to countertop 1", "You arrive at countertop 1. On the countertop 1, you see a cloth 1."),
             ("take cloth 1 from countertop 1", "You pick up the cloth 1 from the countertop 1."),
             ("go to bathtubbasin 1", "You arrive at bathtubbasin 1. On the bathtubbasin 1, you see nothing."),
             ("move cloth 1 to bathtubbasin 1", "You move the cloth 1 to the bathtubbasin 1.")]
    turns = [Turn(index=i, prompt_ids=[1], completion_ids=[2], sampler_logprobs=[-1.0], loss_mask=[1],
                  action_text=a, action=a, action_valid=True, observation=o, reward=float(i == 3))
             for i, (a, o) in enumerate(steps)]
    first = "You are in the middle of a room. You see a countertop 1 and a bathtubbasin 1.\n\n" \
            "Your task is to: put a cloth in bathtubbasin."
    return Episode(env_id=ENV, task_id="train-000003", seed=0, turns=turns, reward=1.0, won=True,
                   episode_id="ep-real", info={"first_observation": first})


def test_bundled_model_writes_schema_valid_skills_only_when_structured(bank, smollm2):
    """The 135M policy as its own summarizer: free text never parses, constrained decoding does."""
    from trainers.skills import ModelSummarizer

    free = ModelSummarizer(*smollm2, max_new_tokens=48, structured=False)
    assert summarize_episode(free, _household_win(), max_attempts=1) is None
    worker = SkillWorker(ModelSummarizer(*smollm2, structured=True, field_max_tokens=24), bank, max_attempts=1)
    worker.submit(_household_win())
    worker.drain()
    worker.close()
    assert (worker.stats.stored, worker.stats.dropped, worker.stats.errors) == (1, 0, 0)
    (skill,) = bank.for_task("train-000003")
    assert skill.content["success_analysis"].strip() and skill.content["golden_workflow"].strip()


def test_pick_for_summary_prefers_best_completed_episodes():
    eps = [_episode(reward=r) for r in (0.2, 0.9, 0.5)]
    eps.append(_episode(reward=5.0))
    eps[-1].end_reason = EndReason.ENV_ERROR
    group = EpisodeGroup("g", "train-000001", eps)
    assert [e.reward for e in pick_for_summary(group, 2)] == [0.9, 0.5]


# ------------------------------------------------------------------ importance-weighted k3


def test_importance_weighted_k3_gradient_is_rho_l_grad_logpi():
    logp = torch.tensor([[-1.0, -0.3, -2.0]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -0.9, -2.0]])
    old = torch.tensor([[-1.2, -0.1, -2.5]])
    values = skill_sdl_loss(logp, teacher, old)
    rho = torch.exp(logp.detach() - old)
    ell = logp.detach() - teacher
    torch.testing.assert_close(values.detach(), rho * (torch.exp(-ell) - 1 + ell))
    values.sum().backward()
    torch.testing.assert_close(logp.grad, rho * ell)  # ρ·ℓ·∇log π with ∇log π = 1 here
    assert values.detach()[0, 2] == 0.0 or ell[0, 2] == 0  # teacher == student -> exactly 0


# --------------------------------------------------------------------------- curricula


def test_f2b_and_b2f_windows():
    assert [f2b_student_turns(t, 3) for t in range(8)] == [1, 1, 1, 2, 2, 2, 3, 3]
    assert [b2f_replay_length(t, 2, 4) for t in range(9)] == [3, 3, 2, 2, 1, 1, 0, 0, 0]
    assert b2f_replay_length(0, 5, 0) == 0
    w = curriculum_window("b2f", 4, 2, ["a", "b"], {"a": 6, "b": 2})
    assert w.replay == {"a": 3, "b": 0} and w.student_turns is None
    assert curriculum_window("f2b", 10, 5, ["a"], {}).student_turns == 3
    with pytest.raises(ValueError):
        f2b_student_turns(0, 0)


def test_drop_stale_counts_old_samples():
    eps = [_episode(), _episode(), _episode()]
    for ep, v in zip(eps, (5, 3, 2)):
        ep.turns[0].policy_version = v
    groups, dropped = drop_stale([EpisodeGroup("g", "t", eps)], current_version=5, max_staleness=2)
    assert dropped == 1 and len(groups[0].episodes) == 2


@pytest.fixture(scope="module")
def household_rollout(tiny):
    """``rollout(task, prefix, **kw)``: one group of 2 episodes from the tiny model."""
    from agents.backends import HFBackend, SamplingParams
    from agents.renderers import Renderer
    from agents.rollout import RolloutConfig, collect_groups

    model, tok = tiny
    backend = HFBackend(model, tok)

    def rollout(task: str, prefix: list[str] | None = None, **kw) -> EpisodeGroup:
        cfg = RolloutConfig(group_size=2, max_turns=2, max_context_tokens=2048,
                            sampling=SamplingParams(max_tokens=6, seed=0), record_privileged=())
        (group,) = collect_groups(ENV, [task], backend, lambda env, info: Renderer.for_env(tok, env, info),
                                  cfg, seed=0, prefix_actions={task: prefix} if prefix else None, **kw)
        return group

    return rollout


def test_b2f_replay_reproduces_the_experts_observations(household_rollout, tiny):
    import envs

    task = "train-000000"
    actions = expert_actions(ENV, task)
    env = envs.make(ENV)
    env.reset(options={"task_id": task})
    observations = []
    for a in actions:
        obs, _, terminated, _, info = env.step(a)
        observations.append(obs)
    assert terminated and info["won"]  # the expert solves the task

    c = b2f_replay_length(0, 5, len(actions))  # all but the last action
    group = household_rollout(task, actions[:c])
    text = tiny[1].decode(group.episodes[0].turns[0].prompt_ids)
    where = -1
    for a, obs in zip(actions[:c], observations[:c]):  # every replayed step, in order
        where = text.index(obs.strip()[:60], where + 1)
        assert a in text
    assert group.episodes[0].info["prefix_actions"] == actions[:c]
    assert all(ep.turns for ep in group.episodes)  # the student plays the rest


def test_b2f_drops_samples_the_replay_already_solved(household_rollout):
    actions = expert_actions(ENV, "train-000001")
    solved = household_rollout("train-000001", actions)  # the whole solution replayed
    open_ = household_rollout("train-000000", expert_actions(ENV, "train-000000")[:2])
    kept, dropped = drop_replay_solved([solved, open_])
    assert dropped == 2 and [g.task_id for g in kept] == ["train-000000"]
    assert all(ep.won and not ep.turns for ep in solved.episodes)


def test_f2b_rollout_stops_after_the_window(household_rollout):
    group = household_rollout("train-000000", max_student_turns=1)
    assert all(ep.num_turns == 1 and ep.end_reason == EndReason.CURRICULUM for ep in group.episodes)


# ------------------------------------------------------------------ smoke runs (real loop)


def _train(tmp_path: Path, method: str, **overrides):
    from trainers.loop import train
    from trainers.methods import get_method

    kw: dict[str, Any] = dict(method=method, model="tiny", steps=2, tasks_per_step=1, group_size=2, max_turns=2,
              max_new_tokens=6, max_context_tokens=1024, token_budget=4096, backend="hf",
              finetune="lora", lr=1e-4, checkpoint_every=0, progress=False, num_train_tasks=2,
              output_dir=str(tmp_path), store=f"sqlite:///{tmp_path / 'store.db'}")
    kw.update(overrides)
    return train(get_method(method).config_cls(**kw))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny) -> str:
    """A tiny teacher saved as a local HF directory (what ``teacher=<dir>`` loads)."""
    path = tmp_path_factory.mktemp("teacher")
    model, tok = tiny
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_smoke_tcod_b2f_on_opd(tmp_path, teacher_dir):
    result = _train(tmp_path, "tcod", teacher=teacher_dir, curriculum="b2f", curriculum_k=1,
                    max_turns=3, num_train_tasks=1)
    rows = result.metrics
    assert len(rows) == 2 and not any(r["skipped"] for r in rows)
    # train-000000 needs 6 expert actions: replay 5 at step 0, 4 at step 1
    assert [r["tcod_replay_mean"] for r in rows] == [5.0, 4.0]
    assert all(math.isfinite(r["loss"]) and r["tcod_dropped_stale"] == 0 for r in rows)


def test_smoke_tcod_f2b_alias_on_grpo(tmp_path):
    result = _train(tmp_path, "tcod-f2b", base_method="grpo", curriculum_k=1, max_turns=3)
    assert [r["tcod_student_turns"] for r in result.metrics] == [1.0, 2.0]
    assert [r["turns"] <= w for r, w in zip(result.metrics, (1, 2))] == [True, True]


def test_tcod_staleness_bound_is_the_async_bound(tmp_path):
    from trainers.config import ConfigError, parse_config
    from trainers.methods.tcod import TCODConfig

    with pytest.raises(ConfigError, match="async_steps=3 exceeds TCOD's staleness bound max_staleness=2"):
        parse_config(TCODConfig, ["base_method=grpo", "async_steps=3"])
    result = _train(tmp_path, "tcod-f2b", base_method="grpo", curriculum_k=1, max_turns=3, steps=3,
                    async_steps=2)
    rows = result.metrics
    assert [r["async/staleness"] for r in rows] == [0.0, 1.0, 2.0]
    assert [r["tcod_dropped_stale"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r["tcod_student_turns"] for r in rows] == [1.0, 2.0, 3.0]


def test_smoke_skill_sd_grows_the_bank_and_conditions_the_teacher(tmp_path, stub):
    from data import Store

    server = stub([json.dumps(GOOD)] * 10)
    result = _train(tmp_path, "skill-sd", summarizer="http", summarizer_url=server.url,
                    summarize_async=False, num_train_tasks=1)
    rows = result.metrics
    assert [r["skill_bank_size"] for r in rows] == [0.0, 1.0]  # bank starts empty, then grows
    assert [r["skill_conditioned"] for r in rows] == [0.0, 1.0]
    assert rows[0]["sdl_loss"] == 0.0  # no skill: the teacher is the student, exactly
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        first, second = store.skills(result.run_id)  # one summary after each step
        assert first.usage_count == 2 and first.skill == GOOD  # both episodes of step 1 used it
        assert second.usage_count == 0 and second.created_step == 1
        episodes = list(store.episodes(result.run_id))  # which skill conditioned each episode
        assert [ep.info["skill_id"] for ep in episodes] == [None, None, first.skill_id, first.skill_id]
    finally:
        store.close()
