"""Stage 1: model + tokenizer loading, batching, pooling, and the embedding driver."""

from .embedder import EmbedReport, distinct_keys, embed_texts, token_budget_batches
from .pooling import last_token_index, pool

__all__ = ["EmbedReport", "distinct_keys", "embed_texts", "last_token_index", "pool", "token_budget_batches"]
