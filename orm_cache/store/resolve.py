"""Find the store of an encoder from its options, without loading the encoder (stage 2).

Stage 2 never imports transformers, so it cannot compute a tokenizer identity; it matches the
stores under the cache directory on what it can know: the model (a local directory's content
digest, or the hub id), dtype (unless auto), max_length, truncation side, and the feature column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an encoder spec is read by attribute here; encode/ sits above store/
    from ..encode.spec import EncoderSpec
from .columns import feature_parts
from .describe import list_stores
from .fingerprint import short
from .shards import StoreError, VectorStore, store_dir


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
    cols = ",".join(s.get("columns") or ())
    return (f"--model {model} (--dtype {ident.get('dtype')} --max-length {ident.get('max_length')} "
            f"--truncation-side {ident.get('truncation_side')}; columns {cols})")


def store_by_prefix(cache_dir, prefix: str) -> VectorStore:
    """The one store under ``cache_dir`` whose fingerprint starts with ``prefix`` (``--store``;
    a schema-1 store's fingerprint names the store of its encoder, which reads it across)."""
    found = {s["encoder"] for s in list_stores(cache_dir) if s["fingerprint"]
             and (s["fingerprint"].startswith(prefix) or s["encoder"].startswith(prefix))}
    if len(found) != 1:
        raise StoreError(f"--store {prefix!r} matches {len(found)} stores under {cache_dir}")
    return encoder_store(cache_dir, found.pop())


def encoder_store(cache_dir, fp: str) -> VectorStore:
    """The store of the encoder whose fingerprint is ``fp`` (its directory may not exist yet when
    only schema-1 stores of that encoder do: it reads them across)."""
    return VectorStore(store_dir(cache_dir, fp), fp)


def find_store(cache_dir, spec: EncoderSpec, feature: str | None = None, store: str | None = None,
               embed_hint: str = "orm-cache embed") -> VectorStore:
    """The store under ``cache_dir`` that holds vectors of ``spec``'s encoder (and ``feature``).

    One encoder has one store; its poolings and layers are columns, found by name (directories
    written before that, one per pooling set, are read as part of it). ``store`` (a
    fingerprint prefix) picks one explicitly. Raises :class:`StoreError` naming the command to
    run when there is none, and the candidates when several encoders match (another dtype).
    """
    from ..models import model_identity_hint

    if store:
        return store_by_prefix(cache_dir, store)
    stores = [s for s in list_stores(cache_dir) if s["fingerprint"]]
    try:
        parts = feature_parts(feature) if feature else ()
    except ValueError as e:  # one line, with the columns the model's stores hold
        held = sorted({c for s in stores for c in s["columns"]})
        raise StoreError(f"{e}; stored columns: {', '.join(held) or 'none yet'}") from None
    hint = model_identity_hint(spec.model, spec.revision)
    encoders: dict[str, list[dict]] = {}
    for s in stores:
        ident = s["identity"]
        if not _matches(ident, hint):
            continue
        if spec.dtype != "auto" and ident.get("dtype") != spec.dtype:
            continue
        if ident.get("max_length") != spec.max_length or ident.get("truncation_side") != spec.truncation_side:
            continue
        encoders.setdefault(s["encoder"], []).append(s)
    if feature:
        encoders = {fp: ss for fp, ss in encoders.items() if set(parts) <= {c for s in ss for c in s["columns"]}}
    if not encoders:
        held = "; ".join(store_summary(s) for s in stores if s["shards"])
        raise StoreError(f"no cached vectors for model {spec.model!r} (max_length {spec.max_length}"
                         + (f", feature {feature}" if feature else "") + f") under {cache_dir}; "
                         + (f"the cache holds: {held} (give those options, and --feature, to use one); "
                            if held else "")
                         + f"or run first: {embed_hint}")
    if len(encoders) > 1:
        listing = "; ".join(f"{short(fp)} ({ss[0]['identity'].get('dtype')}, columns "
                            f"{','.join(dict.fromkeys(c for s in ss for c in s['columns']))})"
                            for fp, ss in encoders.items())
        raise StoreError(f"several stores match model {spec.model!r}: {listing}; pick one with "
                         "--store FINGERPRINT (or --dtype)")
    return encoder_store(cache_dir, next(iter(encoders)))


def cache_summary(cache_dir) -> list[dict]:
    """One entry per encoder under ``cache_dir`` (``cache info``): its store's directory and
    fingerprint, identity, the directories it reads (schema-1 ones included), shards, bytes,
    distinct texts and, per column, how many texts have it. A directory whose encoder cannot be
    told is an entry with its ``problem``."""
    out, by_encoder = [], {}
    for s in list_stores(cache_dir):
        if s["fingerprint"] is None:
            out.append({"dir": s["dir"], "problem": s["problem"]})
        else:
            by_encoder.setdefault(s["encoder"], []).append(s)
    for fp, dirs in by_encoder.items():
        vs = encoder_store(cache_dir, fp)
        out.append({"dir": str(vs.dir), "fingerprint": fp, "identity": vs.identity() or dirs[0]["identity"],
                    "read_from": [s["dir"] for s in dirs], "shards": sum(s["shards"] for s in dirs),
                    "bytes": sum(s["bytes"] for s in dirs), "texts": len(vs), "columns": vs.column_counts(),
                    "problem": next((s["problem"] for s in dirs if s["problem"]), None)})
    return out
