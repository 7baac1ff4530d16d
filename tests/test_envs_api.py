"""The env contract, checked generically over EVERY registered env id, plus the registry.

New envs get these tests for free by registering: Gymnasium's env checker, seeded determinism
under expert actions, task ids, bad input, the privileged channel, render. The registry tests
cover one-call registration (the docs/envs.md example, run verbatim) and the ``distillgym.envs``
entry point group through a real temporary dist-info directory.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import registry

ROOT = Path(__file__).resolve().parents[1]
ALL_IDS = envs.list_envs()
FAMILIES = {"household", "tool", "clinical", "drill"}
PRIV_KEYS = {"answer", "plan", "next_action", "subgoals", "state_facts", "rubric", "hint", "hints"}


def _rollout(env: gym.Env, seed: int, task_id: str | None = None, steps: int = 12):
    """Reset, then follow the expert; return every observation, reward and info seen."""
    options = {"task_id": task_id} if task_id else None
    obs, info = env.reset(seed=seed, options=options)
    trace = [(obs, 0.0, info["task_id"], info.get("admissible_actions"))]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
        trace.append((obs, reward, info["task_id"], info.get("admissible_actions")))
        if terminated or truncated:
            break
    return trace


def test_builtin_env_packages_import_cleanly():
    assert envs.IMPORT_FAILURES == {}, (
        f"sibling env packages failed to import: {envs.IMPORT_FAILURES}"
    )
    assert any(i.startswith("DistillGym/Household") for i in ALL_IDS)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_env_checker(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(envs.make(env_id).unwrapped)
    gym_warnings = [str(w.message) for w in caught if "gymnasium" in w.filename]
    assert not gym_warnings, gym_warnings


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seed_and_task_id_determinism(env_id):
    a, b = envs.make(env_id), envs.make(env_id)
    first = _rollout(a, seed=7)
    assert _rollout(b, seed=7) == first
    assert _rollout(a, seed=8) != first  # another seed, another task
    tid = first[0][2]
    # the task id alone rebuilds the task, whatever the seed
    assert _rollout(b, seed=12345, task_id=tid) == first


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_contract_attributes_and_task_ids(env_id):
    env = envs.make(env_id)
    u = env.unwrapped
    assert isinstance(u, envs.TextEnv)
    assert u.family in FAMILIES
    assert isinstance(u.instructions, str) and u.instructions.strip()
    assert u.task_ids("valid_seen", 3) == [
        "valid_seen-000000",
        "valid_seen-000001",
        "valid_seen-000002",
    ]
    obs, info = env.reset(seed=0, options={"split": "valid_unseen"})
    assert info["task_id"].startswith("valid_unseen-")
    assert isinstance(info["task_type"], str) and info["task_type"]
    assert info["action_valid"] is True and info["won"] is False
    assert isinstance(info["reward_breakdown"], dict)
    if "admissible_actions" in info:
        assert info["admissible_actions"] == sorted(info["admissible_actions"])
    assert isinstance(u.expert_action(), str) and u.expert_action()
    with pytest.raises(envs.InvalidOptionError):
        env.reset(options={"colour": "red"})
    with pytest.raises(envs.InvalidOptionError):
        env.reset(options={"task_id": "test-1"})
    with pytest.raises(envs.InvalidOptionError):
        env.reset(options={"split": "test"})


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_bad_input_never_raises_or_ends(env_id):
    u = envs.make(env_id).unwrapped  # no TimeLimit: only the env itself may end an episode
    env = u
    env.reset(seed=3)
    for bad in (None, 42, ["go"], {"name": "x"}, b"bytes", "x" * 100_000):
        obs, reward, terminated, truncated, info = env.step(bad)
        assert (terminated, truncated, reward, info["action_valid"]) == (False, False, 0.0, False)
        assert obs == u.invalid_feedback and obs in u.observation_space
    for text in ("", "   ", "\x00\x07", "🙂 ☃ héllo", "{not json", "asdf qwer zxcv " * 50):
        obs, reward, terminated, truncated, info = env.step(text)
        assert obs in u.observation_space and not truncated
        if terminated:  # e.g. plain text to a tool env's user may end its conversation
            env.reset(seed=3)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_privileged_channel(env_id):
    plain = envs.make(env_id)
    priv = envs.make(env_id, expose_privileged=True)
    obs_p, info_p = plain.reset(seed=5)
    obs_q, info_q = priv.reset(seed=5)
    assert obs_p == obs_q and "privileged" not in info_p
    assert PRIV_KEYS <= set(info_q["privileged"]) and "outcome" not in info_q["privileged"]
    assert set(info_q["privileged"]["hints"]) == {"reinforcing", "corrective"}
    u = priv.unwrapped
    for strength in envs.STRENGTHS:
        assert isinstance(u.privileged_text(strength), str)
    assert u.privileged_text("outcome_hint") == ""  # nothing to say before the end
    with pytest.raises(envs.InvalidOptionError):
        u.privileged_text("everything")
    for _ in range(60):
        obs, _, terminated, truncated, info = priv.step(u.expert_action())
        assert obs == plain.step(plain.unwrapped.expert_action())[0]
        if terminated or truncated:
            break
    assert "outcome" in info["privileged"] and u.privileged_text("outcome_hint")


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_render_ansi_transcript(env_id):
    env = envs.make(env_id, render_mode="ansi")
    obs, _ = env.reset(seed=1)
    action = env.unwrapped.expert_action()
    obs2, *_ = env.step(action)
    text = env.render()
    assert text.startswith(obs) and f"> {action}" in text and obs2 in text


def test_step_before_reset_is_a_loud_error():
    env = envs.make("DistillGym/Household-v0").unwrapped
    with pytest.raises(envs.EnvStateError):
        env.step("look")


def test_unknown_id_lists_known_ids():
    with pytest.raises(envs.UnknownEnvError) as err:
        envs.make("DistillGym/Nope-v0")
    assert "DistillGym/Household-v0" in str(err.value)
    assert err.value.known == envs.list_envs()


def test_sync_vector_env_with_text_spaces():
    vec = gym.vector.SyncVectorEnv([lambda: envs.make("DistillGym/Household-v0")] * 2)
    obs, info = vec.reset(seed=[1, 2])
    assert len(obs) == 2 and obs[0] != obs[1]
    obs, rewards, term, trunc, info = vec.step(["look", "inventory"])
    assert list(obs[1:]) == ["You are not carrying anything."]
    vec.close()


# --------------------------------------------------------------------------- third-party envs


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.fixture
def clean_registry():
    before = set(envs.list_envs())
    yield
    for env_id in set(envs.list_envs()) - before:
        envs.unregister_env(env_id)


def test_docs_example_is_the_module_and_runs(clean_registry, capsys):
    doc = (ROOT / "docs" / "envs.md").read_text()
    module_src, usage = _python_blocks(doc)[:2]
    assert module_src == (ROOT / "envs" / "examples" / "guess_number.py").read_text()
    exec(compile(usage, "docs/envs.md", "exec"), {})
    assert "Examples/GuessNumber-v0" in envs.list_envs()
    assert "completed successfully" in capsys.readouterr().out
    check_env(envs.make("Examples/GuessNumber-v0").unwrapped)


def _dist_info(tmp_path: Path, name: str, entry_points: str) -> Path:
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return dist


def test_entry_point_group_registers_class_and_function(tmp_path, monkeypatch, clean_registry):
    _dist_info(
        tmp_path,
        "guess_plugin",
        "[distillgym.envs]\n"
        "Plugin/GuessNumber-v0 = envs.examples.guess_number:GuessNumberEnv\n"
        "guess-fn = envs.examples.guess_number:register\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    failed = registry.load_entry_points(force=True)
    assert "guess-fn" not in failed and "Plugin/GuessNumber-v0" not in failed
    ids = envs.list_envs()
    assert {"Plugin/GuessNumber-v0", "Examples/GuessNumber-v0"} <= set(ids)
    env = envs.make("Plugin/GuessNumber-v0")
    assert env.spec.max_episode_steps == 10  # from the class attribute
    obs, _ = env.reset(seed=0)
    assert obs.startswith("I am thinking of a number")


def test_broken_entry_point_is_reported_not_fatal(tmp_path, monkeypatch, clean_registry):
    _dist_info(
        tmp_path, "broken_plugin", "[distillgym.envs]\nBroken/X-v0 = no_such_module_xyz:Env\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="no_such_module_xyz"):
        failed = registry.load_entry_points(force=True)
    assert "Broken/X-v0" in failed
    with pytest.raises(envs.UnknownEnvError, match="Broken/X-v0"):
        envs.make("Broken/X-v0")
    assert "DistillGym/Household-v0" in envs.list_envs()
    monkeypatch.undo()
    registry.load_entry_points(force=True)
    sys.modules.pop("no_such_module_xyz", None)
