"""Benchmark one optimizer step of the training loop: trained tokens/s and where the time goes.

For each fine-tuning mode (LoRA and full) it runs ``--steps`` steps of OPD (student rollouts,
teacher scoring with the same bundled model as the teacher, loss, optimizer) and reports the
*last* step (the first one pays warm-up costs)::

    python bench/train_step.py                       # bundled SmolLM2-135M, LoRA and full
    python bench/train_step.py --model tiny --modes lora --out bench_train_step.json
    python bench/train_step.py --opsd-divergence     # + OPSD divergence step, fused vs materialized
    python bench/train_step.py --nproc 1,2 --modes lora   # FSDP2 data parallel: world size 1 vs 2
    python bench/train_step.py --modes lora --backend hf,vllm,server   # same step, three samplers

Output (JSON): per mode, trained tokens, trained tokens/s over the whole step, tokens/s of the
loss phase alone (forward + backward), and the share of the step spent in rollout, teacher
scoring, loss (forward + backward) and the optimizer (clip + step + weight sync). With several
``--backend`` values (``server`` = a vLLM server started here, ``sampler_urls=auto``, weights pushed
through the filesystem transport: LoRA hot-load or full reload) each mode runs once per backend and
the step-time ratios against ``hf`` of the same run are reported, with the weight sync and pause
times of the server step.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_mode(mode: str, args: argparse.Namespace, out_dir: Path, backend: str = "") -> dict[str, Any]:
    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods.opd import OPDConfig

    teacher = args.teacher or args.model
    cfg = parse_config(OPDConfig, [
        f"model={args.model}", f"teacher={teacher}", f"env={args.env}", f"finetune={mode}",
        f"steps={args.steps}", f"tasks_per_step={args.tasks}", f"group_size={args.group}",
        f"max_turns={args.max_turns}", f"max_new_tokens={args.max_new_tokens}", f"dtype={args.dtype}",
        "max_context_tokens=2048", f"token_budget={args.token_budget}", "checkpoint_every=0",
        "progress=false", f"output_dir={out_dir}", f"run_name=bench-{mode}-{backend or args.backend}",
        "method=opd", f"backend={backend or args.backend}",
        *(["sampler_urls=auto"] if (backend or args.backend) == "server" else []),
    ])
    last = train(cfg).last
    step = last["time_step_s"]
    parts = {"rollout": last["time_rollout_s"], "scoring": last["time_score_s"],
             "loss": last["time_loss_s"], "optimizer": last["time_optim_s"]}
    return {
        "trained_tokens": int(last["trained_tokens"]),
        "sampled_episodes": int(last.get("episodes", 0)),
        "step_s": round(step, 3),
        "trained_tokens_per_s": round(last["trained_tokens"] / step, 2),
        "loss_phase_tokens_per_s": round(last["trained_tokens"] / max(parts["loss"], 1e-9), 2),
        "share": {k: round(v / step, 4) for k, v in parts.items()},
        "seconds": {k: round(v, 3) for k, v in parts.items()},
        **{k: round(last[k], 3) for k in ("weight_sync_s", "weight_pause_s") if k in last},
    }


def bench_world_size(mode: str, nproc: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """The same OPD steps under ``python -m trainers --nproc N`` (torchrun + FSDP2): the last
    step's time and trained tokens/s (the step's global tokens over rank 0's step time)."""
    import csv
    import os
    import subprocess

    teacher = args.teacher or args.model
    run = f"bench-{mode}-ws{nproc}"
    cmd = [sys.executable, "-m", "trainers", "opd", f"model={args.model}", f"teacher={teacher}",
           f"env={args.env}", f"finetune={mode}", f"steps={args.steps}", f"tasks_per_step={args.tasks}",
           f"group_size={args.group}", f"max_turns={args.max_turns}", f"max_new_tokens={args.max_new_tokens}",
           f"dtype={args.dtype}", "max_context_tokens=2048", f"token_budget={args.token_budget}",
           "checkpoint_every=0", "progress=false", f"output_dir={out_dir}", f"run_name={run}",
           f"backend={args.backend}", "--nproc", str(nproc)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out_dir / run / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    step = float(last["time_step_s"])
    return {"world_size": nproc, "step_s": round(step, 3), "trained_tokens": int(float(last["trained_tokens"])),
            "trained_tokens_per_s": round(float(last["trained_tokens"]) / step, 2),
            "loss": float(last["loss"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--teacher", default="")
    p.add_argument("--env", default="DistillGym/Household-v0")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--token-budget", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--backend", default="auto", help="auto, hf, vllm, server, or a comma list of them")
    p.add_argument("--opsd-divergence", action="store_true",
                   help="also run bench/opsd_divergence.py (fused vs materialized OPSD divergence step)")
    p.add_argument("--nproc", default="",
                   help="comma-separated world sizes (e.g. 1,2): run each under torchrun + FSDP2")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    import torch

    result: dict[str, Any] = {
        "model": args.model, "env": args.env, "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "config": {k: getattr(args, k) for k in ("tasks", "group", "max_turns", "max_new_tokens", "dtype", "steps")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        backends = [b.strip() for b in args.backend.split(",") if b.strip()]
        for mode in args.modes.split(","):
            if args.nproc:  # one process per rank, one thread each
                sizes = [int(n) for n in args.nproc.split(",")]
                runs = [bench_world_size(mode, n, args, Path(tmp)) for n in sizes]
                base = runs[0]["trained_tokens_per_s"]
                result[mode] = {"world_sizes": runs, "scaling_vs_first": [
                    round(r["trained_tokens_per_s"] / base, 3) for r in runs]}
            elif len(backends) == 1:
                result[mode] = bench_mode(mode, args, Path(tmp), backends[0])
            else:
                result[mode] = {b: bench_mode(mode, args, Path(tmp), b) for b in backends}
                if "hf" in backends:
                    for b in backends:
                        result[f"{mode}_{b}_over_hf_step_s"] = round(
                            result[mode][b]["step_s"] / result[mode]["hf"]["step_s"], 3)
    if args.opsd_divergence:
        import opsd_divergence  # bench/ is on sys.path when this file runs as a script

        result["opsd_divergence"] = opsd_divergence.main(["--model", args.model])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return result


if __name__ == "__main__":
    main()
