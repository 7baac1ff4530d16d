"""How much does privileged information help? The teacher's vs the student's success rate.

Self-distillation from privileged information (OPSD, π-Distill, TT-OPD) only works when the same
model *with* the privileged text in its context acts better than without it. This script measures
that gap on a DistillGym env with a real model: the same tasks and seeds are rolled out by the
plain student and by the privileged "teacher" at each requested strength (the sampler sees the
text, exactly as π-Distill's rollouts do), and prints one JSON object::

    python bench/privileged_gap.py --model smollm2-135m-instruct --tasks 16 --group 2 \
        --strengths plan next_action hint

Fields per condition: success_rate, mean_reward, mean_turns, valid_action_rate, episodes; plus
``gap_<strength>`` = teacher success − student success and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def condition_stats(groups: list[Any]) -> dict[str, float]:
    """Success rate, reward, turns and valid-action rate over all episodes of ``groups``."""
    episodes = [ep for g in groups for ep in g.episodes]
    turns = [t for ep in episodes for t in ep.turns]
    n = max(len(episodes), 1)
    return {
        "episodes": float(len(episodes)),
        "success_rate": sum(ep.won for ep in episodes) / n,
        "mean_reward": sum(ep.reward for ep in episodes) / n,
        "mean_turns": sum(ep.num_turns for ep in episodes) / n,
        "valid_action_rate": sum(t.action_valid for t in turns) / max(len(turns), 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--env", default="DistillGym/Household-v0")
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--group", type=int, default=2, help="episodes per task")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--strengths", nargs="+", default=["plan"],
                        choices=["plan", "next_action", "hint", "answer"])
    parser.add_argument("--backend", default="hf", choices=["auto", "hf", "vllm"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    import envs
    from agents.backends import SamplingParams, make_backend
    from agents.models import load_model, resolve_model_dir
    from agents.renderers import Renderer
    from agents.rollout import RolloutConfig, collect_groups

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    model.eval()
    extra = {} if args.backend == "hf" else {"model_dir": resolve_model_dir(args.model)}
    backend = make_backend(args.backend, model=model, tokenizer=tok, **extra)
    env = envs.make(args.env)
    tasks = env.unwrapped.task_ids(args.split, args.tasks)
    env.close()

    def rollout(strength: str | None) -> list[Any]:
        cfg = RolloutConfig(
            group_size=args.group, max_turns=args.max_turns, max_context_tokens=4096,
            sampling=SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens,
                                    seed=args.seed),
            privileged_strength=strength, record_privileged=(),
        )
        return collect_groups(args.env, tasks, backend,
                              lambda e, info: Renderer.for_env(tok, e, info), cfg, seed=args.seed)

    report: dict[str, Any] = {"model": args.model, "env": args.env, "split": args.split,
                              "tasks": args.tasks, "group": args.group, "max_turns": args.max_turns,
                              "temperature": args.temperature}
    report["student"] = condition_stats(rollout(None))
    print(f"student done after {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    for strength in args.strengths:
        report[f"teacher_{strength}"] = condition_stats(rollout(strength))
        print(f"teacher_{strength} done after {time.perf_counter() - t0:.0f}s", file=sys.stderr,
              flush=True)
        report[f"gap_{strength}"] = (report[f"teacher_{strength}"]["success_rate"]
                                     - report["student"]["success_rate"])
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    backend.close()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
