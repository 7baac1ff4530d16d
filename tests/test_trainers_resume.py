"""Kill-and-resume: a run SIGKILLed after a checkpoint and resumed with ``resume=true`` ends with
the same per-step metrics as an uninterrupted run with the same seed, and the store holds every
episode of every step exactly once.

Tolerance: the resumed part replays the same seeded rollouts from the same weights and optimizer
state, so metrics agree to float round-off; we allow ``rel=1e-4, abs=1e-5`` for kernel
nondeterminism between the killed subprocess and this process (both run single-threaded).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from subproc import child_env

from data import Store
from trainers.config import parse_config
from trainers.methods.opd import OPDConfig

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["model=tiny", "teacher=tiny:1", "steps=8", "tasks_per_step=2", "group_size=2", "max_turns=2",
        "max_new_tokens=6", "max_context_tokens=1024", "token_budget=2048", "lr=5e-3",
        "checkpoint_every=2", "seed=3", "progress=false", "method=opd"]
COMPARED = ("loss", "kl_teacher", "abs_l", "reward", "sampled_tokens", "grad_norm", "entropy", "lr")


def _kill_after_first_checkpoint(out_dir: Path) -> int:
    env = child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainers", "opd", *ARGS, f"output_dir={out_dir}", "run_name=killed"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    marker = out_dir / "killed" / "checkpoints" / "step-000002" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training subprocess exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 240 s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
    from trainers.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _kill_after_first_checkpoint(tmp_path) == -signal.SIGKILL
        store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
        run_id = store.get_run("killed").run_id
        assert store.get_run("killed").status == "running"  # killed: never marked finished
        resumed = train(parse_config(OPDConfig, [*ARGS, f"output_dir={tmp_path}", "run_name=killed",
                                                 "resume=true"]))
        straight = train(parse_config(OPDConfig, [*ARGS, f"output_dir={tmp_path}", "run_name=straight"]))
    finally:
        torch.set_num_threads(threads)

    store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
    assert store.get_run("killed").status == "finished"
    steps_k = store.steps(run_id)
    steps_s = store.steps(straight.run_id)
    assert [s for s, _ in steps_k] == list(range(8)) == [s for s, _ in steps_s]
    for (step, mk), (_, ms) in zip(steps_k, steps_s):
        for key in COMPARED:
            assert mk[key] == pytest.approx(ms[key], rel=1e-4, abs=1e-5), (step, key)
    # no lost or duplicated episode: exactly tasks x group per step, unique ids
    for step in range(8):
        assert store.count_episodes(run_id, step=step) == 4
    ids = [e.episode_id for e in store.episodes(run_id)]
    assert len(ids) == len(set(ids)) == 32
    # the resumed run's actions equal the uninterrupted run's, step by step
    acts_k = sorted((e.task_id, tuple(t.completion_ids for t in e.turns)) for e in store.episodes(run_id, step=7))
    acts_s = sorted((e.task_id, tuple(t.completion_ids for t in e.turns)) for e in store.episodes(straight.run_id, step=7))
    assert acts_k == acts_s
    assert resumed.last["loss"] == pytest.approx(straight.last["loss"], rel=1e-4, abs=1e-5)
