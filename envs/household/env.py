"""``HouseholdEnv``: the ALFWorld-like household world behind the :class:`~envs.base.TextEnv` contract.

One episode: the intro lists the receptacles and the goal; each step is one command; reward 1 and
termination when the goal holds. ``difficulty`` 1..4 picks a :data:`~envs.household.generate.LEVELS`
size and ``task_types`` restricts the six ALFWorld task types.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from envs.base import (
    EnvStateError,
    InvalidOptionError,
    Privileged,
    StepOutcome,
    TextEnv,
    parse_task_id,
)
from envs.household.catalog import APPLIANCE, TASK_TYPES
from envs.household.experts import Explorer, oracle_action, oracle_plan, subgoals
from envs.household.generate import LEVELS, generate
from envs.household.world import HAND, NOTHING, Task, World

__all__ = ["HouseholdEnv", "INSTRUCTIONS"]

_MAX_COMMAND_CHARS = 200

INSTRUCTIONS = """\
You are a household robot. Each turn, reply with exactly one command from this list:
  go to {recep}                      (walk to a receptacle, e.g. "go to cabinet 1")
  go to {room}                       (only in houses with several rooms)
  open {recep} / close {recep}       (fridges, cabinets, drawers, microwaves, safes, boxes)
  take {obj} from {recep}            (you can hold one object at a time)
  move {obj} to {recep}              (also: put {obj} in/on {recep})
  heat {obj} with {microwave}        (hold the object at the microwave)
  cool {obj} with {fridge}           (hold the object at the fridge)
  clean {obj} with {sinkbasin}       (hold the object at the sink basin)
  use {lamp}                         (turn on a lamp where you stand)
  examine {recep or obj} / inventory / look
Objects and receptacles are named with their number, e.g. "mug 1", "countertop 2".
You must be at a receptacle to open it, take from it or put into it. Closed receptacles hide what
is inside. A command that does not apply answers "Nothing happens.\""""


def _level(difficulty: Any) -> int:
    try:
        level = int(difficulty)
    except (TypeError, ValueError):
        level = -1
    if level not in LEVELS:
        raise InvalidOptionError(
            f"household difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}"
        )
    return level


class HouseholdEnv(TextEnv):
    """ALFWorld-like household tasks (six task types, four difficulty levels)."""

    family: ClassVar[str] = "household"
    default_difficulty: ClassVar[int] = 1
    max_episode_steps: ClassVar[int] = 50
    max_observation_length: ClassVar[int] = 4096
    max_action_length: ClassVar[int] = 4096

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        expose_privileged: bool = False,
        difficulty: int = 1,
        task_types: list[str] | tuple[str, ...] | None = None,
        expert: str = "oracle",
    ) -> None:
        super().__init__(render_mode, expose_privileged=expose_privileged, difficulty=difficulty)
        self.difficulty = _level(difficulty)
        types = tuple(task_types) if task_types else TASK_TYPES
        unknown = [t for t in types if t not in TASK_TYPES]
        if unknown:
            raise InvalidOptionError(f"unknown task types {unknown}; expected some of {TASK_TYPES}")
        self.task_types: tuple[str, ...] = types
        if expert not in ("oracle", "explorer"):
            raise InvalidOptionError(f"household expert must be 'oracle' or 'explorer', got {expert!r}")
        # Which expert answers expert_action(): the oracle knows where everything is; the explorer
        # sees only the observations, like the agent (its demonstrations are imitable by a student
        # that cannot see hidden objects). The privileged channel always uses the oracle.
        self.expert = expert
        self._explorer: Explorer | None = None
        self.world: World | None = None
        self.task: Task | None = None
        self._first_subgoals: list[str] = []

    # ------------------------------------------------------------------ TextEnv hooks

    def _task_salt(self) -> tuple[object, ...]:
        return tuple(sorted(self.task_types))

    def _validate_difficulty(self, difficulty: Any) -> int:
        return _level(difficulty)

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: Any) -> str:
        split, _ = parse_task_id(task_id)
        self.world, self.task = generate(
            rng, LEVELS[difficulty], self.task_types, unseen=split == "valid_unseen"
        )
        self._first_subgoals = subgoals(self.world, self.task)
        first = f"{self.world.room_text()}\n\nYour task is to: {self.task.goal_text}"
        if self.expert == "explorer":
            self._explorer = Explorer()
            self._explorer.observe(None, first)
        return first

    def _act(self, action: str) -> StepOutcome:
        w, task = self._state()
        if len(action) > _MAX_COMMAND_CHARS:
            return StepOutcome(NOTHING, valid=False, reward_breakdown={"success": 0.0})
        feedback, valid = w.apply(action)
        if self._explorer is not None:
            self._explorer.observe(action.strip(), feedback)
        won = valid and w.goal_satisfied(task)
        return StepOutcome(
            feedback,
            reward=1.0 if won else 0.0,
            terminated=won,
            valid=valid,
            won=won,
            reward_breakdown={"success": 1.0 if won else 0.0},
        )

    @property
    def task_type(self) -> str:
        return self.task.task_type if self.task is not None else ""

    def admissible_actions(self) -> list[str] | None:
        return self.world.admissible() if self.world is not None else None

    @property
    def instructions(self) -> str:
        return INSTRUCTIONS

    def expert_action(self) -> str:
        """The expert's next command: the oracle (knows where everything is; re-plans from any
        state) or, with ``expert="explorer"``, the observation-only explorer."""
        w, task = self._state()
        if self._explorer is not None:
            return self._explorer.act()
        return oracle_action(w, task)

    def _privileged(self) -> Privileged:
        w, task = self._state()
        plan = oracle_plan(w, task)
        facts = self.state_facts()
        where = self._key_locations()
        summary = "; ".join(self._first_subgoals) or "the goal already holds"
        return Privileged(
            answer=where,
            plan=plan,
            next_action=plan[0] if plan else "",
            subgoals=subgoals(w, task),
            state_facts=facts,
            rubric=f"Success when the goal holds: {task.goal_text}",
            hint=f"{where}." if where else "",
            hints={
                "reinforcing": f"That worked: {summary}.",
                "corrective": f"{where}. The way to succeed: {summary}.",
            },
        )

    # ------------------------------------------------------------------ helpers

    def _state(self) -> tuple[World, Task]:
        if self.world is None or self.task is None:
            raise EnvStateError("the household env has no task yet; call reset()")
        return self.world, self.task

    def _key_locations(self) -> str:
        """Where the task's objects and appliances are, e.g. ``"The mug 1 is in cabinet 2"``."""
        w, task = self._state()
        parts = []
        for o in w.objects.values():
            if o.kind == task.obj or (task.lamp and o.lamp and o.kind == task.lamp):
                where = "in your hand" if o.location == HAND else f"in {o.location}"
                parts.append(f"the {o.name} is {where}")
        if task.flag:
            appl = [r for r in w.receptacles.values() if r.kind == APPLIANCE[task.flag]]
            parts += [f"the {r.kind} is {r.name}" for r in appl[:1]]
        text = ", ".join(parts)
        return text[:1].upper() + text[1:]

    def state_facts(self) -> list[str]:
        """True facts about the state: agent place, hand, open/closed containers, object places."""
        w, _ = self._state()
        facts = [f"you are in the {w.room}" if w.multi_room else "you are in the room"]
        facts.append(f"you are at {w.at}" if w.at else "you are in the middle of the room")
        facts.append(f"you hold the {w.holding}" if w.holding else "your hand is empty")
        for r in w.receptacles.values():
            if r.openable:
                facts.append(f"{r.name} is {'open' if r.is_open else 'closed'}")
        for o in w.objects.values():
            if o.location == HAND:
                continue
            states = [s for s in ("clean", "hot", "cool") if o.has(s)]
            state = f" ({', '.join(states)})" if states else ""
            facts.append(f"{o.name}{state} is in {o.location}")
            if o.lamp:
                facts.append(f"{o.name} is {'on' if o.on else 'off'}")
        return facts
