"""Asynchronous rollouts (``async_steps=k``): the staleness bound, exactly-once accounting and
kill-and-resume (``trainers.async_rollouts``).

The schedule is deterministic (step ``t`` is sampled by ``P_{max(0, t−k)}``), so an async run
killed at any moment and resumed must end exactly where an uninterrupted async run ends.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from subproc import child_env

from agents.types import EndReason, Episode, EpisodeGroup, Turn
from data import Store
from data.types import LedgerStatus
from trainers.async_rollouts import RolloutProducer, Snapshot, sampling_step
from trainers.config import ConfigError
from trainers.losses import truncated_is

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the schedule alone


def _episode(task: str, version: int, n_tokens: int) -> Episode:
    turn = Turn(index=0, prompt_ids=[1], completion_ids=[2] * n_tokens, sampler_logprobs=[-1.0] * n_tokens,
                loss_mask=[1] * n_tokens, action_text="", action="", action_valid=True, policy_version=version)
    return Episode(env_id="fake", task_id=task, seed=0, turns=[turn], end_reason=EndReason.TERMINATED,
                   policy_version=version)


@pytest.mark.parametrize("k", [1, 2])
def test_the_bound_holds_groups_age_together_and_slow_steps_are_trained(k):
    """Scripted sampling latencies (step 3 is 20x slower and its episodes 10x longer): every step
    is delivered, none is sampled by a policy more than k steps old, all of a step's episodes come
    from one version, and the producer never starts step t before P_{t−k} exists."""
    steps, latency = 8, {t: (0.2 if t == 3 else 0.01) for t in range(8)}
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def sample(step: int, snap: Snapshot) -> tuple[list[str], list[EpisodeGroup]]:
        with lock:
            events.append(("sample", step))
        time.sleep(latency[step])
        n = 40 if step == 3 else 4
        return [f"t{step}"], [EpisodeGroup(f"g{step}", f"t{step}", [_episode(f"t{step}", snap.policy_version, n)
                                                         for _ in range(3)])]

    producer = RolloutProducer(k=k, start=0, steps=steps, sample=sample, load=lambda s: None,
                               snapshots={0: Snapshot(0, 0, {})}).start_thread()
    trained_versions, lengths = [], []
    for t in range(steps):
        rollout, _ = producer.take(t, timeout_s=30)
        assert rollout.step == t and rollout.tasks == [f"t{t}"]
        versions = {e.policy_version for g in rollout.groups for e in g.episodes}
        assert versions == {rollout.policy_version}  # the group aged together
        assert t - rollout.policy_version <= k  # trainer version at step t is t (no skipped steps)
        trained_versions.append(rollout.policy_version)
        lengths.append(sum(len(e.turns[0].completion_ids) for g in rollout.groups for e in g.episodes))
        time.sleep(0.02)  # "training"
        with lock:
            events.append(("publish", t + 1))
        producer.publish(Snapshot(t + 1, t + 1, {}))
    producer.close()
    assert trained_versions == [sampling_step(t, k) for t in range(steps)]
    assert lengths[3] == 120  # the slow, long step was trained, not dropped
    for i, (kind, t) in enumerate(events):  # admission: P_{t−k} was published before sampling t
        if kind == "sample" and t - k > 0:
            assert ("publish", t - k) in events[:i]
    assert producer.clocked.idle_s > 0 and producer.clocked.busy_s > 0


def test_a_failing_sampler_fails_the_trainer_loudly():
    def sample(step, snap):
        if step == 1:
            raise ValueError("replica exploded")
        return ["t"], []

    producer = RolloutProducer(k=1, start=0, steps=4, sample=sample, load=lambda s: None,
                               snapshots={0: Snapshot(0, 0, {})}).start_thread()
    producer.take(0, timeout_s=30)
    producer.publish(Snapshot(1, 1, {}))
    with pytest.raises(RuntimeError, match="rollout producer failed at step 1: ValueError: replica exploded"):
        producer.take(1, timeout_s=30)
    producer.close()


def test_truncated_importance_weights():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    sampler = torch.tensor([[-1.0, -1.0, -2.0]])
    w = truncated_is(logp, sampler, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, torch.e ** -1, 2.0]]))  # exp(1.5) > 2 is capped
    assert not w.requires_grad


def test_async_config_errors_come_before_any_model_loads():
    from trainers.loop import check_async
    from trainers.methods import get_method
    from trainers.methods.pi_distill import PiDistillConfig
    from trainers.methods.sft import SFTConfig
    from trainers.train_config import TrainConfig

    with pytest.raises(ConfigError, match="no rollouts to sample ahead"):
        check_async(SFTConfig(async_steps=1), get_method("sft")(SFTConfig()))
    with pytest.raises(ConfigError, match="tis_cap reweights"):
        check_async(PiDistillConfig(tis_cap=2.0), get_method("pi-distill")(PiDistillConfig()))
    with pytest.raises(ConfigError, match="async_steps"):
        TrainConfig(async_steps=-1)


# --------------------------------------------------------------------------- real runs

ARGS = ["grpo", "model=tiny", "env=DistillGym/Vowels-v0", "steps=8", "tasks_per_step=2", "group_size=2",
        "max_turns=1", "max_new_tokens=12", "max_context_tokens=512", "token_budget=1024", "lr=1e-3",
        "checkpoint_every=1", "keep_checkpoints=1", "seed=5", "progress=false", "async_steps=1"]


def _run(out: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainers", *ARGS, f"output_dir={out}", f"run_name={name}", *extra],
                            cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


def _episodes(store: Store, run: str) -> list[tuple]:
    """Every recorded episode as (step, task, group index, token ids, sampling version, reward)."""
    run_id = store.get_run(run).run_id
    return sorted((step, ep.task_id, ep.info.get("group_index"), tuple(ep.turns[0].completion_ids),
                   ep.policy_version, round(ep.reward, 6)) for step, ep in store.episodes_with_steps(run_id))


@pytest.mark.slow
def test_async_run_killed_at_ten_random_moments_ends_like_an_uninterrupted_one(tmp_path):
    """SIGKILL at 10 seeded random moments (each after the run exists), resume=true each time:
    the same episodes (token ids, sampling version, reward) for every (step, task, sample),
    none recorded twice, every ledger row trained once, and the same final weights."""
    _finish(_run(tmp_path, "straight"))
    rng, kills = random.Random(0), 0
    proc = _run(tmp_path, "killed")
    csv = tmp_path / "killed" / "metrics.csv"
    t0 = time.time()
    while not csv.exists() and proc.poll() is None and time.time() - t0 < 120:  # the run exists
        time.sleep(0.05)

    def rows(since: float = 0.0) -> int:  # steps in the CSV, once this process has written it
        if not csv.exists() or csv.stat().st_mtime < since:
            return -1
        return len(csv.read_text().splitlines()) - 1

    # kill i once this process has rewritten the CSV (resumed) and it shows target_i steps, then a
    # random fraction of a step later: the kills land in rollouts, training, store writes and
    # checkpoints, with the producer sampling ahead in flight
    logged, launched = [], time.time()
    for target in sorted(rng.randrange(0, 6) for _ in range(10)):
        while rows(launched) < target and proc.poll() is None and time.time() - launched < 120:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        logged.append(rows())
        proc, launched = _run(tmp_path, "killed", "resume=true"), time.time()
    print("steps in the CSV at each kill:", logged)
    _finish(proc)
    assert kills == 10, f"the run finished after {kills} kills ({logged}); lengthen it"
    assert max(logged) > 0, logged

    with Store(f"sqlite:///{tmp_path / 'distillgym.db'}", read_only=True) as store:
        straight, killed = _episodes(store, "straight"), _episodes(store, "killed")
        assert len(straight) == 8 * 2 * 2 and killed == straight  # so none is recorded twice
        assert len({e[:3] for e in straight}) == len(straight)
        assert {e[0]: e[4] for e in straight} == {t: max(0, t - 1) for t in range(8)}
        for run in ("straight", "killed"):
            ledger = store.ledger(store.get_run(run).run_id)
            assert [(e.step, e.status, e.policy_version) for e in ledger] == [
                (t, LedgerStatus.TRAINED, max(0, t - 1)) for t in range(8) for _ in range(2)]
            assert [s for s, _ in store.steps(store.get_run(run).run_id)] == list(range(8))
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)  # it trained
