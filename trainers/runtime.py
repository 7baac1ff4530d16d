"""The runtime builders the loop and the methods share: models, the policy, the optimizer,
the store, renderers, task order, rollout collection, the policy's log-probs and the KL reference.

Everything here is built from a ``TrainConfig`` (plus a ``TrainContext`` at run time); nothing
here knows about a particular method.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_scheduler

import envs
from agents.backends import SamplingParams
from agents.models import load_model, tiny_model
from agents.renderers import Renderer
from agents.rollout import RolloutConfig, collect_groups
from agents.scoring import gather_logprobs
from agents.types import EpisodeGroup
from data import Store
from envs import STRENGTHS
from trainers.batch import RolloutOverrides, TrainBatch, TrainContext
from trainers.train_config import TrainConfig

__all__ = [
    "TaskCursor",
    "step_seed",
    "load_any_model",
    "build_policy",
    "build_optimizer",
    "open_store",
    "store_url",
    "renderer_factory",
    "train_task_ids",
    "collect_rollouts",
    "PolicyOutput",
    "policy_logprobs",
    "reference_view",
]


@dataclass
class TaskCursor:
    """Deterministic task order: epoch ``e`` visits ``task_ids`` in ``permutation(seed, e)``."""

    task_ids: list[str]
    seed: int
    position: int = 0

    def next(self, k: int) -> list[str]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.task_ids))
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.task_ids))
            out.append(self.task_ids[int(perm[i])])
            self.position += 1
        return out


def step_seed(seed: int, step: int) -> int:
    """Seed of everything sampled at ``step`` (independent of how the run got there)."""
    return (seed * 1_000_003 + step * 7919) % (2**31 - 1)


def load_any_model(name: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``load_model(name)``, plus ``"tiny"``/``"tiny:<seed>"``: a random 2-layer model with the
    real tokenizer (tests and smoke runs)."""
    if name == "tiny" or name.startswith("tiny:"):
        seed = int(name.split(":", 1)[1]) if ":" in name else 0
        model, tok = tiny_model(seed=seed)
        return model.to(dtype), tok
    return load_model(name, dtype=dtype)


def build_policy(cfg: TrainConfig, base: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """The trained policy: the student model (``base`` or ``cfg.model``), LoRA-wrapped (PEFT,
    which injects its layers into the base model in place) or fully trainable."""
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    model, tokenizer = base if base is not None else load_any_model(cfg.model, dtype)
    if hasattr(model, "merge_and_unload"):  # a LoRA checkpoint as the student: fold it in
        model = model.merge_and_unload()
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model  # heavy (seconds): imported only when used

        targets: Any = cfg.lora_targets
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    else:
        model.requires_grad_(True)
    model.eval()
    return model, tokenizer


def build_optimizer(cfg: TrainConfig, model: Any) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters and a transformers LR schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=max(cfg.steps, 1))
    return optimizer, scheduler


def store_url(cfg: Any) -> str:
    """The run's store: ``cfg.store``, or one SQLite file under ``cfg.output_dir``."""
    if getattr(cfg, "store", ""):
        return str(cfg.store)
    return f"sqlite:///{Path(getattr(cfg, 'output_dir', 'runs')).resolve() / 'distillgym.db'}"


def open_store(cfg: TrainConfig) -> Any:
    """The trajectory store of the run (default: one SQLite file under ``output_dir``)."""
    return Store(store_url(cfg))


def renderer_factory(tokenizer: Any) -> Any:
    """``factory(env.unwrapped, reset_info) -> Renderer`` for the env's family, instructions and
    tools (the signature ``agents.rollout.collect_groups`` takes)."""
    return functools.partial(Renderer.for_env, tokenizer)


def train_task_ids(env_id: str, split: str, n: int, env_kwargs: dict[str, Any]) -> list[str]:
    """The first ``n`` task ids of ``split`` (the env's own order; the cursor shuffles them)."""
    env = envs.make(env_id, **env_kwargs)
    try:
        base: Any = env.unwrapped
        return list(base.task_ids(split, n))
    finally:
        env.close()


# --------------------------------------------------------------------------- rollouts and forward


def collect_rollouts(
    ctx: TrainContext, step: int, tasks: list[str], overrides: RolloutOverrides
) -> list[EpisodeGroup]:
    """G on-policy episodes per task from the context's backend, seeded by ``(seed, step)``.

    The renderer each group was played with is kept in ``ctx.renderers`` (teacher contexts are
    spliced with the student's exact renderer; no env is built again to rebuild it).
    """
    cfg = ctx.cfg
    seed = step_seed(cfg.seed, step)
    torch.manual_seed(seed)
    sampling = SamplingParams(
        temperature=overrides.temperature if overrides.temperature is not None else cfg.temperature,
        top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
    )  # seed None: the rollout derives one seed per turn from the env seed below
    rollout_cfg = RolloutConfig(
        group_size=overrides.group_size or cfg.group_size, max_turns=cfg.max_turns,
        max_context_tokens=cfg.max_context_tokens, sampling=sampling,
        privileged_strength=overrides.privileged_strength,
        record_privileged=overrides.record_privileged if overrides.record_privileged is not None else STRENGTHS,
    )
    groups = collect_groups(
        ctx.env_id, tasks, ctx.backend, ctx.renderer_factory, rollout_cfg, seed=seed,
        policy_version=ctx.policy_version, env_kwargs=cfg.env_kwargs,
        prefix_actions=overrides.prefix_actions, max_student_turns=overrides.max_student_turns,
        task_index_offset=overrides.task_index_offset,
    )
    for group in groups:
        if group.renderer is not None:
            ctx.renderers[group.task_id] = group.renderer
    return groups


@dataclass
class PolicyOutput:
    """One micro-batch forward of the policy.

    ``logp_BT``: ``log π(x_t | x_<t)`` at the sampling temperature (with gradient, 0 off the trained
    tokens); ``entropy_BT``: the entropy of the predicting distribution at trained tokens (no
    gradient); ``hidden_BTH``: the last hidden states (with gradient; row ``t`` predicts ``x_{t+1}``)
    and ``head``: the output projection, for full-vocabulary losses fused with the head
    (``kernels.distill_loss``) or, materialized, ``logits_BTV()``.
    """

    logp_BT: torch.Tensor
    entropy_BT: torch.Tensor
    hidden_BTH: torch.Tensor
    head: Any

    def logits_BTV(self) -> torch.Tensor:
        """The full ``(B, T, V)`` logits (materialized: the fused path never calls this)."""
        return self.head(self.hidden_BTH)


def policy_logprobs(model: Any, mb: TrainBatch, temperature: float) -> PolicyOutput:
    """``log π(x_t | x_<t)`` at the sampling temperature on the trained tokens of a micro-batch.

    The vocabulary projection dominates the cost (V = 49k for SmolLM2), and most positions are
    prompt and observation tokens; so the LM head is applied only to the ``N`` hidden states
    that predict trained tokens: ``z_NV = W h_{b,t−1}``, ``logp_N = z[x_t]/τ − logsumexp(z/τ)``,
    scattered back to ``(B, T)``.
    """
    dev = next(model.parameters()).device
    ids = mb.input_ids_BT.to(dev)
    out = model(input_ids=ids, attention_mask=mb.attention_mask_BT.to(dev),
                output_hidden_states=True, logits_to_keep=1)
    h_BTH = out.hidden_states[-1]
    head: Any = model.get_output_embeddings()
    b_N, t_N = (mb.loss_mask_BT.to(dev) > 0).nonzero(as_tuple=True)
    z_NV = head(h_BTH[b_N, t_N - 1])
    logp_N = gather_logprobs(z_NV, ids[b_N, t_N], temperature)
    logp_BT = torch.zeros(ids.shape, dtype=logp_N.dtype, device=dev).index_put((b_N, t_N), logp_N)
    with torch.no_grad():
        lp_NV = torch.log_softmax(z_NV.detach().float() / temperature, dim=-1)
        ent_N = -(lp_NV.exp() * lp_NV).sum(-1)
        entropy_BT = torch.zeros_like(logp_BT).index_put((b_N, t_N), ent_N)
    return PolicyOutput(logp_BT, entropy_BT, h_BTH, head)


@contextmanager
def reference_view(ctx: TrainContext) -> Iterator[Any]:
    """The KL reference: a frozen copy (full FT) or the policy with its adapter disabled (LoRA)."""
    if ctx.reference is not None:
        yield ctx.reference
    else:
        with ctx.model.disable_adapter():
            yield ctx.model


