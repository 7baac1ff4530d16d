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

from envs.base import (
    CHARSET,
    SPLITS,
    STRENGTHS,
    EnvError,
    EnvStateError,
    InvalidOptionError,
    Privileged,
    StepOutcome,
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
)

__all__ = [
    "CHARSET",
    "ENTRY_POINT_GROUP",
    "NAMESPACE",
    "SPLITS",
    "STRENGTHS",
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
]

importlib.import_module("envs.household").register()

# Sibling env packages register themselves in their own ``register()`` when present. A package
# that exists but fails to import is a program error and is left to raise.
for _name in ("envs.tooluse", "envs.clinical", "envs.sokoban"):
    if importlib.util.find_spec(_name) is not None:
        _mod = importlib.import_module(_name)
        if hasattr(_mod, "register"):
            _mod.register()
