"""Synchronous vs asynchronous rollouts on the same budget (prints JSON).

The same GRPO LoRA run (household, same seed, same steps) with ``async_steps`` = 0, 1, 2::

    python bench/async.py                          # tiny and bundled models, 6 steps each
    python bench/async.py --models tiny --steps 4  # a smoke run
    python bench/async.py --out docs/bench/async_cpu.json

Per run: wall time of ``train()`` (model load and the final checkpoint included, the same in
every arm), steps per hour, the mean fraction
of each step the trainer waited for rollouts and the samplers were idle, the staleness histogram
(trainer version − sampling version, per step) and the length-bias check (mean sampled tokens per
generated vs per trained episode). Synchronous runs wait the whole rollout time
(``time_rollout_s / step time``) and their sampler idles the rest. Ratios are against ``k = 0`` of
the same model in the same invocation. On a 2-core CPU the sampler thread and the trainer share the
cores, so the overlap buys little here; the figures that matter come from a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def run_one(model: str, k: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods import get_method

    cfg = parse_config(get_method("grpo").config_cls, [
        "method=grpo", f"model={model}", f"steps={args.steps}", f"tasks_per_step={args.tasks}",
        f"group_size={args.group_size}", f"max_turns={args.max_turns}", f"max_new_tokens={args.max_tokens}",
        "checkpoint_every=0", "progress=false", f"seed={args.seed}", f"output_dir={workdir}",
        f"run_name={model.replace(':', '_')}-k{k}", f"async_steps={k}"])
    t0 = time.perf_counter()
    rows = train(cfg).metrics
    wall = time.perf_counter() - t0
    if k:
        wait = [r["async/trainer_wait_frac"] for r in rows]
        idle = [r["async/sampler_idle_frac"] for r in rows]
        stale = Counter(int(r["async/staleness"]) for r in rows)
        lengths = (rows[-1]["async/generated_tokens_per_episode"], rows[-1]["async/trained_tokens_per_episode"])
    else:
        wait = [r["time_rollout_s"] / max(r["time_step_s"], 1e-9) for r in rows]
        idle = [1.0 - w for w in wait]
        stale = Counter({0: len(rows)})
        per_ep = sum(r["sampled_tokens"] for r in rows) / max(sum(r["episodes"] for r in rows), 1)
        lengths = (per_ep, per_ep)
    return {"model": model, "async_steps": k, "steps": len(rows), "wall_s": round(wall, 2),
            "steps_per_hour": round(3600 * len(rows) / wall, 1),
            "trainer_wait_frac": round(_mean(wait), 3), "sampler_idle_frac": round(_mean(idle), 3),
            "staleness_hist": {str(s): n for s, n in sorted(stale.items())},
            "generated_tokens_per_episode": round(lengths[0], 2),
            "trained_tokens_per_episode": round(lengths[1], 2),
            "reward_mean": round(_mean([r["reward"] for r in rows]), 4)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2-135m-instruct")
    parser.add_argument("--ks", default="0,1,2")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    runs = []
    with tempfile.TemporaryDirectory(prefix="distillgym-async-") as tmp:
        for model in args.models.split(","):
            for k in (int(x) for x in args.ks.split(",")):
                runs.append(run_one(model, k, args, Path(tmp)))
                print(json.dumps(runs[-1]), file=sys.stderr)
    ratios: dict[str, float] = {}
    for r in runs:
        base = next(b for b in runs if b["model"] == r["model"] and b["async_steps"] == 0)
        if r["async_steps"]:
            ratios[f"{r['model']}/k{r['async_steps']}_over_sync_steps_per_hour"] = round(
                r["steps_per_hour"] / base["steps_per_hour"], 3)
    out = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "command": "python bench/async.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(),
                       "cuda": torch.cuda.is_available()},
           "runs": runs, "ratios": ratios}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
