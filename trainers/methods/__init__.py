"""Registry of training methods: ``@register_method("name")``, ``get_method(name)``, ``METHODS``.

Importing this package registers the built-in methods. Methods of optional modules (the
self-distillation family) are imported with a guard: a module that is missing or fails to import
leaves the rest of the registry intact (the reason is kept in ``IMPORT_ERRORS``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from trainers.errors import UnknownMethodError
from trainers.methods.base import Method, RolloutOverrides, TrainBatch, TrainContext

__all__ = [
    "METHODS",
    "IMPORT_ERRORS",
    "register_method",
    "get_method",
    "Method",
    "TrainBatch",
    "TrainContext",
    "RolloutOverrides",
]

METHODS: dict[str, type[Method]] = {}
IMPORT_ERRORS: dict[str, str] = {}

M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a ``Method`` subclass under ``name`` (sets ``cls.name``)."""

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) needs a Method subclass, got {cls!r}")
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {METHODS[name].__module__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[Method]:
    """The registered method class; ``UnknownMethodError`` lists the known names."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS)) or "(none)"
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {known}") from None


_BUILTIN = ("grpo", "sft", "opd", "sod")
_OPTIONAL = ("opsd", "pi_distill", "tt_opd", "skill_sd", "tcod")

for _mod in _BUILTIN:
    importlib.import_module(f"trainers.methods.{_mod}")
for _mod in _OPTIONAL:
    try:
        importlib.import_module(f"trainers.methods.{_mod}")
    except ImportError as exc:  # a missing optional module must not break the registry
        IMPORT_ERRORS[_mod] = f"{type(exc).__name__}: {exc}"
