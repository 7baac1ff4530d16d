"""OPSD ``mode=divergence`` loss phase: the fused path (``kernels.distill_loss`` on the student's hidden
states, teacher rows computed once in scoring) vs the materialized path (``(B, T, V)`` student logits,
teacher ``(N, V)`` logits recomputed in the loss), on the same episodes, in the same run.

Each path runs in its own fresh process (so one path's freed memory cannot hide the other's peak):
load the model, play the same seeded household episodes, score them, then time ``--repeats`` loss
phases (teacher work of the loss + student forward + divergence + backward) and read the peak extra
memory of the first one (CPU: the process's peak RSS, reset through ``/proc/self/clear_refs``, minus
the RSS before, with glibc's large blocks on mmap so freed memory leaves the RSS; CUDA:
``torch.cuda.max_memory_allocated`` minus the allocation before). The divergence alone is measured
the same way from the student's last hidden states as a leaf (teacher work of the loss, head/logits,
divergence, backward to hidden states and head), without the transformer's activations::

    python bench/opsd_divergence.py                       # bundled SmolLM2-135M, household lengths
    python bench/opsd_divergence.py --model tiny --tasks 1

JSON: per path the seconds (median of repeats) of the loss phase and of scoring, the peak extra
memory in MiB, trained tokens; and the fused/materialized ratios (targets: memory <= 0.5, time <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENV = "DistillGym/Household-v0"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    import torch

    from agents.backends import HFBackend, SamplingParams
    from agents.rollout import RolloutConfig, collect_groups
    from trainers.batch import TrainContext, move_batch
    from trainers.methods.opsd import OPSD, OPSDConfig
    from trainers.runtime import PolicyOutput, load_any_model, policy_logprobs, renderer_factory

    torch.manual_seed(0)
    model, tok = load_any_model(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).requires_grad_(True).eval()
    tasks = [f"train-{i:06d}" for i in range(args.tasks)]
    rollout = RolloutConfig(group_size=args.group, max_turns=args.max_turns, max_context_tokens=4096,
                            sampling=SamplingParams(max_tokens=args.max_new_tokens, seed=0))
    groups = collect_groups(ENV, tasks, HFBackend(model, tok), renderer_factory(tok), rollout, seed=11)
    cfg = OPSDConfig(model=args.model, opsd_mode="divergence", privileged="plan", finetune="full",
                     divergence_impl=args.impl, teacher_topk=args.topk)
    ctx = TrainContext(cfg=cfg, model=model, tokenizer=tok, backend=None, device=device,
                       renderer_factory=renderer_factory(tok), env_id=ENV,
                       renderers={g.task_id: g.renderer for g in groups})
    method = OPSD(cfg)
    method.setup(ctx)
    t0 = time.perf_counter()
    method.score(ctx, groups)
    score_s = time.perf_counter() - t0
    batch = method.make_batch(ctx, groups)
    batch.advantages_BT = method.advantages(ctx, batch)
    batch = move_batch(batch, device)

    def loss_phase() -> float:
        model.zero_grad(set_to_none=True)
        fwd = policy_logprobs(model, batch, cfg.temperature)
        loss, _ = method.loss(ctx, batch, fwd.logp_BT, fwd)
        loss.backward()
        return float(loss.item())

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    loss = loss_phase()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
    # the divergence's own extra memory: the student's hidden states as a leaf (no transformer
    # activations), then the path's head/logits, divergence and backward to hidden states and head
    with torch.no_grad():
        h_BTH = model(input_ids=batch.input_ids_BT.to(device), attention_mask=batch.attention_mask_BT.to(device),
                      output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    h_BTH = h_BTH.detach().requires_grad_(True)
    head = model.get_output_embeddings()
    fake = PolicyOutput(torch.zeros(batch.loss_mask_BT.shape, device=device), torch.zeros(1), h_BTH, head)
    gc.collect()
    if device.type == "cuda":
        base_d = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base_d = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    if args.impl == "fused":
        div = method.fused_divergence(batch, fake)
    else:
        div = method.divergence(ctx, batch, fake.logits_BTV)
    div.backward()
    div_s = time.perf_counter() - t0
    if device.type == "cuda":
        div_peak = torch.cuda.max_memory_allocated() - base_d
    else:
        div_peak = _rss_kib("VmHWM") * 1024 - base_d
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss_phase()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"loss": loss, "loss_phase_s": round(statistics.median(times), 4),
            "loss_phase_s_all": [round(t, 4) for t in times], "score_s": round(score_s, 4),
            "peak_extra_mib": round(peak / 2**20, 1), "trained_tokens": batch.num_tokens,
            "divergence_peak_extra_mib": round(div_peak / 2**20, 1), "divergence_s": round(div_s, 4),
            "rows": batch.num_seqs, "max_len": int(batch.lengths_B.max()), "device": device.type}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--topk", type=int, default=0)
    p.add_argument("--impl", default="", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.impl:
        print(json.dumps(worker(args)))
        return {}
    result: dict[str, Any] = {"model": args.model, "env": ENV, "config": {
        k: getattr(args, k) for k in ("tasks", "group", "max_turns", "max_new_tokens", "repeats", "topk")}}
    base_cmd = [sys.executable, __file__, "--model", args.model, "--tasks", str(args.tasks),
                "--group", str(args.group), "--max-turns", str(args.max_turns),
                "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats),
                "--topk", str(args.topk)]
    # large blocks through mmap, returned to the OS when freed: the peak RSS then tracks live memory
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for impl in ("logits", "fused"):
        out = subprocess.run(base_cmd + ["--impl", impl], capture_output=True, text=True, env=env, check=True)
        result[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    f, m = result["fused"], result["logits"]
    result["ratio"] = {
        "peak_extra_memory": round(f["peak_extra_mib"] / max(m["peak_extra_mib"], 1e-9), 3),
        "divergence_peak_extra_memory": round(f["divergence_peak_extra_mib"] / max(m["divergence_peak_extra_mib"], 1e-9), 3),
        "divergence_time": round(f["divergence_s"] / max(m["divergence_s"], 1e-9), 3),
        "loss_phase_time": round(f["loss_phase_s"] / m["loss_phase_s"], 3),
        "score_plus_loss_time": round((f["score_s"] + f["loss_phase_s"]) / (m["score_s"] + m["loss_phase_s"]), 3),
        "loss_rel_diff": abs(f["loss"] - m["loss"]) / max(abs(m["loss"]), 1e-12),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return result


if __name__ == "__main__":
    main()
