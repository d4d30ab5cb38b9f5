"""Encoder fingerprints: sha256 of sorted-key JSON over what changes a vector, nothing else."""

from __future__ import annotations

import hashlib
import json

SCHEMA_VERSION = 1


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
