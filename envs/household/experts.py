"""The two household experts.

* :func:`oracle_action` knows where everything is. It is a pure function of ``(world, task)``: a
  subgoal machine (find -> take -> appliance -> place) evaluated from the current state, so it
  re-plans from any state. :func:`oracle_plan` rolls it forward on a copy of the world.
* :class:`Explorer` sees only the observation texts, like ALFWorld's handcoded expert: it reads
  the goal, visits receptacles in the order they were listed, opens closed ones, remembers what it
  saw, and runs the same subgoal machine on its beliefs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from envs.household.catalog import APPLIANCE, FLAG_OF, VERB_OF_FLAG
from envs.household.world import HAND, Task, World

__all__ = ["Explorer", "oracle_action", "oracle_plan", "subgoals"]

_MAX_PLAN = 80


# --------------------------------------------------------------------------- oracle


def _route(w: World, recep: str, open_it: bool = True) -> str | None:
    """The next move towards standing at ``recep`` (and opening it); None when there."""
    r = w.receptacles[recep]
    if r.room != w.room:
        return f"go to {r.room}"
    if w.at != recep:
        return f"go to {recep}"
    if open_it and not r.visible:
        return f"open {recep}"
    return None


def _cost(w: World, recep: str) -> tuple[int, str]:
    r = w.receptacles[recep]
    steps = (0 if w.at == recep else 1) + (1 if r.room != w.room else 0) + (0 if r.visible else 1)
    return steps, recep


def _nearest(w: World, receps: list[str]) -> str:
    return min(receps, key=lambda r: _cost(w, r))


def _drop(w: World) -> str:
    """Put the wrong object down at the current (or the nearest) receptacle."""
    held = w.holding
    assert held is not None
    if w.at is not None and w.receptacles[w.at].visible:
        return f"move {held} to {w.at}"
    target = w.at if w.at is not None else _nearest(w, w.by_room[w.room])
    return _route(w, target) or f"move {held} to {target}"


def _dest(w: World, task: Task) -> str:
    """The goal receptacle to fill: the one already holding the most goal objects, then nearest."""
    goals = [r.name for r in w.receptacles.values() if r.kind == task.recep]

    def score(r: str) -> tuple[int, tuple[int, str]]:
        have = sum(1 for o in w.contents[r] if w._matches(w.objects[o], task))
        return -have, _cost(w, r)

    return min(goals, key=score)


def _fetch(w: World, task: Task, exclude: str | None) -> str:
    """Go to, open and take the best object of the task's kind not in ``exclude``."""
    cands = [
        o.name
        for o in w.objects.values()
        if o.kind == task.obj and o.location != HAND and o.location != exclude
    ]
    best = min(
        cands,
        key=lambda n: (
            0 if task.flag and w.objects[n].has(task.flag) else 1,
            _cost(w, w.objects[n].location),
        ),
    )
    loc = w.objects[best].location
    return _route(w, loc) or f"take {best} from {loc}"


def oracle_action(w: World, task: Task) -> str:
    """The oracle's next command in state ``w`` (``look`` when the goal already holds)."""
    if w.goal_satisfied(task):
        return "look"
    held = w.objects[w.holding] if w.holding is not None else None
    if task.task_type == "look_at_obj_in_light":
        if held is not None and held.kind == task.obj:
            lamp = _nearest(
                w, [o.location for o in w.objects.values() if o.lamp and o.kind == task.lamp]
            )
            lamp_obj = next(
                o for o in w.contents[lamp] if w.objects[o].lamp and w.objects[o].kind == task.lamp
            )
            return _route(w, lamp) or f"use {lamp_obj}"
        return _drop(w) if held is not None else _fetch(w, task, None)
    dest = _dest(w, task)
    if held is not None and held.kind == task.obj:
        if task.flag and not held.has(task.flag):
            appliance = _nearest(
                w, [r.name for r in w.receptacles.values() if r.kind == APPLIANCE[task.flag]]
            )
            return (
                _route(w, appliance, False)
                or f"{VERB_OF_FLAG[task.flag]} {held.name} with {appliance}"
            )
        return _route(w, dest) or f"move {held.name} to {dest}"
    if held is not None:
        return _drop(w)
    return _fetch(w, task, dest if task.count == 2 else None)


def oracle_plan(w: World, task: Task, limit: int = _MAX_PLAN) -> list[str]:
    """The oracle's commands from state ``w`` until the goal holds (``w`` is not modified)."""
    sim = w.copy()
    plan: list[str] = []
    while not sim.goal_satisfied(task) and len(plan) < limit:
        action = oracle_action(sim, task)
        _, valid = sim.apply(action)
        if not valid:  # a bug in the oracle, never a property of the task
            raise RuntimeError(f"oracle produced an invalid action {action!r}")
        plan.append(action)
    return plan


def subgoals(w: World, task: Task) -> list[str]:
    """The remaining subgoals in words, e.g. ``["take a mug", "clean the mug with sinkbasin 1", ...]``."""
    if w.goal_satisfied(task):
        return []
    held = w.objects[w.holding] if w.holding is not None else None
    have_it = held is not None and held.kind == task.obj
    out = [] if have_it else [f"find and take a {task.obj}"]
    if task.task_type == "look_at_obj_in_light":
        return out + [f"go to the {task.lamp} and turn it on while holding the {task.obj}"]
    if task.flag and not (have_it and held is not None and held.has(task.flag)):
        appliance = APPLIANCE[task.flag]
        out.append(f"{VERB_OF_FLAG[task.flag]} the {task.obj} with the {appliance}")
    out.append(f"put the {task.obj} in a {task.recep}")
    if task.count == 2 and w.goal_count(task) == 0:
        out += [f"find and take a second {task.obj}", f"put it in the same {task.recep}"]
    return out


# --------------------------------------------------------------------------- explorer

_TASK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "look_at_obj_in_light",
        re.compile(r"^(?:look at|examine the) (\w+) (?:under|with) the (\w+)$"),
    ),
    (
        "pick_clean_then_place_in_recep",
        re.compile(r"^(?:put a clean (\w+)|clean some (\w+) and put it) in (\w+)$"),
    ),
    (
        "pick_heat_then_place_in_recep",
        re.compile(r"^(?:put a hot (\w+)|heat some (\w+) and put it) in (\w+)$"),
    ),
    (
        "pick_cool_then_place_in_recep",
        re.compile(r"^(?:put a cool (\w+)|cool some (\w+) and put it) in (\w+)$"),
    ),
    (
        "pick_two_obj_and_place",
        re.compile(r"^(?:put two (\w+)|find two (\w+) and put them) in (\w+)$"),
    ),
    ("pick_and_place_simple", re.compile(r"^put (?:a|some) (\w+) (?:in|on) (\w+)$")),
)
_SEE = re.compile(r"you see (.*?)\.(?: |$)")
_EXITS = re.compile(r"From here you can go to (.*?)\.")
_ARRIVE_ROOM = re.compile(r"^You arrive at the (\w+)\. Looking")
_CLOSED = re.compile(r"The ([\w ]+? \d+) is closed\.")


def parse_goal(text: str) -> Task:
    """Invert the goal templates: ``"put a hot mug in cabinet."`` -> Task(...)."""
    goal = text.split("Your task is to:")[-1].strip().rstrip(".")
    for task_type, pattern in _TASK_PATTERNS:
        m = pattern.match(goal)
        if m:
            words = [g for g in m.groups() if g]
            if task_type == "look_at_obj_in_light":
                return Task(task_type, words[0], lamp=words[1], goal_text=goal)
            return Task(task_type, words[0], words[1], flag=FLAG_OF.get(task_type), goal_text=goal)
    raise ValueError(f"cannot parse goal {goal!r}")


def _items(listing: str) -> list[str]:
    if listing == "nothing":
        return []
    parts = re.split(r", and |, | and ", listing)
    return [p[2:] if p.startswith("a ") else p for p in parts]


def _kind(name: str) -> str:
    return name.rpartition(" ")[0]


@dataclass
class Explorer:
    """Observation-only expert. Use: ``a = Explorer(); a.observe(None, obs0); a.act(); a.observe(...)``."""

    task: Task | None = None
    room: str = ""
    rooms: list[str] = field(default_factory=list)
    by_room: dict[str, list[str]] = field(default_factory=dict)
    contents: dict[str, list[str]] = field(default_factory=dict)  # last seen
    closed: set[str] = field(default_factory=set)
    visited: set[str] = field(default_factory=set)
    at: str | None = None
    holding: str | None = None
    done_flags: set[str] = field(default_factory=set)  # flags applied to the held object
    placed: dict[str, str] = field(default_factory=dict)  # object -> receptacle we put it in

    # -------------------------------------------------------------- perception

    def observe(self, action: str | None, obs: str) -> None:
        """Update beliefs from the last action and the observation it produced."""
        if action is None:
            self.task = parse_goal(obs)
            self._read_room(obs.split("\n\n")[0], room=None)
            return
        if obs == "Nothing happens.":
            return
        verb = action.split(" ")[0]
        if verb == "go":
            target = action[6:]
            m = _ARRIVE_ROOM.match(obs)
            if m:
                self._read_room(obs, room=m.group(1))
            else:
                self.at = target
                self._read_recep(target, obs)
        elif verb == "open":
            self._read_recep(action[5:], obs)
        elif verb == "take":
            obj, recep = action[5:].split(" from ")
            self.holding = obj
            self.done_flags = set()
            if obj in self.contents.get(recep, []):
                self.contents[recep].remove(obj)
        elif verb == "move":
            obj, recep = action[5:].split(" to ")
            self.contents.setdefault(recep, []).append(obj)
            self.placed[obj] = recep
            self.holding = None
        elif verb in ("heat", "cool", "clean"):
            self.done_flags.add({"heat": "hot", "cool": "cool", "clean": "clean"}[verb])

    def _read_room(self, obs: str, room: str | None) -> None:
        self.at = None
        m = _EXITS.search(obs)
        if room is None:  # the intro
            named = re.match(r"You are in the middle of the (\w+)\.", obs)
            room = named.group(1) if named else "room"
        self.room = room
        if room not in self.rooms:
            self.rooms.append(room)
        if m:
            for r in re.findall(r"the (\w+)", m.group(1)):
                if r not in self.rooms:
                    self.rooms.append(r)
        see = _SEE.search(obs)
        self.by_room[room] = _items(see.group(1)) if see else []

    def _read_recep(self, recep: str, obs: str) -> None:
        if _CLOSED.search(obs) and f"The {recep} is closed." in obs:
            self.closed.add(recep)
            return
        self.closed.discard(recep)
        self.visited.add(recep)
        see = _SEE.search(obs)
        self.contents[recep] = _items(see.group(1)) if see else []

    # -------------------------------------------------------------- beliefs -> plan

    def _room_of(self, recep: str) -> str | None:
        return next((r for r, names in self.by_room.items() if recep in names), None)

    def _route(self, recep: str, open_it: bool = True) -> str | None:
        room = self._room_of(recep)
        if room is not None and room != self.room:
            return f"go to {room}"
        if self.at != recep:
            return f"go to {recep}"
        if open_it and recep in self.closed:
            return f"open {recep}"
        return None

    def _known(self, kind: str, exclude: str | None = None) -> list[tuple[str, str]]:
        return [
            (o, r)
            for r, objs in self.contents.items()
            if r != exclude
            for o in objs
            if _kind(o) == kind
        ]

    def _receps_of(self, kind: str) -> list[str]:
        return [r for names in self.by_room.values() for r in names if _kind(r) == kind]

    def _explore(self) -> str:
        for r in self.by_room.get(self.room, []):
            if r not in self.visited:
                return self._route(r) or f"open {r}"
        for room in self.rooms:
            if room not in self.by_room:
                return f"go to {room}"
        for room, names in self.by_room.items():
            if any(r not in self.visited for r in names):
                return f"go to {room}"
        self.visited.clear()  # everything seen and still missing: look again
        return self._explore() if self.by_room.get(self.room) else "look"

    def _in_room_first(self, receps: list[str]) -> str:
        return min(receps, key=lambda r: (self._room_of(r) != self.room, r != self.at, r))

    def act(self) -> str:
        """The next command from the beliefs (explores while something is unknown)."""
        task = self.task
        assert task is not None, "observe() the first observation before act()"
        held = self.holding
        if task.task_type == "look_at_obj_in_light":
            if held is not None and _kind(held) == task.obj:
                lamps = [(o, r) for o, r in self._known(task.lamp)]
                if not lamps:
                    return self._explore()
                lamp, where = min(lamps, key=lambda x: (self._room_of(x[1]) != self.room, x[1]))
                return self._route(where) or f"use {lamp}"
            return self._take(task.obj, None)
        dests = self._receps_of(task.recep)
        if held is not None and _kind(held) == task.obj:
            if task.flag and task.flag not in self.done_flags:
                appl = self._receps_of(APPLIANCE[task.flag])
                if not appl:
                    return self._explore()
                a = self._in_room_first(appl)
                return self._route(a, False) or f"{VERB_OF_FLAG[task.flag]} {held} with {a}"
            if not dests:
                return self._explore()
            dest = self._dest(dests)
            return self._route(dest) or f"move {held} to {dest}"
        return self._take(task.obj, self._dest(dests) if dests and task.count == 2 else None)

    def _dest(self, dests: list[str]) -> str:
        used = [r for r in self.placed.values() if r in dests]
        return used[0] if used else self._in_room_first(dests)

    def _take(self, kind: str, exclude: str | None) -> str:
        if self.holding is not None:  # should not happen: the explorer only takes targets
            where = self.at or self.by_room[self.room][0]
            return self._route(where) or f"move {self.holding} to {where}"
        known = [(o, r) for o, r in self._known(kind, exclude) if o not in self.placed]
        if not known:
            return self._explore()
        obj, where = min(
            known, key=lambda x: (self._room_of(x[1]) != self.room, x[1] != self.at, x[1])
        )
        return self._route(where) or f"take {obj} from {where}"
