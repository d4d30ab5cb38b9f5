"""Hyperparameter sweeps over cached vectors: many heads trained as one ``(K, D)`` matrix.

AdamW configurations that share what decides the mini-batch stream and the initial weights
(feature, batch size, steps, seed, warm-up, init, betas) train together: one sampled batch per
step feeds all K heads, and a batched AdamW applies each head's own lr, weight decay, margin,
centring coefficient and gradient clipping. The update is PyTorch's AdamW written out for a
``(K, D)`` matrix, so a configuration trained here equals the same one trained alone by
:func:`orm_cache.head.train.train_adamw` (up to float round-off; tested).

L-BFGS configurations share one standardisation and are solved along the L2 path from strong to
weak, each warm-started from the previous solution. MLP heads, ensembles and pointwise AdamW
heads train one at a time (:func:`orm_cache.head.train.train`).

A grid is one or more sub-grids (``"solver=lbfgs l2=0.1,10; solver=adamw lr=1e-3"``); the sweep
trains the union of their combinations, each distinct *effective* configuration once: a field the
configuration ignores (``l2`` for AdamW, ``lr`` for L-BFGS, ``hidden`` for a linear head;
``config.FIELD_USED_BY``) multiplies nothing.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .config import HEAD_FIELDS, HeadConfig
from ..errors import ConfigConflict
from ..errors import ConfigError
from ..store.rows import in_memory_if_small
from .losses import pairwise_loss
from .kinds import LinearHead
from .threads import single_blas_thread, single_torch_thread
from .train import TrainResult, batch_order, finish_heads, pair_stats, train_lbfgs_path, warmup_factor

SHARED_KEYS = ("feature", "batch_size", "steps", "seed", "warmup_steps", "init", "betas")
EPS = 1e-8  # torch.optim.AdamW's default


# ------------------------------------------------------------------------------------- grids

Grid = dict[str, list]  # field -> values: every combination is one configuration


def _cast(field: str, value: str):
    default = getattr(HeadConfig(), field)
    if field == "betas" or field == "feature" or isinstance(default, str) or default is None:
        return value
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"grid field {field!r}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ConfigError(f"grid field {field!r}: {value!r} is not a finite number")
    if isinstance(default, int):
        if not x.is_integer():
            raise ConfigError(f"grid field {field!r}: {value!r} is not a whole number")
        return int(x)
    return x


def _read_grid_file(path: str) -> list[dict]:
    raw = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use JSON") from None
        try:
            doc = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: malformed YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None
    docs = doc if isinstance(doc, list) else [doc]
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise ConfigError(f"{path}: expected a mapping of field -> list of values, or a list of such mappings")
    return [{k: [",".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x)
                 for x in (v if isinstance(v, list) else [v])] for k, v in d.items()} for d in docs]


def _read_grid_text(text: str) -> list[dict]:
    subgrids = []
    for part in text.split(";"):
        sub: dict[str, list] = {}
        for item in part.split():
            if "=" not in item:
                raise ConfigError(f"grid item {item!r} is not field=v1,v2,…")
            k, v = item.split("=", 1)
            if k in sub:
                raise ConfigError(f"grid field {k!r} is given twice in one sub-grid (separate sub-grids with ';')")
            sub[k] = [x.replace("/", ",") if k == "betas" else x for x in v.split(",") if x]  # betas: 0.9/0.999
        subgrids.append(sub)
    return subgrids


def parse_grid(text: str | None = None, path: str | None = None) -> list[Grid]:
    """Sub-grids from ``"solver=lbfgs l2=0.1,10; solver=adamw lr=1e-5,2e-5"`` (``;`` separates
    sub-grids, spaces separate fields) or from a JSON/YAML file holding one mapping field -> list
    of values, or a list of them. Field names are :class:`HeadConfig`'s (``l2``, ``solver``,
    ``feature``…); an unknown one, a value that is not a number where one is needed, or an empty
    sub-grid (``a=1;;b=2``, a trailing ``;``) is a one-line ``ValueError``.
    """
    if text and path:
        raise ConfigError("give a grid or a grid file, not both (a file may hold several sub-grids)")
    if not text and not path:
        raise ConfigError("no grid given")
    subgrids = _read_grid_file(path) if path else _read_grid_text(text)
    for i, grid in enumerate(subgrids, 1):
        if not grid:
            raise ConfigError(f"{path}: mapping {i} is empty" if path else
                             f"sub-grid {i} of {text!r} is empty (an extra ';'?): give field=v1,v2,… or remove it")
        for k in grid:
            if k not in HEAD_FIELDS:
                raise ConfigError(f"unknown grid field {k!r}; sweepable fields: {', '.join(HEAD_FIELDS)}")
            grid[k] = [_cast(k, v) for v in grid[k]]
            if not grid[k]:
                raise ConfigError(f"grid field {k!r} has no values")
    return subgrids


def expand(base: HeadConfig, grids: Grid | list[Grid]) -> list[HeadConfig]:
    """Every distinct configuration the (sub-)grids describe on top of ``base``: each sub-grid's
    combinations, in its order, then the next sub-grid's. A field the configuration's solver
    ignores is reset to its default (``HeadConfig.effective``), so it multiplies nothing, and a
    configuration already seen is dropped. A grid field that no configuration of its sub-grid
    uses is warned about."""
    out: dict[HeadConfig, None] = {}
    for grid in [grids] if isinstance(grids, dict) else grids:
        keys = list(grid)
        cfgs, conflicts = [], []
        for combo in itertools.product(*(grid[k] for k in keys)):
            try:
                cfgs.append(replace(base, **dict(zip(keys, combo))))
            except ConfigConflict as e:  # e.g. head=mlp x solver=lbfgs: not a configuration
                conflicts.append(str(e))
            except ConfigError as e:  # a value no configuration takes: name the grid field
                raise ConfigError(f"grid {' '.join(f'{k}={v}' for k, v in zip(keys, combo))}: {e}") from None
        if conflicts:
            if not cfgs:
                raise ConfigError(f"no combination of the grid can train: {conflicts[0]}")
            warnings.warn(f"skipped {len(conflicts)} grid combination(s) that cannot train ({conflicts[0]})",
                          stacklevel=2)
        for k in keys:
            if not any(c.uses(k) for c in cfgs):
                solvers = "/".join(sorted({c.solver for c in cfgs}))
                heads = "/".join(sorted({c.describe() for c in cfgs}))
                warnings.warn(f"grid field {k!r} does not apply to solver {solvers} with head {heads}; ignored",
                              stacklevel=2)
        out.update(dict.fromkeys(c.effective() for c in cfgs))
    return list(out)


def grid_fields(grids: Grid | list[Grid]) -> list[str]:
    """The fields named in any sub-grid, in first-seen order (a leaderboard's columns)."""
    return list(dict.fromkeys(k for g in ([grids] if isinstance(grids, dict) else grids) for k in g))


# --------------------------------------------------------------------------------- training

def train_adamw_batched(X, ci: np.ndarray, ri: np.ndarray, cfgs: list[HeadConfig]) -> list[TrainResult]:
    """Train K AdamW heads that share the batch stream and init; per-head lr, weight decay,
    margin, center_coef and grad clip. ``X`` (U, D): each step gathers its rows once for all K
    heads, and one pass over ``X`` scores the K final heads. Returns one result per config."""
    c0 = cfgs[0]
    for c in cfgs:
        assert all(getattr(c, k) == getattr(c0, k) for k in SHARED_KEYS), "configs must share " + ", ".join(SHARED_KEYS)
    t0 = time.perf_counter()
    X = in_memory_if_small(X)
    K, D = len(cfgs), X.shape[1]
    gen = torch.Generator().manual_seed(c0.seed)
    torch.manual_seed(c0.seed)
    proto = torch.nn.Linear(D, 1)  # the same seeded init as train_adamw
    if c0.init == "zeros":
        torch.nn.init.zeros_(proto.weight)
        torch.nn.init.zeros_(proto.bias)
    W = proto.weight.detach().repeat(K, 1).requires_grad_(True)  # (K, D)
    b = proto.bias.detach().repeat(K).requires_grad_(True)  # (K,)

    def col(name):
        return torch.tensor([getattr(c, name) for c in cfgs], dtype=torch.float32)

    lr, wd, margin, center, clip = col("lr"), col("weight_decay"), col("margin"), col("center_coef"), col("grad_clip")
    beta1, beta2 = c0.betas
    m_W, v_W = torch.zeros_like(W), torch.zeros_like(W)
    m_b, v_b = torch.zeros_like(b), torch.zeros_like(b)
    ci, ri = np.asarray(ci), np.asarray(ri)
    hist = [[] for _ in range(K)]
    window = torch.zeros(K)
    n_win = 0
    with single_torch_thread():  # (8, D) @ (D, K) a step: one thread's work
        for step, idx in enumerate(batch_order(len(ci), c0.batch_size, c0.steps, gen)):
            idx = idx.numpy()
            r_c = (torch.from_numpy(X.take(ci[idx])) @ W.T + b).T  # (K, B) from the (B, D) rows gathered
            r_r = (torch.from_numpy(X.take(ri[idx])) @ W.T + b).T  # (K, B)
            loss = pairwise_loss(r_c, r_r, margin[:, None], center[:, None])  # (K,)
            gW, gb = torch.autograd.grad(loss.sum(), (W, b))
            with torch.no_grad():
                # per-head global-norm clipping, as clip_grad_norm_ over (weight, bias)
                norm = torch.sqrt((gW ** 2).sum(1) + gb ** 2)  # (K,)
                coef = torch.where(clip > 0, torch.clamp(clip / (norm + 1e-6), max=1.0), torch.ones_like(clip))
                gW, gb = gW * coef[:, None], gb * coef
                lr_t = lr * warmup_factor(step, c0.warmup_steps)  # (K,)
                t = step + 1
                bc1, bc2_sqrt = 1 - beta1 ** t, (1 - beta2 ** t) ** 0.5
                for p, g, m, v, lr_p, wd_p in ((W, gW, m_W, v_W, lr_t[:, None], wd[:, None]), (b, gb, m_b, v_b, lr_t, wd)):
                    p.mul_(1 - lr_p * wd_p)
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v.sqrt() / bc2_sqrt).add_(EPS)
                    p.sub_((lr_p / bc1) * m / denom)
            window += loss.detach()
            n_win += 1
            if n_win == 50 or step == c0.steps - 1:
                for k in range(K):
                    hist[k].append((step + 1, float(window[k] / n_win)))
                window.zero_()
                n_win = 0
    secs = (time.perf_counter() - t0) / K
    out = finish_heads(W.detach().numpy(), X, ci, ri, cfgs, [secs] * K, [c0.steps] * K, hist)
    extra = (time.perf_counter() - t0) / K - secs  # the scoring pass, shared
    for r in out:
        r.seconds += extra
    return out


def shared_trainer(c: HeadConfig) -> str | None:
    """How a configuration trains beside others: "adamw" (a single linear pairwise AdamW head:
    one batched run per SHARED_KEYS), "lbfgs" (a single linear L-BFGS head: one L2 path per
    feature and objective), or None (an mlp, an ensemble, a pointwise AdamW head: alone)."""
    if c.head != "linear" or c.ensemble > 1:
        return None
    if c.solver == "lbfgs":
        return "lbfgs"
    return "adamw" if c.objective == "pairwise" else None


def group_configs(cfgs: list[HeadConfig]) -> list[list[int]]:
    """Indices of configs that train together (:func:`shared_trainer`)."""
    groups: dict = {}
    for i, c in enumerate(cfgs):
        how = shared_trainer(c)
        if how == "adamw":
            key = ("adamw",) + tuple(getattr(c, k) for k in SHARED_KEYS)
        elif how == "lbfgs":
            key = ("lbfgs", c.feature, c.objective)
        else:
            key = ("alone", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


@dataclass
class SweepRow:
    config: HeadConfig
    result: TrainResult
    select_accuracy: float
    select_loss: float


SELECT_BY = ("accuracy", "loss")


def selection_key(select_by: str = "accuracy"):
    """Sort key of sweep rows, best first: by selection accuracy (ties: lower loss), or by
    selection loss (ties: higher accuracy). Loss varies smoothly where accuracy moves in steps
    of one pair, so it is the less noisy choice on a small selection split."""
    if select_by not in SELECT_BY:
        raise ConfigError(f"select_by={select_by!r} is not one of {', '.join(SELECT_BY)}")
    def loss(r):  # a diverged configuration (NaN) ranks last
        return r.select_loss if np.isfinite(r.select_loss) else np.inf

    if select_by == "loss":
        return lambda r: (loss(r), -r.select_accuracy)
    return lambda r: (-r.select_accuracy, loss(r))


def train_group(X, ci, ri, group: list[HeadConfig], points=None) -> list[TrainResult]:
    """Train one group of :func:`group_configs`; ``points`` (labelled traces, or None) is used
    by the pointwise configurations."""
    from .train import train

    c0 = group[0]
    pts = points if c0.objective == "pointwise" else None
    if c0.objective == "pointwise" and points is None:
        raise ConfigError("objective=pointwise trains on labelled traces, but the training split is pairwise "
                         "(chosen/rejected rows); use pointwise data (text or messages + label)")
    how = shared_trainer(c0)
    if how == "adamw":
        return train_adamw_batched(X, ci, ri, group)
    if how == "lbfgs":
        return train_lbfgs_path(X, ci, ri, group, pts)
    return [train(X, ci, ri, c0, pts)]


def run_sweep(features: dict[str, tuple], select: dict[str, tuple], cfgs: list[HeadConfig], progress=None) -> list[SweepRow]:
    """Train every config on ``features[feature] = (X, ci, ri[, points])`` and score it on
    ``select[feature] = (X, ci, ri[, ...])`` (``X`` a store's :class:`Rows` or an array; a group
    of linear heads is scored in one pass over it). ``points``: the labelled traces pointwise
    configurations train on. Returns rows in config order. NumPy's BLAS (training scores,
    selection scores, L-BFGS) runs on one thread, and so does torch's pool during the
    mini-batch steps (:func:`single_torch_thread`)."""
    rows: list[SweepRow | None] = [None] * len(cfgs)
    with single_blas_thread():
        for idx in group_configs(cfgs):
            group = [cfgs[i] for i in idx]
            X, ci, ri, *rest = features[group[0].feature]
            results = train_group(X, ci, ri, group, rest[0] if rest else None)
            Xs, cs, rs = select[group[0].feature][:3]
            if Xs is X and all(r.scores is not None for r in results):  # selected on other pairs of the same traces
                S = np.stack([r.scores for r in results], axis=1)  # (U, K), from the training pass
            elif all(isinstance(r.head, LinearHead) and r.head.members == 1 for r in results):
                S = Xs @ np.stack([r.head.weight for r in results]).T  # (U_sel, K): one pass for the group
            else:
                S = np.stack([r.head.member_scores(Xs).mean(axis=1) for r in results], axis=1)  # NaN: diverged
            loss, accuracy = pair_stats(S, cs, rs, 0.0)
            for j, (i, r) in enumerate(zip(idx, results)):
                r.scores = None  # (U,) each: not kept for the whole sweep
                rows[i] = SweepRow(cfgs[i], r, float(accuracy[j]), float(loss[j]))
            if progress is not None:
                progress(len(idx))
    return rows
