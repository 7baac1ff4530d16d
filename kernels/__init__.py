"""DistillGym kernels: the fused divergence loss for distillation and sampled-token KL estimators.

- :func:`distill_loss` -- forward KL, reverse KL or generalized JSD(beta) between the student
  ``softmax(hidden @ head.T / T)`` and a teacher given as logits, :class:`TeacherHidden` or
  :class:`TeacherTopK`; chunked over tokens (one chunk of logits in memory), per-token weights and
  outputs, optional student entropy, exact gradients for the student hidden states and head.
  Triton row kernel on CUDA, chunked PyTorch on CPU, one ``autograd.Function``.
- :func:`distill_loss_from_logits` -- the same loss when the student logits already exist.
- :mod:`kernels.estimators` -- k1, k3, importance-weighted k3 (Skill-SD), the PG surrogate.
- :mod:`kernels.reference` -- the plain autograd definition the fast paths are tested against.

Beta convention (TRL/Liger): ``beta=0`` forward KL(T||S), ``beta=1`` reverse KL(S||T); see
:mod:`kernels.api` for the endpoint special cases.

This package never sets ``TRITON_INTERPRET``; tests that run the Triton kernel on CPU set it before
the first Triton use (the kernel module is imported lazily).

Example::

    loss = distill_loss(h, model.lm_head.weight, teacher=TeacherHidden(h_t, teacher_head),
                        kind="jsd", beta=0.5, temperature=1.1, weights=mask, reduction="mean")
    loss.backward()
"""

from .api import distill_loss, distill_loss_from_logits, triton_available
from .estimators import (
    importance_weighted_k3,
    k1,
    k3,
    log_ratio,
    masked_mean,
    masked_sum,
    pg_reverse_kl,
)
from .types import (
    KernelBackendError,
    KernelError,
    KernelInputError,
    TeacherHidden,
    TeacherTopK,
)

__all__ = [
    "distill_loss",
    "distill_loss_from_logits",
    "triton_available",
    "TeacherHidden",
    "TeacherTopK",
    "KernelError",
    "KernelInputError",
    "KernelBackendError",
    "log_ratio",
    "k1",
    "k3",
    "importance_weighted_k3",
    "pg_reverse_kl",
    "masked_sum",
    "masked_mean",
]
