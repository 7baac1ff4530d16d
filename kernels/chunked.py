"""Chunked divergence loss: the PyTorch row math (CPU path) and the token-chunk loops (all paths).

Why chunks: the vocabulary matmul dominates and materializing all logits costs ``N*V*4`` bytes per
model (8192 x 150k x 4 B = 4.9 GB). The loops here process ``chunk_size`` token rows at a time:
one matmul for the chunk's student (and teacher) logits, one *row function* that returns the
per-token loss, the student entropy and the gradient w.r.t. the chunk's raw student logits, then
the matmuls for ``dX`` and an fp32-accumulated ``dW``. Peak extra memory is one chunk of logits
(a few ``(chunk, V)`` fp32 buffers) plus ``dW``, independent of N. Rows with weight 0 are never
gathered, so they cost no matmul and get an exactly-zero gradient.

Row math (one row, ``s = z_S/T``, ``t = z_T/T``, ``q = softmax(s)``, ``p = softmax(t)``): every
divergence here is a function ``D(log q, log p)`` of the normalized student log-probs. With
``Gamma_v = dD/d(log q_v)`` (entries of ``log q`` taken as free variables), the chain rule through
``log q = s - logsumexp(s)`` gives::

    dD/ds_v = Gamma_v - q_v * sum_u Gamma_u            dD/dz_v = (w_t / T) * dD/ds_v

    FKL:  Gamma = -p                              ->  dD/ds = q - p
    RKL:  Gamma = q (log q - log p) + q           ->  dD/ds = q (log q - log p - RKL)
    JSD:  Gamma = (1-b) q (log q - log m)         ->  dD/ds = (1-b) q (log q - log m - KL(q||m))
    H  :  Gamma = -q (log q + 1)                  ->  dH/ds = -q (log q + H)   (entropy; not used)

so each row gradient sums to 0. The same identity handles top-k teachers: ``D`` is taken over the
k+1 buckets ``log Q_b`` and ``dD/ds_v = Gamma_b(v) q_v / Q_b(v) - q_v sum_b Gamma_b``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .reference import teacher_bucket_logprobs, topk_bucket_logprobs
from .types import DivergenceKind

__all__ = [
    "LossConfig",
    "TeacherRows",
    "RowFn",
    "default_chunk_size",
    "divergence_and_gamma",
    "divergence_and_grad",
    "torch_rows",
    "fused_linear_pass",
    "logits_pass",
]


@dataclass(frozen=True)
class LossConfig:
    """Resolved settings of one loss call (``kind`` already has the JSD endpoints mapped)."""

    kind: DivergenceKind
    beta: float
    temperature: float
    chunk_size: int
    backend: str  # "torch" | "triton"


@dataclass(frozen=True)
class TeacherRows:
    """The teacher's rows for one chunk: full logits ``(c, V)`` or top-k ``(c, k)`` pairs."""

    logits: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None


# A row function: (student logits (c, V), teacher rows, grad scale w_t/T (c,) or None, config)
#   -> (loss (c,) unweighted, entropy (c,), grad dL/dz (c, V) fp32 scaled by w_t/T, or None).
RowFn = Callable[
    [torch.Tensor, TeacherRows, torch.Tensor | None, LossConfig],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
]


def default_chunk_size(vocab_size: int, device: torch.device) -> int:
    """Rows per chunk: >=512 on CUDA (keeps the matmul compute-bound), ~16 MB fp32 buffers on CPU."""
    if device.type == "cuda":
        return 512 if vocab_size > 65536 else 1024
    return int(max(8, min(1024, (1 << 22) // max(vocab_size, 1))))


def _plogratio(x: torch.Tensor, log_x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """Elementwise ``x (log x - log y)`` with ``0 * anything = 0`` (guards ``-inf * 0``)."""
    return torch.where(x > 0, x * (log_x - log_y), torch.zeros((), dtype=x.dtype, device=x.device))


def divergence_and_gamma(
    logq: torch.Tensor, logp: torch.Tensor, kind: DivergenceKind, beta: float, want_gamma: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row divergence ``D`` and ``Gamma = dD/d(log q)``. ``logq, logp (c, B) -> (c,), (c, B)``.

    ``kind`` is already resolved (``jsd`` here means ``0 < beta < 1``). Used for the k+1 buckets
    of a top-k teacher; see the module docstring for the formulas.
    """
    q = logq.exp()
    if kind == "fkl":
        p = logp.exp()
        loss = _plogratio(p, logp, logq).sum(-1)
        return loss, (-p if want_gamma else None)
    if kind == "rkl":
        term = _plogratio(q, logq, logp)
        loss = term.sum(-1)
        return loss, (term.add_(q) if want_gamma else None)
    logm = torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))
    p = logp.exp()
    kl_pm = _plogratio(p, logp, logm).sum(-1)
    del p
    term_q = _plogratio(q, logq, logm)
    loss = beta * kl_pm + (1.0 - beta) * term_q.sum(-1)
    return loss, (term_q.mul_(1.0 - beta) if want_gamma else None)


def divergence_and_grad(
    logq: torch.Tensor, logp: torch.Tensor, kind: DivergenceKind, beta: float, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row divergence and ``dD/ds`` over the full vocabulary, in closed form.

    ``logq, logp (c, V) -> (c,), (c, V)``. The closed forms ``q - p``, ``q (log q - log p - RKL)``
    and ``(1-b) q (log q - log m - KL(q||m))`` (module docstring) are exactly zero for identical
    rows, unlike ``Gamma - q sum(Gamma)`` whose two terms only cancel up to rounding.
    """
    zero = torch.zeros((), dtype=logq.dtype, device=logq.device)
    q = logq.exp()
    if kind == "fkl":
        p = logp.exp()
        loss = _plogratio(p, logp, logq).sum(-1)
        return loss, (q.sub_(p) if want_grad else None)
    if kind == "rkl":
        diff = logq - logp
        loss = torch.where(q > 0, q * diff, zero).sum(-1)
        if not want_grad:
            return loss, None
        return loss, torch.where(q > 0, q * diff.sub_(loss.unsqueeze(-1)), zero)
    logm = torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))
    p = logp.exp()
    kl_pm = _plogratio(p, logp, logm).sum(-1)
    del p
    diff = logq - logm
    del logm
    kl_qm = torch.where(q > 0, q * diff, zero).sum(-1)
    loss = beta * kl_pm + (1.0 - beta) * kl_qm
    if not want_grad:
        return loss, None
    grad = torch.where(q > 0, q * diff.sub_(kl_qm.unsqueeze(-1)), zero)
    return loss, grad.mul_(1.0 - beta)


def _entropy(logq: torch.Tensor) -> torch.Tensor:
    """``H = -sum_v q log q`` per row, with ``0 log 0 = 0``. ``(c, V) -> (c,)``."""
    q = logq.exp()
    return -torch.where(q > 0, q * logq, torch.zeros((), dtype=q.dtype, device=q.device)).sum(-1)


def torch_rows(
    z_s: torch.Tensor, teacher: TeacherRows, scale: torch.Tensor | None, cfg: LossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row function of the PyTorch path (fp32 math whatever the input dtype). See :data:`RowFn`.

    ``scale (c,)`` is ``w_t / T``; when it is None no gradient is computed.
    """
    inv_t = 1.0 / cfg.temperature
    dt = math_dtype(z_s.dtype)
    logq = torch.log_softmax(z_s.to(dt) * inv_t, dim=-1)
    entropy = _entropy(logq)
    want = scale is not None
    if teacher.logits is not None:
        logp = torch.log_softmax(teacher.logits.to(dt) * inv_t, dim=-1)
        loss, grad = divergence_and_grad(logq, logp, cfg.kind, cfg.beta, want)
        del logp
        if grad is None:
            return loss, entropy, None
    else:
        assert teacher.indices is not None and teacher.logprobs is not None
        idx = teacher.indices
        logq_b = topk_bucket_logprobs(logq, idx)
        logp_b = teacher_bucket_logprobs(teacher.logprobs.to(dt))
        loss, gamma_b = divergence_and_gamma(logq_b, logp_b, cfg.kind, cfg.beta, want)
        if gamma_b is None:
            return loss, entropy, None
        gamma_sum = gamma_b.sum(-1, keepdim=True)
        tail_ratio = torch.nan_to_num((logq - logq_b[:, -1:]).exp_(), nan=0.0, posinf=0.0)
        grad = tail_ratio.mul_(gamma_b[:, -1:]).sub_(logq.exp() * gamma_sum)
        top = gamma_b[:, :-1] - logq_b[:, :-1].exp() * gamma_sum
        grad.scatter_(-1, idx, top)
    assert scale is not None
    return loss, entropy, grad.mul_(scale.unsqueeze(-1))


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the row math: float64 stays float64 (tests), everything else runs in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with an fp32 (or fp64) result (fp32 accumulate on CUDA for bf16/fp16 inputs)."""
    if a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64):
        return torch.mm(a, b)
    if a.device.type == "cuda" and a.dtype == b.dtype:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return torch.mm(a.float(), b.float())


def _chunks(n: int, rows: torch.Tensor | None, size: int) -> Iterator[slice | torch.Tensor]:
    """Yield row selectors: slices over ``range(n)`` or index chunks of ``rows`` (kept rows)."""
    if rows is None:
        for start in range(0, n, size):
            yield slice(start, min(start + size, n))
    else:
        for start in range(0, rows.numel(), size):
            yield rows[start : start + size]


def _take(x: torch.Tensor | None, sel: slice | torch.Tensor) -> torch.Tensor | None:
    if x is None:
        return None
    return x[sel] if isinstance(sel, slice) else x.index_select(0, sel)


def _teacher_rows(
    sel: slice | torch.Tensor,
    t_logits: torch.Tensor | None,
    t_hidden: torch.Tensor | None,
    t_head: torch.Tensor | None,
    t_indices: torch.Tensor | None,
    t_logprobs: torch.Tensor | None,
) -> TeacherRows:
    if t_hidden is not None:
        assert t_head is not None
        th = _take(t_hidden, sel)
        assert th is not None
        return TeacherRows(logits=mm_f32(th, t_head.t()))
    return TeacherRows(
        logits=_take(t_logits, sel), indices=_take(t_indices, sel), logprobs=_take(t_logprobs, sel)
    )


@dataclass
class PassResult:
    """What one chunked pass produced. Losses are weighted (``w_t * D_t``); grads may be None."""

    loss: torch.Tensor  # (N,) fp32 (fp64 for fp64 inputs)
    entropy: torch.Tensor  # (N,)
    grad_hidden: torch.Tensor | None = None  # (N, H), zero rows where w_t = 0
    grad_head: torch.Tensor | None = None  # (V, H), fp32-accumulated


def fused_linear_pass(
    hidden: torch.Tensor,
    head: torch.Tensor,
    teacher: dict[str, torch.Tensor | None],
    weights: torch.Tensor,
    rows: torch.Tensor | None,
    cfg: LossConfig,
    row_fn: RowFn,
    need_dx: bool,
    need_dw: bool,
) -> PassResult:
    """One chunked pass of ``D(softmax(hidden @ head.T / T), teacher)`` with optional gradients.

    ``hidden (N, H)``, ``head (V, H)``, ``weights (N,)`` fp32, ``rows`` the kept row ids (or None
    for all rows), ``teacher`` keys ``t_logits | t_hidden, t_head | t_indices, t_logprobs``.
    Gradients are those of ``sum_t w_t D_t``: ``dX = dZ @ head``, ``dW = dZ^T @ hidden``.
    """
    n = hidden.shape[0]
    dev, dt = hidden.device, math_dtype(hidden.dtype)
    out = PassResult(
        loss=torch.zeros(n, dtype=dt, device=dev),
        entropy=torch.zeros(n, dtype=dt, device=dev),
    )
    if need_dx:
        out.grad_hidden = torch.zeros(n, hidden.shape[1], dtype=dt, device=dev)
    if need_dw:
        out.grad_head = torch.zeros(head.shape, dtype=dt, device=dev)
    want_grad = need_dx or need_dw
    head_t = head.t()
    for sel in _chunks(n, rows, cfg.chunk_size):
        h_c = _take(hidden, sel)
        assert h_c is not None
        w_c = _take(weights, sel)
        assert w_c is not None
        z = mm_f32(h_c, head_t)
        t_rows = _teacher_rows(sel, **teacher)
        scale = w_c / cfg.temperature if want_grad else None
        loss, ent, grad = row_fn(z, t_rows, scale, cfg)
        del z, t_rows
        out.loss[sel] = loss * w_c
        out.entropy[sel] = ent
        if grad is None:
            continue
        if out.grad_hidden is not None:
            out.grad_hidden[sel] = mm_f32(grad.to(head.dtype), head)
        if out.grad_head is not None:
            if head.dtype == dt and h_c.dtype == dt:
                out.grad_head.addmm_(grad.t(), h_c)
            else:
                out.grad_head += mm_f32(grad.to(h_c.dtype).t(), h_c)
    return out


def logits_pass(
    student_logits: torch.Tensor,
    teacher: dict[str, torch.Tensor | None],
    weights: torch.Tensor,
    rows: torch.Tensor | None,
    cfg: LossConfig,
    row_fn: RowFn,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One chunked pass over given student logits ``(N, V)``.

    Returns weighted losses ``(N,)``, entropies ``(N,)`` and, when ``need_grad``, the gradient of
    ``sum_t w_t D_t`` w.r.t. the student logits ``(N, V)`` in their dtype (zero rows where w_t = 0).
    """
    n = student_logits.shape[0]
    dev, dt = student_logits.device, math_dtype(student_logits.dtype)
    loss_all = torch.zeros(n, dtype=dt, device=dev)
    ent_all = torch.zeros(n, dtype=dt, device=dev)
    grad_all = torch.zeros_like(student_logits) if need_grad else None
    for sel in _chunks(n, rows, cfg.chunk_size):
        z = _take(student_logits, sel)
        w_c = _take(weights, sel)
        assert z is not None and w_c is not None
        t_rows = _teacher_rows(sel, **teacher)
        scale = w_c / cfg.temperature if need_grad else None
        loss, ent, grad = row_fn(z, t_rows, scale, cfg)
        loss_all[sel] = loss * w_c
        ent_all[sel] = ent
        if grad_all is not None and grad is not None:
            grad_all[sel] = grad.to(grad_all.dtype)
    return loss_all, ent_all, grad_all
