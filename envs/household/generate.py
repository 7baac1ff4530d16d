"""Procedural generation of household tasks: ``generate(rng, level, task_types, split) -> (World, Task)``.

A task is a *combo* (task type, object kind, goal receptacle kind or lamp kind) placed in a
generated house. Combos are split once, by a stable hash, into *seen* (``train`` and
``valid_seen``) and *unseen* (``valid_unseen``) sets, so the unseen split holds object/receptacle
combinations never trained on. Difficulty levels scale rooms, receptacles, closed containers and
distractor objects (:data:`LEVELS`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

import numpy as np

from envs.household.catalog import (
    APPLIANCE,
    FLAG_OF,
    GOAL_TEMPLATES,
    LAMP_HOSTS,
    LAMP_KINDS,
    OBJECTS,
    OPENABLE,
    ROOMS,
    SINGLETON,
    TASK_TYPES,
)
from envs.household.world import Obj, Receptacle, Task, World

__all__ = ["LEVELS", "Combo", "Level", "combos", "generate"]

_ROOM_NAMES = tuple(ROOMS)
_MAX_PER_KIND_PER_ROOM = 3


@dataclass(frozen=True)
class Level:
    """Size of the house at one difficulty (ranges are inclusive)."""

    rooms: int
    receptacles: tuple[int, int]
    closed_prob: float  # probability that an openable receptacle starts closed
    distractors: tuple[int, int]
    paraphrase: bool  # also use ALFWorld's second goal template


LEVELS: dict[int, Level] = {
    1: Level(rooms=1, receptacles=(4, 6), closed_prob=0.0, distractors=(1, 2), paraphrase=False),
    2: Level(rooms=1, receptacles=(7, 9), closed_prob=0.5, distractors=(3, 5), paraphrase=True),
    3: Level(rooms=2, receptacles=(10, 12), closed_prob=0.75, distractors=(6, 9), paraphrase=True),
    4: Level(rooms=3, receptacles=(13, 16), closed_prob=1.0, distractors=(9, 14), paraphrase=True),
}


@dataclass(frozen=True)
class Combo:
    task_type: str
    obj: str
    recep: str = ""  # goal receptacle kind
    lamp: str = ""  # lamp kind (look_at_obj_in_light)

    @property
    def flag(self) -> str | None:
        return FLAG_OF.get(self.task_type)

    def anchor_kinds(self) -> tuple[str, ...]:
        """Kinds that must exist besides the spawn place: goal receptacle and appliance."""
        kinds = (self.recep,) if self.recep else ()
        return kinds + ((APPLIANCE[self.flag],) if self.flag else ())

    def spawn_kinds(self, room_kinds: tuple[str, ...] | frozenset[str]) -> list[str]:
        return [k for k in OBJECTS[self.obj].spawn if k in room_kinds and k != self.recep]


def _unseen(c: Combo) -> bool:
    key = f"{c.task_type}|{c.obj}|{c.recep}|{c.lamp}".encode()
    return hashlib.blake2b(key, digest_size=2).digest()[0] % 5 == 0


def _fits_one_room(c: Combo, room: str) -> bool:
    kinds = frozenset(ROOMS[room])
    if not all(k in kinds for k in c.anchor_kinds()):
        return False
    if c.lamp and not any(h in kinds for h in LAMP_HOSTS[c.lamp]):
        return False
    return bool(c.spawn_kinds(kinds))


def _all_combos(task_type: str) -> list[Combo]:
    out: list[Combo] = []
    flag = FLAG_OF.get(task_type)
    for kind in OBJECTS.values():
        if task_type == "look_at_obj_in_light":
            out += [Combo(task_type, kind.name, lamp=lamp) for lamp in LAMP_KINDS]
            continue
        if (
            flag
            and not {"clean": kind.cleanable, "hot": kind.heatable, "cool": kind.coolable}[flag]
        ):
            continue
        for goal in kind.goals:
            if flag and goal == APPLIANCE[flag]:
                continue
            out.append(Combo(task_type, kind.name, recep=goal))
    return out


@cache
def combos(task_type: str, unseen: bool) -> tuple[Combo, ...]:
    """Combos of a task type that fit in one room, in the seen or the unseen part."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}")
    return tuple(
        c
        for c in _all_combos(task_type)
        if _unseen(c) == unseen and any(_fits_one_room(c, r) for r in _ROOM_NAMES)
    )


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


def _layout(rng: random.Random, level: Level, c: Combo) -> tuple[list[str], list[tuple[str, str]]]:
    """Choose rooms and the required (room, kind) receptacles: anchors, lamp host, spawn place."""
    home = _pick(rng, [r for r in _ROOM_NAMES if _fits_one_room(c, r)])
    rooms = [home]
    required: list[tuple[str, str]] = []
    spread = level.rooms > 1
    others = [r for r in _ROOM_NAMES if r != home]
    rng.shuffle(others)
    rooms += others[: level.rooms - 1]

    def place(kinds_ok) -> None:
        cands = [(r, k) for r in (rooms if spread else [home]) for k in ROOMS[r] if kinds_ok(k)]
        required.append(_pick(rng, cands))

    for kind in c.anchor_kinds():
        place(lambda k, kind=kind: k == kind)
    if c.lamp:
        place(lambda k: k in LAMP_HOSTS[c.lamp])
    spawn = set(OBJECTS[c.obj].spawn) - {c.recep}
    place(lambda k: k in spawn)
    return rooms, required


def _build_receptacles(
    rng: random.Random, level: Level, rooms: list[str], required: list[tuple[str, str]]
) -> list[Receptacle]:
    total = rng.randint(*level.receptacles)
    chosen: list[tuple[str, str]] = []
    per_room = dict.fromkeys(rooms, 0)
    per_kind: dict[tuple[str, str], int] = {}

    def choose(room: str, kind: str) -> None:
        chosen.append((room, kind))
        per_room[room] += 1
        per_kind[room, kind] = per_kind.get((room, kind), 0) + 1

    for room, kind in required:
        if not (kind in SINGLETON and (room, kind) in per_kind):
            choose(room, kind)
    for _ in range(200):  # fill up, bounded even when a room runs out of kinds
        if len(chosen) >= max(total, len(rooms)):
            break
        room = min(rooms, key=per_room.__getitem__)  # keep rooms balanced, none empty
        kind = _pick(rng, ROOMS[room])
        n = per_kind.get((room, kind), 0)
        if not ((kind in SINGLETON and n) or n >= _MAX_PER_KIND_PER_ROOM):
            choose(room, kind)
    counters: dict[str, int] = {}
    out = []
    for room, kind in chosen:
        counters[kind] = counters.get(kind, 0) + 1
        openable = kind in OPENABLE
        closed = openable and bool(rng.random() < level.closed_prob)
        out.append(Receptacle(f"{kind} {counters[kind]}", kind, room, openable, not closed))
    return out


def generate(
    seed_rng: np.random.Generator, level: Level, task_types: tuple[str, ...], unseen: bool
) -> tuple[World, Task]:
    """Build one task and its house from ``seed_rng`` (deterministic in its state).

    ``seed_rng`` (seeded by the task id) seeds one stdlib ``random.Random`` that makes every choice:
    it is ~20x cheaper per draw than ``Generator.integers``, which keeps resets >= 500/s.
    """
    rng = random.Random(int(seed_rng.integers(2**63)))
    task_type = _pick(rng, task_types)
    c = _pick(rng, combos(task_type, unseen))
    rooms, required = _layout(rng, level, c)
    receps = _build_receptacles(rng, level, rooms, required)
    by_kind: dict[str, list[Receptacle]] = {}
    for r in receps:
        by_kind.setdefault(r.kind, []).append(r)
    contents: dict[str, list[str]] = {r.name: [] for r in receps}
    objects: dict[str, Obj] = {}
    numbers: dict[str, int] = {}

    def add(kind: str, recep: Receptacle, lamp: bool = False) -> None:
        numbers[kind] = numbers.get(kind, 0) + 1
        name = f"{kind} {numbers[kind]}"
        objects[name] = Obj(name, kind, recep.name, lamp=lamp)
        contents[recep.name].append(name)

    spawn_places = [r for k in c.spawn_kinds(frozenset(by_kind)) for r in by_kind[k]]
    for _ in range(2 if task_type == "pick_two_obj_and_place" else 1):
        add(c.obj, _pick(rng, spawn_places))
    if c.lamp:
        add(c.lamp, _pick(rng, [r for k in LAMP_HOSTS[c.lamp] for r in by_kind.get(k, [])]), True)
    n_distract = rng.randint(*level.distractors)
    kinds = [k for k, v in OBJECTS.items() if k != c.obj and any(s in by_kind for s in v.spawn)]
    for _ in range(n_distract):
        kind = _pick(rng, kinds)
        add(kind, _pick(rng, [r for s in OBJECTS[kind].spawn for r in by_kind.get(s, [])]))

    templates = GOAL_TEMPLATES[task_type]
    template = _pick(rng, templates) if level.paraphrase else templates[0]
    goal = template.format(obj=c.obj, recep=c.recep, lamp=c.lamp)
    task = Task(task_type, c.obj, c.recep, c.lamp, c.flag, goal)
    start = _pick(rng, rooms)
    world = World(
        rooms=sorted(rooms),
        receptacles={r.name: r for r in receps},
        objects=objects,
        contents=contents,
        room=start,
    )
    return world, task
