"""DistillGym environments: multi-turn text envs behind one Gymnasium-based contract.

Importing ``envs`` registers every built-in env; third-party envs come through
:func:`register_env` or the ``distillgym.envs`` entry point group (see ``docs/envs.md``)::

    import envs
    env = envs.make("DistillGym/Household-v0")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

from envs.base import (
    CHARSET,
    SPLITS,
    STRENGTHS,
    EnvError,
    EnvStateError,
    InvalidOptionError,
    Privileged,
    StepOutcome,
    Strength,
    TextEnv,
    UnknownEnvError,
)
from envs.registry import (
    ENTRY_POINT_GROUP,
    NAMESPACE,
    env_class,
    list_envs,
    load_entry_points,
    make,
    register_env,
    unregister_env,
)
from envs.registry import record_failure as _record_failure

__all__ = [
    "CHARSET",
    "IMPORT_FAILURES",
    "ENTRY_POINT_GROUP",
    "NAMESPACE",
    "SPLITS",
    "STRENGTHS",
    "Strength",
    "EnvError",
    "EnvStateError",
    "InvalidOptionError",
    "Privileged",
    "StepOutcome",
    "TextEnv",
    "UnknownEnvError",
    "env_class",
    "list_envs",
    "load_entry_points",
    "make",
    "register_env",
    "unregister_env",
]

importlib.import_module("envs.household").register()

# Sibling env packages register themselves (at import or in ``register()``) when present. One that
# exists but fails to import must not take the others down: the failure is warned about, kept in
# IMPORT_FAILURES (tests/test_envs_api.py asserts it is empty) and named by UnknownEnvError.
IMPORT_FAILURES: dict[str, str] = {}
for _name in ("envs.tooluse", "envs.clinical", "envs.sokoban", "envs.drills"):
    if importlib.util.find_spec(_name) is None:
        continue
    try:
        _mod = importlib.import_module(_name)
        if hasattr(_mod, "register"):
            _mod.register()
    except Exception as _exc:  # reported loudly, see above
        IMPORT_FAILURES[_name] = f"{type(_exc).__name__}: {_exc}"
        _record_failure(_name, IMPORT_FAILURES[_name])
        warnings.warn(f"{_name} failed to import: {_exc!r}", stacklevel=1)

# Entry-point envs are registered at import, so plain ``gymnasium.make(id)`` finds them once
# ``envs`` is imported (``gymnasium.make("envs:MyOrg/Env-v0")`` imports it itself); a broken
# plugin is warned about and named by UnknownEnvError, as above.
load_entry_points()
