"""Small things in a new user's way (issue 24), each through the real entry point."""

from __future__ import annotations

import subprocess
import sys

from subproc import ROOT, child_env


def test_option_without_value_is_named_not_misread() -> None:
    """``python -m trainers grpo --steps``: one line naming the option, not "got 'method=grpo'"."""
    for argv in (["--steps"], ["--steps", "--lr", "1e-3"], ["--steps", "lr=1e-3"]):
        res = subprocess.run([sys.executable, "-m", "trainers", "grpo", *argv], capture_output=True,
                             text=True, cwd=ROOT, env=child_env(), timeout=120)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert res.stderr.strip() == "error: option --steps needs a value", (argv, res.stderr)


def test_entry_point_envs_are_visible_to_plain_gymnasium_make(tmp_path) -> None:
    """A package declaring an env in ``distillgym.envs``: ``gymnasium.make`` finds it without
    DistillGym's ``make``/``list_envs`` having been called."""
    dist = tmp_path / "guess_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: guess-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        '[distillgym.envs]\nPlugin/Guess-v0 = envs.examples.guess_number:GuessNumberEnv\n')
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('envs:Plugin/Guess-v0')\n"  # gymnasium imports the module named first
        "obs, info = env.reset(seed=0)\n"
        "assert 'Guess it' in obs and env.spec.max_episode_steps == 10, (obs, env.spec)\n"
        "import envs  # noqa: F401\n"
        "assert gym.make('Plugin/Guess-v0').spec.id == 'Plugin/Guess-v0'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=child_env(PYTHONPATH=f"{ROOT}:{tmp_path}"), timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
