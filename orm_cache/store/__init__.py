"""Fingerprints, Arrow shard writing and reading, the key -> vector index, store descriptions."""

from .describe import list_stores
from .fingerprint import SCHEMA_VERSION, fingerprint, short
from .resolve import find_store
from .shards import ShardWriter, StoreError, VectorStore, store_dir

__all__ = ["SCHEMA_VERSION", "fingerprint", "short", "find_store", "ShardWriter", "StoreError", "VectorStore",
           "list_stores", "store_dir"]
