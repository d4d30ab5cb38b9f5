"""Find the store of an encoder from its options, without loading the encoder (stage 2).

Stage 2 never imports transformers, so it cannot compute a tokenizer identity; it matches the
stores under the cache directory on what it can know: the model (a local directory's content
digest, or the hub id), dtype (unless auto), max_length, truncation side, and the feature column.
"""

from __future__ import annotations

from ..config import EncoderSpec, feature_parts
from .describe import list_stores
from .fingerprint import short
from .shards import StoreError, VectorStore


def _matches(identity: dict, hint: dict) -> bool:
    model = identity.get("model", {})
    if hint["source"] != model.get("source"):
        return False
    if hint["source"] == "local":
        return model.get("digest") == hint["digest"]
    return model.get("id") == hint["id"] and hint.get("revision") in (None, model.get("revision"),
                                                                      model.get("revision_requested"))


def store_summary(s: dict) -> str:
    """``--model X`` with its dtype, max length and columns, as recorded by the store's writer."""
    spec, ident = s.get("spec") or {}, s["identity"]
    model = spec.get("model") or ident.get("model", {}).get("id") or "?"
    cols = ",".join(f"{p}@{l}" for l in ident.get("layers", []) for p in ident.get("pooling", []))
    return (f"--model {model} (--dtype {ident.get('dtype')} --max-length {ident.get('max_length')} "
            f"--truncation-side {ident.get('truncation_side')}; columns {cols})")


def store_by_prefix(cache_dir, prefix: str) -> VectorStore:
    """The one store under ``cache_dir`` whose fingerprint starts with ``prefix`` (``--store``)."""
    chosen = [s for s in list_stores(cache_dir) if s["fingerprint"] and s["fingerprint"].startswith(prefix)]
    if len(chosen) != 1:
        raise StoreError(f"--store {prefix!r} matches {len(chosen)} stores under {cache_dir}")
    return VectorStore(chosen[0]["dir"], chosen[0]["fingerprint"])


def _columns(identity: dict) -> list[str]:
    return [f"{p}@{l}" for l in identity.get("layers", []) for p in identity.get("pooling", [])]


def find_store(cache_dir, spec: EncoderSpec, feature: str | None = None, store: str | None = None,
               embed_hint: str = "orm-cache embed") -> VectorStore:
    """The one store under ``cache_dir`` that holds vectors of ``spec``'s encoder (and ``feature``).

    ``store`` (a fingerprint prefix) picks one explicitly. Raises :class:`StoreError` naming the
    command to run when there is none, and the candidates when there are several.
    """
    from ..encode.identity import model_identity_hint

    if store:
        return store_by_prefix(cache_dir, store)
    stores = [s for s in list_stores(cache_dir) if s["fingerprint"]]
    try:
        parts = feature_parts(feature) if feature else ()
    except ValueError as e:  # one line, with the columns the model's stores hold
        held = sorted({c for s in stores for c in _columns(s["identity"])})
        raise StoreError(f"{e}; stored columns: {', '.join(held) or 'none yet'}") from None
    hint = model_identity_hint(spec.model, spec.revision)
    chosen = []
    for s in stores:
        ident = s["identity"]
        if not _matches(ident, hint):
            continue
        if spec.dtype != "auto" and ident.get("dtype") != spec.dtype:
            continue
        if ident.get("max_length") != spec.max_length or ident.get("truncation_side") != spec.truncation_side:
            continue
        cols = _columns(ident)
        if feature and not set(parts) <= set(cols):
            continue
        chosen.append(s)
    if not chosen:
        held = "; ".join(store_summary(s) for s in stores if s["shards"])
        raise StoreError(f"no cached vectors for model {spec.model!r} (max_length {spec.max_length}"
                         + (f", feature {feature}" if feature else "") + f") under {cache_dir}; "
                         + (f"the cache holds: {held} (give those options, and --feature, to use one); "
                            if held else "")
                         + f"or run first: {embed_hint}")
    if len(chosen) > 1:  # the one embedded with exactly the poolings and layers asked for, if any
        exact = [s for s in chosen if list(s["identity"].get("pooling", [])) == list(spec.pooling)
                 and list(s["identity"].get("layers", [])) == list(spec.layers)]
        chosen = exact if len(exact) == 1 else chosen
    if len(chosen) > 1:
        listing = "; ".join(f"{short(s['fingerprint'])} ({s['identity'].get('dtype')}, "
                            f"pooling {','.join(s['identity'].get('pooling', []))})" for s in chosen)
        raise StoreError(f"several stores match model {spec.model!r}: {listing}; pick one with "
                         "--store FINGERPRINT (or --dtype / --feature)")
    s = chosen[0]
    return VectorStore(s["dir"], s["fingerprint"])
