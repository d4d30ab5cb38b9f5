"""Trainers of the heads over cached vectors.

Both take the distinct trace vectors ``X`` ``(U, D)`` and, per pair, the row of its chosen and
rejected trace (``ci``, ``ri``, ``(N,)``): pairs share traces (the reference data repeats each
trace in ~8 pairs), so working on ``U`` rows instead of ``2N`` is several times less work. The
pointwise objective (a classification reward model) trains on :class:`Points` instead — the row
and 0/1 label of each labelled trace — with the logistic loss and a learned bias; the pairs are
still used for the training accuracy.
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
have mean 0, and their standard deviation is kept for normalised scores. A pointwise head keeps
its bias: its score is the log-odds that the trace is correct.

:func:`train` is the one entry point: it trains ``cfg.ensemble`` members (seeds, or bootstrap
resamples of the training examples) of the kind ``cfg.head`` names and returns the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .config import HeadConfig
from ..errors import DataError
from ..store.rows import Rows, as_rows, in_memory_if_small
from .checkpoint import Head
from .kinds import KINDS, LinearHead, MLPHead
from .losses import pairwise_loss
from .threads import single_blas_thread, single_torch_thread


@dataclass(frozen=True)
class Points:
    """Pointwise examples: the row of ``X`` of each labelled trace and its label (1 correct)."""

    rows: np.ndarray  # (M,) int64
    labels: np.ndarray  # (M,) float64 in {0, 1}

    def take(self, idx) -> "Points":
        return Points(self.rows[idx], self.labels[idx])


@dataclass
class TrainResult:
    weight: np.ndarray | None  # (D,) float32, scores raw vectors (a linear head; None for an mlp)
    bias: float
    score_std: float  # std of training-trace scores (a pairwise head's bias makes their mean 0)
    final_loss: float  # training loss of the final head (full data; the objective's loss)
    seconds: float
    steps: int
    history: list = field(default_factory=list)  # (step, mean loss over the last window)
    accuracy: float | None = None  # training pairwise accuracy (strict >) of the final head
    scores: np.ndarray | None = field(default=None, repr=False)  # (U,) training scores without bias (a view)
    head: Head | None = field(default=None, repr=False)  # the trained head (every member), no metadata yet


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


def point_loss(S: np.ndarray, points: Points) -> np.ndarray:
    """For K heads' scores ``S`` ``(U, K)`` (bias included): each head's mean logistic loss
    ``softplus(-(2y - 1)·s)`` on the labelled traces, ``(K,)``."""
    sign = (2.0 * points.labels - 1.0)[:, None]  # (M, 1)
    return np.logaddexp(0.0, -sign * S[points.rows].astype(np.float64)).mean(axis=0)


def finish_members(head: Head, X, ci, ri, cfgs: list[HeadConfig], seconds: list[float], steps: list[int],
                   histories: list[list], points: Points | None = None) -> list[TrainResult]:
    """One result per member of ``head`` (member k trained with ``cfgs[k]``), from one pass over
    ``X``: a pairwise member's bias is moved so its training scores have mean 0 (a pointwise one
    keeps its learned bias); its loss, pairwise accuracy and score std are measured."""
    S = head.member_scores(X)  # (U, K), biases as trained (NaN where training diverged: see check_trained)
    if points is None:
        shift = -S.mean(axis=0, dtype=np.float64)
        head = head.shifted(shift)
        S += shift.astype(np.float32)
    std = S.std(axis=0, dtype=np.float64)
    margins = np.array([c.margin for c in cfgs])
    pl, accuracy = pair_stats(S, ci, ri, margins)
    loss = pl if points is None else point_loss(S, points)
    members = [head.member(k) for k in range(head.members)]
    return [TrainResult(getattr(m, "weight", None), m.bias, float(std[k]), float(loss[k]), seconds[k], steps[k],
                        histories[k], float(accuracy[k]) if len(ci) else None, S[:, k], m)
            for k, m in enumerate(members)]


def check_trained(res: TrainResult, X=None) -> TrainResult:
    """``res`` when its head scored its training traces with numbers; else the one-line reason:
    the training vectors ``X`` hold NaN or Inf (a damaged store, named as such: lowering --lr
    would not help), or else the weights diverged (:meth:`Head.finite`)."""
    if not np.isfinite(res.final_loss):
        if X is not None:
            bad = sum(int((~np.isfinite(block).all(axis=1)).sum()) for _, block in as_rows(X).blocks(np.float32))
            if bad:
                from ..errors import StoreError

                raise StoreError(f"{bad:,} of the {len(X):,} training vectors hold NaN or Inf: the store is damaged, "
                                 "training did not diverge; run orm-cache cache check --fix, then embed again "
                                 "(no head was saved)")
        res.head.finite(np.array([np.nan]))
    return res


def finish_heads(W: np.ndarray, X, ci, ri, cfgs: list[HeadConfig], seconds: list[float], steps: list[int],
                 histories: list[list], biases=None, points: Points | None = None) -> list[TrainResult]:
    """Results of K trained linear heads ``W`` ``(K, D)`` (with learned ``biases`` for pointwise
    heads): :func:`finish_members` of them as one K-member head."""
    W = np.asarray(W, dtype=np.float32)
    b = np.zeros(len(W), np.float32) if biases is None else np.asarray(biases, np.float32)
    return finish_members(LinearHead(W, b), X, ci, ri, cfgs, seconds, steps, histories, points)


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


class _Standardise(torch.nn.Module):
    """``(x - mu) / sd`` with the training traces' per-feature mean and std (an MLP's input)."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray):
        super().__init__()
        self.register_buffer("mu", torch.from_numpy(mu.astype(np.float32)))
        self.register_buffer("sd", torch.from_numpy(sd.astype(np.float32)))

    def forward(self, x):
        return (x - self.mu) / self.sd


def make_net(cfg: HeadConfig, X: Rows) -> tuple[torch.nn.Module, callable]:
    """The trainable module of ``cfg.head`` (input ``(B, D)``, output ``(B,)``), seeded by the
    caller, and the function turning the trained module into a one-member :class:`Head`.
    linear: ``nn.Linear(D, 1)`` on raw vectors, PyTorch's init (the reference head) or zeros;
    mlp: standardise, ``Linear(D, H)``, ReLU, ``Linear(H, 1)``, the standardisation folded into
    the first layer afterwards so the head scores raw vectors."""
    D = X.shape[1]
    if cfg.head == "linear":
        lin = torch.nn.Linear(D, 1)  # PyTorch's default init, seeded: the reference's head
        if cfg.init == "zeros":
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
        return torch.nn.Sequential(lin, torch.nn.Flatten(0)), lambda net: LinearHead(
            lin.weight.detach().numpy()[0].copy(), lin.bias.detach().numpy().copy())
    mu, sd = standardizer(X)
    hid, out = torch.nn.Linear(D, cfg.hidden), torch.nn.Linear(cfg.hidden, 1)

    def fold(net) -> MLPHead:
        W1 = hid.weight.detach().double().numpy() / sd  # (H, D): scores raw x
        b1 = hid.bias.detach().double().numpy() - W1 @ mu  # (H,)
        return MLPHead(W1[None], b1[None], out.weight.detach().numpy(), out.bias.detach().numpy())

    return torch.nn.Sequential(_Standardise(mu, sd), hid, torch.nn.ReLU(), out, torch.nn.Flatten(0)), fold


def train_adamw(X, ci: np.ndarray, ri: np.ndarray, cfg: HeadConfig, points: Points | None = None) -> TrainResult:
    """The reference recipe on cached vectors ``X`` (U, D); pairs ``(ci[i], ri[i])``, or the
    labelled traces ``points`` for the pointwise objective. Each step gathers its mini-batch's
    rows from ``X`` (from the memory map, for a store's rows). Any head kind (``cfg.head``)."""
    t0 = time.perf_counter()
    X = in_memory_if_small(X)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net, to_head = make_net(cfg, X)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: warmup_factor(t, cfg.warmup_steps))
    ci, ri = np.asarray(ci), np.asarray(ri)
    n = len(ci) if points is None else len(points.rows)
    history, window = [], []
    with single_torch_thread():  # a step is microseconds of work: waking a second thread costs more
        for step, idx in enumerate(batch_order(n, cfg.batch_size, cfg.steps, gen)):
            idx = idx.numpy()
            if points is None:
                r_c = net(torch.from_numpy(X.take(ci[idx])))  # (B,) from the (B, D) rows gathered
                r_r = net(torch.from_numpy(X.take(ri[idx])))  # (B,)
                loss = pairwise_loss(r_c, r_r, cfg.margin, cfg.center_coef)
            else:
                s = net(torch.from_numpy(X.take(points.rows[idx])))  # (B,) logits
                loss = F.binary_cross_entropy_with_logits(s, torch.from_numpy(points.labels[idx]).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            window.append(float(loss.detach()))
            if len(window) == 50 or step == cfg.steps - 1:
                history.append((step + 1, float(np.mean(window))))
                window = []
    return finish_members(to_head(net), X, ci, ri, [cfg], [time.perf_counter() - t0], [cfg.steps], [history],
                          points)[0]


def standardizer(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the traces in float64 (a constant feature gets std 1); one
    pass over ``X`` in row blocks."""
    mu, sd = as_rows(X).mean_std()
    # a (nearly) constant feature is left unscaled: dividing float round-off (std ~1e-9 beside
    # others ~1) by its std would give it a weight of ~1e9
    sd[sd < max(1e-12, 1e-6 * float(np.median(sd)) if len(sd) else 0.0)] = 1.0
    return mu, sd


def lbfgs_objective(X: Rows, mu: np.ndarray, sd: np.ndarray, ci, ri, l2: float, margin: float = 0.0,
                    center_coef: float = 0.0, points: Points | None = None):
    """``f(p)`` and its gradient for the standardised traces ``Z = (X - mu) / sd`` (U, D), scores
    ``s = Z v`` (+ a bias ``b = p[D]`` for the pointwise objective, ``p = [v, b]``):

    * pairwise: ``mean softplus(margin - (s_c - s_r)) + center_coef·mean((s_c + s_r)²)``;
    * pointwise: ``mean softplus(-(2y - 1)·s)`` over the labelled traces;

    plus ``l2·|v|²/(2N)`` (N examples; the bias is not penalised). ``Z`` is never built:
    ``Z v = X (v / sd) - mu·(v / sd)`` and ``gᵀZ = (gᵀX - (Σg) mu) / sd``, each product read from
    ``X`` in float64 row blocks."""
    U, D = X.shape
    N = len(ci) if points is None else len(points.rows)
    if points is not None:
        sign = 2.0 * np.asarray(points.labels, np.float64) - 1.0

    def terms(s, penalty):  # loss (with the L2 penalty) and d loss / d s (U,)
        if points is not None:
            z = sign * s[points.rows]
            g_s = np.bincount(points.rows, -sign * 0.5 * (1.0 - np.tanh(0.5 * z)) / N, U)
            return np.logaddexp(0.0, -z).mean() + penalty, g_s
        d = s[ci] - s[ri] - margin  # (N,)
        loss = np.logaddexp(0.0, -d).mean() + penalty
        g_pair = -0.5 * (1.0 - np.tanh(0.5 * d)) / N  # d loss / d delta = -σ(-d) / N
        g_s = np.bincount(ci, g_pair, U) - np.bincount(ri, g_pair, U)  # (U,)
        if center_coef:
            t = s[ci] + s[ri]
            loss += center_coef * (t ** 2).mean()
            g_t = 2 * center_coef * t / N
            g_s += np.bincount(ci, g_t, U) + np.bincount(ri, g_t, U)
        return loss, g_s

    def f(p: np.ndarray):
        v = p[:D]
        w = v / sd  # (D,): z·v = x·w - mu·w
        s = X.matmul(w, np.float64) - mu @ w if v.any() else np.zeros(U)  # (U,); a cold start is free
        if points is not None:
            s = s + p[D]
        loss, g_s = terms(s, 0.5 * l2 * (v @ v) / N)
        grad = (X.rmatmul(g_s) - g_s.sum() * mu) / sd + l2 * v / N  # (D,)
        return loss, (grad if points is None else np.append(grad, g_s.sum()))

    return f


def train_lbfgs_path(X, ci: np.ndarray, ri: np.ndarray, cfgs: list[HeadConfig],
                     points: Points | None = None) -> list[TrainResult]:
    """Exact minimisers of the loss + L2 for each config (pairwise, or pointwise on ``points``),
    on one shared standardisation, mapped back to raw vectors. Solved from the strongest L2 to
    the weakest, each warm-started from the previous solution (a sweep's L2 path); one config is
    the plain exact solve. The heads' training scores come from one final pass over ``X``. Each
    result's seconds are its solve plus an equal share of the standardisation and that pass.
    NumPy's BLAS runs on one thread throughout (:func:`single_blas_thread`; several were up to
    17x slower)."""
    from scipy.optimize import minimize  # before single_blas_thread, so SciPy's BLAS is limited too

    with single_blas_thread():
        t0 = time.perf_counter()
        X = in_memory_if_small(X, np.float64)
        mu, sd = standardizer(X)
        shared = time.perf_counter() - t0
        ci, ri = np.asarray(ci), np.asarray(ri)
        D = X.shape[1]
        W = np.zeros((len(cfgs), D), np.float32)  # (K, D)
        B = np.zeros(len(cfgs))  # pointwise biases, for raw vectors
        solve, nit, hist = [0.0] * len(cfgs), [0] * len(cfgs), [[] for _ in cfgs]
        x0 = np.zeros(D + (points is not None))
        for i in sorted(range(len(cfgs)), key=lambda i: -cfgs[i].l2):
            c = cfgs[i]
            t1 = time.perf_counter()
            f = lbfgs_objective(X, mu, sd, ci, ri, c.l2, c.margin, c.center_coef, points)
            res = minimize(f, x0, jac=True, method="L-BFGS-B",
                           options={"maxiter": c.lbfgs_max_iter, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 20})
            x0 = res.x
            W[i] = res.x[:D] / sd  # scores raw x: (x - mu)/sd · v = x · (v/sd) + const
            if points is not None:
                B[i] = res.x[D] - mu @ (res.x[:D] / sd)
            solve[i], nit[i] = time.perf_counter() - t1, int(res.nit)
            hist[i] = [(int(res.nit), float(res.fun)), ("converged", bool(res.success), str(res.message))]
        t2 = time.perf_counter()
        out = finish_heads(W, X, ci, ri, cfgs, solve, nit, hist, B if points is not None else None, points)
        shared += time.perf_counter() - t2
    for r in out:
        r.seconds += shared / len(cfgs)
    return out


def train_lbfgs(X, ci: np.ndarray, ri: np.ndarray, cfg: HeadConfig, points: Points | None = None) -> TrainResult:
    """Exact minimiser of the loss + L2 on standardised features, mapped to raw vectors."""
    return train_lbfgs_path(X, ci, ri, [cfg], points)[0]


def train(X, ci, ri, cfg: HeadConfig, points: Points | None = None) -> TrainResult:
    """Train the head ``cfg`` describes: its kind, objective (``points`` for pointwise) and
    ``cfg.ensemble`` members. Member k trains with seed ``cfg.seed + k``, and on a bootstrap
    resample of the training examples (pairs, or labelled traces) drawn with that seed when
    ``cfg.resample`` is bootstrap. The result's ``head`` holds every member; its loss, accuracy
    and score std are those of the members' mean score on the full training data."""
    ci, ri = np.asarray(ci, dtype=np.int64), np.asarray(ri, dtype=np.int64)
    if (cfg.objective == "pointwise") != (points is not None):
        raise DataError("the pointwise objective trains on labelled traces (pointwise data: text + label rows); "
                         "this split has only pairs" if points is None else
                         "labelled traces were given to a pairwise head; set objective=pointwise")
    if (len(ci) if points is None else len(points.rows)) == 0:
        raise DataError("no training pairs" if points is None else "no labelled training traces")
    if points is not None and len(np.unique(points.labels)) < 2:
        raise DataError(f"the pointwise objective needs correct and incorrect traces, but all "
                         f"{len(points.rows):,} training labels are {int(points.labels[0])}")
    if cfg.ensemble == 1:
        return _train_one(X, ci, ri, cfg, points)
    t0 = time.perf_counter()
    members = []
    for k in range(cfg.ensemble):
        c = replace(cfg, seed=cfg.seed + k, ensemble=1)
        mci, mri, mpts = ci, ri, points
        if cfg.resample == "bootstrap":
            rng = np.random.default_rng(c.seed)
            if points is None:
                pick = rng.integers(0, len(ci), len(ci))
                mci, mri = ci[pick], ri[pick]
            else:  # stratified by label: every resample keeps both classes, in their proportions
                pick = np.concatenate([rng.choice(c, len(c)) for c in
                                       (np.flatnonzero(points.labels == 0), np.flatnonzero(points.labels == 1))])
                mpts = points.take(pick)
        members.append(_train_one(X, mci, mri, c, mpts))
    head = KINDS[cfg.head].combine([m.head for m in members])
    S = head.member_scores(X).mean(axis=1, dtype=np.float64).astype(np.float32)[:, None]  # (U, 1): its training scores
    loss, acc = pair_stats(S, ci, ri, cfg.margin)
    if points is not None:
        loss = point_loss(S, points)
    history = [("member", k, m.history[-1] if m.history else None) for k, m in enumerate(members)]
    return TrainResult(getattr(head, "weight", None), head.bias, float(S.std(dtype=np.float64)), float(loss[0]),
                       time.perf_counter() - t0, sum(m.steps for m in members), history,
                       float(acc[0]) if len(ci) else None, S[:, 0], head)


def _train_one(X, ci, ri, cfg: HeadConfig, points: Points | None) -> TrainResult:
    fn = train_adamw if cfg.solver == "adamw" else train_lbfgs
    return fn(X, ci, ri, cfg, points)


__all__ = ["Points", "TrainResult", "finish_heads", "finish_members", "make_net", "pair_stats", "point_loss", "train", "train_adamw", "train_lbfgs", "train_lbfgs_path", "warmup_factor",
           "batch_order", "lbfgs_objective", "standardizer"]
