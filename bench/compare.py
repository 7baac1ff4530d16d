"""Method comparison: every trainer on the same tasks, seeds, generated-token budget and evaluation.

    python bench/compare.py --preset reduced                  # 1 seed, small budget (< 30 min, 2 cores)
    python bench/compare.py --preset full                     # every method x 3 seeds on Sum-v0 (GPU, ~10 min)
    python bench/compare.py --preset decide                   # GRPO, OPD, OPSD x 3 seeds on Sum-v0 (CPU, < 90 min)
    python bench/compare.py --preset long                     # household + calculator, 20k tokens (days on CPU)
    python bench/compare.py --preset reduced methods=grpo,opd envs=DistillGym/Calculator-v0
    python bench/compare.py --help                            # every field (also: no arguments)

``--preset NAME`` reads ``configs/compare/NAME.yaml`` (the same as ``--config`` on that file);
``key=value`` arguments override it. What one comparison does, per env:

1. **Warm start (once per env, shared by every method and seed).** One SFT run on the env
   expert's demonstrations (``python -m trainers sft``). Its checkpoint after ``sft_student_steps``
   is the *student start* of every method; its final policy after ``sft_teacher_steps`` (longer) is
   the *teacher* of OPD, SOD and TCOD. Why two points of one run: a teacher equal to the student
   start gives OPD a zero signal at step 0 (``log π_T − log π_old = 0``), while an SFT-trained
   teacher is exactly what the papers distil from (TCOD and SOD use a stronger fine-tuned model of
   the same family); taking both from one run costs one SFT run instead of two.
2. **Every method × seed** trains from the student start through ``trainers.loop.train`` until it
   has *generated* ``gen_token_budget`` tokens (sampled rollout tokens: TCOD-F2B's truncated
   episodes and B2F's replayed expert prefixes cost nothing, so they get more steps for the same
   budget). Every ``gen_token_budget / curve_points`` tokens the live policy is evaluated greedily on
   ``valid_seen`` (the learning curve); at the end on ``valid_seen`` and ``valid_unseen``.
3. Results go to ``<output_dir>/results.json``, ``report.md``, ``curves.png`` and ``final.png``
   (``bench/compare_report.py``), and every run (SFT, training, final evaluations) into one SQLite
   store, ``<output_dir>/compare.db``. A finished run leaves ``<output_dir>/runs/<run>.json``; a
   re-started comparison skips those, so an interrupted full preset resumes where it stopped.

The budget is enforced without touching the trainers: the method class is wrapped by a subclass
whose ``collect`` counts the generated tokens and lowers ``cfg.steps`` to end the loop after the
step that crosses the budget (``budgeted_method``). A run that raises is recorded as failed (with
its error) and the comparison goes on; the report counts it.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import shlex
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare_report import SPLITS, RunResult, WarmStart, write_report  # noqa: E402
from trainers.config import ConfigError, config_help, config_to_dict, from_dict, parse_config  # noqa: E402
from trainers.config import config_field as _f  # noqa: E402

__all__ = [
    "CompareConfig",
    "TokenMeter",
    "budgeted_method",
    "generated_tokens",
    "warm_start",
    "run_method",
    "run_comparison",
    "main",
]

ALL_METHODS = "grpo,opd,sod,opsd,pi-distill,tt-opd,skill-sd,tcod-f2b,tcod-b2f"
PRESET_DIR = ROOT / "configs" / "compare"
_NOT_PER_ENV = {"methods", "envs", "seeds", "output_dir", "store", "env_kwargs", "env_settings",
                "progress", "reuse"}
KL_KEYS = ("kl_teacher", "kl_teacher_student", "kl_ref", "kl_old")  # first one a method logs


@dataclass
class CompareConfig:
    """Settings of one comparison (one flat dataclass; presets are YAML files of these fields)."""

    methods: str = _f(ALL_METHODS, "comma list of methods (python -m trainers --help)")
    envs: str = _f("DistillGym/Household-Easy-v0,DistillGym/Calculator-v0", "comma list of env ids")
    seeds: str = _f("0", "comma list of seeds (each method runs once per seed)")
    model: str = _f("smollm2-135m-instruct", "base model (bundled name, HF directory or tiny)")
    output_dir: str = _f("runs/compare", "where results, plots, run folders and the store go")
    store: str = _f("", "store URL (default sqlite:///<output_dir>/compare.db)")
    # the fair budget and the evaluation
    gen_token_budget: int = _f(2000, "generated rollout tokens per run (stop after the step crossing it)")
    max_steps: int = _f(200, "safety cap on optimizer steps per run")
    curve_points: int = _f(4, "learning-curve evaluations per run (at k/curve_points of the budget)")
    eval_episodes: int = _f(16, "greedy episodes per split (valid_seen, valid_unseen)")
    eval_teacher: bool = _f(True, "also evaluate the SFT teacher (reported beside the methods)")
    # warm start (SFT on expert demonstrations)
    sft_student_steps: int = _f(4, "SFT steps of the student start (0 = the base model itself)")
    sft_teacher_steps: int = _f(12, "SFT steps of the teacher (OPD/SOD/TCOD); >= sft_student_steps")
    sft_tasks_per_step: int = _f(8, "expert demonstrations per SFT step")
    sft_lr: float = _f(3e-4, "SFT learning rate")
    sft_finetune: str = _f("lora", "SFT parameters", ("lora", "full"))
    # shared training settings (identical for every method)
    train_tasks: int = _f(512, "size of the training-task pool every method draws from; Skill-SD's "
                          "skill bank is per task, so it is used only when tasks recur within the budget")
    tasks_per_step: int = _f(2, "tasks per optimizer step")
    group_size: int = _f(4, "episodes per task")
    max_turns: int = _f(6, "assistant turns per episode (training and evaluation)")
    max_new_tokens: int = _f(32, "tokens per assistant turn")
    max_context_tokens: int = _f(1024, "context window of one episode")
    lr: float = _f(5e-5, "learning rate of every method")
    finetune: str = _f("lora", "parameters trained by the methods", ("lora", "full"))
    lora_r: int = _f(16, "LoRA rank")
    lora_targets: str = _f("all-linear", "LoRA target modules")
    temperature: float = _f(1.0, "sampling temperature")
    backend: str = _f("hf", "generation backend", ("auto", "hf", "vllm"))
    method_args: dict = _f({}, "per-method overrides, e.g. {tcod-f2b: {curriculum_k: 1}}")
    env_kwargs: dict = _f({}, "per-env kwargs for envs.make, e.g. {DistillGym/Household-Easy-v0: {expert: explorer}}")
    env_settings: dict = _f({}, "per-env overrides of the settings above, e.g. "
                            "{DistillGym/Calculator-v0: {max_turns: 4, max_new_tokens: 48}}")
    progress: bool = _f(True, "progress bars")
    reuse: bool = _f(True, "skip warm starts and runs whose results already exist in output_dir")

    def __post_init__(self) -> None:
        for name in ("gen_token_budget", "max_steps", "curve_points", "eval_episodes",
                     "sft_tasks_per_step", "train_tasks", "tasks_per_step", "group_size", "max_turns"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.sft_student_steps <= self.sft_teacher_steps or self.sft_teacher_steps < 1:
            raise ConfigError(f"need 0 <= sft_student_steps ({self.sft_student_steps}) <= "
                              f"sft_teacher_steps ({self.sft_teacher_steps}) and sft_teacher_steps >= 1")
        if not self.method_list or not self.env_list or not self.seed_list:
            raise ConfigError("methods, envs and seeds must each name at least one value")
        self._check_methods()
        for env, overrides in self.env_settings.items():
            bad = set(overrides) - (set(self.__dataclass_fields__) - _NOT_PER_ENV)
            if bad:
                raise ConfigError(f"env_settings[{env!r}]: {sorted(bad)} cannot be set per env")
            self.for_env(env)  # type-checks the overrides now, not after hours of runs

    def _check_methods(self) -> None:
        """Every method to run and every ``method_args`` key must be registered (a typo fails now,
        not hours later); ``method_args`` of registered methods that are not run are ignored, so a
        preset's subset (``methods=grpo,opd``) runs as it is."""
        from trainers.methods import METHODS

        for label, names in (("methods", self.method_list), ("method_args", list(self.method_args))):
            unknown = sorted(set(names) - set(METHODS))
            if unknown:
                raise ConfigError(f"{label} names unknown methods {unknown}; known: {', '.join(sorted(METHODS))}")

    def for_env(self, env: str) -> CompareConfig:
        """This config with ``env_settings[env]`` applied (the settings every run on ``env`` uses)."""
        overrides = self.env_settings.get(env, {})
        if not overrides:
            return self
        return from_dict(CompareConfig, {**config_to_dict(self), **overrides, "env_settings": {}})

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def env_list(self) -> list[str]:
        return [e.strip() for e in self.envs.split(",") if e.strip()]

    @property
    def seed_list(self) -> list[int]:
        try:
            return [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"seeds={self.seeds!r} must be a comma list of integers") from None

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{Path(self.output_dir).resolve() / 'compare.db'}"


# --------------------------------------------------------------------------- the token budget


def generated_tokens(groups: list[Any]) -> int:
    """Tokens the sampler generated for these episode groups: ``Σ_turns Σ loss_mask`` (sampled
    assistant tokens; renderer-appended end-of-turn tokens and replayed expert prefixes excluded)."""
    return sum(sum(t.loss_mask) for g in groups for e in g.episodes for t in e.turns)


@dataclass
class TokenMeter:
    """Generated tokens of one run, and when the next learning-curve evaluation is due."""

    budget: int
    curve_points: int
    generated: int = 0
    per_step: list[int] = field(default_factory=list)
    evals_done: int = 0  # curve evaluations taken (k-th one at k·budget/curve_points tokens)

    @property
    def exhausted(self) -> bool:
        return self.generated >= self.budget

    def eval_due(self) -> bool:
        """True when the tokens passed the next intermediate curve point (the last point is the
        final evaluation, taken after training)."""
        nxt = self.evals_done + 1
        return nxt < self.curve_points and self.generated >= nxt * self.budget / self.curve_points

    def add(self, n: int) -> None:
        self.generated += n
        self.per_step.append(n)


def budgeted_method(method_cls: type, meter: TokenMeter, on_eval: Any) -> type:
    """A subclass of ``method_cls`` that stops training once ``meter.budget`` tokens were generated.

    ``collect`` first runs ``on_eval(ctx)`` for every curve point the previous steps crossed (the
    policy evaluated is the one after those steps), then the method's own ``collect``; it counts
    the new tokens and, when the budget is reached, sets ``ctx.cfg.steps = step + 1`` so the loop
    finishes (and checkpoints) after this step.
    """

    class Budgeted(method_cls):  # type: ignore[misc, valid-type]
        def collect(self, ctx: Any, step: int, tasks: list[str], overrides: Any) -> list[Any]:
            while meter.eval_due():
                meter.evals_done += 1
                on_eval(ctx)
            groups = super().collect(ctx, step, tasks, overrides)
            meter.add(generated_tokens(groups))
            if meter.exhausted:
                ctx.cfg.steps = step + 1
            return groups

    Budgeted.__name__ = Budgeted.__qualname__ = f"Budgeted{method_cls.__name__}"
    return Budgeted


@contextlib.contextmanager
def registered(name: str, cls: type) -> Iterator[None]:
    """Temporarily make ``get_method(name)`` return ``cls`` (the loop looks methods up by name).

    Workaround: ``trainers.loop.train`` has no hook to stop at a token budget or to build the
    method object itself, so the registry entry is swapped for the run and restored afterwards.
    """
    from trainers.methods import METHODS

    old = METHODS[name]
    METHODS[name] = cls
    try:
        yield
    finally:
        METHODS[name] = old


# --------------------------------------------------------------------------- evaluation


def _slug(env: str) -> str:
    return env.split("/")[-1].lower()


def evaluate(backend: Any, renderer_factory: Any, cfg: CompareConfig, env: str, split: str) -> Any:
    """Greedy ``EvalReport`` of ``backend``'s policy on the first ``eval_episodes`` tasks of ``split``."""
    from trainers.evaluate import evaluate_policy

    return evaluate_policy(backend, renderer_factory, env, split=split, episodes=cfg.eval_episodes,
                           greedy=True, seed=0, max_turns=cfg.max_turns,
                           max_new_tokens=cfg.max_new_tokens, max_context_tokens=cfg.max_context_tokens,
                           env_kwargs=dict(cfg.env_kwargs.get(env, {})))


def evaluate_model(model: Any, tokenizer: Any, cfg: CompareConfig, env: str, store: Any,
                   run_name: str) -> dict[str, float]:
    """Greedy success of ``model`` on both splits; each split is recorded as an ``eval`` run."""
    from agents.backends import HFBackend
    from trainers.runtime import renderer_factory

    factory = renderer_factory(tokenizer)
    backend = HFBackend(model, tokenizer)
    out = {}
    for split in SPLITS:
        report = evaluate(backend, factory, cfg, env, split)
        out[split] = report.success_rate
        run_id = store.create_run(f"{run_name}-{split}", "eval", {"env": env, "split": split,
                                  "episodes": cfg.eval_episodes, "greedy": True}, seed=0)
        store.add_episodes(run_id, 0, report.episodes)
        store.log_step(run_id, 0, report.flat())
        store.flush()
        store.set_status(run_id, "finished")
    return out


def _unique_run_name(store: Any, name: str) -> str:
    """``name``, or ``name-retry<k>`` when an earlier (interrupted) attempt already used it."""
    from data.errors import RunNotFound

    candidate, k = name, 1
    while True:
        try:
            store.get_run(candidate)
        except RunNotFound:
            return candidate
        k += 1
        candidate = f"{name}-retry{k}"


# --------------------------------------------------------------------------- warm start


def load_policy(path: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` with any LoRA adapter merged in: a plain model the runs can copy."""
    import torch

    from trainers.loop import load_any_model

    model, tok = load_any_model(path)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if torch.cuda.is_available():  # evaluations outside the loop run where training runs
        model = model.to("cuda")
    return model.eval(), tok


def warm_start(cfg: CompareConfig, env: str, store: Any) -> WarmStart:
    """SFT once on the env's expert demonstrations; evaluate the student start and the teacher."""
    from trainers.loop import train
    from trainers.methods.sft import SFTConfig

    out = Path(cfg.output_dir)
    record = out / "runs" / f"warm-{_slug(env)}.json"
    if cfg.reuse and record.is_file():
        return WarmStart(**json.loads(record.read_text()))
    t0 = time.perf_counter()
    name = _unique_run_name(store, f"sft-{_slug(env)}")
    sft = from_dict(SFTConfig, {
        "method": "sft", "run_name": name, "env": env, "model": cfg.model, "seed": 0,
        "env_kwargs": dict(cfg.env_kwargs.get(env, {})),
        "steps": cfg.sft_teacher_steps, "tasks_per_step": cfg.sft_tasks_per_step, "lr": cfg.sft_lr,
        "finetune": cfg.sft_finetune, "lora_r": cfg.lora_r, "max_turns": max(cfg.max_turns, 8),
        "max_new_tokens": cfg.max_new_tokens, "max_context_tokens": cfg.max_context_tokens,
        "token_budget": max(4096, cfg.max_context_tokens), "output_dir": str(out / "runs"),
        "store": cfg.store_url, "checkpoint_every": cfg.sft_student_steps,
        "keep_checkpoints": 1000, "progress": cfg.progress, "backend": "hf",
    })
    result = train(sft)
    teacher_dir = str(result.final_dir)
    student_dir = (str(result.run_dir / "checkpoints" / f"step-{cfg.sft_student_steps:06d}" / "model")
                   if 0 < cfg.sft_student_steps < cfg.sft_teacher_steps
                   else teacher_dir if cfg.sft_student_steps else cfg.model)
    successes: dict[str, dict[str, float]] = {"teacher": {}}
    for role, path in (("student", student_dir), ("teacher", teacher_dir)):
        if role == "teacher" and not cfg.eval_teacher:
            continue
        model, tok = load_policy(path)
        successes[role] = evaluate_model(model, tok, cfg, env, store, f"{name}-{role}")
    warm = WarmStart(env=env, student_dir=student_dir, teacher_dir=teacher_dir,
                     student_steps=cfg.sft_student_steps, teacher_steps=cfg.sft_teacher_steps,
                     student_success=successes["student"], teacher_success=successes["teacher"],
                     eval_episodes=cfg.eval_episodes, wall_s=time.perf_counter() - t0)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(warm), indent=1))
    return warm


# --------------------------------------------------------------------------- one method run


def method_config(cfg: CompareConfig, env: str, method: str, seed: int, warm: WarmStart,
                  run_name: str) -> Any:
    """The method's ``TrainConfig`` subclass: shared settings, then ``method_args[method]``."""
    from trainers.methods import get_method

    cls = get_method(method).config_cls
    values: dict[str, Any] = {
        "method": method, "run_name": run_name, "seed": seed, "env": env, "model": warm.student_dir,
        "env_kwargs": dict(cfg.env_kwargs.get(env, {})),
        "steps": cfg.max_steps, "output_dir": str(Path(cfg.output_dir) / "runs"),
        "store": cfg.store_url, "num_train_tasks": cfg.train_tasks, "tasks_per_step": cfg.tasks_per_step,
        "group_size": cfg.group_size,
        "max_turns": cfg.max_turns, "max_new_tokens": cfg.max_new_tokens,
        "max_context_tokens": cfg.max_context_tokens,
        "token_budget": max(4096, cfg.max_context_tokens), "lr": cfg.lr, "finetune": cfg.finetune,
        "lora_r": cfg.lora_r, "lora_targets": cfg.lora_targets, "temperature": cfg.temperature,
        "backend": cfg.backend, "checkpoint_every": 0, "keep_checkpoints": 1,
        "progress": cfg.progress,
    }
    if "teacher" in {f for f in cls.__dataclass_fields__}:
        values["teacher"] = warm.teacher_dir
    values.update(cfg.method_args.get(method, {}))
    return from_dict(cls, values)


def _mean_kl(rows: list[dict[str, float]]) -> tuple[float | None, str]:
    for key in KL_KEYS:
        vals = [r[key] for r in rows if key in r and r[key] == r[key]]
        if vals:
            return sum(vals) / len(vals), key
    return None, ""


def run_method(cfg: CompareConfig, env: str, method: str, seed: int, warm: WarmStart,
               student: tuple[Any, Any], store: Any) -> RunResult:
    """Train ``method`` from a copy of the student start until the token budget; evaluate it."""
    from trainers.loop import train
    from trainers.methods import get_method

    name = _unique_run_name(store, f"{method}-{_slug(env)}-s{seed}")
    result = RunResult(env=env, method=method, seed=seed, run_name=name,
                       eval_episodes=cfg.eval_episodes)
    meter = TokenMeter(cfg.gen_token_budget, cfg.curve_points)
    eval_s = 0.0

    def on_eval(ctx: Any) -> None:
        nonlocal eval_s
        t = time.perf_counter()
        report = evaluate(ctx.backend, ctx.renderer_factory, cfg, env, "valid_seen")
        result.curve.append((meter.generated, report.success_rate))
        eval_s += time.perf_counter() - t

    model, tok = copy.deepcopy(student[0]), student[1]
    t0 = time.perf_counter()
    try:
        mcfg = method_config(cfg, env, method, seed, warm, name)
        with registered(method, budgeted_method(get_method(method), meter, on_eval)):
            out = train(mcfg, policy=(model, tok))  # LoRA is injected into `model` in place
        train_s = time.perf_counter() - t0 - eval_s
        t = time.perf_counter()
        final = evaluate_model(model, tok, cfg, env, store, f"{name}-final")
        eval_s += time.perf_counter() - t
        result.success = final
        result.curve.append((meter.generated, final["valid_seen"]))
        result.steps = len(out.metrics)
        result.mean_kl, result.kl_key = _mean_kl(out.metrics)
        result.wall_s = train_s
    except Exception as exc:  # one failed method must not lose the other results
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        result.wall_s = time.perf_counter() - t0 - eval_s
        print(f"[compare] {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
    result.tokens, result.eval_s = meter.generated, eval_s
    return result


# --------------------------------------------------------------------------- the comparison


def run_comparison(cfg: CompareConfig, command: str = "") -> dict[str, Path]:
    """Warm starts, every (env, seed, method) run, then the report; returns the report's paths."""
    from tqdm.auto import tqdm

    from data import Store

    out = Path(cfg.output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    store = Store(cfg.store_url)
    config = config_to_dict(cfg)
    (out / "compare_config.json").write_text(json.dumps(config, indent=1))
    results: list[RunResult] = []
    warms: list[WarmStart] = []
    jobs = [(e, s, m) for e in cfg.env_list for s in cfg.seed_list for m in cfg.method_list]
    bar = tqdm(total=len(jobs), desc="compare", unit="run", disable=not cfg.progress, position=0)
    try:
        for env in cfg.env_list:
            env_cfg = cfg.for_env(env)
            bar.set_postfix_str(f"warm start {_slug(env)}")
            warm = warm_start(env_cfg, env, store)
            warms.append(warm)
            student: list[tuple[Any, Any]] = []  # loaded on first use (cached runs need none)
            for seed in cfg.seed_list:
                for method in cfg.method_list:
                    bar.set_postfix_str(f"{method} {_slug(env)} seed {seed}")
                    results.append(_cached_or_run(env_cfg, env, method, seed, warm, student, store))
                    write_report(out, results, warms, command=command, config=config)
                    bar.update(1)
    finally:
        bar.close()
        store.close()
    return write_report(out, results, warms, command=command, config=config)


def _cached_or_run(cfg: CompareConfig, env: str, method: str, seed: int, warm: WarmStart,
                   student: list[tuple[Any, Any]], store: Any) -> RunResult:
    """The saved result of a finished run (``reuse``), else a new run; ``student`` is a one-slot
    cache of the loaded student start."""
    record = Path(cfg.output_dir) / "runs" / f"{method}-{_slug(env)}-s{seed}.json"
    if cfg.reuse and record.is_file():
        data = json.loads(record.read_text())
        if data.get("status") == "finished":
            return RunResult(**{**data, "curve": [tuple(p) for p in data["curve"]]})
    if not student:
        student.append(load_policy(warm.student_dir))
    result = run_method(cfg, env, method, seed, warm, student[0], store)
    record.write_text(json.dumps(asdict(result), indent=1))
    # A finished run's policy copy, optimizer and backend can sit in reference cycles (TT-OPD's
    # held 0.76 GiB) that the cyclic GC, which counts objects rather than bytes, may not reach for
    # many runs: a 9-run comparison without this was seen at 11.7 GiB RSS; small-budget comparisons
    # with it stayed at one run's peak (3.3-4.1 GiB over 13 runs).
    gc.collect()
    return result


def parse_args(argv: list[str]) -> CompareConfig:
    """``--preset NAME`` (= ``--config configs/compare/NAME.yaml``), then the usual config syntax."""
    args = list(argv)
    if "--preset" in args:
        i = args.index("--preset")
        if i + 1 >= len(args):
            raise ConfigError("--preset needs a name: " + ", ".join(_presets()))
        name = args[i + 1]
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(_presets())}")
        args[i:i + 2] = ["--config", str(path)]
    return parse_config(CompareConfig, args)


def _presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or "-h" in args or "--help" in args:  # bare call (make bench): help, no hours-long run
        print(__doc__)
        print(f"presets: {', '.join(_presets())}\n\n{config_help(CompareConfig)}")
        return 0
    try:
        cfg = parse_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python bench/compare.py " + " ".join(shlex.quote(a) for a in args)
    paths = run_comparison(cfg, command=command)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
