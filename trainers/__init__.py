"""DistillGym trainers: one training loop, pluggable methods (GRPO, SFT, OPD, SOD, self-distillation).

Command line: ``python -m trainers --help``. From Python::

    from trainers import train, get_method
    cfg = get_method("grpo").config_cls(env="DistillGym/Household-v0", steps=10)
    result = train(cfg)

Heavy imports (torch models, envs, the store) happen when ``train`` runs, not on import.
"""

from __future__ import annotations

from typing import Any

from trainers.errors import (
    BatchTooLargeError,
    CheckpointError,
    TeacherMismatchError,
    TooManyBadStepsError,
    TrainerError,
    UnknownMethodError,
)
from trainers.train_config import TrainConfig

__all__ = [
    "train",
    "get_method",
    "METHODS",
    "TrainConfig",
    "TrainerError",
    "UnknownMethodError",
    "TeacherMismatchError",
    "BatchTooLargeError",
    "TooManyBadStepsError",
    "CheckpointError",
]


def __getattr__(name: str) -> Any:  # lazy: importing trainers.config must not pull torch models
    if name == "train":
        from trainers.loop import train

        return train
    if name in ("get_method", "METHODS", "register_method"):
        import trainers.methods as methods

        return getattr(methods, name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
