"""Errors raised by the agents layer.

These are *program* errors: they mean the code (a renderer, a backend, a config) is wrong and
must be fixed, so they are raised loudly. *Model* failures (an empty generation, a reply that
does not parse, a context overflow, an env that raised) are never exceptions: the rollout records
them as data (``Turn.finish_reason``, ``Turn.action_valid``, ``Episode.end_reason``).
"""

from __future__ import annotations

__all__ = ["AgentsError", "TokenDriftError", "TemplateError", "BackendError", "ScoringError"]


class AgentsError(Exception):
    """Base of every error raised by ``agents``."""


class TokenDriftError(AgentsError, AssertionError):
    """A turn's token ids do not extend the previous turn's ids (history was re-rendered)."""


class TemplateError(AgentsError, ValueError):
    """A chat template cannot be rendered incrementally (it rewrites earlier turns)."""


class BackendError(AgentsError, RuntimeError):
    """A generation backend is misconfigured or was used wrongly."""


class ScoringError(AgentsError, ValueError):
    """Teacher scoring got inputs that cannot be aligned with the student's tokens."""
