"""The household world: ALFWorld texts and rules, generation, experts, invariants, the CLI.

Hand-built worlds pin the feedback texts; the experts run over 504 generated tasks (every task
type at every difficulty, seen and unseen splits); hypothesis drives random command sequences
and checks the invariants after every step.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from subproc import child_env

import envs
from envs.household import LEVELS, TASK_TYPES, Explorer, HouseholdEnv, oracle_plan
from envs.household.catalog import GOAL_TEMPLATES
from envs.household.generate import combos
from envs.household.world import HAND, NOTHING, Obj, Receptacle, Task, World

ROOT = Path(__file__).resolve().parents[1]
HORIZON = 50


def small_world() -> World:
    """A kitchen: countertop 1 (mug 1, apple 1), cabinet 1 (closed, cup 1), microwave 1, sinkbasin 1, desk 1 (desklamp 1)."""
    receps = [
        Receptacle("countertop 1", "countertop", "kitchen"),
        Receptacle("cabinet 1", "cabinet", "kitchen", openable=True, is_open=False),
        Receptacle("microwave 1", "microwave", "kitchen", openable=True, is_open=False),
        Receptacle("sinkbasin 1", "sinkbasin", "kitchen"),
        Receptacle("desk 1", "desk", "kitchen"),
    ]
    objs = [
        Obj("mug 1", "mug", "countertop 1"),
        Obj("apple 1", "apple", "countertop 1"),
        Obj("cup 1", "cup", "cabinet 1"),
        Obj("desklamp 1", "desklamp", "desk 1", lamp=True),
    ]
    contents = {r.name: [o.name for o in objs if o.location == r.name] for r in receps}
    return World(
        ["kitchen"], {r.name: r for r in receps}, {o.name: o for o in objs}, contents, "kitchen"
    )


def test_feedback_texts_follow_alfworld():
    w = small_world()
    assert w.room_text() == (
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
        "a countertop 1, a desk 1, a microwave 1, and a sinkbasin 1."
    )
    script = [
        ("go to cabinet 1", "You arrive at cabinet 1. The cabinet 1 is closed."),
        ("take cup 1 from cabinet 1", NOTHING),  # closed containers hide their contents
        (
            "open cabinet 1",
            "You open the cabinet 1. The cabinet 1 is open. In it, you see a cup 1.",
        ),
        ("close cabinet 1", "You close the cabinet 1."),
        (
            "go to countertop 1",
            "You arrive at countertop 1. On the countertop 1, you see a mug 1, and a apple 1.",
        ),
        ("take mug 1 from countertop 1", "You pick up the mug 1 from the countertop 1."),
        ("take apple 1 from countertop 1", NOTHING),  # one object in hand
        ("inventory", "You are carrying: a mug 1."),
        ("go to sinkbasin 1", "You arrive at sinkbasin 1. On the sinkbasin 1, you see nothing."),
        ("clean mug 1 with sinkbasin 1", "You clean the mug 1 using the sinkbasin 1."),
        ("examine mug 1", "This is a clean mug 1."),
        ("go to microwave 1", "You arrive at microwave 1. The microwave 1 is closed."),
        (
            "heat mug 1 with microwave 1",
            "You heat the mug 1 using the microwave 1.",
        ),  # closed is fine
        ("cool mug 1 with microwave 1", NOTHING),
        ("go to desk 1", "You arrive at desk 1. On the desk 1, you see a desklamp 1."),
        ("use desklamp 1", "You turn on the desklamp 1."),
        ("Put  Mug 1 on Desk 1.", "You move the mug 1 to the desk 1."),  # the older put, any case
        ("take desklamp 1 from desk 1", NOTHING),  # lamps stay
        ("look", "You are facing the desk 1. Next to it, you see nothing."),
        ("go to desk 1", NOTHING),
        ("go to fridge 1", NOTHING),
    ]
    for action, expected in script:
        assert w.apply(action)[0] == expected, action
        w.check_invariants()
    assert w.objects["mug 1"].clean and w.objects["mug 1"].hot and not w.objects["mug 1"].cool


def test_goal_checks_per_task_type():
    w = small_world()
    hot_mug = Task("pick_heat_then_place_in_recep", "mug", "countertop", flag="hot")
    for action in (
        "go to countertop 1",
        "take mug 1 from countertop 1",
        "move mug 1 to countertop 1",
    ):
        w.apply(action)
    assert not w.goal_satisfied(hot_mug)  # placed, but not hot
    light = Task("look_at_obj_in_light", "mug", lamp="desklamp")
    w.apply("take mug 1 from countertop 1")
    w.apply("go to desk 1")
    assert not w.goal_satisfied(light)
    w.apply("use desklamp 1")
    assert w.goal_satisfied(light)
    two = Task("pick_two_obj_and_place", "mug", "desk")
    w.apply("move mug 1 to desk 1")
    assert w.goal_count(two) == 1 and not w.goal_satisfied(two)


def test_intro_goal_text_and_difficulty_levels():
    for level, spec in LEVELS.items():
        for i in range(20):
            env = HouseholdEnv(difficulty=level)
            obs, info = env.reset(options={"task_id": f"train-{i:06d}"})
            w, task = env.world, env.task
            intro, goal = obs.split("\n\nYour task is to: ")
            assert goal == task.goal_text
            templates = GOAL_TEMPLATES[task.task_type][: 2 if spec.paraphrase else 1]
            assert any(
                re.fullmatch(
                    re.escape(t)
                    .replace(r"\{obj\}", r"\w+")
                    .replace(r"\{recep\}", r"\w+")
                    .replace(r"\{lamp\}", r"\w+"),
                    goal,
                )
                for t in templates
            )
            prefix = "a room" if spec.rooms == 1 else "the "
            assert intro.startswith(f"You are in the middle of {prefix}")
            assert len(w.rooms) == spec.rooms
            assert spec.receptacles[0] <= len(w.receptacles) <= spec.receptacles[1] + len(w.rooms)
            closed = [r for r in w.receptacles.values() if not r.visible]
            if spec.closed_prob == 0.0:
                assert not closed
            if spec.closed_prob == 1.0:
                assert all(not r.visible for r in w.receptacles.values() if r.openable)
            assert not w.goal_satisfied(task)


def test_unseen_split_holds_out_combinations():
    for tt in TASK_TYPES:
        seen, unseen = set(combos(tt, False)), set(combos(tt, True))
        assert seen and unseen and not seen & unseen
    env = HouseholdEnv(difficulty=2)
    for i in range(30):
        env.reset(options={"task_id": f"valid_unseen-{i:06d}"})
        t = env.task
        assert any(
            (c.obj, c.recep, c.lamp) == (t.obj, t.recep, t.lamp) for c in combos(t.task_type, True)
        )


def test_task_types_filter_and_bad_kwargs():
    env = HouseholdEnv(task_types=["pick_two_obj_and_place"])
    for s in range(10):
        assert env.reset(seed=s)[1]["task_type"] == "pick_two_obj_and_place"
    with pytest.raises(envs.InvalidOptionError):
        HouseholdEnv(task_types=["fly"])
    with pytest.raises(envs.InvalidOptionError):
        HouseholdEnv(difficulty=7)
    with pytest.raises(envs.InvalidOptionError):
        env.reset(options={"difficulty": "hardest"})


# --------------------------------------------------------------------------- experts

TASKS = [
    (level, tt, f"{split}-{i:06d}")
    for level in LEVELS
    for tt in TASK_TYPES
    for split, n in (("train", 15), ("valid_unseen", 6))
    for i in range(n)
]  # 4 * 6 * 21 = 504 tasks


def _play(env: HouseholdEnv, task_id: str, explorer: bool) -> tuple[bool, int, int]:
    obs, info = env.reset(options={"task_id": task_id})
    agent = Explorer()
    agent.observe(None, obs)
    invalid = 0
    for t in range(1, HORIZON + 1):
        action = agent.act() if explorer else env.expert_action()
        obs, reward, terminated, _, info = env.step(action)
        agent.observe(action, obs)
        invalid += not info["action_valid"]
        if terminated:
            return reward == 1.0 and info["won"], t, invalid
    return False, HORIZON, invalid


@pytest.fixture(scope="module")
def household_envs():
    return {
        (lv, tt): HouseholdEnv(difficulty=lv, task_types=[tt]) for lv in LEVELS for tt in TASK_TYPES
    }


def test_oracle_solves_every_generated_task(household_envs):
    assert len(TASKS) >= 500
    for level, tt, tid in TASKS:
        won, steps, invalid = _play(household_envs[level, tt], tid, explorer=False)
        assert won and invalid == 0, (level, tt, tid, steps)


def test_explorer_solves_at_least_95_percent(household_envs):
    results = [_play(household_envs[lv, tt], tid, explorer=True)[0] for lv, tt, tid in TASKS]
    rate = sum(results) / len(results)
    assert rate >= 0.95, rate


def test_difficulty_one_pick_and_place_is_short():
    env = HouseholdEnv(difficulty=1, task_types=["pick_and_place_simple"])
    lengths = [len(oracle_plan(*_reset(env, i))) for i in range(50)]
    assert max(lengths) <= 5 and sum(lengths) / len(lengths) <= 4.5


def _reset(env: HouseholdEnv, i: int):
    env.reset(options={"task_id": f"train-{i:06d}"})
    return env.world, env.task


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    level=st.sampled_from(sorted(LEVELS)),
    index=st.integers(0, 10_000),
    picks=st.lists(st.integers(0, 10_000), min_size=0, max_size=25),
)
def test_oracle_replans_from_any_state(level, index, picks):
    env = HouseholdEnv(difficulty=level)
    env.reset(options={"task_id": f"train-{index:06d}"})
    for p in picks:  # wander off with random admissible commands
        acts = env.admissible_actions()
        if env.step(acts[p % len(acts)])[2]:
            return
    plan = oracle_plan(env.world, env.task)
    assert plan and plan[0] == env.expert_action()
    for action in plan:
        _, _, terminated, _, info = env.step(action)
        assert info["action_valid"]
    assert terminated and len(plan) <= HORIZON


# --------------------------------------------------------------------------- invariants

_JUNK = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "go to",
            "take",
            "move mug 1 to",
            "open fridge 99",
            "put x in y",
            "go to kitchen",
            "use desklamp 1",
            "examine nothing",
            "x" * 5000,
        ]
    ),
)


def _hidden_names(w: World) -> list[str]:
    return [o for r in w.receptacles.values() if not r.visible for o in w.contents[r.name]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    level=st.sampled_from(sorted(LEVELS)),
    index=st.integers(0, 10_000),
    steps=st.lists(st.one_of(st.integers(0, 10_000), _JUNK), max_size=30),
)
def test_random_commands_keep_invariants(level, index, steps):
    env = HouseholdEnv(difficulty=level)
    obs, info = env.reset(options={"task_id": f"train-{index:06d}"})
    for step in steps:
        w = env.world
        acts = info["admissible_actions"]
        action = acts[step % len(acts)] if isinstance(step, int) else step
        before = w.copy()
        obs, reward, terminated, truncated, info = env.step(action)
        w.check_invariants()  # one place per object, at most one held, agent in its room
        assert sum(o.location == HAND for o in w.objects.values()) <= 1
        assert not truncated
        if not info["action_valid"]:
            assert obs == NOTHING and reward == 0.0 and not terminated
            assert w == before  # a failed command changes nothing
        elif isinstance(step, int):
            assert obs != NOTHING  # every admissible command applies
        for name in _hidden_names(w):  # closed containers hide their contents
            pattern = re.compile(rf"\b{re.escape(name)}\b")
            assert not pattern.search(obs), (action, obs)
            assert not any(pattern.search(a) for a in info["admissible_actions"])
        assert info["admissible_actions"] == sorted(info["admissible_actions"])
        if terminated:
            assert info["won"] and reward == 1.0
            break


def test_privileged_plan_reaches_goal_and_never_leaks():
    env = HouseholdEnv(difficulty=3, expose_privileged=True)
    obs, info = env.reset(seed=11)
    priv = info["privileged"]
    assert priv["next_action"] == priv["plan"][0] == env.expert_action()
    assert priv["subgoals"] and priv["state_facts"] and priv["hint"].endswith(".")
    assert priv["hint"] not in obs and "expert" not in obs.lower()
    for action in priv["plan"]:
        obs, reward, terminated, _, info = env.step(action)
    assert terminated and reward == 1.0
    assert info["privileged"]["outcome"] == "The task was completed successfully."
    assert env.privileged_text("outcome_hint").startswith(
        "The task was completed successfully. That worked:"
    )


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, stdin: str = "") -> str:
    out = subprocess.run(
        [sys.executable, "-m", "envs", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=child_env(COLUMNS="200"),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_list_play_expert_and_piped_stdin():
    listing = _cli("list")
    assert re.search(r"DistillGym/Household-v0\s*│\s*household\s*│\s*50", listing)
    expert = _cli("play", "DistillGym/Household-Hard-v0", "--expert", "--seed", "4")
    assert "Your task is to:" in expert and "episode over: won, reward 1" in expert
    human = _cli("play", "DistillGym/Household-v0", "--seed", "4", stdin="inventory\nfly away\n")
    assert "You are not carrying anything." in human and NOTHING in human
    assert "(end of input)" in human and "not won" in human


def test_env_expert_can_be_the_observation_only_explorer():
    """``expert="explorer"``: expert_action() plays from observations only (imitable demos) and
    keeps working after the agent's own (here: invalid and wandering) actions."""
    env = HouseholdEnv(difficulty=2, expert="explorer")
    oracle = HouseholdEnv(difficulty=2)
    wins, longer = 0, 0
    for i, task_id in enumerate(env.task_ids("valid_seen", 40)):
        obs, _ = env.reset(options={"task_id": task_id})
        if i % 2:
            env.step("dance wildly")
            env.step("look")
        for _ in range(HORIZON - 2):
            obs, reward, terminated, _, info = env.step(env.expert_action())
            if terminated:
                wins += info["won"]
                break
        oracle.reset(options={"task_id": task_id})
        n_oracle = 0
        while True:
            n_oracle += 1
            if oracle.step(oracle.expert_action())[2]:
                break
        longer += env.steps_taken > n_oracle
    assert wins == 40
    assert longer > 0  # it searches where the oracle walks straight to the object
    with pytest.raises(Exception, match="oracle' or 'explorer"):
        HouseholdEnv(expert="psychic")
