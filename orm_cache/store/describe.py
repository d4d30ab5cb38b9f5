"""What a store directory holds: its encoder's fingerprint, identity and spec, from
``encoder.json`` or, when that file is missing, not JSON or edited, from the shards themselves
(each shard's schema metadata carries its fingerprint and identity, and its spec since that key
was added). ``list_stores`` describes every store of a cache directory this way.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from .fingerprint import encoder_fingerprint, fingerprint, short
from ..errors import StoreError
from .layout import META_FINGERPRINT, META_IDENTITY, META_SPEC, _atomic_write_bytes, list_shards, stored_columns

ENCODER_JSON = "encoder.json"


def _description_of(fp, identity, spec) -> dict | None:
    """``{fingerprint, identity, spec}`` when ``identity`` is a dict whose fingerprint is ``fp``."""
    try:
        ok = isinstance(identity, dict) and fingerprint(identity) == fp
    except ValueError:  # no schema_version
        ok = False
    return {"fingerprint": fp, "identity": identity, "spec": spec} if ok else None


def read_encoder_json(d: Path) -> tuple[dict, str | None]:
    """``d/encoder.json`` as a dict ({} when unreadable) and what is wrong with it: None when it
    describes the store named ``d`` (its fingerprint starts with the directory's name and is the
    fingerprint of its identity)."""
    enc = Path(d) / ENCODER_JSON
    try:
        info = json.loads(enc.read_text())
    except FileNotFoundError:
        return {}, f"{enc} is missing"
    except (OSError, ValueError) as e:  # ValueError: not UTF-8 or not JSON
        return {}, f"{enc} is not JSON ({str(e).splitlines()[0]})"
    info = info if isinstance(info, dict) else {}
    fp = info.get("fingerprint")
    if not (isinstance(fp, str) and short(fp) == Path(d).name and _description_of(fp, info.get("identity"), None)):
        return info, f"{enc} does not describe this store (fingerprint not {Path(d).name}… or not its identity's)"
    return info, None


def _shard_description(path: Path) -> dict | None:
    """The fingerprint, identity and spec in one shard's schema metadata (None if unreadable)."""
    try:
        meta = pa.ipc.open_file(pa.memory_map(str(path), "r")).schema.metadata or {}
        spec = meta.get(META_SPEC)
        return _description_of(meta.get(META_FINGERPRINT, b"").decode(), json.loads(meta.get(META_IDENTITY, b"")),
                               json.loads(spec) if spec else None)
    except (pa.ArrowInvalid, OSError, ValueError):
        return None


def describe_store(directory) -> dict:
    """What one store directory holds: ``fingerprint``, ``identity``, ``spec`` and ``problem``.

    ``encoder.json`` answers when it describes the directory. Otherwise (missing, not JSON,
    edited) the shards answer, since each carries its fingerprint and identity: the fingerprint
    most readable shards carry among those that start with the directory's name, as the store's
    own shards do. ``problem`` says what is wrong with ``encoder.json`` (None when nothing);
    ``fingerprint`` is None when no shard can tell either.
    """
    d = Path(directory)
    info, problem = read_encoder_json(d)
    if problem is None:
        return {"fingerprint": info["fingerprint"], "identity": info["identity"], "spec": info.get("spec"),
                "problem": None}
    found = [x for x in map(_shard_description, list_shards(d)) if x and short(x["fingerprint"]) == d.name]
    if not found:
        return {"fingerprint": None, "identity": {}, "spec": None,
                "problem": f"{problem}, and no readable shard carries a fingerprint starting with {d.name}"}
    fp = Counter(x["fingerprint"] for x in found).most_common(1)[0][0]
    mine = [x for x in found if x["fingerprint"] == fp]
    old = _description_of(fp, info.get("identity"), info.get("spec"))  # the file's identity is this store's
    spec = next((x["spec"] for x in [old] + mine if x and x["spec"] is not None), None)
    return {**mine[0], "spec": spec, "problem": problem}


def write_encoder_json(d: Path, fp: str, identity: dict, spec: dict | None) -> None:
    """Write ``d/encoder.json`` atomically (temporary name, fsync, rename)."""
    try:
        _atomic_write_bytes(Path(d) / ENCODER_JSON, (json.dumps({"fingerprint": fp, "identity": identity, "spec": spec},
                                                                indent=2, sort_keys=True) + "\n").encode())
    except OSError as e:
        raise StoreError(f"cannot write to the cache directory {d} ({e.strerror or e})") from e


def _size(path: Path) -> int | None:
    """Bytes of a shard; None when ``cache compact`` removed it since the listing."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _shard_columns(path: Path) -> tuple[str, ...]:
    """The vector columns in one shard's schema (none when unreadable)."""
    try:
        return stored_columns(pa.ipc.open_file(pa.memory_map(str(path), "r")).schema)
    except (pa.ArrowInvalid, OSError):
        return ()


def list_stores(cache_dir) -> list[dict]:
    """Every store directory under ``cache_dir``: :func:`describe_store`'s fingerprint, identity,
    spec and problem; ``encoder``: the fingerprint of the store that holds its encoder's vectors
    today (a schema-1 directory's is another one's, which reads it across); the vector
    ``columns`` its shards hold; its shards and bytes on disk."""
    out = []
    root = Path(cache_dir) / "vectors"
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        shards = list_shards(d)
        sizes = [n for n in map(_size, shards) if n is not None]
        desc = describe_store(d)
        encoder = encoder_fingerprint(desc["identity"]) if desc["fingerprint"] else None
        columns = tuple(dict.fromkeys(c for p in shards for c in _shard_columns(p)))
        out.append({"dir": str(d), **desc, "encoder": encoder, "columns": columns, "shards": len(sizes),
                    "bytes": sum(sizes)})
    return out
