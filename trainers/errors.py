"""Exceptions raised by the trainers: program and configuration errors, loud and specific.

Model failures (bad generations, parse errors, context overflow) are *data* recorded on the
episodes; the exceptions here are for things a user or a programmer must fix. Configuration
problems found while parsing are ``trainers.config.ConfigError``; the ones below are found later,
once models, envs and batches exist.
"""

from __future__ import annotations

__all__ = [
    "TrainerError",
    "UnknownMethodError",
    "TeacherMismatchError",
    "BatchTooLargeError",
    "TooManyBadStepsError",
    "CheckpointError",
]


class TrainerError(Exception):
    """Base class of every error raised by ``trainers``."""


class UnknownMethodError(TrainerError, KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TeacherMismatchError(TrainerError):
    """The teacher's tokenizer differs from the student's (sampled-token methods need the same one)."""


class BatchTooLargeError(TrainerError):
    """A training row does not fit in one micro-batch's token budget."""


class TooManyBadStepsError(TrainerError):
    """More non-finite (NaN/inf) losses or gradients than ``max_bad_steps`` allows."""


class CheckpointError(TrainerError):
    """A checkpoint is missing, incomplete or does not match the run."""
