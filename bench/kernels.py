"""Benchmark of the fused divergence loss against naive full-logits PyTorch; prints JSON.

    python bench/kernels.py                       # CPU: N=4096, H=576, V=49152 (SmolLM2 sizes)
    python bench/kernels.py --n 512 --v 8192      # a quick run
    python bench/kernels.py                       # on a CUDA machine: N=8192, H=4096, V=151936, bf16

Both implementations compute JSD(0.5) between ``softmax(h_S @ W_S.T)`` and
``softmax(h_T @ W_T.T)`` plus the gradients w.r.t. ``h_S`` and ``W_S``:

- naive: full ``(N, V)`` student and teacher logits, ``kernels.reference`` math, autograd;
- fused: ``kernels.distill_loss(..., TeacherHidden(...))`` (chunked torch on CPU, Triton on CUDA).

Memory method. CPU: each implementation runs in its own fresh subprocess, which allocates its
inputs, records its resident set size (psutil RSS), runs the loss + backward ``--repeat`` times
and reads the process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, a kernel-kept high-water
mark, so short-lived peaks between samples are not missed). Peak extra = peak RSS - RSS before the
first call: everything the call allocated, gradients included. PyTorch's CPU allocator returns
large blocks to the OS at once (glibc mmap threshold), so RSS follows live tensors, and separate
processes keep one implementation's high-water mark from hiding the other's. CUDA: the same
subprocesses, with ``torch.cuda.max_memory_allocated`` minus the allocation before the call.
Time: the median over ``--repeat`` runs after one warm-up run (CUDA: synchronized).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(n: int, h: int, v: int, device: str, dtype):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    hs = rnd(n, h).requires_grad_()
    ws = rnd(v, h, scale=h**-0.5 * 3).requires_grad_()
    ht = rnd(n, h)
    wt = rnd(v, h, scale=h**-0.5 * 3)
    return hs, ws, ht, wt


def _naive(hs, ws, ht, wt):
    import torch

    from kernels.reference import reference_divergence

    zs = hs @ ws.T
    with torch.no_grad():
        zt = ht @ wt.T
    loss = reference_divergence(zs.float(), zt.float(), "jsd", 0.5).sum()
    loss.backward()
    return loss


def _fused(hs, ws, ht, wt, chunk: int | None):
    from kernels import TeacherHidden, distill_loss

    loss = distill_loss(hs, ws, TeacherHidden(ht, wt), kind="jsd", beta=0.5, reduction="sum", chunk_size=chunk)
    loss.backward()
    return loss


def worker(args: argparse.Namespace) -> dict:
    """Run one implementation in this process and return its time and peak extra memory."""
    import psutil
    import torch

    import kernels.reference  # noqa: F401  (imports are not part of the measured memory)
    from kernels.api import triton_available

    cuda = args.device == "cuda"
    if cuda and triton_available(torch.device("cuda")):
        import kernels.triton_rows  # noqa: F401
    dtype = torch.bfloat16 if cuda and not args.fp32 else torch.float32
    hs, ws, ht, wt = _inputs(args.n, args.h, args.v, args.device, dtype)

    def run():
        hs.grad = ws.grad = None
        if args.worker == "naive":
            return _naive(hs, ws, ht, wt)
        return _fused(hs, ws, ht, wt, args.chunk)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = psutil.Process(os.getpid()).memory_info().rss
    times, loss = [], None
    for _ in range(args.repeat + 1):
        t0 = time.perf_counter()
        loss = run()
        sync()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    med = statistics.median(times[1:])
    flops = 4 * 2 * args.n * args.h * args.v  # student fwd, teacher fwd, dX, dW
    return {
        "impl": args.worker,
        "time_s": med,
        "peak_extra_mb": peak / 2**20,
        "tflops": flops / med / 1e12,
        "loss": float(loss),
        "grad_head_norm": float(ws.grad.float().norm()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--h", type=int, default=None)
    p.add_argument("--v", type=int, default=None)
    p.add_argument("--chunk", type=int, default=None, help="rows per chunk (default: automatic)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--fp32", action="store_true", help="fp32 inputs on CUDA (default bf16)")
    p.add_argument("--skip-naive", action="store_true", help="only time the fused path")
    p.add_argument("--worker", choices=["naive", "fused"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    big = args.device == "cuda"
    args.n = args.n or (8192 if big else 4096)
    args.h = args.h or (4096 if big else 576)
    args.v = args.v or (151936 if big else 49152)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = {}
    for impl in (["fused"] if args.skip_naive else ["naive", "fused"]):
        cmd = [sys.executable, __file__, "--worker", impl, "--device", args.device,
               "--n", str(args.n), "--h", str(args.h), "--v", str(args.v), "--repeat", str(args.repeat)]
        if args.chunk:
            cmd += ["--chunk", str(args.chunk)]
        if args.fp32:
            cmd.append("--fp32")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    report = {"device": args.device, "n": args.n, "h": args.h, "v": args.v, **results}
    if "naive" in results:
        fused, naive = results["fused"], results["naive"]
        report["memory_ratio"] = fused["peak_extra_mb"] / naive["peak_extra_mb"]
        report["time_ratio"] = fused["time_s"] / naive["time_s"]
        report["loss_rel_diff"] = abs(fused["loss"] - naive["loss"]) / abs(naive["loss"])
        report["targets_met"] = {"memory_ratio<=0.25": report["memory_ratio"] <= 0.25,
                                 "time_ratio<=1.1": report["time_ratio"] <= 1.1}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
