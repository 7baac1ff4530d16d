"""The household world (ALFWorld-like): procedural houses, six task types, oracle and explorer experts.

Registered ids (horizon 50):

* ``DistillGym/Household-v0``: difficulty 1 (one small room, nothing closed), all six task types;
  the default env of the CPU training run.
* ``DistillGym/Household-Easy-v0``: difficulty 1, ``pick_and_place_simple`` only.
* ``DistillGym/Household-Medium-v0``: difficulty 2 (one bigger room, some closed containers).
* ``DistillGym/Household-Hard-v0``: difficulty 4 (three rooms, distractors, all containers closed).
"""

from __future__ import annotations

from envs.household.catalog import TASK_TYPES
from envs.household.env import INSTRUCTIONS, HouseholdEnv
from envs.household.experts import Explorer, oracle_action, oracle_plan
from envs.household.generate import LEVELS
from envs.household.world import Task, World

__all__ = [
    "INSTRUCTIONS",
    "LEVELS",
    "TASK_TYPES",
    "Explorer",
    "HouseholdEnv",
    "Task",
    "World",
    "oracle_action",
    "oracle_plan",
    "register",
]

HORIZON = 50
ENTRY_POINT = "envs.household.env:HouseholdEnv"
VARIANTS: dict[str, dict[str, object]] = {
    "DistillGym/Household-v0": {"difficulty": 1},
    "DistillGym/Household-Easy-v0": {"difficulty": 1, "task_types": ["pick_and_place_simple"]},
    "DistillGym/Household-Medium-v0": {"difficulty": 2},
    "DistillGym/Household-Hard-v0": {"difficulty": 4},
}


def register() -> None:
    """Register the household ids with the DistillGym registry."""
    from envs.registry import register_env

    for env_id, kwargs in VARIANTS.items():
        register_env(env_id, ENTRY_POINT, max_episode_steps=HORIZON, kwargs=dict(kwargs))
