"""Triton row kernel of the divergence loss (CUDA path; runs on CPU under ``TRITON_INTERPRET=1``).

One program per token row. The student and teacher logit rows are read in ``BLOCK``-wide pieces,
always upcast to fp32 (bf16 rounding at |logit| ~ 20 is ~0.04, larger than small KLs):

- pass 1, online softmax: running max ``m`` and sum ``d = sum exp(x - m)`` for both rows; when the
  max grows, ``d <- d * exp(m_old - m_new) + sum exp(x - m_new)``. A running max of ``-inf``
  (a block of only ``-inf`` logits) is replaced by 0 before subtracting, which guards
  ``exp(-inf - -inf) = exp(nan)``. Then ``log q = (s - m) - log d`` (max subtracted first).
- pass 2: with ``log q = s - lse_s`` and ``log p = t - lse_t``, accumulate the loss terms
  (``x (log x - log y)`` masked to 0 where ``x = 0``, the ``-inf * 0`` guard) and the entropy
  ``-sum q log q``. For FKL the gradient ``q - p`` needs nothing else and is written here.
- pass 3 (RKL, JSD): write the gradient with the row totals now known:
  RKL ``q (log q - log p - RKL)``, JSD ``(1-b) q (log q - log m - KL(q||m))`` with
  ``log m = logaddexp(log p + log b, log q + log(1-b))``.

Every gradient is multiplied by the row's ``w_t / T`` and written to ``G``, which may alias the
student buffer ``S`` (in-place: each element is read before it is overwritten by the same program).
``tl.exp``/``tl.log`` lower to the hardware ``ex2``/``lg2`` with a scaled input on NVIDIA GPUs.

The host function :func:`triton_rows` has the signature of :data:`kernels.chunked.RowFn` and
handles full teacher logits only (top-k teachers use the PyTorch row math).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .chunked import LossConfig, TeacherRows
from .types import KernelInputError

__all__ = ["triton_rows", "KIND_CODES"]

KIND_CODES = {"fkl": 0, "rkl": 1, "jsd": 2}


@triton.jit
def _safe_max(m):
    # a running max of -inf (nothing but -inf seen yet) is shifted by 0 instead
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _divergence_row_kernel(
    S,  # student logits (rows, V), any float dtype, last dim contiguous
    s_stride,
    T,  # teacher logits (rows, V)
    t_stride,
    G,  # gradient out (rows, V) fp32; may alias S
    g_stride,
    SCALE,  # (rows,) fp32: w_t / T (only read when WRITE_GRAD)
    LOSS,  # (rows,) fp32 out, unweighted divergence
    ENT,  # (rows,) fp32 out, student entropy
    V,
    inv_temp,
    beta,
    log_beta,
    log_1m_beta,
    KIND: tl.constexpr,  # 0 fkl, 1 rkl, 2 jsd (0 < beta < 1)
    WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * s_stride
    t_row = T + row * t_stride
    g_row = G + row * g_stride
    ninf = float("-inf")

    # ---- pass 1: online log-sum-exp of s = z_S / T and t = z_T / T
    m_s = tl.full((), ninf, tl.float32)
    d_s = tl.zeros((), dtype=tl.float32)
    m_t = tl.full((), ninf, tl.float32)
    d_t = tl.zeros((), dtype=tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        s = tl.load(s_row + offs, mask=mask, other=ninf).to(tl.float32) * inv_temp
        t = tl.load(t_row + offs, mask=mask, other=ninf).to(tl.float32) * inv_temp
        new_s = _safe_max(tl.maximum(m_s, tl.max(s, 0)))
        d_s = d_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(s - new_s), 0)
        m_s = new_s
        new_t = _safe_max(tl.maximum(m_t, tl.max(t, 0)))
        d_t = d_t * tl.exp(m_t - new_t) + tl.sum(tl.exp(t - new_t), 0)
        m_t = new_t
    # log q = (s - m_s) - log d_s: subtracting the max first keeps log q exact near |s| ~ 1e4,
    # where fp32 spacing is ~1e-3 and s - (m_s + log d_s) would lose it
    ld_s = tl.log(d_s)
    ld_t = tl.log(d_t)

    # ---- pass 2: loss terms, entropy (and the FKL gradient q - p)
    acc_a = tl.zeros((), dtype=tl.float32)  # FKL | RKL | KL(p||m)
    acc_b = tl.zeros((), dtype=tl.float32)  # KL(q||m) for JSD
    acc_h = tl.zeros((), dtype=tl.float32)  # entropy
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        lq = (tl.load(s_row + offs, mask=mask, other=ninf).to(tl.float32) * inv_temp - m_s) - ld_s
        lp = (tl.load(t_row + offs, mask=mask, other=ninf).to(tl.float32) * inv_temp - m_t) - ld_t
        q = tl.exp(lq)
        p = tl.exp(lp)
        acc_h += tl.sum(tl.where(q > 0, -q * lq, 0.0), 0)
        if KIND == 0:
            acc_a += tl.sum(tl.where(p > 0, p * (lp - lq), 0.0), 0)
            if WRITE_GRAD:
                scale = tl.load(SCALE + row)
                tl.store(g_row + offs, (q - p) * scale, mask=mask)
        elif KIND == 1:
            acc_a += tl.sum(tl.where(q > 0, q * (lq - lp), 0.0), 0)
        else:
            a = lp + log_beta
            b = lq + log_1m_beta
            mx = _safe_max(tl.maximum(a, b))
            lm = mx + tl.log(tl.exp(a - mx) + tl.exp(b - mx))
            acc_a += tl.sum(tl.where(p > 0, p * (lp - lm), 0.0), 0)
            acc_b += tl.sum(tl.where(q > 0, q * (lq - lm), 0.0), 0)
    if KIND == 2:
        loss = beta * acc_a + (1.0 - beta) * acc_b
    else:
        loss = acc_a
    tl.store(LOSS + row, loss)
    tl.store(ENT + row, acc_h)

    # ---- pass 3: gradient of RKL / JSD, scaled by w_t / T
    if WRITE_GRAD and KIND != 0:
        scale = tl.load(SCALE + row)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < V
            lq = (tl.load(s_row + offs, mask=mask, other=ninf).to(tl.float32) * inv_temp - m_s) - ld_s
            lp = (tl.load(t_row + offs, mask=mask, other=ninf).to(tl.float32) * inv_temp - m_t) - ld_t
            q = tl.exp(lq)
            if KIND == 1:
                g = tl.where(q > 0, q * (lq - lp - loss), 0.0)
            else:
                a = lp + log_beta
                b = lq + log_1m_beta
                mx = _safe_max(tl.maximum(a, b))
                lm = mx + tl.log(tl.exp(a - mx) + tl.exp(b - mx))
                g = (1.0 - beta) * tl.where(q > 0, q * (lq - lm - acc_b), 0.0)
            tl.store(g_row + offs, g * scale, mask=mask)


def _block_size(vocab: int) -> int:
    """Block width: up to 4096 on GPU; 512 under the interpreter (its cost is per block step)."""
    cap = 4096 if torch.cuda.is_available() else 512
    return int(min(cap, triton.next_power_of_2(max(vocab, 16))))


def triton_rows(
    z_s: torch.Tensor,
    teacher: TeacherRows,
    scale: torch.Tensor | None,
    cfg: LossConfig,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row function of the Triton path (see :data:`kernels.chunked.RowFn`).

    The gradient is written in place into ``z_s`` when it is a contiguous fp32 buffer (the
    chunk's logits from the matmul, which nothing else reads), else into a new fp32 buffer.
    """
    if teacher.logits is None:
        raise KernelInputError("the Triton row kernel takes full teacher logits, not top-k")
    z_t = teacher.logits
    if z_s.stride(-1) != 1:
        z_s = z_s.contiguous()
    if z_t.stride(-1) != 1:
        z_t = z_t.contiguous()
    rows, vocab = z_s.shape
    loss = torch.empty(rows, dtype=torch.float32, device=z_s.device)
    ent = torch.empty_like(loss)
    write = scale is not None
    if write and z_s.dtype == torch.float32 and z_s.is_contiguous():
        grad = z_s
    else:
        grad = torch.empty(rows, vocab, dtype=torch.float32, device=z_s.device) if write else loss
    beta = float(cfg.beta)
    kind = KIND_CODES[cfg.kind]
    log_b = math.log(beta) if 0.0 < beta < 1.0 else 0.0
    log_1mb = math.log1p(-beta) if 0.0 < beta < 1.0 else 0.0
    if rows > 0:
        _divergence_row_kernel[(rows,)](
            z_s,
            z_s.stride(0),
            z_t,
            z_t.stride(0),
            grad,
            grad.stride(0) if write else 0,
            scale.float().contiguous() if write else loss,  # type: ignore[union-attr]
            loss,
            ent,
            vocab,
            1.0 / cfg.temperature,
            beta,
            log_b,
            log_1mb,
            KIND=kind,
            WRITE_GRAD=write,
            BLOCK=block or _block_size(vocab),
        )
    return loss, ent, (grad if write else None)
