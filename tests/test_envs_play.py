"""``python -m envs play``: tool signatures for tool envs, and line editing at a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from subproc import child_env

ROOT = Path(__file__).resolve().parents[1]


def test_play_lists_tool_signatures_for_retail():
    out = subprocess.run([sys.executable, "-m", "envs", "play", "DistillGym/Retail-v0", "--seed", "0"],
                         input="hello\n", capture_output=True, text=True, cwd=ROOT,
                         env={**child_env(), "COLUMNS": "250"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "find_user_id_by_email(email: string)" in out.stdout
    assert "cancel_pending_order(order_id: string, reason: string)" in out.stdout


def test_play_has_line_editing_at_a_terminal():
    """Ctrl-A (beginning of line) only works through readline: ``ook`` Ctrl-A ``l`` is ``look``."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI on the pty
        os.chdir(ROOT)
        env = child_env()
        env["TERM"] = "dumb"
        os.execve(sys.executable, [sys.executable, "-m", "envs", "play", "DistillGym/Household-v0",
                                   "--seed", "0"], env)
    out = b""

    def read_until(marker: bytes, timeout: float = 120.0) -> None:
        nonlocal out
        end = time.time() + timeout
        while marker not in out and time.time() < end:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break

    try:
        read_until(b"> ")
        os.write(fd, b"ook\x01l\r")
        read_until(b"> ", 60.0) if out.count(b"> ") < 2 else None
        time.sleep(0.5)
        os.write(fd, b"\x04")  # end of input
        read_until(b"episode over")
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "You are in the middle of a room" in text
    # "look" is a valid household command: the answer is the room description, not an error
    assert text.count("You are in the middle of a room") >= 2, text[-2000:]
