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
