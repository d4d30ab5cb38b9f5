"""Store: atomic shards, temp files never read, duplicate keys collapse, foreign shards skipped."""

import numpy as np
import pytest

from orm_cache.store import ShardWriter, StoreError, VectorStore, fingerprint, store_dir

IDENT = {"schema_version": 1, "model": "fake"}
FP = fingerprint(IDENT)


def _write(cache, keys, value, fp=FP, ident=IDENT):
    d = store_dir(cache, fp)
    VectorStore.open(cache, fp, ident, create=True)
    w = ShardWriter(d, fp, ident, ("last@-1",), 4, "float16")
    vecs = np.full((len(keys), 4), value, dtype=np.float32)
    w.add(keys, np.arange(len(keys)), np.zeros(len(keys), bool), {"last@-1": vecs})
    return w.flush()


def test_fingerprint_is_sorted_key_sha256():
    assert fingerprint({"b": 1, "a": 2, "schema_version": 1}) == fingerprint({"schema_version": 1, "a": 2, "b": 1})
    with pytest.raises(ValueError):
        fingerprint({"a": 1})


def test_roundtrip_order_and_dtype(tmp_path):
    _write(tmp_path, ["a", "b"], 1.5)
    _write(tmp_path, ["c"], -2.0)
    s = VectorStore.open(tmp_path, FP)
    v = s.vectors(["c", "a", "b"])
    assert v.dtype == np.float32 and v.shape == (3, 4)
    assert v[:, 0].tolist() == [-2.0, 1.5, 1.5]
    assert s.n_tokens(["b", "c"]).tolist() == [1, 0]
    with pytest.raises(StoreError, match="1 of 2 keys have no vector"):
        s.vectors(["a", "zzz"])


def test_temporary_files_are_never_read(tmp_path):
    _write(tmp_path, ["a"], 1.0)
    d = store_dir(tmp_path, FP)
    (d / ".tmp-half-written.arrow").write_bytes(b"ARROW1 partial")
    s = VectorStore.open(tmp_path, FP)
    assert len(s) == 1 and not s.skipped


def test_duplicate_keys_collapse_and_foreign_shards_are_skipped(tmp_path):
    _write(tmp_path, ["a", "b"], 1.0)
    _write(tmp_path, ["b", "c"], 2.0)  # a second writer embedded "b" too
    s = VectorStore.open(tmp_path, FP)
    assert len(s) == 3 and s.vectors(["b"])[0, 0] == 1.0  # first shard in name order wins
    # A shard of another encoder placed in this store is refused, with a warning naming it.
    other = {"schema_version": 1, "model": "other"}
    path = _write(tmp_path / "x", ["z"], 9.0, fingerprint(other), other)
    path.rename(store_dir(tmp_path, FP) / path.name)
    with pytest.warns(UserWarning, match="fingerprint .* != store"):
        s = VectorStore.open(tmp_path, FP)
    assert "z" not in s and len(s.skipped) == 1


def test_non_finite_values_are_refused(tmp_path):
    d = store_dir(tmp_path, FP)
    VectorStore.open(tmp_path, FP, IDENT, create=True)
    w = ShardWriter(d, FP, IDENT, ("last@-1",), 2, "float32")
    with pytest.raises(StoreError, match="non-finite"):
        w.add(["a"], np.array([1]), np.array([False]), {"last@-1": np.array([[np.nan, 0.0]])})
