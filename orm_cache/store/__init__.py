"""Fingerprints, Arrow shard writing and reading, the key -> vector index."""

from .fingerprint import SCHEMA_VERSION, fingerprint, short
from .resolve import find_store
from .shards import ShardWriter, StoreError, VectorStore, list_stores, store_dir

__all__ = ["SCHEMA_VERSION", "fingerprint", "short", "find_store", "ShardWriter", "StoreError", "VectorStore",
           "list_stores", "store_dir"]
