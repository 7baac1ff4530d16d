"""The one training loop shared by every method, readable top to bottom.

``train(cfg)`` runs, every step (see ``trainers/methods/base.py`` for the hooks)::

    tasks   <- data cursor (a seeded permutation of the train split, epoch by epoch)
    groups  <- method.collect: G rollouts per task, all stepped in lock-step by one backend
    method.score(groups)                      teacher log-probs into Turn.teacher_logprobs
    batch   <- method.make_batch(groups)      one right-padded row per episode
    A_BT    <- method.advantages(batch)       per-token advantages / weights
    for each micro-batch (padded tokens <= token_budget):
        logp_BT <- policy forward at the sampling temperature
        loss    <- method.loss(...)           normalised by the step's global counts
        loss.backward()                       (gradient accumulation)
    clip grads; optimizer + LR schedule step  (skipped and counted when anything is NaN/inf)
    backend.update_weights(model, version)    the sampler uses the new weights
    method.after_step; metrics -> store + CSV; episodes -> store; checkpoint; eval

With ``async_steps = k > 0`` the groups come from ``trainers.async_rollouts`` instead, sampled
ahead by the policy of step ``max(0, s − k)``, and the new weights go to that sampler as a snapshot.

Determinism and resume: all sampling of step ``s`` is seeded by ``(cfg.seed, s)``, so a run
resumed from a checkpoint replays exactly the steps an uninterrupted run would have taken. The
model stays in eval mode (the bundled models have no dropout; LoRA dropout defaults to 0), so the
trainer's ``log π`` matches the sampler's ``log π_old`` up to kernel numerics.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import set_seed

import envs
from agents.backends import make_backend
from agents.models import resolve_model_dir
from agents.server import server_options
from agents.types import EndReason, EpisodeGroup
from trainers.async_rollouts import AsyncRollouts
from trainers.batch import TrainContext, move_batch, pad_token_id, padding_batch
from trainers.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    rng_bytes,
    save_checkpoint,
)
from trainers.config import ConfigError, config_to_dict, dump_yaml
from trainers.distributed import (
    DistInfo,
    all_gather_keys,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    check_world_size,
    close_distributed,
    fail_on_sigterm,
    gather_to_main,
    grad_norm_value,
    init_distributed,
    make_replica,
    shard_policy,
    share_bounds,
    sync_replica,
)
from trainers.errors import TooManyBadStepsError
from trainers.evaluate import evaluate_policy, report_from_episodes, split_task_ids
from trainers.losses import kl_old_k3, truncated_is
from trainers.methods import Method, get_method
from trainers.metrics import MetricsLogger
from trainers.plots import plot_learning_curve
from trainers.runtime import (  # re-exported: the loop's toolbox used to live here
    PolicyOutput,
    TaskCursor,
    build_optimizer,
    build_policy,
    collect_rollouts,
    load_any_model,
    open_store,
    policy_logprobs,
    reference_view,
    renderer_factory,
    step_seed,
    train_task_ids,
)
from trainers.train_config import TrainConfig

__all__ = [
    "train",
    "train_step",
    "sample_step",
    "TrainResult",
    # the runtime builders, re-exported from trainers.runtime
    "TaskCursor",
    "load_any_model",
    "build_policy",
    "collect_rollouts",
    "policy_logprobs",
    "PolicyOutput",
    "step_seed",
    "open_store",
    "train_task_ids",
]


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    run_id: Any
    run_dir: Path
    final_dir: Path  # policy of the last step, loadable by agents.models.load_model
    metrics: list[dict[str, float]] = field(default_factory=list)  # one row per step

    @property
    def last(self) -> dict[str, float]:
        return self.metrics[-1] if self.metrics else {}


# --------------------------------------------------------------------------- one step


def sample_step(ctx: TrainContext, method: Method, step: int, tasks: list[str]) -> list[EpisodeGroup]:
    """This rank's share of the step's ``tasks`` (the same list on every rank), played by ``ctx.backend``."""
    lo, hi = share_bounds(len(tasks), ctx.dist.rank, ctx.dist.world_size)
    tasks = tasks[lo:hi]
    overrides = method.rollout_overrides(ctx, step, tasks)
    if overrides.record_privileged is None:  # record only the strengths the method reads
        overrides.record_privileged = method.privileged_strengths()
    overrides.task_index_offset = lo
    return method.collect(ctx, step, tasks, overrides)


def _sample_with(method: Method, ctx: TrainContext, step: int, tasks: list[str]) -> list[EpisodeGroup]:
    return sample_step(ctx, method, step, tasks)


def train_step(
    ctx: TrainContext, method: Method, optimizer: torch.optim.Optimizer, scheduler: Any,
    state: TrainerState, cursor: TaskCursor, rollouts: AsyncRollouts | None = None,
) -> tuple[dict[str, float], list[EpisodeGroup]]:
    """Run one optimizer step; return its metrics and episode groups.

    With ``rollouts`` (``async_steps > 0``) the step's groups were sampled ahead by an older
    policy (``trainers.async_rollouts``) and the new policy goes to the sampler as a snapshot."""
    cfg, step = ctx.cfg, state.step
    t0 = time.perf_counter()

    tasks = cursor.next(cfg.tasks_per_step)  # the same on every rank; each plays its share
    async_stats: dict[str, float] = {}
    if rollouts is None:
        groups = sample_step(ctx, method, step, tasks)
    else:
        rollout, wait_s = rollouts.take(step)
        if rollout.tasks != tasks:
            raise RuntimeError(f"step {step}: the sampler played {rollout.tasks}, the cursor says {tasks}")
        groups = rollout.groups
        async_stats = rollouts.step_metrics(rollout, wait_s, state.policy_version)
    t_rollout = time.perf_counter()

    method.score(ctx, groups)
    t_score = time.perf_counter()

    batch = method.make_batch(ctx, groups)
    local_tokens = batch.num_tokens
    if ctx.dist.enabled:  # losses are normalized by the step's global counts
        batch.num_tokens, batch.num_seqs = (int(n) for n in all_reduce_sum(
            [batch.num_tokens, batch.num_seqs], ctx.dist))
    batch.advantages_BT = method.advantages(ctx, batch)
    stats = _token_weighted(method.step_stats(batch), local_tokens, batch.num_tokens, ctx)
    sums: dict[str, float] = defaultdict(float)  # additive over micro-batches (and ranks)
    bad = batch.num_tokens == 0  # nothing to train on (every episode empty): skip the step
    mbs = batch.micro_batches(cfg.token_budget)
    for i in range(all_reduce_max(len(mbs), ctx.dist)):  # FSDP forwards are collectives:
        padding = i >= len(mbs)  # a rank with fewer micro-batches replays its first at weight 0
        mb = move_batch(mbs[i] if not padding else mbs[0] if mbs else
                        padding_batch(pad_token_id(ctx.tokenizer), batch.num_tokens, batch.num_seqs), ctx.device)
        if cfg.kl_coef:
            with torch.no_grad(), reference_view(ctx) as ref:
                mb.ref_logp_BT = policy_logprobs(ref, mb, cfg.temperature).logp_BT
        fwd = policy_logprobs(ctx.model, mb, cfg.temperature)
        sampler_logp_BT = mb.old_logp_BT
        if cfg.tis_cap:  # truncated IS over the sampler; the PPO reference becomes sg(π_θ)
            mb.advantages_BT = mb.advantages_BT * truncated_is(fwd.logp_BT, sampler_logp_BT, cfg.tis_cap)
            mb.old_logp_BT = fwd.logp_BT.detach()
        if not mbs:  # no rows here at all: the method's forwards at weight 0
            method.padding_loss(ctx, mb, fwd).backward()
            continue
        loss, mb_stats = method.loss(ctx, mb, fwd.logp_BT, fwd)
        if padding:
            (loss * 0.0).backward()
            del fwd, loss
            continue
        if not torch.isfinite(loss):
            bad = True
            if not ctx.dist.enabled:
                break
        loss.backward()
        for k, v in mb_stats.items():  # stats are additive over micro-batches (global norm)
            sums[k] += v
        sums["loss"] += loss.item()
        with torch.no_grad():
            m, n = mb.loss_mask_BT, max(batch.num_tokens, 1)
            sums["entropy"] += float((fwd.entropy_BT * m).sum()) / n
            if method.on_policy:  # KL(π_old‖π_θ): sampler/trainer mismatch and drift
                sums["kl_old"] += float((kl_old_k3(fwd.logp_BT, sampler_logp_BT) * m).sum()) / n
        del fwd, loss
    t_loss = time.perf_counter()

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    lr = scheduler.get_last_lr()[0]  # the learning rate this step uses
    grad_norm = float("nan")
    if ctx.dist.enabled:
        sums = dict(zip(*reduce_sums(sums, ctx.dist)))
        bad = bool(all_reduce_max(int(bad), ctx.dist))
    stats.update(sums)
    if not bad:
        grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf")))
        bad = not math.isfinite(grad_norm)
    if bad:
        optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
    else:
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.policy_version += 1
        ctx.policy_version = state.policy_version
        if rollouts is None:
            push_weights(ctx, state.policy_version)
            stats.update(getattr(ctx.backend, "sync_stats", dict)())  # server backend: sync/pause time
        method.after_step(ctx, state.policy_version - 1, groups)  # optimizer steps, not loop steps
    if rollouts is not None:  # P_{step+1} (unchanged after a skipped step) for step + 1 + k
        rollouts.publish(step + 1, state.policy_version)
        stats.update(async_stats)
    t_end = time.perf_counter()

    groups = gather_groups(groups, ctx.dist)  # rank 0: every rank's groups, in task order
    episodes = [ep for g in groups for ep in g.episodes]
    stats.update(episode_stats(episodes))
    stats.update({
        "skipped": float(bad), "bad_steps": float(state.bad_steps), "grad_norm": grad_norm,
        "lr": lr, "trained_tokens": float(batch.num_tokens),
        "tokens_per_s": batch.num_tokens / max(t_end - t0, 1e-9),
        "time_rollout_s": t_rollout - t0, "time_score_s": t_score - t_rollout,
        "time_loss_s": t_loss - t_score, "time_optim_s": t_end - t_loss, "time_step_s": t_end - t0,
    })
    return stats, groups


def push_weights(ctx: TrainContext, version: int) -> None:
    """The sampler uses the new weights (at world size > 1 the replica is refreshed first)."""
    if ctx.replica is not None:
        sync_replica(ctx.model, ctx.replica)
    ctx.backend.update_weights(ctx.inference_model, version)


def gather_groups(groups: list[EpisodeGroup], info: DistInfo) -> list[EpisodeGroup]:
    """Rank 0 gets every rank's groups in rank (= task) order; other ranks keep their own.
    Renderers stay home (each rank's teacher contexts were built before the gather)."""
    if not info.enabled:
        return groups
    shares = gather_to_main([dataclasses.replace(g, renderer=None) for g in groups], info)
    return [g for share in shares for g in share] if shares is not None else groups


def _token_weighted(stats: dict[str, float], local_tokens: int, global_tokens: int,
                    ctx: TrainContext) -> dict[str, float]:
    """A method's step stats (token means over its batch) averaged over ranks by token count."""
    if not ctx.dist.enabled:
        return stats
    keys = sorted(stats)
    w = local_tokens / max(global_tokens, 1)
    return dict(zip(keys, all_reduce_sum([stats[k] * w for k in keys], ctx.dist)))


def reduce_sums(sums: dict[str, float], info: DistInfo) -> tuple[list[str], list[float]]:
    """Σ over ranks of additive stats (keys: the union over ranks, missing ones count 0)."""
    keys = sorted(set().union(*all_gather_keys(set(sums), info)))
    return keys, all_reduce_sum([sums.get(k, 0.0) for k in keys], info)


def episode_stats(episodes: list[Any]) -> dict[str, float]:
    """Reward, success rate, turns and sampled tokens of a step's episodes."""
    if not episodes:
        return {"reward": 0.0, "success_rate": 0.0, "turns": 0.0, "sampled_tokens": 0.0}
    return {
        "reward": float(np.mean([e.reward for e in episodes])),
        "success_rate": float(np.mean([float(e.won) for e in episodes])),
        "turns": float(np.mean([e.num_turns for e in episodes])),
        "sampled_tokens": float(sum(sum(t.loss_mask) for e in episodes for t in e.turns)),
        "episodes": float(len(episodes)),
        "infra_failures": float(sum(e.end_reason == EndReason.INFRA_ERROR for e in episodes)),
    }


# --------------------------------------------------------------------------- the run


def train(cfg: TrainConfig, *, policy: tuple[Any, Any] | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.env``; resume from the last checkpoint with ``cfg.resume``.

    ``policy`` optionally passes an already-loaded ``(model, tokenizer)`` (tests, notebooks); it
    is trained in place (LoRA layers are injected into it when ``finetune == "lora"``). Under
    ``torchrun``/``accelerate launch`` every rank runs this; rank 0 alone writes the store, the
    CSV and the trackers (``trainers.distributed``).
    """
    method = get_method(cfg.method)(cfg)
    if type(cfg) is not method.config_cls and not isinstance(cfg, method.config_cls):
        raise ConfigError(f"method {cfg.method!r} needs a {method.config_cls.__name__}, "
                          f"got {type(cfg).__name__}")
    if cfg.resume and not cfg.run_name:
        raise ConfigError("resume: needs run_name=<the run to continue>")
    check_async(cfg, method)
    envs.make(cfg.env, **cfg.env_kwargs).close()  # unknown env id: UnknownEnvError, first
    dist_info = init_distributed(cfg.dist_timeout_s)
    if dist_info.enabled:
        check_world_size(cfg, dist_info.world_size)
        fail_on_sigterm()
    main = dist_info.is_main
    run_name = cfg.run_name or f"{cfg.method}-{cfg.env.split('/')[-1]}-{datetime.now():%Y%m%d-%H%M%S}"
    cfg.run_name = run_name = broadcast_from_main(run_name, dist_info)
    run_dir = Path(cfg.output_dir) / run_name
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")

    set_seed(cfg.seed)  # LoRA initialisation draws from the global RNGs (the same on every rank)
    model, tokenizer = build_policy(cfg, policy)
    device = _device(dist_info)
    model.to(device)
    replica = reference = None
    if cfg.kl_coef and cfg.finetune == "full":
        reference = copy.deepcopy(model).requires_grad_(False).eval()
    if dist_info.enabled:  # the replica samples and scores; the sharded policy trains
        replica = make_replica(model)
        shard_policy(model, dist_info, cfg.fsdp_mixed_precision)
    sampler = replica if replica is not None else model
    wants_vllm = cfg.backend in ("vllm", "server") or (cfg.backend == "auto" and torch.cuda.is_available())
    model_dir = resolve_model_dir(cfg.model) if wants_vllm and not cfg.model.startswith("tiny") else None
    backend = make_backend(cfg.backend, model=sampler, tokenizer=tokenizer,
                           **({"model_dir": model_dir} if model_dir else {}), **server_options(cfg))
    store = open_store(cfg) if main else None
    run_id = _open_run(store, cfg) if main else None
    ctx = TrainContext(cfg=cfg, model=model, tokenizer=tokenizer, backend=backend,
                       renderer_factory=renderer_factory(tokenizer), store=store, run_id=run_id,
                       device=device, env_id=cfg.env, dist=dist_info, replica=replica,
                       reference=reference)
    logger: MetricsLogger | None = None
    try:  # a setup failure (e.g. a teacher with another tokenizer) marks the run failed
        method.setup(ctx)
        optimizer, scheduler = build_optimizer(cfg, model)
        cursor = TaskCursor(train_task_ids(cfg.env, cfg.train_split, cfg.num_train_tasks, cfg.env_kwargs),
                            cfg.seed)
        state, saved_policies = TrainerState(), {}
        if main:
            logger = MetricsLogger(run_dir / "metrics.csv", store=store, run_id=run_id,
                                   tensorboard=cfg.log_tensorboard, wandb=cfg.log_wandb,
                                   report_to=cfg.report_to, project=cfg.tracker_project,
                                   run_name=run_name, config=config_to_dict(cfg))

        if cfg.resume:
            state, saved_policies = _resume(ctx, method, optimizer, scheduler, run_dir, cursor, logger)
        if cfg.backend == "server" and not ctx.backend.syncs:
            push_weights(ctx, state.policy_version)  # servers given by URL may hold other weights
        rollouts = None
        if cfg.async_steps:  # the sampler runs ahead on its own copy of the policy
            rollouts = AsyncRollouts(ctx, functools.partial(_sample_with, method), cursor, cfg.async_steps)
            rollouts.start(state.step, cfg.steps, saved_policies)
    except BaseException:
        if store is not None:
            store.set_status(run_id, "failed")
        close_distributed(dist_info)
        raise

    status = "failed"
    bar = _progress(cfg, state.step) if main else None
    try:
        while state.step < cfg.steps:
            metrics, groups = train_step(ctx, method, optimizer, scheduler, state, cursor, rollouts)
            step = state.step
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                metrics.update(_periodic_eval(ctx, rollouts))
            if store is not None and logger is not None:  # rank 0: the one writer
                store.add_episodes(run_id, step, [ep for g in groups for ep in g.episodes])
                logger.log(step, metrics, policy_version=state.policy_version)
                if rollouts is not None:
                    store.flush()  # the step's episodes are in before its ledger rows say trained
                    rollouts.trained(step)
            state.step += 1
            state.cursor = {"position": cursor.position}
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
                _checkpoint(ctx, method, optimizer, scheduler, state, run_dir, rollouts)
            _update_bar(bar, metrics)
            if metrics["skipped"] and state.bad_steps >= max(cfg.max_bad_steps, 1):
                raise TooManyBadStepsError(
                    f"{state.bad_steps} steps had a NaN/inf loss or gradient (max_bad_steps="
                    f"{cfg.max_bad_steps}); stopping before the weights are corrupted. Lower lr, "
                    "check the teacher's log-probs, or use dtype=float32"
                )
        ckpt = _checkpoint(ctx, method, optimizer, scheduler, state, run_dir, rollouts)
        final_dir = run_dir / "final"
        if main:
            shutil.rmtree(final_dir, ignore_errors=True)
            shutil.copytree(ckpt / "model", final_dir)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if rollouts is not None:
            rollouts.close()
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        if store is not None:
            store.flush()
            store.set_status(run_id, status)
        if cfg.backend == "server":
            backend.close()  # stops the servers sampler_urls=auto started
        barrier_or_fail(dist_info, status)
    rows = logger.rows if logger is not None else []
    if main:
        _finish(cfg, run_dir, rows)
    return TrainResult(run_id=run_id, run_dir=run_dir, final_dir=final_dir, metrics=rows)


def barrier_or_fail(info: DistInfo, status: str) -> None:
    """Finished ranks wait for each other before the group is torn down; a failing rank does
    not wait (the others fail on their next collective, within ``dist_timeout_s``)."""
    if status == "finished":
        barrier(info)
    close_distributed(info)


def _device(info: DistInfo) -> torch.device:
    if info.enabled:  # accelerate's PartialState would open a second process group
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        from accelerate import PartialState

        return PartialState().device
    except ImportError:  # accelerate is a dependency; keep the loop usable without it
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _open_run(store: Any, cfg: TrainConfig) -> Any:
    """Create the run in the store, or reopen it (status back to running) when resuming.
    The store the run actually writes to (password hidden) goes with the run's config."""
    return store.create_run(cfg.run_name, cfg.method, {**config_to_dict(cfg), "store_url": store.shown_url},
                            seed=cfg.seed, resume=cfg.resume)


def _checkpoint(ctx: TrainContext, method: Method, optimizer: Any, scheduler: Any,
                state: TrainerState, run_dir: Path, rollouts: AsyncRollouts | None = None) -> Path:
    method_state = method.state_dict()
    if rollouts is not None:  # the older policies the in-flight steps are re-sampled from
        method_state = {**method_state, _ASYNC_POLICIES: rollouts.checkpoint_state(state.step)}
    path = save_checkpoint(run_dir, model=ctx.model, tokenizer=ctx.tokenizer, base_model=ctx.cfg.model,
                           optimizer=optimizer, scheduler=scheduler, state=state,
                           method_state=method_state, keep=ctx.cfg.keep_checkpoints,
                           dist=ctx.dist, replica=ctx.replica)
    if ctx.store is None:  # not the writer rank
        return path
    ctx.store.flush()
    # the store's checkpoint step is the last step it includes (state.step counts completed steps)
    ctx.store.add_checkpoint(ctx.run_id, state.step - 1, {"dir": str(path)}, rng_bytes(),
                             data_cursor=state.cursor, policy_version=state.policy_version)
    return path


def _resume(ctx: TrainContext, method: Method, optimizer: Any, scheduler: Any, run_dir: Path,
            cursor: TaskCursor, logger: MetricsLogger | None) -> tuple[TrainerState, dict[int, Any]]:
    """Load the newest checkpoint and drop everything the store/CSV logged after it (its ledger
    rows go back to pending). Returns the loop state and, for an async run, the older policies."""
    path = latest_checkpoint(run_dir)
    state, saved = TrainerState(), {}
    if path is not None:
        state, method_state = load_checkpoint(path, model=ctx.model, optimizer=optimizer,
                                              scheduler=scheduler, replica=ctx.replica)
        saved = AsyncRollouts.from_checkpoint_state(method_state.pop(_ASYNC_POLICIES, {}))
        method.load_state_dict(method_state)
        cursor.position = int(state.cursor.get("position", 0))
        ctx.policy_version = state.policy_version
        ctx.backend.update_weights(ctx.inference_model, state.policy_version)
    # steps >= state.step were not checkpointed: they will be re-run
    if ctx.store is not None and logger is not None:
        ctx.store.delete_episodes_after(ctx.run_id, state.step - 1)
        logger.truncate(state.step - 1)
    return state, saved


_ASYNC_POLICIES = "_async_sampler_policies"


def check_async(cfg: TrainConfig, method: Method) -> None:
    """``async_steps``/``tis_cap`` against the method (a user error, before any model loads)."""
    if cfg.async_steps and not method.on_policy:
        raise ConfigError(f"async_steps={cfg.async_steps}: {cfg.method} trains on demonstrations, "
                          "there are no rollouts to sample ahead")
    if cfg.tis_cap and type(method).loss is not Method.loss:
        raise ConfigError(f"tis_cap reweights the clipped surrogate's advantages; {cfg.method} has "
                          "its own loss (use it with grpo)")


def _periodic_eval(ctx: TrainContext, rollouts: AsyncRollouts | None = None) -> dict[str, float]:
    """Greedy (or sampled) evaluation of the current policy; at world size > 1 each rank plays its
    share of the tasks with the same per-task streams and rank 0 reports the gathered episodes.
    In an async run the sampler holds an older policy: the current one plays on in-process HF."""
    cfg = ctx.cfg
    backend = ctx.backend if rollouts is None else make_backend("hf", model=ctx.inference_model,
                                                                  tokenizer=ctx.tokenizer)
    tasks = split_task_ids(cfg.env, cfg.eval_split, cfg.eval_episodes, cfg.env_kwargs)
    lo, hi = share_bounds(len(tasks), ctx.dist.rank, ctx.dist.world_size)
    report = evaluate_policy(backend, ctx.renderer_factory, cfg.env, split=cfg.eval_split,
                             greedy=cfg.eval_greedy, seed=cfg.seed, max_turns=cfg.max_turns,
                             max_new_tokens=cfg.max_new_tokens, max_context_tokens=cfg.max_context_tokens,
                             env_kwargs=cfg.env_kwargs, temperature=cfg.temperature,
                             task_ids=tasks[lo:hi], task_index_offset=lo)
    if ctx.dist.enabled:
        shares = gather_to_main(report.episodes, ctx.dist)
        if shares is None:
            return {}
        report = report_from_episodes(cfg.eval_split, [ep for share in shares for ep in share])
    return {f"eval/{k}": v for k, v in report.flat().items()}


def _progress(cfg: TrainConfig, start: int) -> Any:
    if not cfg.progress:
        return None
    return tqdm(total=cfg.steps, initial=start, desc=cfg.method, unit="step", dynamic_ncols=True)


def _update_bar(bar: Any, metrics: dict[str, float]) -> None:
    if bar is None:
        return
    kl = metrics.get("kl_teacher", metrics.get("kl_ref", metrics.get("kl_old", 0.0)))
    bar.set_postfix(reward=f"{metrics['reward']:.3f}", success=f"{metrics['success_rate']:.2f}",
                    kl=f"{kl:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
    bar.update(1)


def _finish(cfg: TrainConfig, run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Learning-curve PNG and a one-paragraph summary on stdout."""
    try:
        plot_learning_curve(rows, run_dir / "learning_curve.png", title=cfg.run_name)
    except ImportError:  # matplotlib missing: the CSV is still there
        pass
    if cfg.progress and rows:
        first, last = rows[0], rows[-1]
        print(f"[{cfg.run_name}] {len(rows)} steps: reward {first.get('reward', 0):.3f} -> "
              f"{last.get('reward', 0):.3f}, success {first.get('success_rate', 0):.2f} -> "
              f"{last.get('success_rate', 0):.2f}; outputs in {run_dir}")
        evals = [r for r in rows if "eval/success_rate" in r]
        if evals:
            e = evals[-1]
            print(f"[{cfg.run_name}] evaluation after step {int(e['step']) + 1} on {cfg.eval_split}"
                  f"{' (greedy)' if cfg.eval_greedy else ''}: success {e['eval/success_rate']:.3f} "
                  f"[{e['eval/success_ci_low']:.3f}, {e['eval/success_ci_high']:.3f}] "
                  f"(n={int(e['eval/episodes'])})")
