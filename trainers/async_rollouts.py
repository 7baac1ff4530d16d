"""Asynchronous rollouts: the sampler works up to ``k = async_steps`` policies ahead of the trainer.

Schedule. Let ``P_s`` be the policy after ``s`` trainer steps (``P_0``: the start). The groups of
step ``t`` are sampled, all of them, by

    P_{v(t)},   v(t) = max(0, t − k)

and trained by ``P_t``: no rollout is more than ``k`` steps behind the policy that trains on it
(admission, not over-generate-and-drop: step ``t`` starts only once ``P_{v(t)}`` exists, and every
step that starts is trained, however long its episodes run). ``v(t)`` is the oldest policy the bound
admits, which gives the most overlap (the sampler runs while the trainer trains steps
``t − k … t − 1``) and makes the schedule deterministic: a run, and a run resumed from a checkpoint,
replays from its config and seed. ``k = 0`` is the synchronous loop, which does not use this module.

Roles. :class:`RolloutProducer` is the scheduling alone (a thread that waits for ``P_{v(t)}``,
loads it, samples step ``t``, hands it over), tested with scripted latencies; :class:`AsyncRollouts`
wires it to a training run: its own sampler copy of the policy, snapshots of the trainable weights
``P_s`` published after each step, the store's ledger and the per-step metrics. The trainer keeps
the ``k`` newest snapshots so that a checkpoint at step ``c`` carries ``P_{c−k} … P_{c−1}``, the
policies its in-flight steps ``c … c+k−1`` are re-sampled from on resume.

Off-policy correction uses what the sampler recorded: ``π_old`` is the sampler's log-prob, so the
PPO ratio ``π_θ/π_old`` already spans the staleness; ``tis_cap`` adds truncated importance sampling
(``trainers.losses.truncated_is``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from agents.types import EpisodeGroup
from data.types import LedgerStatus
from trainers.distributed import make_replica, sync_replica
from trainers.runtime import TaskCursor

__all__ = ["Snapshot", "StepRollout", "RolloutProducer", "AsyncRollouts", "sampling_step"]


def sampling_step(step: int, k: int) -> int:
    """``v(t) = max(0, t − k)``: the trainer step whose policy samples step ``t``."""
    return max(0, step - k)


@dataclass
class Snapshot:
    """``P_s``: the trainable weights after ``step`` trainer steps (``policy_version`` optimizer steps)."""

    step: int
    policy_version: int
    params: dict[str, torch.Tensor]


@dataclass
class StepRollout:
    """One step's groups (this rank's share), all sampled by one policy."""

    step: int
    tasks: list[str]  # the whole step's tasks (every rank's)
    groups: list[EpisodeGroup]
    policy_version: int  # of the policy that sampled them
    sample_s: float  # sampling time
    load_s: float  # time to load the sampling policy into the sampler


@dataclass
class _Clocked:
    idle_s: float = 0.0  # waiting for a policy the bound admits
    busy_s: float = 0.0  # loading and sampling


class RolloutProducer:
    """A thread that samples steps ``start … steps−1`` in order, step ``t`` with ``P_{v(t)}``.

    ``sample(step, snapshot)`` plays the step and returns ``(tasks, groups)``; ``load(snapshot)``
    puts the policy into the sampler (called before every step, as the synchronous loop pushes
    weights every step). The trainer calls :meth:`publish` with each new policy and :meth:`take`
    for each step; an exception in the thread is raised again by :meth:`take`.
    """

    def __init__(
        self, *, k: int, start: int, steps: int,
        sample: Callable[[int, Snapshot], tuple[list[str], list[EpisodeGroup]]],
        load: Callable[[Snapshot], None], snapshots: dict[int, Snapshot],
        on_start: Callable[[int, Snapshot], None] | None = None,
        on_done: Callable[[StepRollout], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if k < 1:
            raise ValueError(f"async rollouts need k >= 1, got {k}")
        self.k, self.start, self.steps = k, start, steps
        self._sample, self._load, self._on_start, self._on_done = sample, load, on_start, on_done
        self._clock = clock
        self._snapshots = dict(snapshots)
        self._ready: dict[int, StepRollout] = {}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self.clocked = _Clocked()
        self._thread = threading.Thread(target=self._run, name="distillgym-rollouts", daemon=True)

    def start_thread(self) -> RolloutProducer:
        self._thread.start()
        return self

    # ------------------------------------------------------------------ the producer thread
    def _run(self) -> None:
        try:
            for t in range(self.start, self.steps):
                snap = self._wait_for(sampling_step(t, self.k))
                if snap is None:
                    return
                if self._on_start is not None:
                    self._on_start(t, snap)
                t0 = self._clock()
                self._load(snap)
                t1 = self._clock()
                tasks, groups = self._sample(t, snap)
                t2 = self._clock()
                rollout = StepRollout(t, tasks, groups, snap.policy_version, t2 - t1, t1 - t0)
                if self._on_done is not None:
                    self._on_done(rollout)
                with self._cond:
                    self.clocked.busy_s += t2 - t0
                    self._ready[t] = rollout
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced in the trainer by take()
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _wait_for(self, step: int) -> Snapshot | None:
        t0 = self._clock()
        with self._cond:
            while step not in self._snapshots and not self._closed:
                self._cond.wait(timeout=1.0)
            self.clocked.idle_s += self._clock() - t0
            if self._closed:
                return None
            for old in [s for s in self._snapshots if s < step]:  # never needed again
                del self._snapshots[old]
            return self._snapshots[step]

    # ------------------------------------------------------------------ the trainer's side
    def publish(self, snapshot: Snapshot) -> None:
        with self._cond:
            self._snapshots[snapshot.step] = snapshot
            self._cond.notify_all()

    def take(self, step: int, timeout_s: float | None = None) -> tuple[StepRollout, float]:
        """Step ``step``'s rollout and the seconds the trainer waited for it."""
        t0 = self._clock()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while step not in self._ready:
                if self._error is not None:
                    raise RuntimeError(f"rollout producer failed at step {step}: "
                                       f"{type(self._error).__name__}: {self._error}") from self._error
                if not self._thread.is_alive():
                    raise RuntimeError(f"rollout producer stopped before step {step}")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"no rollout for step {step} within {timeout_s} s")
                self._cond.wait(timeout=1.0)
            return self._ready.pop(step), self._clock() - t0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=600)


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


SampleFn = Callable[[Any, int, list[str]], list[EpisodeGroup]]  # (ctx, step, tasks) -> this rank's groups


class AsyncRollouts:
    """Asynchronous rollouts for one training run; see the module docstring.

    ``sample(ctx, step, tasks)`` plays this rank's share of a step (the loop's ``sample_step``);
    ``cursor`` is the run's task order. The sampler is a copy of the policy the producer loads
    ``P_{v(t)}`` into and hands to ``ctx.backend``; the trainer's own model never samples.
    """

    def __init__(self, ctx: Any, sample: SampleFn, cursor: TaskCursor, k: int) -> None:
        self.ctx, self._sample, self.cursor, self.k = ctx, sample, cursor, k
        self.names = trainable_names(ctx.model)
        self.history: dict[int, Snapshot] = {}  # the k newest P_s, for checkpoints
        self.producer: RolloutProducer | None = None
        self._sampler: Any = None
        self._last = self._idle_mark = 0.0
        self._generated = [0, 0]  # episodes, sampled tokens
        self._trained = [0, 0]

    def tasks_of(self, step: int, start_step: int, start_position: int) -> list[str]:
        n = self.ctx.cfg.tasks_per_step
        return TaskCursor(self.cursor.task_ids, self.cursor.seed, start_position + (step - start_step) * n).next(n)

    def start(self, start_step: int, steps: int, saved: dict[int, Snapshot]) -> None:
        """Sample steps ``start_step …`` ahead; ``saved``: the checkpoint's older policies."""
        ctx, position = self.ctx, self.cursor.position
        self._sampler = make_replica(ctx.inference_model)
        self.history = {s: v for s, v in saved.items() if s >= start_step - self.k}
        self.history[start_step] = self.snapshot(start_step, ctx.policy_version)
        missing = [s for s in range(max(0, start_step - self.k), start_step) if s not in self.history]
        if missing:
            raise RuntimeError(f"resuming an async run at step {start_step} needs the policies of "
                               f"steps {missing}; the checkpoint does not carry them")
        store, n = ctx.store, ctx.cfg.tasks_per_step

        def sample(step: int, snap: Snapshot) -> tuple[list[str], list[EpisodeGroup]]:
            tasks = self.tasks_of(step, start_step, position)
            return tasks, self._sample(dataclasses.replace(ctx, policy_version=snap.policy_version), step, tasks)

        def on_start(step: int, snap: Snapshot) -> None:
            if store is not None:  # rank 0 keeps the ledger of the whole step
                store.plan_step(ctx.run_id, step, self.tasks_of(step, start_step, position))
                store.mark_tasks(ctx.run_id, step, range(n), LedgerStatus.SAMPLING,
                                 policy_version=snap.policy_version)

        def on_done(rollout: StepRollout) -> None:
            _count(self._generated, rollout)
            if store is not None:
                store.mark_tasks(ctx.run_id, rollout.step, range(n), LedgerStatus.SCORED)

        self.producer = RolloutProducer(k=self.k, start=start_step, steps=steps, sample=sample,
                                        load=self._load, snapshots=self.history, on_start=on_start,
                                        on_done=on_done).start_thread()
        self._last = time.perf_counter()

    def _load(self, snap: Snapshot) -> None:
        with torch.no_grad():
            unexpected = self._sampler.load_state_dict(snap.params, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"the sampler copy has no parameters {unexpected[:3]}")
        self.ctx.backend.update_weights(self._sampler, snap.policy_version)

    def snapshot(self, step: int, policy_version: int) -> Snapshot:
        """``P_step`` from the trainer's weights (world size > 1: gathered into the replica
        first, a collective every rank calls)."""
        ctx = self.ctx
        if ctx.replica is not None:
            sync_replica(ctx.model, ctx.replica)
        source = dict(ctx.inference_model.named_parameters())
        return Snapshot(step, policy_version, {n: source[n].detach().to("cpu", copy=True) for n in self.names})

    def take(self, step: int) -> tuple[StepRollout, float]:
        """Step ``step``'s rollout (blocking) and the seconds the trainer waited."""
        assert self.producer is not None
        return self.producer.take(step)

    def trained(self, step: int) -> None:
        """Rank 0, after the step's episodes went to the store: its ledger rows are ``trained``."""
        if self.ctx.store is not None:
            self.ctx.store.mark_tasks(self.ctx.run_id, step, range(self.ctx.cfg.tasks_per_step),
                                      LedgerStatus.TRAINED)

    def publish(self, step: int, policy_version: int) -> None:
        """``P_step`` exists: hand it to the sampler; keep the ``k`` newest for checkpoints."""
        assert self.producer is not None
        snap = self.snapshot(step, policy_version)
        self.history[step] = snap
        for old in [s for s in self.history if s < step - self.k]:
            del self.history[old]
        self.producer.publish(snap)

    def checkpoint_state(self, step: int) -> dict[int, tuple[int, dict[str, torch.Tensor]]]:
        """The policies ``P_{step−k} … P_{step−1}`` that a resume at ``step`` re-samples from."""
        return {s: (v.policy_version, v.params) for s, v in self.history.items() if step - self.k <= s < step}

    @staticmethod
    def from_checkpoint_state(state: dict[int, tuple[int, dict[str, torch.Tensor]]]) -> dict[int, Snapshot]:
        return {int(s): Snapshot(int(s), int(v), p) for s, (v, p) in state.items()}

    def step_metrics(self, rollout: StepRollout, wait_s: float, trainer_version: int) -> dict[str, float]:
        """``async/*``: staleness, trainer wait and sampler idle fractions since the last step,
        load and sampling time, and the length-bias check (generated vs trained tokens/episode)."""
        assert self.producer is not None
        now = time.perf_counter()
        wall = max(now - self._last, 1e-9)
        idle = self.producer.clocked.idle_s
        _count(self._trained, rollout)
        out = {
            "async/staleness": float(trainer_version - rollout.policy_version),
            "async/trainer_wait_s": wait_s, "async/trainer_wait_frac": min(wait_s / wall, 1.0),
            "async/sampler_idle_frac": min(max(idle - self._idle_mark, 0.0) / wall, 1.0),
            "async/sampler_load_s": rollout.load_s, "async/sample_s": rollout.sample_s,
            "async/generated_tokens_per_episode": self._generated[1] / max(self._generated[0], 1),
            "async/trained_tokens_per_episode": self._trained[1] / max(self._trained[0], 1),
        }
        self._last, self._idle_mark = now, idle
        return out

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()


def _count(acc: list[int], rollout: StepRollout) -> None:
    eps = [e for g in rollout.groups for e in g.episodes]
    acc[0] += len(eps)
    acc[1] += sum(sum(t.loss_mask) for e in eps for t in e.turns)
