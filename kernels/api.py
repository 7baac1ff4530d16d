"""Public divergence-loss API: :func:`distill_loss` (fused with the head) and
:func:`distill_loss_from_logits` (for callers that already hold logits).

Divergences (per token ``t``; ``q = softmax(z_S / T)`` student, ``p`` the teacher at the same T)::

    kind="fkl"             KL(p || q) = sum_v p (log p - log q)          forward KL (mode covering)
    kind="rkl"             KL(q || p) = sum_v q (log q - log p)          reverse KL (mode seeking)
    kind="jsd", beta=b     b KL(p || m) + (1-b) KL(q || m),  m = b p + (1-b) q

Beta convention (TRL ``generalized_jsd_loss`` and Liger): ``beta=0`` is forward KL(T||S) and
``beta=1`` is reverse KL(S||T). The mixed formula tends to 0 at both ends (m -> q or m -> p), so
the endpoints are special-cased: ``jsd`` with beta 0 or 1 *computes* FKL or RKL (a discontinuity
in beta, as in TRL). ``beta`` is ignored for ``fkl``/``rkl``. ``JSD_b <= h(b)`` (binary entropy),
so ``JSD_0.5 <= log 2``.

Weights and reductions: ``weights (N,) >= 0`` scale each token (SOD step weights, importance
weights, TIP selection); a weight of 0 is the ignore mask -- such rows are dropped before any
matmul and get an exactly-zero gradient. ``reduction="none"`` returns ``w_t * D_t`` per token
(``(N,)``, or the leading shape of the input); ``"sum"`` returns ``sum_t w_t D_t``; ``"mean"``
divides that sum by the number of tokens with ``w_t > 0`` (for a global token count across
micro-batches, use ``"sum"`` and divide yourself). The optional student entropy is per token,
unweighted and carries no gradient (a diagnostic).

Temperature divides both logit rows before the divergence (no ``T^2`` factor, as in TRL); for a
:class:`TeacherTopK` teacher it applies to the student only. Edge values: ``-inf`` teacher
logits are allowed (terms with zero probability are 0); RKL is ``+inf`` when the teacher gives 0
probability to a token the student supports. The teacher is a stop-gradient target.

Backends: ``"torch"`` (chunked PyTorch, the CPU path), ``"triton"`` (the row kernel of
:mod:`kernels.triton_rows`; on CPU only under ``TRITON_INTERPRET=1``), ``"auto"`` (Triton when the
tensors are on CUDA and triton imports, else torch; top-k teachers always use torch).

Gradients: the forward pass of :func:`distill_loss` also computes ``dX`` and ``dW`` for a unit
upstream gradient; the backward rescales them, which is exact for ``dX`` row by row and for
``dW`` when the upstream gradient is the same for all kept rows (any ``sum``/``mean``). Otherwise
(a weighted sum of ``reduction="none"`` outputs) ``dW`` is recomputed by a second chunked pass.
:func:`distill_loss_from_logits` stores nothing extra and recomputes its rows in the backward.

Triton interpreter: ``TRITON_INTERPRET`` is read when :mod:`kernels.triton_rows` is first
imported (lazily, on first Triton use), so set it before that; this package never sets it,
because it would silently change every other Triton kernel in the process.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from .chunked import (
    LossConfig,
    RowFn,
    default_chunk_size,
    fused_linear_pass,
    logits_pass,
    math_dtype,
    torch_rows,
)
from .reference import resolve_kind
from .types import (
    KernelBackendError,
    KernelInputError,
    Teacher,
    TeacherHidden,
    TeacherTopK,
)

__all__ = ["distill_loss", "distill_loss_from_logits", "triton_available"]

_KINDS = ("fkl", "rkl", "jsd")
_REDUCTIONS = ("none", "sum", "mean")


def triton_available(device: torch.device) -> bool:
    """True when the Triton kernel can run for tensors on ``device`` (CUDA, or the interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _row_fn(backend: str) -> RowFn:
    if backend == "torch":
        return torch_rows
    from .triton_rows import triton_rows

    return triton_rows


def _resolve_backend(backend: str, device: torch.device, topk: bool, dtype: torch.dtype) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise KernelInputError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton":
        if topk:
            raise KernelInputError("backend='triton' takes full teacher logits; top-k uses 'torch'")
        if dtype == torch.float64:
            raise KernelInputError("backend='triton' computes in fp32; float64 inputs use 'torch'")
        if not triton_available(device):
            raise KernelBackendError(
                f"backend='triton' needs CUDA tensors or TRITON_INTERPRET=1 set before the first "
                f"Triton use (tensors are on {device.type})"
            )
        return "triton"
    fast = not topk and dtype != torch.float64 and device.type == "cuda"
    if backend == "auto" and fast and triton_available(device):
        return "triton"
    return "torch"


def _make_config(
    kind: str, beta: float, temperature: float, chunk_size: int | None, vocab: int,
    device: torch.device, backend: str, topk: bool, dtype: torch.dtype,
) -> LossConfig:
    if kind not in _KINDS:
        raise KernelInputError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not 0.0 <= beta <= 1.0:
        raise KernelInputError(f"beta must lie in [0, 1], got {beta}")
    if not temperature > 0.0:
        raise KernelInputError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise KernelInputError(f"chunk_size must be >= 1, got {chunk_size}")
    return LossConfig(
        kind=resolve_kind(kind, beta),
        beta=float(beta),
        temperature=float(temperature),
        chunk_size=chunk_size or default_chunk_size(vocab, device),
        backend=_resolve_backend(backend, device, topk, dtype),
    )


def _weights_and_rows(
    weights: torch.Tensor | None, n: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights ``(N,)`` in the math dtype and the kept row ids (None when all are non-zero)."""
    dtype = math_dtype(dtype)
    if weights is None:
        return torch.ones(n, dtype=dtype, device=device), None
    w = weights.detach().reshape(-1).to(device=device, dtype=dtype)
    if w.numel() != n:
        raise KernelInputError(f"weights must have one entry per token ({n}), got {w.numel()}")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise KernelInputError("weights must be finite and >= 0 (0 marks an ignored token)")
    keep = w != 0
    if bool(keep.all()):
        return w, None
    return w, keep.nonzero().squeeze(-1)


def _teacher_tensors(teacher: Teacher, lead: tuple[int, ...], n: int, vocab: int) -> dict[str, Any]:
    """Flatten the teacher to ``(N, ...)`` tensors keyed for :mod:`kernels.chunked`, checking shapes."""
    out: dict[str, Any] = dict(t_logits=None, t_hidden=None, t_head=None, t_indices=None, t_logprobs=None)
    if isinstance(teacher, TeacherHidden):
        th, tw = teacher.hidden.detach(), teacher.head.detach()
        if tuple(th.shape[:-1]) != lead or tw.dim() != 2 or tw.shape != (vocab, th.shape[-1]):
            raise KernelInputError(
                f"TeacherHidden shapes {tuple(th.shape)} / {tuple(tw.shape)} do not match "
                f"tokens {lead} and vocab {vocab}"
            )
        out.update(t_hidden=th.reshape(n, -1), t_head=tw)
    elif isinstance(teacher, TeacherTopK):
        idx, lp = teacher.indices.detach(), teacher.logprobs.detach()
        if tuple(idx.shape[:-1]) != lead or idx.shape != lp.shape:
            raise KernelInputError(
                f"TeacherTopK indices {tuple(idx.shape)} and logprobs {tuple(lp.shape)} must both "
                f"be tokens {lead} + (k,)"
            )
        out.update(t_indices=idx.reshape(n, -1).long(), t_logprobs=lp.reshape(n, -1))
    elif isinstance(teacher, torch.Tensor):
        if tuple(teacher.shape) != lead + (vocab,):
            raise KernelInputError(
                f"teacher logits {tuple(teacher.shape)} must have shape {lead + (vocab,)}"
            )
        out.update(t_logits=teacher.detach().reshape(n, vocab))
    else:
        raise KernelInputError(
            f"teacher must be logits, TeacherHidden or TeacherTopK, got {type(teacher).__name__}"
        )
    return out


def _reduce(per_token: torch.Tensor, reduction: str, weights: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / (weights != 0).sum().clamp(min=1)


class _FusedLinearDistill(torch.autograd.Function):
    """``(hidden (N,H), head (V,H)) -> (w_t D_t (N,), entropy (N,))`` with precomputed grads."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        head: torch.Tensor,
        teacher: dict[str, Any],
        weights: torch.Tensor,
        rows: torch.Tensor | None,
        cfg: LossConfig,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        res = fused_linear_pass(
            hidden, head, teacher, weights, rows, cfg, _row_fn(cfg.backend), need_dx, need_dw
        )
        ctx.teacher, ctx.rows, ctx.cfg = teacher, rows, cfg
        # dW is kept as a plain attribute (not a saved tensor) so that backward owns it alone,
        # scales it in place and hands it to autograd without a (V, H) copy
        ctx.grad_head = res.grad_head
        ctx.save_for_backward(hidden, head, weights, res.grad_hidden)
        ctx.mark_non_differentiable(res.entropy)
        return res.loss, res.entropy

    @staticmethod
    def backward(ctx: Any, g_loss: torch.Tensor, _g_ent: torch.Tensor) -> tuple[Any, ...]:
        hidden, head, weights, dx_unit = ctx.saved_tensors
        g = g_loss.to(weights.dtype)
        dx = dw = None
        if dx_unit is not None:
            dx = (dx_unit * g.unsqueeze(-1)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            dw_unit, ctx.grad_head = ctx.grad_head, None
            g_kept = g if ctx.rows is None else g.index_select(0, ctx.rows)
            uniform = g_kept.numel() == 0 or bool((g_kept == g_kept[0]).all())
            if dw_unit is not None and uniform:
                dw = dw_unit.mul_(g_kept[0] if g_kept.numel() else 0.0).to(head.dtype)
            else:  # non-uniform upstream gradient (or a second backward): recompute dW
                res = fused_linear_pass(
                    hidden, head, ctx.teacher, weights * g, ctx.rows, ctx.cfg,
                    _row_fn(ctx.cfg.backend), need_dx=False, need_dw=True,
                )
                assert res.grad_head is not None
                dw = res.grad_head.to(head.dtype)
        return dx, dw, None, None, None, None


class _LogitsDistill(torch.autograd.Function):
    """``student logits (N,V) -> (w_t D_t (N,), entropy (N,))``; rows recomputed in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_logits: torch.Tensor,
        teacher: dict[str, Any],
        weights: torch.Tensor,
        rows: torch.Tensor | None,
        cfg: LossConfig,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, ent, _ = logits_pass(
            student_logits, teacher, weights, rows, cfg, _row_fn(cfg.backend), need_grad=False
        )
        ctx.teacher, ctx.rows, ctx.cfg = teacher, rows, cfg
        ctx.save_for_backward(student_logits, weights)
        ctx.mark_non_differentiable(ent)
        return loss, ent

    @staticmethod
    def backward(ctx: Any, g_loss: torch.Tensor, _g_ent: torch.Tensor) -> tuple[Any, ...]:
        student_logits, weights = ctx.saved_tensors
        _, _, grad = logits_pass(
            student_logits, ctx.teacher, weights * g_loss.to(weights.dtype), ctx.rows, ctx.cfg,
            _row_fn(ctx.cfg.backend), need_grad=True,
        )
        return grad, None, None, None, None


def distill_loss(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher: Teacher,
    kind: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
    return_entropy: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Divergence between ``softmax(student_hidden @ student_head.T / T)`` and a teacher, fused.

    Shapes: ``student_hidden (..., H)`` (N tokens after flattening), ``student_head (V, H)``;
    ``teacher`` is logits ``(..., V)``, :class:`TeacherHidden` or :class:`TeacherTopK` with the same
    leading shape; ``weights (...)`` or None. Returns the loss (``(...)`` for ``"none"``, else a
    scalar) and, if ``return_entropy``, the student entropy ``(...)``. Gradients flow to
    ``student_hidden`` and ``student_head`` (and through them to LoRA parameters). Peak extra memory
    is one chunk of ``chunk_size`` logit rows plus an fp32 ``dW``. See the module docstring for the
    divergences, the beta convention and its endpoints, weights and backends.
    """
    if reduction not in _REDUCTIONS:
        raise KernelInputError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if student_head.dim() != 2 or student_hidden.shape[-1] != student_head.shape[1]:
        raise KernelInputError(
            f"student_hidden (..., H) and student_head (V, H) disagree: "
            f"{tuple(student_hidden.shape)} vs {tuple(student_head.shape)}"
        )
    lead = tuple(student_hidden.shape[:-1])
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    n, vocab = hidden.shape[0], student_head.shape[0]
    cfg = _make_config(
        kind, beta, temperature, chunk_size, vocab, hidden.device, backend,
        isinstance(teacher, TeacherTopK), hidden.dtype,
    )
    tens = _teacher_tensors(teacher, lead, n, vocab)
    w, rows = _weights_and_rows(weights, n, hidden.device, hidden.dtype)
    loss, ent = _FusedLinearDistill.apply(hidden, student_head, tens, w, rows, cfg)
    out = _reduce(loss.reshape(lead), reduction, w)
    return (out, ent.reshape(lead)) if return_entropy else out


def distill_loss_from_logits(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherTopK,
    kind: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
    return_entropy: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same loss as :func:`distill_loss` for callers that already hold student logits ``(..., V)``.

    ``teacher`` is logits ``(..., V)`` or :class:`TeacherTopK`. Memory-light: the forward keeps no
    ``(N, V)`` intermediate (only references to the inputs); the backward recomputes each chunk's
    row math and writes the gradient straight into the ``(N, V)`` result, which is exact for any
    upstream gradient. Logits may be bf16/fp16; the math runs in fp32.
    """
    if reduction not in _REDUCTIONS:
        raise KernelInputError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(teacher, TeacherHidden):
        raise KernelInputError("distill_loss_from_logits takes teacher logits or TeacherTopK")
    lead, vocab = tuple(student_logits.shape[:-1]), student_logits.shape[-1]
    logits = student_logits.reshape(-1, vocab)
    n = logits.shape[0]
    cfg = _make_config(
        kind, beta, temperature, chunk_size, vocab, logits.device, backend,
        isinstance(teacher, TeacherTopK), logits.dtype,
    )
    tens = _teacher_tensors(teacher, lead, n, vocab)
    w, rows = _weights_and_rows(weights, n, logits.device, logits.dtype)
    loss, ent = _LogitsDistill.apply(logits, tens, w, rows, cfg)
    out = _reduce(loss.reshape(lead), reduction, w)
    return (out, ent.reshape(lead)) if return_entropy else out
