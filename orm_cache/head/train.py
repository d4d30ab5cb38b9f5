"""Trainers of the linear head over cached vectors.

Both take the distinct trace vectors ``X`` ``(U, D)`` and, per pair, the row of its chosen and
rejected trace (``ci``, ``ri``, ``(N,)``): pairs share traces (the reference data repeats each
trace in ~8 pairs), so working on ``U`` rows instead of ``2N`` is several times less work.
``X`` is a :class:`~orm_cache.store.rows.Rows` (a split's rows of the memory-mapped store) or an
in-memory array; neither trainer copies it: AdamW gathers each mini-batch's rows, and L-BFGS
reads ``X`` in row blocks (two passes per objective evaluation).

* :func:`train_adamw` is the reference recipe: AdamW on raw vectors, linear warm-up then constant
  (as ``transformers.get_constant_schedule_with_warmup``: step ``t < warmup`` uses ``lr·t/warmup``),
  mini-batches of pairs drawn epoch by epoch from a seeded permutation, gradient-norm clipping.
* :func:`train_lbfgs` is the exact minimiser of the same convex loss plus an L2 penalty, found on
  standardised features and mapped back so the head scores raw vectors. The standardised matrix
  is never built: its products are those of ``X`` shifted by the means (``lbfgs_objective``), in
  float64 (float32 round-off stops L-BFGS short of the optimum).

The pairwise loss does not see the bias; after training it is set so the training traces' scores
have mean 0, and their standard deviation is kept for normalised scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import HeadConfig
from ..store.rows import Rows, as_rows
from .losses import pairwise_loss
from .threads import single_blas_thread, single_torch_thread


@dataclass
class TrainResult:
    weight: np.ndarray  # (D,) float32, scores raw vectors
    bias: float
    score_std: float  # std of training-trace scores (bias makes their mean 0)
    final_loss: float  # training pairwise loss of the final head (full data)
    seconds: float
    steps: int
    history: list = field(default_factory=list)  # (step, mean loss over the last window)
    accuracy: float | None = None  # training pairwise accuracy (strict >) of the final head
    scores: np.ndarray | None = field(default=None, repr=False)  # (U,) training scores without bias (a view)


PAIR_CHUNK = 1 << 18  # pairs whose margins are held at once, for every head


def pair_stats(S: np.ndarray, ci, ri, margin) -> tuple[np.ndarray, np.ndarray]:
    """For K heads' scores ``S`` ``(U, K)``: each head's mean ``softplus(margin - Δ)`` and
    fraction of pairs with ``Δ > 0``, ``Δ = S[ci] - S[ri]`` in float64, a chunk of pairs at a
    time. ``margin``: a number or ``(K,)``. Returns two ``(K,)`` arrays."""
    N, K = len(ci), S.shape[1]
    loss, right = np.zeros(K), np.zeros(K)
    margin = torch.as_tensor(margin, dtype=torch.float64)
    with single_torch_thread():
        for a in range(0, N, PAIR_CHUNK):
            d = S[ci[a:a + PAIR_CHUNK]].astype(np.float64) - S[ri[a:a + PAIR_CHUNK]]  # (n, K)
            right += (d > 0).sum(axis=0)
            loss += -F.logsigmoid(torch.from_numpy(d) - margin).sum(dim=0).numpy()  # -log σ(Δ - margin)
    return loss / max(N, 1), right / max(N, 1)


def finish_heads(W: np.ndarray, X, ci, ri, cfgs: list[HeadConfig], seconds: list[float], steps: list[int],
                 histories: list[list]) -> list[TrainResult]:
    """Results of K trained heads ``W`` ``(K, D)``: every head's training scores come from one
    pass over ``X``; each bias makes its scores' mean 0."""
    W = np.asarray(W, dtype=np.float32)
    S = as_rows(X) @ W.T  # (U, K) raw scores without bias
    mean, std = S.mean(axis=0, dtype=np.float64), S.std(axis=0, dtype=np.float64)  # (K,)
    loss, accuracy = pair_stats(S, ci, ri, np.array([c.margin for c in cfgs]))
    return [TrainResult(W[k].copy(), -float(mean[k]), float(std[k]), float(loss[k]), seconds[k], steps[k],
                        histories[k], float(accuracy[k]), S[:, k]) for k in range(len(cfgs))]


def _finish(weight: np.ndarray, X, ci, ri, cfg: HeadConfig, seconds, steps, history) -> TrainResult:
    return finish_heads(weight[None], X, ci, ri, [cfg], [seconds], [steps], [history])[0]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """lr multiplier at ``step`` (0-based): linear from 0 over ``warmup_steps``, then 1."""
    return step / max(1, warmup_steps) if step < warmup_steps else 1.0


def batch_order(n_pairs: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Indices of the pairs of each step: consecutive batches of seeded per-epoch permutations
    (the last batch of an epoch may be smaller, as a DataLoader with shuffle=True gives)."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        perm = torch.randperm(n_pairs, generator=generator)
        for start in range(0, n_pairs, batch_size):  # only the batches used: 800 of 4M pairs' 500k
            if len(batches) == steps:
                break
            batches.append(perm[start:start + batch_size])
    return batches


def train_adamw(X, ci: np.ndarray, ri: np.ndarray, cfg: HeadConfig) -> TrainResult:
    """The reference recipe on cached vectors ``X`` (U, D); pairs ``(ci[i], ri[i])``. Each step
    gathers its mini-batch's rows from ``X`` (from the memory map, for a store's rows)."""
    t0 = time.perf_counter()
    X = as_rows(X)
    U, D = X.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(D, 1)  # PyTorch's default init, seeded: the reference's head
    if cfg.init == "zeros":
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: warmup_factor(t, cfg.warmup_steps))
    ci, ri = np.asarray(ci), np.asarray(ri)
    history, window = [], []
    with single_torch_thread():  # a step is microseconds of work: waking a second thread costs more
        for step, idx in enumerate(batch_order(len(ci), cfg.batch_size, cfg.steps, gen)):
            idx = idx.numpy()
            r_c = head(torch.from_numpy(X.take(ci[idx]))).squeeze(-1)  # (B,) from the (B, D) rows gathered
            r_r = head(torch.from_numpy(X.take(ri[idx]))).squeeze(-1)  # (B,)
            loss = pairwise_loss(r_c, r_r, cfg.margin, cfg.center_coef)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            window.append(float(loss.detach()))
            if len(window) == 50 or step == cfg.steps - 1:
                history.append((step + 1, float(np.mean(window))))
                window = []
    w = head.weight.detach().numpy()[0].copy()
    return _finish(w, X, ci, ri, cfg, time.perf_counter() - t0, cfg.steps, history)


def standardizer(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the traces in float64 (a constant feature gets std 1); one
    pass over ``X`` in row blocks."""
    mu, sd = as_rows(X).mean_std()
    sd[sd < 1e-12] = 1.0
    return mu, sd


def lbfgs_objective(X: Rows, mu: np.ndarray, sd: np.ndarray, ci, ri, l2: float, margin: float = 0.0,
                    center_coef: float = 0.0):
    """``f(v)`` and its gradient for the standardised traces ``Z = (X - mu) / sd`` (U, D):
    ``mean softplus(margin - (s_c - s_r)) + center_coef·mean((s_c + s_r)²) + l2·|v|²/(2N)``,
    ``s = Z v``. ``Z`` is never built: ``Z v = X (v / sd) - mu·(v / sd)`` and
    ``gᵀZ = (gᵀX - (Σg) mu) / sd``, each product read from ``X`` in float64 row blocks."""
    N, U = len(ci), X.shape[0]

    def f(v: np.ndarray):
        w = v / sd  # (D,): z·v = x·w - mu·w
        s = X.matmul(w, np.float64) - mu @ w if v.any() else np.zeros(U)  # (U,); a cold start is free
        d = s[ci] - s[ri] - margin  # (N,)
        loss = np.logaddexp(0.0, -d).mean() + 0.5 * l2 * (v @ v) / N
        g_pair = -0.5 * (1.0 - np.tanh(0.5 * d)) / N  # d loss / d delta = -σ(-d) / N
        g_s = np.bincount(ci, g_pair, U) - np.bincount(ri, g_pair, U)  # (U,)
        if center_coef:
            t = s[ci] + s[ri]
            loss += center_coef * (t ** 2).mean()
            g_t = 2 * center_coef * t / N
            g_s += np.bincount(ci, g_t, U) + np.bincount(ri, g_t, U)
        grad = (X.rmatmul(g_s) - g_s.sum() * mu) / sd + l2 * v / N  # (D,)
        return loss, grad

    return f


def train_lbfgs_path(X, ci: np.ndarray, ri: np.ndarray, cfgs: list[HeadConfig]) -> list[TrainResult]:
    """Exact minimisers of the pairwise loss + L2 for each config, on one shared standardisation,
    mapped back to raw vectors. Solved from the strongest L2 to the weakest, each warm-started
    from the previous solution (a sweep's L2 path); one config is the plain exact solve. The
    heads' training scores come from one final pass over ``X``. Each result's seconds are its
    solve plus an equal share of the standardisation and that pass. NumPy's BLAS runs on one
    thread throughout (:func:`single_blas_thread`; several were up to 17x slower)."""
    from scipy.optimize import minimize  # before single_blas_thread, so SciPy's BLAS is limited too

    with single_blas_thread():
        t0 = time.perf_counter()
        X = as_rows(X)
        mu, sd = standardizer(X)
        shared = time.perf_counter() - t0
        ci, ri = np.asarray(ci), np.asarray(ri)
        W = np.zeros((len(cfgs), X.shape[1]), np.float32)  # (K, D)
        solve, nit, hist = [0.0] * len(cfgs), [0] * len(cfgs), [[] for _ in cfgs]
        x0 = np.zeros(X.shape[1])
        for i in sorted(range(len(cfgs)), key=lambda i: -cfgs[i].l2):
            c = cfgs[i]
            t1 = time.perf_counter()
            f = lbfgs_objective(X, mu, sd, ci, ri, c.l2, c.margin, c.center_coef)
            res = minimize(f, x0, jac=True, method="L-BFGS-B",
                           options={"maxiter": c.lbfgs_max_iter, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 20})
            x0 = res.x
            W[i] = res.x / sd  # scores raw x: (x - mu)/sd · v = x · (v/sd) + const
            solve[i], nit[i] = time.perf_counter() - t1, int(res.nit)
            hist[i] = [(int(res.nit), float(res.fun)), ("converged", bool(res.success), str(res.message))]
        t2 = time.perf_counter()
        out = finish_heads(W, X, ci, ri, cfgs, solve, nit, hist)
        shared += time.perf_counter() - t2
    for r in out:
        r.seconds += shared / len(cfgs)
    return out


def train_lbfgs(X, ci: np.ndarray, ri: np.ndarray, cfg: HeadConfig) -> TrainResult:
    """Exact minimiser of the pairwise loss + L2 on standardised features, mapped to raw vectors."""
    return train_lbfgs_path(X, ci, ri, [cfg])[0]


def train(X, ci, ri, cfg: HeadConfig) -> TrainResult:
    if len(ci) == 0:
        raise ValueError("no training pairs")
    fn = train_adamw if cfg.solver == "adamw" else train_lbfgs
    return fn(X, np.asarray(ci, dtype=np.int64), np.asarray(ri, dtype=np.int64), cfg)


__all__ = ["TrainResult", "finish_heads", "pair_stats", "train", "train_adamw", "train_lbfgs", "train_lbfgs_path", "warmup_factor",
           "batch_order", "lbfgs_objective", "standardizer"]
