"""Checks of a parsed config that need the outside world, run before any model loads.

``python -m trainers`` calls :func:`validate_before_load` right after parsing, so every user
error is one ``error:`` line within a second instead of a traceback after the student model has
loaded (10-13 s): the env id and its ``env_kwargs`` (unknown keys, out-of-range values), the
splits, the model and teacher paths, the store (a file that is not a database, a server that
cannot be reached) and the run (a name that already exists without ``resume=true``; ``resume``
of a run that does not exist; ``resume`` with settings that differ from the stored run's).
Nothing of an existing run changes before these checks pass. Each failure is a
:class:`~trainers.config.ConfigError` naming the field.

It works on any config that has some of these fields (``TrainConfig`` and its method
subclasses, ``EvalConfig``): a field a config lacks is not checked.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from trainers.config import ConfigError, config_to_dict
from trainers.runtime import store_url

__all__ = ["validate_before_load", "RESUME_MAY_CHANGE"]

# Settings a resumed run may change: how long it runs and how it reports, not what it trains.
RESUME_MAY_CHANGE = frozenset(
    {"steps", "resume", "progress", "log_tensorboard", "log_wandb", "report_to", "tracker_project",
     "store", "store_url"}
)
_TINY = "tiny"


def validate_before_load(cfg: Any) -> None:
    """Raise :class:`ConfigError` (one line) for the first problem found; changes nothing but
    creating the store when it does not exist yet (as the run would)."""
    if hasattr(cfg, "env"):
        _check_env(cfg.env, getattr(cfg, "env_kwargs", {}) or {})
    for name in ("train_split", "eval_split", "split"):
        if hasattr(cfg, name):
            _check_split(name, getattr(cfg, name))
    for name in ("model", "teacher"):
        value = getattr(cfg, name, "")
        if value:
            _check_model(name, str(value))
    _check_serving(cfg)
    if hasattr(cfg, "store") or hasattr(cfg, "run_name"):
        _check_store_and_run(cfg)


def _check_serving(cfg: Any) -> None:
    """backend=server needs sampler URLs (reachable, or ``auto``) and a server transport;
    ``teacher_url`` must answer and scores at temperature 1 (server prompt log-probs)."""
    from agents.server import ServerError, check_alive, parse_urls

    backend, urls = getattr(cfg, "backend", ""), str(getattr(cfg, "sampler_urls", "") or "")
    transport = getattr(cfg, "weight_transport", "auto")
    if backend == "server":
        if not urls:
            raise ConfigError("sampler_urls: backend=server needs sampler_urls=<url,url,...> or auto")
        if transport == "inprocess":
            raise ConfigError("weight_transport: inprocess is for backend=hf|vllm; servers take "
                              "auto, filesystem or native")
        if urls != "auto":
            try:
                for url in parse_urls(urls):
                    check_alive(url)
            except ServerError as exc:
                raise ConfigError(f"sampler_urls: {exc}") from None
    elif urls or transport not in ("auto", "inprocess"):
        raise ConfigError("sampler_urls / weight_transport=filesystem|native need backend=server")
    teacher_url = str(getattr(cfg, "teacher_url", "") or "")
    if teacher_url:
        if getattr(cfg, "temperature", 1.0) != 1.0:
            raise ConfigError(f"teacher_url: a served teacher scores at temperature 1 (prompt "
                              f"log-probs); got temperature={cfg.temperature}")
        try:
            for url in parse_urls(teacher_url):
                check_alive(url)
        except ServerError as exc:
            raise ConfigError(f"teacher_url: {exc}") from None


def _check_env(env_id: str, env_kwargs: dict[str, Any]) -> None:
    import envs
    from envs.base import EnvError

    try:
        creator = envs.env_class(env_id)
    except envs.UnknownEnvError as exc:
        raise ConfigError(f"env: {exc}") from None
    accepted = _keyword_names(creator)
    unknown = sorted(set(env_kwargs) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(
            f"env_kwargs: {env_id} does not take {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(accepted or ())) or 'no keyword arguments'}"
        )
    try:
        envs.make(env_id, **env_kwargs).close()
    except (EnvError, TypeError, ValueError) as exc:
        raise ConfigError(f"env_kwargs for {env_id}: {_one_line(exc)}") from None


def _keyword_names(creator: Any) -> set[str] | None:
    """Keyword arguments ``creator`` accepts (``None`` when it takes ``**kwargs`` or has no
    readable signature); gymnasium's own ``render_mode`` is always accepted."""
    target = creator.__init__ if inspect.isclass(creator) else creator
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return (names - {"self"}) | {"render_mode"}


def _check_split(name: str, split: str) -> None:
    from envs.base import SPLITS

    for part in split.split(",") if name == "split" else [split]:  # eval takes a comma list
        if part.strip() not in SPLITS:
            raise ConfigError(f"{name}: unknown split {part!r}; choose one of {list(SPLITS)}")


def _check_model(name: str, value: str) -> None:
    """A bundled model name, ``tiny``/``tiny:<seed>``, a directory holding a Hugging Face model
    (``config.json``) or a LoRA adapter (``adapter_config.json``), or a Hub id (``org/name``,
    resolved when the model loads: from the cache offline, else downloaded)."""
    from agents import models

    if value in models.BUNDLED_MODELS or value == _TINY or value.startswith(_TINY + ":"):
        return
    path = Path(value).expanduser()
    if not path.exists():
        is_hub_id = getattr(models, "is_hub_id", None)
        if is_hub_id is not None and is_hub_id(value):
            return
        raise ConfigError(
            f"{name}: {value!r} is neither a bundled model "
            f"({', '.join(sorted(models.BUNDLED_MODELS))}), an existing path nor a Hub id (org/name)"
        )
    if not path.is_dir() or not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise ConfigError(
            f"{name}: {path} is not a model directory (no config.json or adapter_config.json)"
        )


def _check_store_and_run(cfg: Any) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from data import Store, StoreError

    url = store_url(cfg)
    try:
        store = Store(url)
    except StoreError as exc:  # its message names the store (password hidden)
        raise ConfigError(f"store: {_one_line(exc)}") from None
    except (SQLAlchemyError, OSError, ImportError) as exc:
        raise ConfigError(f"store: cannot open {_shown(url)}: {_one_line(exc)}") from None
    try:
        _check_run(cfg, store)
    except (StoreError, SQLAlchemyError) as exc:
        raise ConfigError(f"store: cannot read {_shown(url)}: {_one_line(exc)}") from None
    finally:
        store.close()


def _shown(url: str) -> str:
    """The store URL with its password hidden."""
    from sqlalchemy.exc import ArgumentError

    from data.engine import resolve_url

    try:
        return resolve_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the store URL"


def _check_run(cfg: Any, store: Any) -> None:
    from data import RunNotFound

    name = getattr(cfg, "run_name", "")
    resume = bool(getattr(cfg, "resume", False))
    if not name:
        if resume:
            raise ConfigError("resume: needs run_name=<the run to continue>")
        return  # a new run gets a fresh, time-stamped name
    try:
        run = store.get_run(name)
    except RunNotFound:
        run = None
    run_dir = Path(getattr(cfg, "output_dir", "runs")) / name
    if not hasattr(cfg, "resume"):
        return  # e.g. an eval run: a name that exists is reused
    if not resume:
        if run is not None or (run_dir / "config.yaml").exists():
            where = f"in {store!r}" if run is not None else f"at {run_dir}"
            raise ConfigError(
                f"run_name: run {name!r} already exists {where}; pass resume=true to continue "
                "it or pick another run_name"
            )
        return
    if run is None:
        names = [r.name for r in store.runs()]
        shown = ", ".join(names[-20:]) + (" ..." if len(names) > 20 else "")
        raise ConfigError(
            f"resume: no run {name!r} in {store!r}; runs there: {shown or '(none)'}"
        )
    stored = run.config
    current = config_to_dict(cfg)
    differ = sorted(
        k for k in current.keys() & stored.keys()
        if k not in RESUME_MAY_CHANGE and current[k] != stored[k]
    )
    if differ:
        shown = ", ".join(f"{k} ({stored[k]!r} -> {current[k]!r})" for k in differ)
        raise ConfigError(
            f"resume: run {name!r} was started with other settings: {shown}; only "
            f"{', '.join(sorted(RESUME_MAY_CHANGE - {'store_url', 'resume'}))} may change on resume"
        )


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]
