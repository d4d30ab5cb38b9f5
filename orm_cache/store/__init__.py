"""Fingerprints, Arrow shard writing and reading, the key -> vector index."""

from .fingerprint import SCHEMA_VERSION, fingerprint, short
from .shards import ShardWriter, StoreError, VectorStore, list_stores, store_dir

__all__ = ["SCHEMA_VERSION", "fingerprint", "short", "ShardWriter", "StoreError", "VectorStore",
           "list_stores", "store_dir"]
