"""Stage 1: model + tokenizer loading, batching, pooling, and the embedding driver."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import DataSpec, EncoderSpec, RunSpec
from .embedder import EmbedReport, embed_texts, token_budget_batches
from .pooling import last_token_index, pool


def embed(data: DataSpec | Iterable[str] | dict, encoder=None, run: RunSpec | None = None) -> EmbedReport:
    """Embed a split (``DataSpec``), a list of texts, or a ``{key: text}`` mapping into the store.

    ``encoder`` is an :class:`EncoderSpec` (loaded here) or an already-built encoder object.
    Only texts the store lacks are run through the model.
    """
    from ..data import load_split, trace_key
    from .model import Encoder

    run = run or RunSpec()
    if encoder is None or isinstance(encoder, EncoderSpec):
        encoder = Encoder(encoder or EncoderSpec(), run.device)
    if isinstance(data, DataSpec):
        texts = load_split(data).texts
    elif isinstance(data, dict):
        texts = data
    else:
        texts = {trace_key(t): t for t in data}
    return embed_texts(texts, encoder, run)


__all__ = ["EmbedReport", "embed", "embed_texts", "last_token_index", "pool", "token_budget_batches"]
