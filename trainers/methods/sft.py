"""SFT from expert demonstrations: make a stronger starting point (or teacher) from the bundled model.

Demonstrations are collected by running ``env.unwrapped.expert_action()`` through the *same*
renderer as rollouts (token-in, token-out, same chat format, the same ``Turn``/``Episode``
records), so a model fine-tuned here samples in exactly the format the rollouts parse. Loss:
``L = −Σ_{b,t} m_{b,t} log π_θ(x_{b,t}) / N_tok`` over the expert's assistant tokens (the end-of-turn
token included: the model must learn to stop).

Why not TRL's ``SFTTrainer``: it re-renders conversations from text with the chat template, while
DistillGym's rows are already token ids with a loss mask (the same masking its completion-only
collator computes); the one training loop gives SFT the same checkpoints, resume, metrics and
store as every other method.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

import envs
from agents.types import EndReason, Episode, EpisodeGroup, Turn
from trainers.losses import aggregate
from trainers.methods import register_method
from trainers.methods.base import Method, RolloutOverrides, TrainBatch, TrainContext
from trainers.runtime import PolicyOutput
from trainers.train_config import TrainConfig

__all__ = ["SFT", "SFTConfig", "expert_episode", "collect_expert_groups", "format_expert_action"]


@dataclass
class SFTConfig(TrainConfig):
    method: str = field(default="sft", metadata={"help": "training method (set by the CLI sub-command)"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    group_size: int = field(default=1, metadata={"help": "demonstrations per task (the expert is deterministic)"})
    tasks_per_step: int = field(default=8, metadata={"help": "demonstrations per optimizer step"})
    max_turns: int = field(default=30, metadata={"help": "expert turns per demonstration"})


def format_expert_action(family: str, action: str) -> str:
    """The assistant text for an expert action, in the format the rollout parser reads back.

    Tool-calling families get a JSON call wrapped in ``<tool_call>`` tags (as their system prompt
    asks); everything else (household commands, plain replies) is the action text itself.
    """
    if family in ("tool", "clinical"):
        try:
            call = json.loads(action)
        except ValueError:
            return action
        if isinstance(call, dict) and "name" in call:
            return f"<tool_call>{json.dumps(call, separators=(',', ':'))}</tool_call>"
    return action


def expert_episode(
    env: Any,
    renderer: Any,
    tokenizer: Any,
    *,
    env_id: str,
    task_id: str,
    seed: int,
    max_turns: int,
    max_context_tokens: int,
    max_new_tokens: int,
) -> Episode:
    """Play one task with the env's expert, rendering each turn exactly like a rollout turn.

    Each completion is the tokenized expert action plus the renderer's end-of-turn; the expert
    tokens and the first end-of-turn token are trained (mask 1), anything the renderer appends
    after it is not. Sampler log-probs are 0 (no sampler).
    """
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    family = env.unwrapped.family
    if callable(renderer) and not hasattr(renderer, "start"):  # a factory (env, info) -> Renderer
        renderer = renderer(env.unwrapped, info)
    ep = Episode(env_id=env_id, task_id=task_id, seed=seed, group_id=f"{task_id}-expert",
                 task_type=str(info.get("task_type", "")), episode_id=uuid.uuid4().hex,
                 end_reason=EndReason.MAX_TURNS)
    prompt = renderer.start(obs)
    for k in range(max_turns):
        if len(prompt) + max_new_tokens > max_context_tokens:
            ep.end_reason = EndReason.CONTEXT_OVERFLOW
            break
        action = env.unwrapped.expert_action()
        text = format_expert_action(family, action)
        sampled = tokenizer.encode(text, add_special_tokens=False) + list(renderer.eot_ids[:1])
        ids, mask = renderer.finish_completion(sampled, "stop")
        obs, reward, terminated, truncated, info = env.step(action)
        ep.turns.append(Turn(
            index=k, prompt_ids=list(prompt), completion_ids=list(ids), sampler_logprobs=[0.0] * len(ids),
            loss_mask=list(mask), action_text=text, action=action,
            action_valid=bool(info.get("action_valid", True)), observation=obs, reward=float(reward),
            terminated=bool(terminated), truncated=bool(truncated), finish_reason="stop",
        ))
        ep.reward += float(reward)
        ep.won = bool(info.get("won", False))
        if terminated or truncated:
            ep.end_reason = EndReason.TERMINATED if terminated else EndReason.TRUNCATED
            break
        prompt = renderer.extend(list(prompt) + list(ids), obs)
    ep.info["expert"] = True
    return ep


def collect_expert_groups(
    env_id: str,
    task_ids: list[str],
    renderer_factory: Any,
    tokenizer: Any,
    *,
    seed: int,
    max_turns: int,
    max_context_tokens: int,
    max_new_tokens: int,
    env_kwargs: dict[str, Any] | None = None,
) -> list[EpisodeGroup]:
    """One expert demonstration per task, as single-episode groups."""
    env = envs.make(env_id, **(env_kwargs or {}))
    try:
        groups = []
        for tid in task_ids:
            ep = expert_episode(env, renderer_factory, tokenizer, env_id=env_id, task_id=tid, seed=seed,
                                max_turns=max_turns, max_context_tokens=max_context_tokens,
                                max_new_tokens=max_new_tokens)
            groups.append(EpisodeGroup(group_id=ep.group_id, task_id=tid, episodes=[ep]))
        return groups
    finally:
        env.close()


def demo_nll(logp_BT: Tensor, mask_BT: Tensor, num_tokens: int | None = None) -> Tensor:
    """``−Σ m·log π / N_tok``: mean negative log-likelihood of the expert tokens."""
    return aggregate(-logp_BT, mask_BT, "token-mean", num_tokens=num_tokens)


@register_method("sft")
class SFT(Method):
    """Supervised fine-tuning on the env expert's demonstrations (same renderer as rollouts)."""

    config_cls = SFTConfig
    on_policy = False
    description = "supervised fine-tuning on env expert demonstrations (makes a teacher)"

    def collect(
        self, ctx: TrainContext, step: int, tasks: list[str], overrides: RolloutOverrides
    ) -> list[EpisodeGroup]:
        cfg = self.cfg
        return collect_expert_groups(
            ctx.env_id, tasks, ctx.renderer_factory, ctx.tokenizer, seed=cfg.seed,
            max_turns=cfg.max_turns, max_context_tokens=cfg.max_context_tokens,
            max_new_tokens=cfg.max_new_tokens, env_kwargs=cfg.env_kwargs,
        )

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        return batch.loss_mask_BT.clone()

    def loss(self, ctx: TrainContext, batch: TrainBatch, logp_BT: Tensor, fwd: PolicyOutput
             ) -> tuple[Tensor, dict[str, float]]:
        loss = demo_nll(logp_BT, batch.loss_mask_BT, batch.num_tokens)
        return loss, {"nll": loss.item()}
