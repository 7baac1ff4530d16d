"""State and rules of the household world: ALFWorld's commands and feedback texts.

:class:`World` is the whole mutable state (rooms, receptacles, objects, the agent) and
:meth:`World.apply` runs one command and returns ALFWorld's feedback text. Nothing here is
random: the generator builds a world, the env and the experts only call ``apply``.

Commands (``{r}`` a receptacle such as ``cabinet 1``, ``{o}`` an object such as ``mug 1``)::

    go to {r} | go to {room}          open {r} | close {r}          take {o} from {r}
    move {o} to {r} (also put {o} in/on {r})                         use {lamp}
    heat {o} with {microwave} | cool {o} with {fridge} | clean {o} with {sinkbasin}
    examine {r or o} | inventory | look

Anything that does not parse or does not apply answers ``Nothing happens.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from envs.household.catalog import APPLIANCE, OBJECTS, VERB_OF_FLAG

__all__ = [
    "HAND",
    "NOTHING",
    "Obj",
    "Receptacle",
    "Task",
    "World",
    "join_items",
    "join_rooms",
    "normalize",
]

NOTHING = "Nothing happens."
HAND = "<hand>"

_WS = re.compile(r"\s+")
_COMMANDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("goto", r"^go to (?:the )?(.+)$"),
        ("open", r"^open (.+)$"),
        ("close", r"^close (.+)$"),
        ("take", r"^(?:take|pick up) (.+) from (.+)$"),
        ("move", r"^(?:move (.+) to|put (.+) (?:in|on|in/on|into|onto)) (.+)$"),
        ("use", r"^use (.+)$"),
        ("heat", r"^heat (.+) with (.+)$"),
        ("cool", r"^cool (.+) with (.+)$"),
        ("clean", r"^clean (.+) with (.+)$"),
        ("examine", r"^(?:examine|look at) (.+)$"),
        ("inventory", r"^(?:inventory|inv|i)$"),
        ("look", r"^(?:look|look around|l)$"),
    )
)


def normalize(action: str) -> str:
    """Lower-case, collapse whitespace, drop a trailing period: ``" Go to  Cabinet 1." -> "go to cabinet 1"``."""
    return _WS.sub(" ", action).strip().rstrip(".").strip().lower()


def join_items(names: list[str]) -> str:
    """ALFWorld's enumeration: ``a mug 1``, ``a mug 1, and a cup 2``, ``a x, a y, and a z``."""
    items = [f"a {n}" for n in names]
    if len(items) <= 1:
        return items[0] if items else "nothing"
    return ", ".join(items[:-1]) + ", and " + items[-1]


def join_rooms(rooms: list[str]) -> str:
    rooms = [f"the {r}" for r in rooms]
    return rooms[0] if len(rooms) == 1 else ", ".join(rooms[:-1]) + " and " + rooms[-1]


@dataclass
class Receptacle:
    name: str  # "cabinet 1"
    kind: str  # "cabinet"
    room: str
    openable: bool = False
    is_open: bool = True

    @property
    def visible(self) -> bool:
        """Whether its contents can be seen and reached (closed containers hide them)."""
        return self.is_open or not self.openable


@dataclass
class Obj:
    name: str  # "mug 1"
    kind: str  # "mug"
    location: str  # a receptacle name, or HAND
    clean: bool = False
    hot: bool = False
    cool: bool = False
    lamp: bool = False
    on: bool = False

    def has(self, flag: str) -> bool:
        return bool(getattr(self, flag))


@dataclass(frozen=True)
class Task:
    """What to achieve. ``flag`` is "clean" | "hot" | "cool" | None; ``lamp`` only for the light task."""

    task_type: str
    obj: str  # object kind, e.g. "mug"
    recep: str = ""  # goal receptacle kind, e.g. "coffeemachine" ("" for the light task)
    lamp: str = ""  # lamp kind for look_at_obj_in_light
    flag: str | None = None
    goal_text: str = ""

    @property
    def appliance(self) -> str | None:
        return APPLIANCE[self.flag] if self.flag else None

    @property
    def count(self) -> int:
        return 2 if self.task_type == "pick_two_obj_and_place" else 1


@dataclass
class World:
    """The whole state. ``contents[r]`` lists the objects in receptacle ``r`` in arrival order."""

    rooms: list[str]
    receptacles: dict[str, Receptacle]
    objects: dict[str, Obj]
    contents: dict[str, list[str]]
    room: str
    at: str | None = None  # the receptacle the agent stands at (None: middle of the room)
    holding: str | None = None
    by_room: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_room:
            for r in sorted(self.receptacles.values(), key=_recep_order):
                self.by_room.setdefault(r.room, []).append(r.name)

    # ------------------------------------------------------------------ copies and facts

    def copy(self) -> World:
        return World(
            rooms=self.rooms,
            receptacles={k: replace(v) for k, v in self.receptacles.items()},
            objects={k: replace(v) for k, v in self.objects.items()},
            contents={k: list(v) for k, v in self.contents.items()},
            room=self.room,
            at=self.at,
            holding=self.holding,
            by_room=self.by_room,
        )

    @property
    def multi_room(self) -> bool:
        return len(self.rooms) > 1

    def visible_objects(self, recep: str) -> list[str]:
        return self.contents[recep] if self.receptacles[recep].visible else []

    def goal_count(self, task: Task) -> int:
        """The most goal objects (right kind and flag) inside one receptacle of the goal kind."""
        best = 0
        for r in self.receptacles.values():
            if r.kind != task.recep:
                continue
            n = sum(1 for o in self.contents[r.name] if self._matches(self.objects[o], task))
            best = max(best, n)
        return best

    def _matches(self, obj: Obj, task: Task) -> bool:
        return obj.kind == task.obj and (task.flag is None or obj.has(task.flag))

    def goal_satisfied(self, task: Task) -> bool:
        if task.task_type == "look_at_obj_in_light":
            if self.holding is None or self.objects[self.holding].kind != task.obj:
                return False
            if self.at is None:
                return False
            return any(
                self.objects[o].lamp and self.objects[o].on and self.objects[o].kind == task.lamp
                for o in self.contents[self.at]
            )
        return self.goal_count(task) >= task.count

    # ------------------------------------------------------------------ texts

    def room_text(self) -> str:
        names = self.by_room[self.room]
        where = f"the {self.room}" if self.multi_room else "a room"
        text = f"Looking quickly around you, you see {join_items(names)}."
        text = f"You are in the middle of {where}. " + text
        return text + self._exits_text()

    def _exits_text(self) -> str:
        if not self.multi_room:
            return ""
        return (
            " From here you can go to "
            + join_rooms([r for r in self.rooms if r != self.room])
            + "."
        )

    def recep_text(self, name: str) -> str:
        r = self.receptacles[name]
        if not r.visible:
            return f"The {name} is closed."
        items = join_items(self.contents[name])
        if r.openable:
            return f"The {name} is open. In it, you see {items}."
        return f"On the {name}, you see {items}."

    # ------------------------------------------------------------------ rules

    def apply(self, action: str) -> tuple[str, bool]:
        """Run one command; return ``(feedback, valid)``. Never raises on any string."""
        text = normalize(action)
        for name, pattern in _COMMANDS:
            m = pattern.match(text)
            if m is not None:
                groups = [g for g in m.groups() if g is not None]
                result = getattr(self, "_do_" + name)(*groups)
                return (NOTHING, False) if result is None else (result, True)
        return NOTHING, False

    def _here(self, recep: str) -> Receptacle | None:
        """The receptacle ``recep`` if the agent stands at it."""
        return self.receptacles.get(recep) if self.at == recep else None

    def _do_goto(self, target: str) -> str | None:
        if target in self.receptacles:
            r = self.receptacles[target]
            if r.room != self.room or self.at == target:
                return None
            self.at = target
            return f"You arrive at {target}. " + self.recep_text(target)
        if self.multi_room and target in self.rooms and target != self.room:
            self.room, self.at = target, None
            names = join_items(self.by_room[target])
            return (
                f"You arrive at the {target}. Looking quickly around you, you see {names}."
                + self._exits_text()
            )
        return None

    def _do_open(self, recep: str) -> str | None:
        r = self._here(recep)
        if r is None or not r.openable or r.is_open:
            return None
        r.is_open = True
        return f"You open the {recep}. " + self.recep_text(recep)

    def _do_close(self, recep: str) -> str | None:
        r = self._here(recep)
        if r is None or not r.openable or not r.is_open:
            return None
        r.is_open = False
        return f"You close the {recep}."

    def _do_take(self, obj: str, recep: str) -> str | None:
        r = self._here(recep)
        if r is None or not r.visible or self.holding is not None:
            return None
        if obj not in self.contents[recep] or self.objects[obj].lamp:
            return None
        self.contents[recep].remove(obj)
        self.objects[obj].location = HAND
        self.holding = obj
        return f"You pick up the {obj} from the {recep}."

    def _do_move(self, obj: str, recep: str) -> str | None:
        r = self._here(recep)
        if r is None or not r.visible or self.holding != obj:
            return None
        self.contents[recep].append(obj)
        self.objects[obj].location = recep
        self.holding = None
        return f"You move the {obj} to the {recep}."

    def _do_use(self, lamp: str) -> str | None:
        o = self.objects.get(lamp)
        if o is None or not o.lamp or o.on or self.at is None or o.location != self.at:
            return None
        o.on = True
        return f"You turn on the {lamp}."

    def _process(self, flag: str, obj: str, recep: str) -> str | None:
        r = self._here(recep)
        if r is None or r.kind != APPLIANCE[flag] or self.holding != obj:
            return None
        o = self.objects[obj]
        kind = OBJECTS[o.kind]
        able = {"clean": kind.cleanable, "hot": kind.heatable, "cool": kind.coolable}[flag]
        if not able:
            return None
        o.clean = o.clean or flag == "clean"
        if flag == "hot":
            o.hot, o.cool = True, False
        elif flag == "cool":
            o.hot, o.cool = False, True
        return f"You {VERB_OF_FLAG[flag]} the {obj} using the {recep}."

    def _do_heat(self, obj: str, recep: str) -> str | None:
        return self._process("hot", obj, recep)

    def _do_cool(self, obj: str, recep: str) -> str | None:
        return self._process("cool", obj, recep)

    def _do_clean(self, obj: str, recep: str) -> str | None:
        return self._process("clean", obj, recep)

    def _do_examine(self, target: str) -> str | None:
        if target in self.receptacles:
            return self.recep_text(target) if self.at == target else None
        o = self.objects.get(target)
        if o is None:
            return None
        if o.location == HAND or (o.location == self.at and self.receptacles[o.location].visible):
            if o.lamp:
                return f"The {target} is {'on' if o.on else 'off'}."
            states = [s for s in ("clean", "hot", "cool") if o.has(s)]
            return f"This is a {' '.join(states) or 'normal'} {target}."
        return None

    def _do_inventory(self) -> str:
        if self.holding is None:
            return "You are not carrying anything."
        return f"You are carrying: a {self.holding}."

    def _do_look(self) -> str:
        if self.at is None:
            return self.room_text()
        return f"You are facing the {self.at}. Next to it, you see nothing."

    # ------------------------------------------------------------------ admissible commands

    def admissible(self) -> list[str]:
        """Sorted commands that change the state or give information (all of them valid)."""
        acts = ["inventory", "look"]
        acts += [f"go to {r}" for r in self.by_room[self.room] if r != self.at]
        if self.multi_room:
            acts += [f"go to {room}" for room in self.rooms if room != self.room]
        if self.holding is not None:
            acts.append(f"examine {self.holding}")
        if self.at is not None:
            acts.extend(self._admissible_at(self.receptacles[self.at]))
        acts.sort()
        return acts

    def _admissible_at(self, r: Receptacle) -> list[str]:
        acts = [f"examine {r.name}"]
        if r.openable:
            acts.append(f"{'close' if r.is_open else 'open'} {r.name}")
        if not r.visible:
            return acts
        held = self.holding
        for name in self.contents[r.name]:
            o = self.objects[name]
            if o.lamp:
                if not o.on:
                    acts.append(f"use {name}")
            elif held is None:
                acts.append(f"take {name} from {r.name}")
        if held is not None:
            acts.append(f"move {held} to {r.name}")
            kind = OBJECTS[self.objects[held].kind]
            for flag, able in (
                ("clean", kind.cleanable),
                ("hot", kind.heatable),
                ("cool", kind.coolable),
            ):
                if able and r.kind == APPLIANCE[flag]:
                    acts.append(f"{VERB_OF_FLAG[flag]} {held} with {r.name}")
        return acts

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        """Raise AssertionError if the state is inconsistent (used by the property tests)."""
        seen: dict[str, str] = {}
        for recep, names in self.contents.items():
            for name in names:
                _require(name not in seen, f"{name} is in both {seen.get(name)} and {recep}")
                seen[name] = recep
        if self.holding is not None:
            _require(self.holding not in seen, f"{self.holding} is held and in a receptacle")
            seen[self.holding] = HAND
        _require(set(seen) == set(self.objects), "some object is nowhere")
        for name, obj in self.objects.items():
            _require(obj.location == seen[name], f"{name}: location {obj.location} != {seen[name]}")
        held = [obj for obj in self.objects.values() if obj.location == HAND]
        _require(len(held) <= 1, f"holding {len(held)} objects")
        _require(self.at is None or self.receptacles[self.at].room == self.room, "agent off-room")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _recep_order(r: Receptacle) -> tuple[str, int]:
    kind, _, num = r.name.rpartition(" ")
    return kind, int(num)
