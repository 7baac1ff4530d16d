"""Env throughput with the expert policy: ``python bench/envs.py [--seconds S] [--ids ID ...]``.

For every registered id (``envs.list_envs()``, so new envs are benchmarked too) it prints one JSON
object: ``resets_per_s`` (seeded resets) and ``steps_per_s`` (``step(expert_action())``, the
expert's thinking included, resets excluded), measured through ``envs.make`` (so with Gymnasium's
wrappers, as trainers use it). Rates are per second of this process's CPU time (one core, fair
on a shared machine); the ``wall_`` rates are per wall-clock second. Target: >= 2,000 steps/s
and >= 500 resets/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402


class _Clock:
    """Accumulates wall-clock and CPU seconds of the timed sections."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def bench_resets(env, seconds: float) -> tuple[float, float]:
    """Return (resets per CPU second, resets per wall second)."""
    n, clock = 0, _Clock()
    while clock.wall < seconds:
        with clock:
            for _ in range(20):
                env.reset(seed=n)
                n += 1
    return n / max(clock.cpu, 1e-9), n / clock.wall


def bench_steps(env, seconds: float) -> tuple[float, float, float]:
    """Return (steps per CPU second, steps per wall second, fraction of episodes won)."""
    steps, episodes, wins, clock = 0, 0, 0, _Clock()
    expert = env.unwrapped.expert_action
    while clock.wall < seconds:
        env.reset(seed=episodes)
        episodes += 1
        with clock:
            while True:
                _, _, terminated, truncated, info = env.step(expert())
                steps += 1
                if terminated or truncated:
                    break
        wins += bool(info.get("won"))
    return steps / max(clock.cpu, 1e-9), steps / clock.wall, wins / episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--ids", nargs="*", default=None, help="env ids (default: all)")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    results = {}
    for env_id in args.ids or envs.list_envs():
        env = envs.make(env_id)
        resets, wall_resets = bench_resets(env, args.seconds)
        steps, wall_steps, win_rate = bench_steps(env, args.seconds)
        results[env_id] = {
            "resets_per_s": round(resets, 1),
            "steps_per_s": round(steps, 1),
            "wall_resets_per_s": round(wall_resets, 1),
            "wall_steps_per_s": round(wall_steps, 1),
            "expert_win_rate": round(win_rate, 3),
        }
        env.close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
