"""Command line: ``python -m trainers <method> | eval [--config file.yaml] [key=value | --key value ...]``.

Examples::

    python -m trainers --help                       # methods and what they do
    python -m trainers grpo --help                  # every config field of grpo
    python -m trainers sft --env DistillGym/Household-v0 --model smollm2-135m-instruct steps=30
    python -m trainers opd --config configs/quickstart.yaml teacher=runs/sft-quick/final
    python -m trainers eval --env DistillGym/Household-v0 --model runs/sft-quick/final --greedy

A bad value, an unknown key, method or env, or an incompatible teacher prints one line starting
with ``error:`` and exits with status 2 (program errors keep their traceback). Everything that can
be checked without a model (env arguments, splits, model and teacher paths, the store, the run
name and resume) is checked first, by ``trainers.validate.validate_before_load``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from trainers.config import ConfigError, config_help, parse_config
from trainers.validate import validate_before_load

__all__ = ["main"]

USAGE = """usage: python -m trainers <method> [--config FILE.yaml] [key=value | --key value ...]
       python -m trainers eval --env ID --model PATH [--split valid_seen,valid_unseen] [--episodes N] [--greedy | samples=K] [resume=true run_name=R]
       python -m trainers <method|eval> --help     (all config fields)
"""


def _methods_help() -> str:
    from trainers.methods import IMPORT_ERRORS, METHODS

    lines = [USAGE, "methods:"]
    for name, cls in sorted(METHODS.items()):
        lines.append(f"  {name:<12} {cls.description}  [config: {cls.config_cls.__name__}]")
    lines.append(f"  {'eval':<12} evaluate a checkpoint on a task split (success per task type)")
    for name, why in sorted(IMPORT_ERRORS.items()):
        lines.append(f"  ({name}: not available: {why})")
    return "\n".join(lines)


def _late_user_errors() -> tuple[type[BaseException], ...]:
    """Errors of the env/model layers that mean 'fix your command' (imported only when raised)."""
    from agents.models import ModelLoadError
    from data.errors import (
        CorruptDatabase,
        ReadOnlyStore,
        RunExistsError,
        RunNotFound,
        SchemaOutdated,
        SchemaTooNew,
        StoreBusy,
    )
    from envs import InvalidOptionError, UnknownEnvError

    return (UnknownEnvError, InvalidOptionError, ModelLoadError, RunExistsError, RunNotFound,
            CorruptDatabase, ReadOnlyStore, SchemaOutdated, SchemaTooNew, StoreBusy)


def main(argv: Sequence[str] | None = None) -> int:
    from trainers.errors import TeacherMismatchError, TooManyBadStepsError, UnknownMethodError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_methods_help())
        return 0
    command, rest = args[0], args[1:]
    try:
        nproc, rest = _pop_nproc(rest)
        if nproc > 1:
            return _launch(command, rest, nproc)
        return _run(command, rest)
    except (ConfigError, UnknownMethodError, TeacherMismatchError, TooManyBadStepsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, _late_user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def _pop_nproc(rest: list[str]) -> tuple[int, list[str]]:
    """``--nproc N`` / ``--nproc=N`` out of the arguments (1 when absent)."""
    out, nproc, i = [], 1, 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--nproc" or arg.startswith("--nproc="):
            value = arg.split("=", 1)[1] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            i += 1 if "=" in arg else 2
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"--nproc needs a positive number of processes, got {value!r}")
            nproc = int(value)
            continue
        out.append(arg)
        i += 1
    return nproc, out


def _launch(command: str, rest: list[str], nproc: int) -> int:
    """``--nproc N``: check the command here (user errors before any process starts), then run
    it under ``torchrun --standalone --nproc_per_node N`` (one machine; see the README for nodes)."""
    import subprocess

    if command == "eval":
        raise ConfigError("--nproc applies to training; evaluation runs in one process")
    from trainers.distributed import check_world_size
    from trainers.methods import get_method

    method = get_method(command)
    cfg = parse_config(method.config_cls, [*rest, f"method={command}"])
    validate_before_load(cfg)
    check_world_size(cfg, nproc)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "trainers", command, *rest]
    return subprocess.call(argv, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def _run(command: str, rest: list[str]) -> int:
    if command == "eval":
        from trainers.evaluate import EvalConfig, evaluate_checkpoint

        if "--help" in rest or "-h" in rest:
            print(f"usage: python -m trainers eval [options]\n\n{config_help(EvalConfig)}")
            return 0
        eval_cfg = parse_config(EvalConfig, rest)
        validate_before_load(eval_cfg)
        from tqdm.auto import tqdm

        with tqdm(desc="eval", unit="chunk", dynamic_ncols=True) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            reports = evaluate_checkpoint(eval_cfg, on_chunk=progress)
        for report in reports:
            print(report.table())
        if eval_cfg.baseline:
            from trainers.evaluate import baseline_lines
            from trainers.runtime import open_store

            print(f"before (eval run {eval_cfg.baseline}) -> after (this evaluation):")
            for line in baseline_lines(open_store(eval_cfg), eval_cfg.baseline, reports):
                print("  " + line)
        return 0

    from trainers.methods import get_method

    method = get_method(command)
    if "--help" in rest or "-h" in rest:
        print(f"usage: python -m trainers {command} [options]\n{method.description}\n\n"
              f"{config_help(method.config_cls)}")
        return 0
    cfg = parse_config(method.config_cls, [*rest, f"method={command}"])
    validate_before_load(cfg)  # env, splits, paths, store and run: before any model loads
    from trainers.loop import train

    result = train(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"run {cfg.run_name}: final policy in {result.final_dir}")
    return 0
