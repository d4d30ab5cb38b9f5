"""Encoder fingerprints: sha256 of sorted-key JSON over what changes a vector, nothing else."""

from __future__ import annotations

import hashlib
import json

SCHEMA_VERSION = 2  # 2: poolings and layers are columns of a store, not part of its identity
COLUMN_FIELDS = ("pooling", "layers")  # what a schema-1 identity held that a store's columns say now


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint(identity: dict) -> str:
    """sha256 hex of the canonical JSON of ``identity`` (which must include the schema version).

    Never random: the same identity gives the same fingerprint on every machine.
    """
    if "schema_version" not in identity:
        raise ValueError("an encoder identity must include schema_version")
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def short(fp: str) -> str:
    """The 16-hex-digit prefix used for directory names and messages."""
    return fp[:16]


def encoder_identity(identity: dict) -> dict:
    """The identity of an encoder as a store names it today: a schema-1 identity (which named
    the poolings and layers stored) without those, at the current schema version. One encoder,
    one store, whatever columns it holds."""
    if not any(k in identity for k in COLUMN_FIELDS):
        return identity
    out = {k: v for k, v in identity.items() if k not in COLUMN_FIELDS}
    out["schema_version"] = SCHEMA_VERSION
    return out


def encoder_fingerprint(identity: dict) -> str:
    """The fingerprint of the store that holds ``identity``'s vectors today (see :func:`encoder_identity`)."""
    return fingerprint(encoder_identity(identity))
