"""Static content of the household world: rooms, receptacles, objects, task types and goal texts.

Names follow ALFWorld (``countertop``, ``sinkbasin``, ``desklamp``...). Everything here is data; the
rules live in :mod:`envs.household.world` and the generator in :mod:`envs.household.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "APPLIANCE",
    "FLAG_OF",
    "GOAL_TEMPLATES",
    "LAMP_HOSTS",
    "LAMP_KINDS",
    "OBJECTS",
    "OPENABLE",
    "ROOMS",
    "SINGLETON",
    "TASK_TYPES",
    "ObjectKind",
]

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

# The state flag each processing task needs, and the appliance kind that sets it.
FLAG_OF: dict[str, str] = {
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "hot",
    "pick_cool_then_place_in_recep": "cool",
}
APPLIANCE: dict[str, str] = {"clean": "sinkbasin", "hot": "microwave", "cool": "fridge"}
VERB_OF_FLAG: dict[str, str] = {"clean": "clean", "hot": "heat", "cool": "cool"}

# ALFWorld's goal texts; the first template of each type is the one used at difficulty 1.
GOAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick_and_place_simple": ("put a {obj} in {recep}.", "put some {obj} on {recep}."),
    "look_at_obj_in_light": (
        "look at {obj} under the {lamp}.",
        "examine the {obj} with the {lamp}.",
    ),
    "pick_clean_then_place_in_recep": (
        "put a clean {obj} in {recep}.",
        "clean some {obj} and put it in {recep}.",
    ),
    "pick_heat_then_place_in_recep": (
        "put a hot {obj} in {recep}.",
        "heat some {obj} and put it in {recep}.",
    ),
    "pick_cool_then_place_in_recep": (
        "put a cool {obj} in {recep}.",
        "cool some {obj} and put it in {recep}.",
    ),
    "pick_two_obj_and_place": (
        "put two {obj} in {recep}.",
        "find two {obj} and put them in {recep}.",
    ),
}

OPENABLE: frozenset[str] = frozenset({"fridge", "cabinet", "microwave", "drawer", "safe", "box"})
# At most one of these per room.
SINGLETON: frozenset[str] = frozenset(
    {
        "fridge",
        "microwave",
        "sinkbasin",
        "stoveburner",
        "coffeemachine",
        "toaster",
        "bed",
        "sofa",
        "tvstand",
        "bathtubbasin",
        "toilet",
        "desk",
        "dresser",
        "diningtable",
        "coffeetable",
        "garbagecan",
        "safe",
        "towelholder",
        "handtowelholder",
    }
)

# Receptacle kinds each room may hold (the first ones are the most typical).
ROOMS: dict[str, tuple[str, ...]] = {
    "kitchen": (
        "countertop",
        "cabinet",
        "drawer",
        "fridge",
        "microwave",
        "sinkbasin",
        "stoveburner",
        "coffeemachine",
        "diningtable",
        "toaster",
        "garbagecan",
        "shelf",
    ),
    "livingroom": (
        "sofa",
        "armchair",
        "coffeetable",
        "sidetable",
        "tvstand",
        "shelf",
        "drawer",
        "cabinet",
        "diningtable",
        "garbagecan",
        "box",
    ),
    "bedroom": (
        "bed",
        "desk",
        "dresser",
        "drawer",
        "shelf",
        "sidetable",
        "safe",
        "garbagecan",
        "armchair",
        "box",
    ),
    "bathroom": (
        "sinkbasin",
        "bathtubbasin",
        "toilet",
        "countertop",
        "cabinet",
        "towelholder",
        "handtowelholder",
        "garbagecan",
        "drawer",
    ),
}

LAMP_KINDS: tuple[str, ...] = ("desklamp", "floorlamp")
LAMP_HOSTS: dict[str, tuple[str, ...]] = {
    "desklamp": ("desk", "sidetable", "dresser"),
    "floorlamp": ("sidetable", "armchair", "sofa"),
}


@dataclass(frozen=True)
class ObjectKind:
    """An object type: where it spawns, where a goal may ask for it, what can be done to it."""

    name: str
    spawn: tuple[str, ...]
    goals: tuple[str, ...]
    cleanable: bool = False
    heatable: bool = False
    coolable: bool = False


_FOOD_SPAWN = ("countertop", "diningtable", "fridge", "shelf")
_FOOD_GOALS = ("countertop", "diningtable", "fridge", "microwave", "garbagecan", "shelf", "cabinet")
_DISH_SPAWN = ("cabinet", "countertop", "diningtable", "shelf", "sinkbasin")
_DISH_GOALS = ("cabinet", "countertop", "diningtable", "shelf", "microwave", "fridge")
_TOOL_SPAWN = ("drawer", "countertop", "diningtable", "sinkbasin")
_TOOL_GOALS = ("drawer", "countertop", "diningtable", "cabinet")
_SMALL_SPAWN = (
    "desk",
    "sidetable",
    "dresser",
    "drawer",
    "shelf",
    "bed",
    "sofa",
    "coffeetable",
    "armchair",
)
_SMALL_GOALS = (
    "desk",
    "sidetable",
    "dresser",
    "drawer",
    "shelf",
    "safe",
    "box",
    "coffeetable",
    "garbagecan",
)
_BATH_SPAWN = ("countertop", "cabinet", "toilet", "bathtubbasin", "sinkbasin", "drawer")
_BATH_GOALS = ("countertop", "cabinet", "toilet", "drawer", "garbagecan", "bathtubbasin")


def _k(name: str, spawn: tuple[str, ...], goals: tuple[str, ...], flags: str = "") -> ObjectKind:
    return ObjectKind(name, spawn, goals, "c" in flags, "h" in flags, "k" in flags)


OBJECTS: dict[str, ObjectKind] = {
    o.name: o
    for o in (
        _k("apple", _FOOD_SPAWN, _FOOD_GOALS, "chk"),
        _k("bread", _FOOD_SPAWN, _FOOD_GOALS, "hk"),
        _k("egg", _FOOD_SPAWN, _FOOD_GOALS, "chk"),
        _k("potato", _FOOD_SPAWN, _FOOD_GOALS, "chk"),
        _k("tomato", _FOOD_SPAWN, _FOOD_GOALS, "chk"),
        _k("lettuce", _FOOD_SPAWN, _FOOD_GOALS, "ck"),
        _k("mug", _DISH_SPAWN + ("coffeemachine",), _DISH_GOALS + ("coffeemachine",), "chk"),
        _k("cup", _DISH_SPAWN, _DISH_GOALS, "chk"),
        _k("plate", _DISH_SPAWN, _DISH_GOALS, "chk"),
        _k("bowl", _DISH_SPAWN, _DISH_GOALS, "chk"),
        _k(
            "pan",
            ("stoveburner", "countertop", "cabinet"),
            ("stoveburner", "countertop", "cabinet", "diningtable"),
            "ck",
        ),
        _k(
            "pot",
            ("stoveburner", "countertop", "cabinet"),
            ("stoveburner", "countertop", "cabinet", "diningtable"),
            "ck",
        ),
        _k("knife", _TOOL_SPAWN, _TOOL_GOALS, "c"),
        _k("fork", _TOOL_SPAWN, _TOOL_GOALS, "c"),
        _k("spoon", _TOOL_SPAWN, _TOOL_GOALS, "c"),
        _k("spatula", _TOOL_SPAWN, _TOOL_GOALS, "c"),
        _k("ladle", _TOOL_SPAWN, _TOOL_GOALS, "c"),
        _k(
            "winebottle",
            ("countertop", "cabinet", "diningtable", "fridge"),
            ("countertop", "cabinet", "fridge", "garbagecan", "diningtable"),
            "k",
        ),
        _k("cellphone", _SMALL_SPAWN, _SMALL_GOALS),
        _k("book", _SMALL_SPAWN, _SMALL_GOALS),
        _k("pen", _SMALL_SPAWN, _SMALL_GOALS),
        _k("pencil", _SMALL_SPAWN, _SMALL_GOALS),
        _k("keychain", _SMALL_SPAWN, _SMALL_GOALS),
        _k("creditcard", _SMALL_SPAWN, _SMALL_GOALS),
        _k("cd", _SMALL_SPAWN, _SMALL_GOALS),
        _k("alarmclock", _SMALL_SPAWN, _SMALL_GOALS),
        _k(
            "remotecontrol",
            ("sofa", "armchair", "coffeetable", "sidetable", "tvstand"),
            ("sofa", "armchair", "coffeetable", "sidetable", "tvstand", "box"),
        ),
        _k("pillow", ("bed", "sofa", "armchair"), ("bed", "sofa", "armchair")),
        _k(
            "vase",
            ("shelf", "coffeetable", "sidetable", "tvstand", "dresser"),
            ("shelf", "coffeetable", "sidetable", "safe", "dresser"),
        ),
        _k(
            "statue",
            ("shelf", "coffeetable", "sidetable", "tvstand", "desk"),
            ("shelf", "coffeetable", "sidetable", "desk", "dresser"),
        ),
        _k("soapbar", _BATH_SPAWN, _BATH_GOALS, "c"),
        _k("cloth", _BATH_SPAWN, _BATH_GOALS + ("towelholder",), "c"),
        _k("spraybottle", _BATH_SPAWN, _BATH_GOALS),
        _k("toiletpaper", _BATH_SPAWN, _BATH_GOALS),
        _k("candle", _BATH_SPAWN, _BATH_GOALS),
        _k(
            "towel",
            ("towelholder", "handtowelholder", "bathtubbasin"),
            ("towelholder", "handtowelholder", "countertop", "garbagecan"),
        ),
    )
}
