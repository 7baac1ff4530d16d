"""Tests of kernels/: the fused divergence loss (PyTorch and Triton paths) and the estimators.

Every fast path is compared with the float64 autograd definition in ``kernels.reference`` on the
same fp32-rounded inputs (tolerances of specs/kernels.md: loss rtol 1e-4 / atol 1e-5, gradients
rtol 1e-4 / atol 1e-6). The Triton kernel runs on CPU through its interpreter: ``TRITON_INTERPRET``
is read when ``kernels.triton_rows`` is first imported, which ``kernels`` does lazily, so setting
it here (before any test touches the Triton backend) is enough even if triton itself was imported
earlier. Shapes are small (V <= 1000, N <= 12 for Triton) because the interpreter runs element by element.
"""

from __future__ import annotations

import math
import os

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels import (  # noqa: E402
    KernelBackendError,
    KernelInputError,
    TeacherHidden,
    TeacherTopK,
    distill_loss,
    distill_loss_from_logits,
    importance_weighted_k3,
    k1,
    k3,
    pg_reverse_kl,
)
from kernels.reference import (  # noqa: E402
    reference_divergence,
    reference_entropy,
    reference_topk_divergence,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warnings in the interpreter

CUDA = torch.cuda.is_available()
# (backend, device): the Triton kernel runs on CUDA tensors where a GPU is present, else under
# its interpreter on CPU tensors; on a GPU machine the chunked PyTorch path is checked there too.
BACKENDS = [("torch", "cpu"), ("triton", "cuda" if CUDA else "cpu")] + ([("torch", "cuda")] if CUDA else [])
BACKEND_IDS = [f"{b}-{d}" for b, d in BACKENDS]
KIND_CASES = [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.0), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9), ("jsd", 1.0)]
LOSS_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def _problem(n: int = 24, h: int = 16, v: int = 1000, seed: int = 0, scale: float = 3.0):
    """fp32 student hidden/head and teacher hidden/head giving logits of std ~``scale``."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g)
    ws = torch.randn(v, h, generator=g) * scale / math.sqrt(h)
    ht = torch.randn(n, h, generator=g)
    wt = torch.randn(v, h, generator=g) * scale / math.sqrt(h)
    weights = torch.rand(n, generator=g) + 0.5
    weights[[1, 5, 6]] = 0.0
    upstream = torch.randn(n, generator=g)
    return hs, ws, ht, wt, weights, upstream


def _on(device: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors on ``device`` (a test's inputs are drawn on the CPU, so every device sees the same)."""
    return tuple(t.to(device) for t in tensors)


def _reference_fused(hs, ws, zt, kind, beta, temp, weights, upstream):
    """float64 per-token ``w_t D_t``, and grads of ``sum_t g_t w_t D_t`` w.r.t. hidden and head."""
    h64 = hs.double().requires_grad_()
    w64 = ws.double().requires_grad_()
    per_tok = weights.double() * reference_divergence(h64 @ w64.T, zt.double(), kind, beta, temp)
    (per_tok * upstream.double()).sum().backward()
    return per_tok.detach(), h64.grad, w64.grad


@pytest.mark.parametrize("backend,device", BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("kind,beta", KIND_CASES)
def test_fused_matches_float64_reference(backend, device, kind, beta):
    """Per-token values and exact grads (non-uniform upstream, weights with zeros, odd V, T != 1)."""
    hs, ws, ht, wt, weights, upstream = _on(device, *_problem(n=12))
    temp = 0.7 if beta in (0.1, 0.9) else 1.3
    zt = ht @ wt.T
    ref_loss, ref_dh, ref_dw = _reference_fused(hs, ws, zt, kind, beta, temp, weights, upstream)

    h = hs.clone().requires_grad_()
    w = ws.clone().requires_grad_()
    teacher = TeacherHidden(ht, wt) if kind == "jsd" else zt
    loss = distill_loss(
        h, w, teacher, kind=kind, beta=beta, temperature=temp, weights=weights,
        reduction="none", chunk_size=5, backend=backend,
    )
    torch.testing.assert_close(loss.double(), ref_loss, **LOSS_TOL)
    (loss * upstream).sum().backward()  # non-uniform upstream: dW takes the recompute path
    torch.testing.assert_close(h.grad.double(), ref_dh, **GRAD_TOL)
    torch.testing.assert_close(w.grad.double(), ref_dw, **GRAD_TOL)
    assert torch.all(h.grad[weights == 0] == 0)  # ignored rows: exactly zero


@pytest.mark.parametrize("backend,device", BACKENDS, ids=BACKEND_IDS)
def test_fused_mean_reduction_and_entropy(backend, device):
    """'mean' divides by the kept-token count; uniform upstream uses the precomputed dW."""
    hs, ws, ht, wt, weights, _ = _on(device, *_problem(n=12, v=513, seed=1))
    zt = ht @ wt.T
    ones = torch.ones(12, device=device)
    ref_loss, ref_dh, ref_dw = _reference_fused(hs, ws, zt, "jsd", 0.5, 1.0, weights, ones / 9)
    h = hs.clone().requires_grad_()
    w = ws.clone().requires_grad_()
    loss, ent = distill_loss(
        h, w, zt, weights=weights, reduction="mean", return_entropy=True, backend=backend
    )
    torch.testing.assert_close(loss.double(), ref_loss.sum() / 9, **LOSS_TOL)
    loss.backward()
    torch.testing.assert_close(h.grad.double(), ref_dh, **GRAD_TOL)
    torch.testing.assert_close(w.grad.double(), ref_dw, **GRAD_TOL)
    kept = weights != 0
    ref_ent = reference_entropy((hs @ ws.T).double())
    torch.testing.assert_close(ent[kept].double(), ref_ent[kept], **LOSS_TOL)
    assert not ent.requires_grad


@pytest.mark.parametrize("backend,device", BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("kind,beta", [("fkl", 0.0), ("rkl", 0.0), ("jsd", 0.5), ("jsd", 0.9)])
def test_from_logits_matches_reference(backend, device, kind, beta):
    """(B, T, V) logits, weights as a loss mask, leading shape kept for reduction='none'."""
    g = torch.Generator().manual_seed(2)
    zs, zt = _on(device, torch.randn(2, 5, 777, generator=g) * 4, torch.randn(2, 5, 777, generator=g) * 4)
    zs.requires_grad_()
    mask, up = _on(device, (torch.rand(2, 5, generator=g) > 0.3).float(), torch.randn(2, 5, generator=g))
    z64 = zs.detach().double().requires_grad_()
    ref = mask.double() * reference_divergence(z64, zt.double(), kind, beta, 0.8)
    (ref * up.double()).sum().backward()
    loss = distill_loss_from_logits(
        zs, zt, kind=kind, beta=beta, temperature=0.8, weights=mask, reduction="none",
        chunk_size=3, backend=backend,
    )
    assert loss.shape == (2, 5)
    torch.testing.assert_close(loss.double(), ref.detach(), **LOSS_TOL)
    (loss * up).sum().backward()
    torch.testing.assert_close(zs.grad.double(), z64.grad, **GRAD_TOL)
    row_sums = zs.grad.sum(-1).abs()  # rows sum to 0 up to fp32 rounding of log q (~|s| * 2^-24)
    assert (row_sums <= 1e-4 * zs.grad.abs().sum(-1) + 1e-12).all()


@pytest.mark.parametrize("backend,device", BACKENDS, ids=BACKEND_IDS)
def test_extreme_logits(backend, device):
    """+-1e4 logits and -inf teacher entries: finite FKL/JSD matching float64; RKL is +inf."""
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(4, 300, generator=g) * 3
    zt = torch.randn(4, 300, generator=g) * 3
    zs[0, 7], zs[1, 100], zs[2, :5] = 1e4, -1e4, 1e4
    zt[0, 7], zt[3, 50] = -1e4, 1e4
    zt[:, 299] = float("-inf")  # a masked vocabulary entry in every row (last, partial block)
    zt[1, :40] = float("-inf")  # a whole leading block of -inf (guards -inf - -inf)
    zs, zt = _on(device, zs, zt)
    for kind, beta in [("fkl", 0.0), ("jsd", 0.5), ("jsd", 0.1)]:
        s = zs.clone().requires_grad_()
        s64 = zs.double().requires_grad_()
        ref = reference_divergence(s64, zt.double(), kind, beta)
        ref.sum().backward()
        loss = distill_loss_from_logits(s, zt, kind=kind, beta=beta, reduction="none", backend=backend)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(s.grad).all()
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=2e-3)
        torch.testing.assert_close(s.grad.double(), s64.grad, **GRAD_TOL)
    # RKL is +inf where the student has (representable) mass on a token the teacher forbids;
    # rows 0 and 2 put all fp32/fp64 mass on 1e4 logits, so their RKL stays finite
    rkl = distill_loss_from_logits(zs, zt, kind="rkl", reduction="none", backend=backend)
    ref = reference_divergence(zs.double(), zt.double(), "rkl")
    assert torch.isinf(rkl).tolist() == [False, True, False, True] == torch.isinf(ref).tolist()
    torch.testing.assert_close(rkl[[0, 2]].double(), ref[[0, 2]], rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("kind,beta", [("fkl", 0.0), ("rkl", 0.0), ("jsd", 0.5)])
def test_topk_teacher_matches_reference(kind, beta):
    """Top-k + tail bucket vs the float64 definition; through the fused head path."""
    hs, ws, _, _, weights, upstream = _problem(n=10, v=400, seed=4)
    g = torch.Generator().manual_seed(5)
    zt = torch.randn(10, 400, generator=g) * 3
    lp, idx = torch.log_softmax(zt, -1).topk(20, dim=-1)
    teacher = TeacherTopK(idx, lp)
    h64, w64 = hs.double().requires_grad_(), ws.double().requires_grad_()
    ref = weights.double() * reference_topk_divergence(
        h64 @ w64.T, TeacherTopK(idx, lp.double()), kind, beta, 1.2
    )
    (ref * upstream.double()).sum().backward()
    h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    loss = distill_loss(
        h, w, teacher, kind=kind, beta=beta, temperature=1.2, weights=weights, reduction="none",
        chunk_size=4,
    )
    torch.testing.assert_close(loss.double(), ref.detach(), **LOSS_TOL)
    (loss * upstream).sum().backward()
    torch.testing.assert_close(h.grad.double(), h64.grad, **GRAD_TOL)
    torch.testing.assert_close(w.grad.double(), w64.grad, **GRAD_TOL)


def test_topk_with_singleton_tail_equals_full_vocab():
    """k = V-1 makes every bucket one token: the top-k loss is the full-vocabulary loss."""
    g = torch.Generator().manual_seed(6)
    zs = torch.randn(6, 50, generator=g, dtype=torch.float64).requires_grad_()
    zt = torch.randn(6, 50, generator=g, dtype=torch.float64)
    lp, idx = torch.log_softmax(zt, -1).topk(49, dim=-1)
    for kind in ("fkl", "rkl", "jsd"):
        full = distill_loss_from_logits(zs, zt, kind=kind, reduction="none")
        topk = distill_loss_from_logits(zs, TeacherTopK(idx, lp), kind=kind, reduction="none")
        torch.testing.assert_close(topk, full, rtol=1e-6, atol=1e-8)
        (gf,) = torch.autograd.grad(full.sum(), zs)
        (gk,) = torch.autograd.grad(topk.sum(), zs)
        torch.testing.assert_close(gk, gf, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=BACKEND_IDS)
def test_invariants(backend, device):
    """Identical inputs -> zero loss and grad; JSD(0.5) symmetric and <= log 2."""
    g = torch.Generator().manual_seed(7)
    z, other = _on(device, torch.randn(3, 257, generator=g) * 5, torch.randn(3, 257, generator=g) * 5)
    for kind, beta in KIND_CASES:  # closed-form gradients: exactly 0 up to log m rounding
        s = z.clone().requires_grad_()
        loss = distill_loss_from_logits(s, z.clone(), kind=kind, beta=beta, reduction="none", backend=backend)
        loss.sum().backward()
        assert loss.abs().max() < 1e-6, (kind, beta)
        assert s.grad.abs().max() < 1e-7, (kind, beta)
    z64 = torch.randn(3, 257, generator=g, dtype=torch.float64).to(device).requires_grad_()
    for kind in ("fkl", "rkl", "jsd"):  # gradient rows sum to 0 (float64 math: to 1e-12)
        (grad,) = torch.autograd.grad(
            distill_loss_from_logits(z64, other.double(), kind=kind, reduction="sum"), z64
        )
        assert (grad.sum(-1).abs() < 1e-12).all() and grad.abs().max() > 1e-3
    ab = distill_loss_from_logits(z, other, kind="jsd", beta=0.5, reduction="none", backend=backend)
    ba = distill_loss_from_logits(other, z, kind="jsd", beta=0.5, reduction="none", backend=backend)
    torch.testing.assert_close(ab, ba, rtol=1e-5, atol=1e-6)
    far = distill_loss_from_logits(z * 1e3, -z * 1e3, kind="jsd", beta=0.5, reduction="none", backend=backend)
    assert (far <= math.log(2) + 1e-6).all() and (far > 0.5).all()


def test_chunk_size_and_row_dropping_do_not_change_results():
    hs, ws, ht, wt, weights, _ = _problem(n=17, v=200, seed=8)
    ref = distill_loss(hs, ws, TeacherHidden(ht, wt), weights=weights, reduction="none", chunk_size=17)
    for chunk in (1, 5, 64):
        out = distill_loss(hs, ws, TeacherHidden(ht, wt), weights=weights, reduction="none", chunk_size=chunk)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    assert torch.all(ref[weights == 0] == 0)
    none_kept = distill_loss(hs, ws, ht @ wt.T, weights=torch.zeros(17), reduction="mean")
    assert none_kept.item() == 0.0


def test_bf16_logits_tolerance():
    """bf16 inputs: fp32 math inside; compared with float64 on the same bf16 values."""
    g = torch.Generator().manual_seed(9)
    zs = (torch.randn(8, 600, generator=g) * 4).bfloat16().requires_grad_()
    zt = (torch.randn(8, 600, generator=g) * 4).bfloat16()
    z64 = zs.detach().double().requires_grad_()
    ref = reference_divergence(z64, zt.double(), "jsd", 0.5)
    ref.sum().backward()
    loss = distill_loss_from_logits(zs, zt, reduction="none")
    loss.sum().backward()
    assert zs.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(zs.grad.double(), z64.grad, rtol=1e-2, atol=1e-4)  # bf16 output


def test_agrees_with_trl_generalized_jsd():
    """TRL's generalized_jsd_loss (same beta convention, no T^2) gives the same sums and grads."""
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    jsd_trl = gkd.GKDTrainer.generalized_jsd_loss
    g = torch.Generator().manual_seed(10)
    zs = torch.randn(2, 6, 300, generator=g) * 3
    zt = torch.randn(2, 6, 300, generator=g) * 3
    labels = torch.randint(0, 300, (2, 6), generator=g)
    labels[0, :2] = -100
    for beta in (0.0, 0.3, 0.5, 1.0):
        a, b = zs.clone().requires_grad_(), zs.clone().requires_grad_()
        theirs = jsd_trl(a, zt, labels=labels, beta=beta, temperature=1.5, reduction="sum")
        ours = distill_loss_from_logits(
            b, zt, kind="jsd", beta=beta, temperature=1.5, weights=(labels != -100).float(),
            reduction="sum",
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        theirs.backward()
        ours.backward()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_input_errors(monkeypatch):
    hs, ws, ht, wt, _, _ = _problem(n=8, v=50)
    hs, ht = hs[:4], ht[:4]
    zt = ht @ wt.T
    with pytest.raises(KernelInputError, match="kind"):
        distill_loss(hs, ws, zt, kind="tvd")
    with pytest.raises(KernelInputError, match="beta"):
        distill_loss(hs, ws, zt, beta=1.5)
    with pytest.raises(KernelInputError, match="temperature"):
        distill_loss(hs, ws, zt, temperature=0.0)
    with pytest.raises(KernelInputError, match="teacher logits"):
        distill_loss(hs, ws, zt[:, :49])
    with pytest.raises(KernelInputError, match="weights"):
        distill_loss(hs, ws, zt, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(KernelInputError, match="top-k"):
        distill_loss(hs, ws, TeacherTopK(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2)), backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelBackendError, match="TRITON_INTERPRET"):
        distill_loss(hs, ws, zt, backend="triton")


# ----------------------------------------------------------------- sampled-token estimators


def _categorical(seed: int = 11, v: int = 6):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(v, generator=g) * 0.8).double().requires_grad_()
    teacher = (torch.randn(v, generator=g) * 0.8).double()
    return theta, torch.log_softmax(teacher, -1), g


def _mc_grad(theta, loss_of_logp, samples):
    logp_s_all = torch.log_softmax(theta, -1)
    (grad,) = torch.autograd.grad(loss_of_logp(logp_s_all, samples).mean(), theta)
    return grad


def test_sampled_estimator_gradients_in_expectation():
    """Monte Carlo (fixed seed, 400k draws): PG and IW-k3 -> reverse-KL grad; k1 -> 0; k3 -> FKL grad."""
    theta, logp_t_all, g = _categorical()
    logq = torch.log_softmax(theta, -1)
    (rkl_grad,) = torch.autograd.grad((logq.exp() * (logq - logp_t_all)).sum(), theta, retain_graph=True)
    (fkl_grad,) = torch.autograd.grad((logp_t_all.exp() * (logp_t_all - logq)).sum(), theta)
    on = torch.multinomial(logq.detach().exp(), 400_000, replacement=True, generator=g)
    old_logits = theta.detach() + torch.randn(6, generator=g, dtype=torch.float64) * 0.5
    off = torch.multinomial(torch.softmax(old_logits, -1), 400_000, replacement=True, generator=g)
    logp_old_all = torch.log_softmax(old_logits, -1)

    def pg(lp, y):
        return pg_reverse_kl(lp[y], logp_t_all[y])

    def iw_on(lp, y):
        return importance_weighted_k3(lp[y], logp_t_all[y], lp[y].detach())

    def iw_off(lp, y):
        return importance_weighted_k3(lp[y], logp_t_all[y], logp_old_all[y])

    tol = dict(rtol=0, atol=0.01)
    torch.testing.assert_close(_mc_grad(theta, pg, on), rkl_grad, **tol)
    torch.testing.assert_close(_mc_grad(theta, iw_on, on), rkl_grad, **tol)
    torch.testing.assert_close(_mc_grad(theta, iw_off, off), rkl_grad, **tol)
    torch.testing.assert_close(_mc_grad(theta, lambda lp, y: k1(lp[y], logp_t_all[y]), on), torch.zeros(6, dtype=torch.float64), **tol)
    torch.testing.assert_close(_mc_grad(theta, lambda lp, y: k3(lp[y], logp_t_all[y]), on), fkl_grad, **tol)
    assert rkl_grad.abs().max() > 0.05 and (rkl_grad - fkl_grad).abs().max() > 0.05  # not vacuous


def test_importance_weighted_k3_gradient_is_rho_l():
    """d/d logp_s of rho (e^-l - 1 + l) is rho * l exactly; the value is >= 0 and 0 when l = 0."""
    g = torch.Generator().manual_seed(12)
    logp_s = (-torch.rand(50, generator=g, dtype=torch.float64) * 3).requires_grad_()
    logp_t = -torch.rand(50, generator=g, dtype=torch.float64) * 3
    logp_old = -torch.rand(50, generator=g, dtype=torch.float64) * 3
    val = importance_weighted_k3(logp_s, logp_t, logp_old)
    (grad,) = torch.autograd.grad(val.sum(), logp_s)
    rho = torch.exp(logp_s.detach() - logp_old)
    torch.testing.assert_close(grad, rho * (logp_s.detach() - logp_t))
    assert (val >= 0).all()
    assert k3(logp_t, logp_t).abs().max() == 0


def test_second_backward_recomputes_head_grad():
    """The precomputed dW is handed to autograd once; a retained second backward recomputes it."""
    hs, ws, ht, wt, weights, _ = _problem(n=8, v=120, seed=13)
    w = ws.clone().requires_grad_()
    loss = distill_loss(hs, w, TeacherHidden(ht, wt), weights=weights, reduction="mean")
    loss.backward(retain_graph=True)
    first = w.grad.clone()
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * first, rtol=1e-5, atol=1e-7)
