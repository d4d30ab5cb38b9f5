"""How a head trains (:class:`HeadConfig`, the reference card's recipe by default), and which
fields each configuration reads (a sweep multiplies only those)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..errors import ConfigConflict, ConfigError
from ..fields import check_choice as _check_choice, parse_csv

OBJECTIVES = ("pairwise", "pointwise")
HEAD_KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    """Training recipe of the linear head (defaults: the reference model card)."""

    solver: str = "adamw"
    """adamw (the reference recipe, mini-batch) or lbfgs (exact minimiser of loss + L2)."""
    lr: float = 2e-5
    """AdamW learning rate (after warm-up)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, as "b1,b2"."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to ``lr`` over this many steps, then constant."""
    batch_size: int = 8
    """Pairs per optimiser step."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    steps: int = 800
    """AdamW optimiser steps."""
    seed: int = 0
    """Seed of the mini-batch order and initial weights."""
    l2: float = 1.0
    """lbfgs: L2 penalty on the standardised-feature weights (strength per pair, as
    ``0.5 * l2 * |w|^2 / n_pairs`` added to the mean loss)."""
    margin: float = 0.0
    """Loss ``-log sigma(delta - margin)``; 0 is plain Bradley-Terry."""
    center_coef: float = 0.0
    """Adds ``center_coef * mean((r_chosen + r_rejected)^2)`` (TRL's center_rewards_coefficient)."""
    feature: str | None = None
    """Vector column to train on (e.g. ``mean@-1``); default: the store's first column."""
    init: str = "linear"
    """adamw start: linear (PyTorch's nn.Linear initialisation, seeded, as the reference head)
    or zeros."""
    lbfgs_max_iter: int = 1000
    """lbfgs: iteration limit (it usually converges long before)."""
    objective: str = "pairwise"
    """pairwise: Bradley-Terry on (chosen, rejected) pairs (the reference); pointwise: logistic
    loss on each trace's 0/1 label (a classification reward model; pointwise data only)."""
    head: str = "linear"
    """linear (the reference checkpoint format) or mlp (one hidden ReLU layer on standardised
    features; orm-cache's own checkpoint type; adamw only)."""
    hidden: int = 256
    """mlp: hidden units."""
    ensemble: int = 1
    """Members trained and averaged (the score is their mean; eval reports their disagreement)."""
    ensemble_by: str = "auto"
    """What varies between members: seed (adamw: init and batch order), bootstrap (each member
    trains on a resample, with replacement, of the training pairs or traces), or auto (seed for
    adamw, bootstrap for lbfgs, which is deterministic)."""

    def __post_init__(self):
        _check_choice("solver", self.solver, ("adamw", "lbfgs"))
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("head", self.head, HEAD_KINDS)
        _check_choice("ensemble_by", self.ensemble_by, ("auto", "seed", "bootstrap"))
        for name in ("hidden", "ensemble"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        if self.head == "mlp" and self.solver != "adamw":
            raise ConfigConflict("head=mlp trains with solver=adamw (lbfgs solves the convex linear head exactly)")
        if self.ensemble > 1 and self.solver == "lbfgs" and self.ensemble_by == "seed":
            raise ConfigConflict("ensemble_by=seed with solver=lbfgs gives identical members (lbfgs is "
                                 "deterministic); use ensemble_by=bootstrap")
        try:
            object.__setattr__(self, "betas", tuple(float(b) for b in parse_csv(self.betas, float)))
        except ValueError:
            raise ConfigError(f"--betas {self.betas!r} must be two numbers, e.g. 0.9,0.999") from None
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"--betas {self.betas} must be two numbers in [0, 1)")
        for name in ("lr", "batch_size", "steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be positive")
        _check_choice("init", self.init, ("linear", "zeros"))
        for name in ("weight_decay", "warmup_steps", "grad_clip", "l2", "center_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 0")
        for name in ("lr", "weight_decay", "grad_clip", "l2", "margin", "center_coef"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a finite number")
        if self.lbfgs_max_iter < 1:
            raise ConfigError(f"--lbfgs-max-iter {self.lbfgs_max_iter} must be at least 1")

    def uses(self, name: str) -> bool:
        """Whether training this configuration reads the field ``name`` (see FIELD_USED_BY)."""
        rule = FIELD_USED_BY.get(name)
        return rule is None or rule(self)

    def effective(self) -> HeadConfig:
        """The same training run with every field it ignores at its default, so two
        configurations that train the same head compare equal (a sweep trains it once)."""
        return replace(self, **{k: getattr(_DEFAULT_HEAD, k) for k in FIELD_USED_BY if not self.uses(k)})

    @property
    def resample(self) -> str:
        """What varies between ensemble members: "seed" or "bootstrap" (``ensemble_by`` resolved)."""
        if self.ensemble_by != "auto":
            return self.ensemble_by
        return "seed" if self.solver == "adamw" else "bootstrap"

    def describe(self) -> str:
        """A short name of the head this trains, e.g. "linear", "mlp(256) x5 (seed)"."""
        kind = f"mlp({self.hidden})" if self.head == "mlp" else "linear"
        members = f" x{self.ensemble} ({self.resample})" if self.ensemble > 1 else ""
        return kind + members

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


# The one solver that reads each solver-specific field; every other field (solver, feature,
# objective, head…) is read by both. lbfgs starts from zeros and runs to convergence on all
# pairs, so the mini-batch/optimiser fields mean nothing to it.
SOLVER_ONLY: dict[str, str] = {
    **dict.fromkeys(("lr", "betas", "weight_decay", "warmup_steps", "batch_size", "grad_clip", "steps", "init",
                     "seed"), "adamw"),
    **dict.fromkeys(("l2", "lbfgs_max_iter"), "lbfgs"),
}


def _solver_rule(solver: str):
    return lambda c: c.solver == solver


# When training reads a field; a field not named here is always read. A field that is not read
# multiplies nothing in a sweep grid and is left empty in its leaderboard.
FIELD_USED_BY = {
    **{name: _solver_rule(solver) for name, solver in SOLVER_ONLY.items()},
    "seed": lambda c: c.solver == "adamw" or c.ensemble > 1,  # lbfgs draws its bootstrap resamples with it
    "margin": lambda c: c.objective == "pairwise",
    "center_coef": lambda c: c.objective == "pairwise",
    "hidden": lambda c: c.head == "mlp",
    "init": lambda c: c.solver == "adamw" and c.head == "linear",  # an mlp starts from PyTorch's init
    "ensemble_by": lambda c: c.ensemble > 1,
}
_DEFAULT_HEAD = HeadConfig()


# The fields of HeadConfig, in order, for the CLI and sweeps.
HEAD_FIELDS = tuple(HeadConfig.__dataclass_fields__)
