"""Records and errors of the ``kernels`` package.

The teacher side of a distillation loss comes in three forms; each is a small frozen record so
that ``distill_loss`` can tell them apart without string keys:

- a plain ``torch.Tensor`` of teacher logits ``(N, V)``;
- :class:`TeacherHidden`: teacher hidden states ``(N, H_T)`` and the teacher head ``(V, H_T)``; the
  loss computes the teacher logits one chunk at a time and never holds all of them;
- :class:`TeacherTopK`: the teacher's top-k token ids and log-probs ``(N, k)``; the rest of the
  vocabulary is one *tail bucket* with log-prob ``log(1 - sum_i p_i)``.

The teacher is always a stop-gradient target: no gradient flows into any teacher tensor.

Errors: every program error raised here derives from :class:`KernelError`; bad arguments raise
:class:`KernelInputError` (also a ``ValueError``), an unusable backend raises
:class:`KernelBackendError` (also a ``RuntimeError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "DivergenceKind",
    "Reduction",
    "Backend",
    "TeacherHidden",
    "TeacherTopK",
    "Teacher",
    "KernelError",
    "KernelInputError",
    "KernelBackendError",
]

DivergenceKind = Literal["fkl", "rkl", "jsd"]
Reduction = Literal["none", "sum", "mean"]
Backend = Literal["auto", "torch", "triton"]


class KernelError(Exception):
    """Base of every error raised by ``kernels``."""


class KernelInputError(KernelError, ValueError):
    """Arguments of a loss call are inconsistent (shapes, kinds, ranges)."""


class KernelBackendError(KernelError, RuntimeError):
    """The requested backend cannot run here (no CUDA and no Triton interpreter, missing triton)."""


@dataclass(frozen=True)
class TeacherHidden:
    """Teacher given as hidden states and output head: ``logits_T = hidden @ head.T``.

    Shapes: ``hidden (N, H_T)`` (or ``(..., H_T)`` matching the student's leading shape),
    ``head (V, H_T)``. The teacher may have a different hidden size from the student.
    """

    hidden: torch.Tensor
    head: torch.Tensor


@dataclass(frozen=True)
class TeacherTopK:
    """Teacher given as its top-k log-probs plus an implicit tail bucket.

    Shapes: ``indices (N, k)`` int64 token ids (distinct within a row), ``logprobs (N, k)`` the
    teacher's normalized log-probs of those tokens (already at the temperature the teacher was
    scored at: ``temperature`` of the loss then applies to the student only). The tail bucket has
    ``log P_tail = log(1 - sum_i exp(logprobs_i))`` and the student's probabilities are aggregated the
    same way (``Q_tail = 1 - sum_i q_{indices_i}``), so the divergence is taken over k+1 buckets.
    """

    indices: torch.Tensor
    logprobs: torch.Tensor


Teacher = torch.Tensor | TeacherHidden | TeacherTopK
