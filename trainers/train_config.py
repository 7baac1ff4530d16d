"""``TrainConfig``: the flat dataclass of settings every training method shares.

One flat dataclass per entry point (no nested trees). A method adds its own fields by subclassing
(``OPDConfig(TrainConfig)``, ``SODConfig(OPDConfig)``). Values come from defaults, a YAML file
(``--config``) and ``key=value`` overrides, parsed by ``trainers.config.parse_config``; allowed
values live in the field metadata (``choices``) and cross-field checks in ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config import ConfigError, config_field
from trainers.metrics import parse_trackers

__all__ = ["TrainConfig", "DEFAULT_ENV", "DEFAULT_MODEL"]

DEFAULT_ENV = "DistillGym/Household-v0"
DEFAULT_MODEL = "smollm2-135m-instruct"


_f = config_field  # short local name: every field below uses it


@dataclass
class TrainConfig:
    """Settings common to all methods. Loss aggregation modes:

    - ``token-mean``: ``Σ_{b,t} m·l / N_tok`` with ``N_tok`` the trained tokens of the whole step;
    - ``seq-mean-token-mean``: ``(1/N_seq) Σ_b (Σ_t m·l / Σ_t m)``;
    - ``seq-mean-token-sum``: ``(1/N_seq) Σ_b Σ_t m·l`` (Dr. GRPO style, no length bias).
    """

    # run
    run_name: str = _f("", "run name (default: <method>-<env>-<time>)")
    method: str = _f("grpo", "training method (set by the CLI sub-command)")
    seed: int = _f(0, "seed of task order, sampling and initialisation")
    steps: int = _f(20, "optimizer steps")
    output_dir: str = _f("runs", "root folder; the run writes into <output_dir>/<run_name>")
    store: str = _f("", "trajectory store URL or path (default: sqlite:///<output_dir>/distillgym.db)")
    resume: bool = _f(False, "continue from the run's last checkpoint")
    progress: bool = _f(True, "show a progress bar")
    # env and data
    env: str = _f(DEFAULT_ENV, "env id (see envs.list_envs())")
    env_kwargs: dict = _f({}, "keyword arguments for envs.make")
    train_split: str = _f("train", "split the training tasks come from")
    num_train_tasks: int = _f(512, "size of the training task pool")
    tasks_per_step: int = _f(4, "tasks per optimizer step")
    group_size: int = _f(4, "episodes per task (the group of group-relative advantages)")
    max_turns: int = _f(8, "assistant turns per episode")
    max_new_tokens: int = _f(48, "tokens per assistant turn")
    max_context_tokens: int = _f(2048, "context window of one episode")
    temperature: float = _f(1.0, "sampling temperature (log-probs are taken at it)")
    top_p: float = _f(1.0, "nucleus sampling (keep 1.0 for distillation)")
    backend: str = _f("auto", "generation backend", ("auto", "hf", "vllm", "server"))
    # serving (backend=server; see agents.server)
    sampler_urls: str = _f("", "vLLM server URLs, comma-separated, or 'auto' to start them (backend=server)")
    sampler_replicas: int = _f(1, "servers started by sampler_urls=auto")
    weight_transport: str = _f("auto", "how new weights reach the sampler",
                               ("auto", "inprocess", "filesystem", "native"))
    request_timeout_s: float = _f(120.0, "timeout of one sampler/teacher request (seconds)")
    teacher_url: str = _f("", "a vLLM server that scores as the teacher (instead of an in-process teacher)")
    # asynchronous rollouts (0 = synchronous)
    async_steps: int = _f(0, "rollouts may be sampled by a policy up to this many versions old (0 = sync)")
    tis_cap: float = _f(0.0, "truncated importance sampling cap on pi_old/pi_sampler (0 = off)")
    # distributed (torchrun / accelerate launch; world size 1 = one process)
    fsdp_mixed_precision: str = _f("", "FSDP2 parameter dtype for compute ('' = the model's dtype)",
                                   ("", "bfloat16", "float16"))
    dist_timeout_s: float = _f(600.0, "a collective waiting longer than this fails the job (seconds)")
    # model
    model: str = _f(DEFAULT_MODEL, "student model: bundled name or HF-format directory")
    teacher: str = _f("", "teacher model (distillation methods): name or directory")
    finetune: str = _f("lora", "parameters to train", ("lora", "full"))
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_targets: str = _f("all-linear", "LoRA target modules (comma list or all-linear)")
    dtype: str = _f("float32", "training dtype", ("float32", "bfloat16"))
    # optimisation
    lr: float = _f(1e-5, "peak learning rate")
    schedule: str = _f(
        "constant_with_warmup", "learning-rate schedule",
        ("constant", "constant_with_warmup", "linear", "cosine"),
    )
    warmup_steps: int = _f(0, "warm-up steps of the schedule")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    grad_clip: float = _f(1.0, "max gradient norm (0 = off)")
    token_budget: int = _f(4096, "max padded tokens (rows x length) in one micro-batch")
    max_bad_steps: int = _f(3, "stop after this many NaN/inf steps (each is skipped)")
    # loss
    clip_low: float = _f(0.2, "PPO clip: ratio >= 1 - clip_low")
    clip_high: float = _f(0.2, "PPO clip: ratio <= 1 + clip_high (DAPO: 0.28)")
    dual_clip: float = _f(0.0, "dual-clip constant c > 1 for negative advantages (0 = off)")
    loss_agg: str = _f(
        "token-mean", "loss aggregation", ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
    )
    adv_std_norm: bool = _f(True, "divide group-relative advantages by the group std")
    kl_coef: float = _f(0.0, "k3 KL-to-reference penalty (reference = initial policy)")
    # checkpoints and evaluation
    checkpoint_every: int = _f(10, "save a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (the latest ones)")
    eval_every: int = _f(0, "evaluate every N steps (0 = off)")
    eval_split: str = _f("valid_seen", "split for evaluation", ("train", "valid_seen", "valid_unseen"))
    eval_episodes: int = _f(8, "episodes per evaluation")
    eval_greedy: bool = _f(True, "greedy decoding in evaluation")
    log_tensorboard: bool = _f(False, "also log to TensorBoard (same as report_to=tensorboard)")
    log_wandb: bool = _f(False, "also log to Weights & Biases (same as report_to=wandb)")
    report_to: str = _f("", "experiment trackers, comma-separated: tensorboard, wandb, trackio, "
                            "mlflow, comet_ml, aim, clearml, dvclive, swanlab ('' = none)")
    tracker_project: str = _f("distillgym", "project name the trackers log under")

    def __post_init__(self) -> None:
        positive = ("steps", "tasks_per_step", "group_size", "max_turns", "max_new_tokens",
                    "max_context_tokens", "token_budget", "num_train_tasks", "lora_r")
        for name in positive:
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0 (log-probs are taken at it)")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ConfigError(f"clip_low={self.clip_low} must be in [0, 1) and clip_high >= 0")
        if self.dual_clip and self.dual_clip <= 1:
            raise ConfigError(f"dual_clip={self.dual_clip} must be > 1 (or 0 to disable)")
        if self.max_new_tokens >= self.max_context_tokens:
            raise ConfigError(
                f"max_new_tokens={self.max_new_tokens} must be smaller than "
                f"max_context_tokens={self.max_context_tokens}"
            )
        if self.token_budget < self.max_context_tokens:
            raise ConfigError(
                f"token_budget={self.token_budget} cannot hold one episode of up to "
                f"max_context_tokens={self.max_context_tokens} tokens: raise token_budget or "
                "lower max_context_tokens"
            )
        if self.max_bad_steps < 0 or self.checkpoint_every < 0 or self.eval_every < 0:
            raise ConfigError("max_bad_steps, checkpoint_every and eval_every must be >= 0")
        if self.sampler_replicas < 1 or self.request_timeout_s <= 0 or self.dist_timeout_s <= 0:
            raise ConfigError("sampler_replicas, request_timeout_s and dist_timeout_s must be positive")
        if self.async_steps < 0 or self.tis_cap < 0:
            raise ConfigError(f"async_steps={self.async_steps} and tis_cap={self.tis_cap} must be >= 0")
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError(f"env_kwargs must be a mapping, got {self.env_kwargs!r}")
        if self.report_to or self.log_tensorboard or self.log_wandb:  # a missing package: now
            parse_trackers(self.report_to, tensorboard=self.log_tensorboard, wandb=self.log_wandb)
