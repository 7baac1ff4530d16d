"""Checkpoints and exact resume.

A checkpoint is a directory ``<run_dir>/checkpoints/step-<n>/`` (``n`` = completed steps)::

    model/              save_pretrained of the policy: a LoRA adapter or full weights, + tokenizer
                        (loadable by ``agents.models.load_model(path)``)
    trainer_state.pt    optimizer, LR scheduler, RNG states (python, numpy, torch, cuda),
                        data cursor, policy version, bad-step count, method state
    optimizer/          world size > 1: the optimizer state as a distributed checkpoint
                        (``torch.distributed.checkpoint``, one shard file per rank) instead
    COMPLETE            written last: a directory without it is ignored (killed mid-save)

``model/`` is always consolidated (rank 0 saves the unsharded replica), and the optimizer state is
keyed by parameter name in either layout, so a run resumes at any world size (1 → 2, 2 → 1).

The store gets a ``checkpoints`` row too. On ``--resume`` the loop loads the newest complete
checkpoint and deletes the store's episodes and step rows logged after it, so the store shows no
lost or duplicated episode. Rollout sampling is seeded per step (``seed``, ``step``), so the resumed
run replays exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.distributed import DistInfo, barrier
from trainers.errors import CheckpointError

__all__ = [
    "TrainerState",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "rng_state",
    "set_rng_state",
    "save_policy",
    "load_policy_weights",
]

_DONE = "COMPLETE"


@dataclass
class TrainerState:
    """The loop's own counters (everything else lives in the optimizer/scheduler/method)."""

    step: int = 0  # completed optimizer steps (the next step to run)
    policy_version: int = 0
    bad_steps: int = 0
    cursor: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """States of every RNG the loop draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_policy(model: Any, tokenizer: Any, directory: Path, base_model: str) -> None:
    """``save_pretrained`` of the policy (adapter or full) + tokenizer, loadable by ``load_model``."""
    directory.mkdir(parents=True, exist_ok=True)
    peft_config = getattr(model, "peft_config", None)
    if peft_config:  # the base as plain peft/transformers can load it (not a DistillGym name)
        from agents.models import portable_model_ref

        for cfg in peft_config.values():
            cfg.base_model_name_or_path = portable_model_ref(base_model)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def load_policy_weights(model: Any, directory: Path) -> None:
    """Load the weights written by ``save_policy`` into an already-built (same-shape) policy."""
    from safetensors.torch import load_file

    if getattr(model, "peft_config", None):
        from peft import set_peft_model_state_dict

        file = directory / "adapter_model.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{directory} holds no LoRA adapter but the run trains LoRA")
        set_peft_model_state_dict(model, load_file(file))
        return
    file = directory / "model.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{directory} holds no full model weights (model.safetensors)")
    missing, unexpected = model.load_state_dict(load_file(file), strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"checkpoint {directory} does not match the model: missing "
                              f"{sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    if tied:
        model.tie_weights()


def save_checkpoint(
    run_dir: Path,
    *,
    model: Any,
    tokenizer: Any,
    base_model: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    method_state: dict[str, Any],
    keep: int = 2,
    dist: DistInfo | None = None,
    replica: Any = None,
) -> Path:
    """Write ``checkpoints/step-<state.step>`` atomically (COMPLETE last); prune old ones.

    At world size > 1 every rank calls this: rank 0 writes the replica's weights and the trainer
    state, every rank writes its optimizer shard.
    """
    dist = dist or DistInfo()
    root = run_dir / "checkpoints"
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        save_policy(replica if replica is not None else model, tokenizer, tmp / "model", base_model)
    blob: dict[str, Any] = {"scheduler": scheduler.state_dict(), "rng": rng_state(),
                            "trainer": state.__dict__, "method": method_state}
    if dist.enabled:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        barrier(dist)
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(tmp / "optimizer"))
        blob["optimizer_dcp"] = True
    else:
        blob["optimizer"] = optimizer.state_dict()
    if dist.is_main:
        torch.save(blob, tmp / "trainer_state.pt")
        (tmp / _DONE).write_text(str(state.step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted(p for p in root.glob("step-*") if (p / _DONE).exists())
        for old in done[: max(len(done) - keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / _DONE).exists())
    return done[-1] if done else None


def load_checkpoint(
    path: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
    replica: Any = None,
) -> tuple[TrainerState, dict[str, Any]]:
    """Restore policy weights, optimizer, scheduler and RNGs; return the loop state and method state.

    With a ``replica`` (world size > 1: ``model`` is FSDP-sharded) the weights load into the
    replica and are scattered from it; a checkpoint of either world size loads at either.
    """
    if not (path / _DONE).exists():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {_DONE} marker)")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if replica is not None:
        load_policy_weights(replica, path / "model")
        set_model_state_dict(model, replica.state_dict(), options=StateDictOptions(full_state_dict=True))
    else:
        load_policy_weights(model, path / "model")
    blob = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    if blob.get("optimizer_dcp"):
        _load_sharded_optimizer(path / "optimizer", model, optimizer)
    elif replica is not None:
        _load_plain_optimizer_sharded(blob["optimizer"], model, optimizer)
    else:
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return TrainerState(**blob["trainer"]), blob.get("method", {})


def _load_sharded_optimizer(directory: Path, model: Any, optimizer: torch.optim.Optimizer) -> None:
    """A distributed-checkpoint optimizer state, resharded to this run's world size (1 included)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    target = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # initialised, this layout
    dcp.load(target, checkpoint_id=str(directory))
    set_optimizer_state_dict(model, optimizer, target["optimizer"])


def _load_plain_optimizer_sharded(plain: dict[str, Any], model: Any, optimizer: torch.optim.Optimizer) -> None:
    """A world-size-1 optimizer state (keyed by parameter index, in the order the optimizer was
    built: the trainable parameters) into the sharded policy's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    full = {"state": {names[int(i)]: v for i, v in plain["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                             for g in plain["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def rng_bytes() -> bytes:
    """The RNG states pickled, for the store's checkpoint row."""
    return pickle.dumps(rng_state())
