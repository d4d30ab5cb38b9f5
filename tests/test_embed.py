"""Stage 1: dedup, counted cache hits, resume after a stop, plain-Arrow shards, fingerprints."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from orm_cache.config import DataSpec, EncoderSpec, RunSpec
from orm_cache.data import load_split
from orm_cache.encode import embed_texts, token_budget_batches
from orm_cache.encode.model import Encoder
from orm_cache.store import VectorStore


def _encoder(model_dir, **kw):
    return Encoder(EncoderSpec(model=str(model_dir), **kw), "cpu")


def test_token_budget_batches_sorted_and_bounded():
    lengths = np.array([5, 50, 20, 3, 50, 7])
    batches = token_budget_batches(lengths, batch_tokens=100, max_batch_size=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(6))
    assert (np.diff(lengths[flat]) <= 0).all()  # longest first
    assert all(len(b) * lengths[b].max() <= 100 for b in batches)
    assert all(len(b) <= 3 for b in batches)
    assert len(token_budget_batches(np.array([500]), 100, 8)[0]) == 1  # too long still runs


def test_second_embed_embeds_nothing_counted(tiny_opt_dir, pointwise_dir, tmp_path):
    data = load_split(DataSpec(data=str(pointwise_dir), split="train"))
    enc = _encoder(tiny_opt_dir)
    run = RunSpec(cache_dir=str(tmp_path / "c"), quiet=True)
    first = embed_texts(data.texts, enc, run)
    assert first.embedded == first.texts == len(data.texts) == 48 and first.cached == 0
    assert enc.texts_forwarded == 48
    second = embed_texts(data.texts, enc, run)
    assert second.embedded == 0 and second.cached == 48 and second.batches == 0
    assert enc.texts_forwarded == 48  # the model saw nothing new


def test_dedup_across_splits_and_one_row_per_text(tiny_opt_dir, pointwise_dir, tmp_path):
    from conftest import pointwise_rows, write_jsonl

    # validation shares its first group with train: those texts are not embedded again.
    rows = pointwise_rows(12, seed=0)[:4] + pointwise_rows(2, seed=5, offset=300)
    write_jsonl(pointwise_dir / "validation.jsonl", rows)
    enc = _encoder(tiny_opt_dir)
    run = RunSpec(cache_dir=str(tmp_path / "c"), quiet=True)
    train = load_split(DataSpec(data=str(pointwise_dir), split="train"))
    val = load_split(DataSpec(data=str(pointwise_dir), split="validation"))
    embed_texts(train.texts, enc, run)
    r = embed_texts(val.texts, enc, run)
    assert r.cached == 4 and r.embedded == 8
    store = VectorStore.open(run.cache_dir, enc.fingerprint)
    keys = [k for s in store.shards for k in pa.ipc.open_file(str(s)).read_all().column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == len(set(train.texts) | set(val.texts))


def test_interrupted_run_resumes_to_the_same_store(tiny_opt_dir, pointwise_dir, tmp_path, monkeypatch):
    data = load_split(DataSpec(data=str(pointwise_dir), split="train"))
    small = dict(quiet=True, batch_tokens=200, max_batch_size=5, shard_rows=5)
    ref_enc = _encoder(tiny_opt_dir)
    ref_run = RunSpec(cache_dir=str(tmp_path / "ref"), **small)
    embed_texts(data.texts, ref_enc, ref_run)

    enc = _encoder(tiny_opt_dir)
    run = RunSpec(cache_dir=str(tmp_path / "c"), **small)
    real_forward, calls = enc.forward, {"n": 0}

    def dying_forward(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the 4th batch
        return real_forward(*a, **k)

    monkeypatch.setattr(enc, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(data.texts, enc, run)
    partial = VectorStore.open(run.cache_dir, enc.fingerprint)
    assert 0 < len(partial) < len(data.texts)  # the completed batches were kept
    monkeypatch.setattr(enc, "forward", real_forward)
    resumed = embed_texts(data.texts, enc, run)
    assert resumed.cached == len(partial) and resumed.embedded == len(data.texts) - len(partial)

    a = VectorStore.open(run.cache_dir, enc.fingerprint)
    b = VectorStore.open(ref_run.cache_dir, ref_enc.fingerprint)
    keys = sorted(data.texts)
    assert set(a.keys()) == set(b.keys()) == set(keys)
    np.testing.assert_allclose(a.vectors(keys), b.vectors(keys), atol=1e-5, rtol=0)
    assert (a.n_tokens(keys) == b.n_tokens(keys)).all()


def test_shard_is_plain_arrow_with_fingerprint_metadata(tiny_opt_dir, pointwise_dir, tmp_path):
    data = load_split(DataSpec(data=str(pointwise_dir), split="test"))
    enc = _encoder(tiny_opt_dir, pooling="last,mean", layers="-1,-2")
    report = embed_texts(data.texts, enc, RunSpec(cache_dir=str(tmp_path / "c"), quiet=True))
    shard = Path(report.shards_written[0])
    with pa.memory_map(str(shard)) as src:
        table = pa.ipc.open_file(src).read_all()
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    fp_keys = [k for k in meta if "fingerprint" in k]
    assert fp_keys and meta[fp_keys[0]] == enc.fingerprint
    assert {"key", "n_tokens", "truncated", "recomputed_fp32", "last@-1", "mean@-1", "last@-2", "mean@-2"} <= set(table.column_names)
    assert pa.types.is_fixed_size_list(table.schema.field("last@-1").type)
    assert table.schema.field("last@-1").type.list_size == 64
    assert table.num_rows == len(data.texts)


def test_fingerprint_changes_with_what_changes_a_vector(tiny_opt_dir, tmp_path):
    base = _encoder(tiny_opt_dir).fingerprint
    assert _encoder(tiny_opt_dir).fingerprint == base  # deterministic
    for change in ({"dtype": "bfloat16"}, {"max_length": 128}, {"truncation_side": "left"}):
        assert _encoder(tiny_opt_dir, **change).fingerprint != base, change
    for columns in ({"pooling": "mean"}, {"layers": "-2"}):  # columns of the encoder's one store, not its identity
        assert _encoder(tiny_opt_dir, **columns).fingerprint == base, columns
    from orm_cache.testing import tiny_opt

    other = tiny_opt(tmp_path / "other", seed=1)  # same architecture, other weights
    assert _encoder(other).fingerprint != base


def test_batch_size_and_device_do_not_change_the_store(tiny_opt_dir, pointwise_dir, tmp_path):
    data = load_split(DataSpec(data=str(pointwise_dir), split="test"))
    enc = _encoder(tiny_opt_dir)
    r1 = embed_texts(data.texts, enc, RunSpec(cache_dir=str(tmp_path / "c"), quiet=True, batch_tokens=64))
    r2 = embed_texts(data.texts, _encoder(tiny_opt_dir),
                     RunSpec(cache_dir=str(tmp_path / "c"), quiet=True, batch_tokens=8192, max_batch_size=3))
    assert r1.fingerprint == r2.fingerprint and r2.embedded == 0 and r2.cached == len(data.texts)


def test_truncation_is_recorded(tiny_opt_dir, tmp_path):
    texts = {"k" * 64: "word " * 200, "j" * 64: "short"}
    enc = _encoder(tiny_opt_dir, max_length=16)
    r = embed_texts(texts, enc, RunSpec(cache_dir=str(tmp_path / "c"), quiet=True))
    store = VectorStore.open(tmp_path / "c", enc.fingerprint)
    assert r.truncated == 1
    assert store.truncated(["k" * 64, "j" * 64]).tolist() == [True, False]
    assert store.n_tokens(["k" * 64])[0] == 16


def test_sharded_work_split_covers_every_key_once(tiny_opt_dir, pointwise_dir, tmp_path):
    data = load_split(DataSpec(data=str(pointwise_dir), split="train"))
    runs = [RunSpec(cache_dir=str(tmp_path / "c"), quiet=True, num_shards=3, shard_index=i) for i in range(3)]
    enc = _encoder(tiny_opt_dir)
    counts = [embed_texts(data.texts, enc, r).embedded for r in runs]
    assert sum(counts) == len(data.texts) and all(c > 0 for c in counts)
    assert len(VectorStore.open(tmp_path / "c", enc.fingerprint)) == len(data.texts)
