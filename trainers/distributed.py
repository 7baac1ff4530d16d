"""Data-parallel, sharded training on ``torch.distributed``: the process group, FSDP2, the split
of a step's tasks over ranks, reductions, and the policy replica that samples.

``python -m trainers METHOD ...`` runs unchanged under ``torchrun --nproc_per_node N`` (or
``accelerate launch``): both set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``, and
:func:`init_distributed` joins the group (``gloo`` on CPU, ``nccl`` on CUDA). World size 1 never
creates a process group and runs the single-process path.

At world size ``W > 1`` a step runs::

    tasks_s             <- the step's tasks, the same on every rank (the cursor is replicated)
    share_r             <- contiguous block r of tasks_s (a group never splits)
    groups_r            <- rollouts + teacher scores of share_r   (the unsharded policy replica)
    batch_r             <- groups_r; num_tokens, num_seqs := all-reduce sums (the global counts)
    loss_r / N_global, backward                                      (the FSDP2-sharded policy)
    grad                <- Σ_r grad_r  (reduce-scatter with divide factor 1: the loss is already global)
    optimizer step; replica <- the new weights (an all-gather of the trainable parameters)
    rank 0              <- every rank's episodes (gather), the one writer of the store

FSDP2 forwards are collectives, so every rank must run the same number of them. Rollouts and
teacher scoring run a data-dependent number of forwards (turns, episodes), so they use an unsharded
replica of the policy on each rank (the in-process stand-in for a sampler server); the sharded
policy only runs the micro-batch loop, whose length is made equal on every rank.
"""

from __future__ import annotations

import copy
import datetime
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainers.config import ConfigError

__all__ = [
    "DistInfo",
    "init_distributed",
    "close_distributed",
    "share_bounds",
    "shard_policy",
    "sync_replica",
    "all_reduce_sum",
    "all_reduce_max",
    "all_gather_keys",
    "gather_to_main",
    "barrier",
    "check_world_size",
    "broadcast_from_main",
    "fail_on_sigterm",
    "grad_norm_value",
    "make_replica",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (world size 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float) -> DistInfo:
    """Join the process group the launcher described in the environment (``WORLD_SIZE > 1``).

    A collective that waits longer than ``timeout_s`` (a dead rank) raises on every live rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def close_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def fail_on_sigterm() -> None:
    """Turn SIGTERM (what torchrun sends the survivors when a rank dies) into ``SystemExit``, so
    the loop's ``finally`` marks the run failed instead of the process vanishing mid-write."""

    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(f"terminated by signal {signum} (another rank of the job failed)")

    signal.signal(signal.SIGTERM, _raise)


def check_world_size(cfg: Any, world_size: int) -> None:
    """What a run cannot do at this world size, as a ``ConfigError`` before any model loads."""
    if world_size <= 1:
        return
    if cfg.tasks_per_step < world_size:
        raise ConfigError(f"tasks_per_step={cfg.tasks_per_step} < world size {world_size}: every "
                          "rank needs at least one task (a group never splits across ranks)")
    if cfg.method == "skill-sd":
        raise ConfigError("skill-sd keeps its skill bank in the store, which rank 0 alone writes: "
                          "run it at world size 1")


def share_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ by ≤ 1,
    the first ``n mod world`` ranks take one more)."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks of a (PEFT-wrapped) causal LM: the units FSDP2 shards one by one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module: Any = base
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return list(module)
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__} to shard")


def shard_policy(model: Any, info: DistInfo, mixed_precision: str = "") -> Any:
    """``fully_shard`` every decoder layer, then the root (LoRA and full fine-tuning alike: FSDP2
    shards parameters one by one, frozen ones included). The gradient reduce-scatter sums over
    ranks instead of averaging: each rank's loss is already divided by the step's global counts.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (info.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if mixed_precision:
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[mixed_precision]
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    for module in (*layers, model):  # each fully_shard call is its own communication group
        module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
        module.set_gradient_divide_factor(1.0)
    return model


def make_replica(model: Any) -> Any:
    """An unsharded copy of the policy that samples and scores (taken before sharding)."""
    return copy.deepcopy(model).requires_grad_(False).eval()


def sync_replica(sharded: Any, replica: Any) -> None:
    """Copy the sharded policy's trainable parameters into the replica (a collective: every rank
    calls it after every optimizer step). Frozen parameters never change, so only LoRA's are
    gathered when training LoRA."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True,
                                                                  ignore_frozen_params=True))
    missing = set(full) - set(replica.state_dict())
    if missing:
        raise RuntimeError(f"replica lacks parameters {sorted(missing)[:3]} of the sharded policy")
    with torch.no_grad():
        replica.load_state_dict(full, strict=False)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Σ over ranks of each value (identity at world size 1)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 in rank order (``None`` elsewhere; ``[obj]`` at world size 1)."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run name, which holds a timestamp)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def grad_norm_value(total: Any) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor under FSDP2: the global norm)."""
    full = getattr(total, "full_tensor", None)
    return float(full() if full is not None else total)


def all_gather_keys(keys: set[str], info: DistInfo) -> list[set[str]]:
    """Every rank's key set (``[keys]`` at world size 1)."""
    if not info.enabled:
        return [keys]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, keys)
    return out
