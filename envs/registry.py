"""The env registry: versioned ids on top of ``gymnasium.register`` / ``gymnasium.make``.

Two ways to add an env (see ``docs/envs.md``):

* one call, e.g. at import time of your package::

      envs.register_env("MyOrg/GuessNumber-v0", "mypkg.guess:GuessNumberEnv", max_episode_steps=10)

* a Python entry point in the group ``distillgym.envs`` of your package. The value is either an
  env class (``"mypkg.guess:GuessNumberEnv"``, registered under the entry point's *name* as id,
  with the class attribute ``max_episode_steps`` if it has one) or a function
  (``"mypkg:register_envs"``) that calls :func:`register_env` itself::

      [project.entry-points."distillgym.envs"]
      "MyOrg/GuessNumber-v0" = "mypkg.guess:GuessNumberEnv"

Entry points are loaded when ``envs`` is imported, so plain ``gymnasium.make`` sees them (and
``gymnasium.make("envs:<id>")`` imports ``envs`` itself); ``load_entry_points(force=True)``
loads them again.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import warnings
from typing import Any

import gymnasium as gym

from envs.base import UnknownEnvError

__all__ = [
    "ENTRY_POINT_GROUP",
    "NAMESPACE",
    "env_class",
    "list_envs",
    "load_entry_points",
    "make",
    "record_failure",
    "register_env",
    "unregister_env",
]

NAMESPACE = "DistillGym"
ENTRY_POINT_GROUP = "distillgym.envs"

_registered: set[str] = set()
_entry_points_loaded = False
_failed_entry_points: dict[str, str] = {}  # entry point name -> error (reset on reload)
_failed_sources: dict[str, str] = {}  # sibling packages that failed to import


def register_env(
    id: str,
    entry_point: Any,
    *,
    max_episode_steps: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Register an env under ``id`` (``"<Namespace>/<Name>-v<N>"``) with gymnasium.

    ``entry_point`` is ``"module:Class"`` (imported lazily by gymnasium) or a callable.
    Registering an id again replaces it (gymnasium warns), which keeps re-imports harmless.
    """
    if id in gym.registry and id in _registered:
        del gym.registry[id]
    gym.register(
        id=id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs or {}
    )
    _registered.add(id)


def unregister_env(id: str) -> None:
    """Remove ``id`` (registered through :func:`register_env`); unknown ids are ignored."""
    _registered.discard(id)
    gym.registry.pop(id, None)


def load_entry_points(*, force: bool = False) -> dict[str, str]:
    """Load the ``distillgym.envs`` entry points once; return ``{name: error}`` of failures.

    A broken third-party plugin does not break the built-in envs: it is reported with a warning
    and in :class:`UnknownEnvError` messages.
    """
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return {**_failed_sources, **_failed_entry_points}
    _entry_points_loaded = True
    _failed_entry_points.clear()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            _load_one(ep)
        except Exception as exc:  # a plugin's bug: reported, never swallowed silently
            _failed_entry_points[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"distillgym.envs entry point {ep.name!r} = {ep.value!r} failed to load: {exc}",
                stacklevel=2,
            )
    return {**_failed_sources, **_failed_entry_points}


def _load_one(ep: importlib.metadata.EntryPoint) -> None:
    obj = ep.load()
    if inspect.isclass(obj) and issubclass(obj, gym.Env):
        register_env(ep.name, ep.value, max_episode_steps=getattr(obj, "max_episode_steps", None))
    elif callable(obj):
        obj()
    else:
        raise TypeError(f"expected a gymnasium.Env subclass or a function, got {obj!r}")


def record_failure(source: str, error: str) -> None:
    """Remember that ``source`` (an entry point or a sibling package) failed to load."""
    _failed_sources[source] = error


def list_envs() -> list[str]:
    """Sorted ids registered through :func:`register_env` (built-in and third-party)."""
    load_entry_points()
    return sorted(i for i in _registered if i in gym.registry)


def make(id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(id, **kwargs)`` after loading entry points; unknown ids raise
    :class:`~envs.base.UnknownEnvError` listing the known ones."""
    failed = load_entry_points()
    if id not in gym.registry:
        raise UnknownEnvError(id, list_envs(), failed)
    return gym.make(id, **kwargs)


def env_class(id: str) -> Any:
    """The class (or creator) behind ``id``, without constructing an env."""
    load_entry_points()
    if id not in gym.registry:
        raise UnknownEnvError(id, list_envs(), {**_failed_sources, **_failed_entry_points})
    entry = gym.registry[id].entry_point
    if isinstance(entry, str):
        return gym.envs.registration.load_env_creator(entry)
    return entry
