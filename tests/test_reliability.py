"""Faults lose nothing and explain themselves: kill -9, corrupt shards, concurrent writers,
fp16 overflow, full disk, read-only cache, changed encoders."""

import errno
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from orm_cache.cli import cli
from orm_cache.config import DataSpec, EncoderSpec, RunSpec
from orm_cache.data import load_split
from orm_cache.encode import embed_texts
from orm_cache.encode.model import Encoder
from orm_cache.store import StoreError, VectorStore, list_stores

from conftest import pointwise_rows, write_jsonl

SMALL = ["--batch-tokens", "64", "--max-batch-size", "2", "--shard-rows", "2", "--device", "cpu", "-q"]


@pytest.fixture
def big_dir(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", pointwise_rows(150, per_group=4, seed=7))
    return d


def _reference(tiny_opt_dir, data_dir, cache):
    data = load_split(DataSpec(data=str(data_dir)))
    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir)), "cpu")
    embed_texts(data.texts, enc, RunSpec(cache_dir=str(cache), quiet=True))
    return data, VectorStore.open(cache, enc.fingerprint)


def _store(cache) -> VectorStore:
    (s,) = list_stores(cache)
    return VectorStore(s["dir"], s["fingerprint"])


def _embed_cmd(data_dir, model, cache):
    return [sys.executable, "-m", "orm_cache", "embed", "--data", str(data_dir), "--model", str(model),
            "--cache-dir", str(cache), *SMALL]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_shards", [1, 8, 40])
def test_kill_9_then_resume_equals_uninterrupted(tiny_opt_dir, big_dir, tmp_path, kill_after_shards):
    data, ref = _reference(tiny_opt_dir, big_dir, tmp_path / "ref")
    cache = tmp_path / "c"
    proc = subprocess.Popen(_embed_cmd(big_dir, tiny_opt_dir, cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        shards = list((cache / "vectors").glob("*/*.arrow")) if (cache / "vectors").exists() else []
        if len([p for p in shards if not p.name.startswith(".tmp-")]) >= kill_after_shards:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a partial shard would raise a 'skipping shard' warning
        partial = _store(cache)
    assert 0 < len(partial) < len(data.texts) and not partial.skipped
    done = subprocess.run(_embed_cmd(big_dir, tiny_opt_dir, cache), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"cached already: {len(partial):,}" in done.stdout
    final, keys = _store(cache), sorted(data.texts)
    assert sorted(final.keys()) == sorted(ref.keys()) == keys
    np.testing.assert_allclose(final.vectors(keys), ref.vectors(keys), atol=1e-5, rtol=0)


def test_truncated_and_bit_flipped_shards_are_named_left_out_and_reembedded(tiny_opt_dir, pointwise_dir, tmp_path):
    cache = tmp_path / "c"
    args = ["embed", "--data", str(pointwise_dir), "--model", str(tiny_opt_dir), "--cache-dir", str(cache),
            "--shard-rows", "8", "--max-batch-size", "8", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    shards = sorted(_store(cache).shards)
    assert len(shards) >= 3
    truncated, flipped = shards[0], shards[1]
    rows_lost = sum(len(_store(cache)._tables[i]) for i in (0, 1))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit inside the vector data
    flipped.write_bytes(bytes(raw))
    with pytest.warns(UserWarning) as rec:
        store = _store(cache)
    msgs = " ".join(str(w.message) for w in rec)
    assert str(truncated) in msgs and str(flipped) in msgs and "checksum mismatch" in msgs
    assert len(store) == 48 - rows_lost
    check = CliRunner().invoke(cli, ["cache", "check", "--cache-dir", str(cache)])
    assert check.exit_code == 1 and check.output.count("BAD") == 2 and truncated.name in check.output
    r = CliRunner().invoke(cli, args)
    assert f"to embed: {rows_lost}" in r.output
    fixed = CliRunner().invoke(cli, ["cache", "check", "--cache-dir", str(cache), "--fix"])
    assert fixed.exit_code == 0 and "moved" in fixed.output
    assert CliRunner().invoke(cli, ["cache", "check", "--cache-dir", str(cache)]).exit_code == 0
    assert len(_store(cache)) == 48


@pytest.mark.slow
def test_two_concurrent_writers_both_finish_and_the_store_reads_consistently(tiny_opt_dir, big_dir, tmp_path):
    cache = tmp_path / "c"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_embed_cmd(big_dir, tiny_opt_dir, cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    store = _store(cache)
    data = load_split(DataSpec(data=str(big_dir)))
    assert sorted(store.keys()) == sorted(data.texts) and not store.skipped
    rows_on_disk = sum(t.num_rows for t in store._tables)
    assert rows_on_disk >= len(data.texts)  # both may have embedded some texts; read collapses them
    _, ref = _reference(tiny_opt_dir, big_dir, tmp_path / "ref")
    keys = sorted(data.texts)
    np.testing.assert_allclose(store.vectors(keys), ref.vectors(keys), atol=1e-5, rtol=0)


def test_fp16_overflow_rows_are_recomputed_in_fp32_and_flagged(tiny_opt_dir, tmp_path):
    texts = {"a" * 64: "short trace one", "b" * 64: "OVERFLOW " * 12, "c" * 64: "short trace two"}
    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir), dtype="float16"), "cpu")
    real = enc.forward

    def overflowing(input_ids, mask, response_start=None, float32=False):
        out = real(input_ids, mask, response_start, float32=float32)
        if not float32:  # the long text overflows in half precision
            long_rows = mask.sum(1) > 30  # "OVERFLOW " x 12 is ~100 tokens, the others ~12
            out = {c: torch.where(long_rows[:, None], torch.tensor(float("inf"), dtype=v.dtype), v) for c, v in out.items()}
        return out

    enc.forward = overflowing
    r = embed_texts(texts, enc, RunSpec(cache_dir=str(tmp_path / "c"), quiet=True))
    assert r.recomputed == 1 and r.embedded == 3
    store = VectorStore.open(tmp_path / "c", enc.fingerprint)
    keys = list(texts)
    assert store.recomputed(keys).tolist() == [False, True, False]
    v = store.vectors(keys)
    assert np.isfinite(v).all()
    fp32 = Encoder(EncoderSpec(model=str(tiny_opt_dir), dtype="float32"), "cpu")
    from orm_cache.encode.embedder import encode_texts

    expected, _ = encode_texts(fp32, [texts["b" * 64]], "last@-1")
    np.testing.assert_allclose(v[1], expected[0].astype(np.float16), rtol=1e-3, atol=1e-3)

    def always_nan(input_ids, mask, response_start=None, float32=False):
        out = real(input_ids, mask, response_start, float32=float32)
        return {c: torch.full_like(v, float("nan")) for c, v in out.items()}

    enc.forward = always_nan
    with pytest.raises(StoreError, match="non-finite hidden states even in float32"):
        embed_texts({"d" * 64: "another text"}, enc, RunSpec(cache_dir=str(tmp_path / "c"), quiet=True))
    assert "d" * 64 not in VectorStore.open(tmp_path / "c", enc.fingerprint)


def test_full_disk_keeps_written_shards_and_says_so(tiny_opt_dir, pointwise_dir, tmp_path, monkeypatch):
    import orm_cache.store.shards as shards

    data = load_split(DataSpec(data=str(pointwise_dir)))
    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir)), "cpu")
    run = RunSpec(cache_dir=str(tmp_path / "c"), quiet=True, shard_rows=8, max_batch_size=8)
    real_osfile, calls = shards.pa.OSFile, {"n": 0}

    def filling_disk(path, mode="r"):
        calls["n"] += 1
        if calls["n"] >= 3:  # the disk stays full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_osfile(path, mode)

    monkeypatch.setattr(shards.pa, "OSFile", filling_disk)
    with pytest.raises(StoreError, match="No space left on device.*2 shards this run already wrote are intact"):
        embed_texts(data.texts, enc, run)
    monkeypatch.setattr(shards.pa, "OSFile", real_osfile)
    store = VectorStore.open(run.cache_dir, enc.fingerprint)
    assert len(store) == 16 and not store.skipped
    assert not list(store.dir.glob(".tmp-*"))
    r = embed_texts(data.texts, enc, run)
    assert r.cached == 16 and r.embedded == 32


def test_read_only_cache_is_one_clear_line(tiny_opt_dir, pointwise_dir, tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if "vectors" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    r = CliRunner().invoke(cli, ["embed", "--data", str(pointwise_dir), "--model", str(tiny_opt_dir),
                                 "--cache-dir", str(tmp_path / "ro"), "-q"])
    assert r.exit_code == 1 and "cannot write to the cache directory" in r.output and "Permission denied" in r.output
    assert "Traceback" not in r.output


def test_changing_the_encoder_never_reuses_vectors(tiny_opt_dir, pointwise_dir, tmp_path):
    base = ["embed", "--data", str(pointwise_dir), "--model", str(tiny_opt_dir), "--cache-dir", str(tmp_path / "c"), "-q"]
    assert "to embed: 48" in CliRunner().invoke(cli, base).output
    for change in (["--pooling", "mean"], ["--dtype", "bfloat16"], ["--max-length", "64"]):
        out = CliRunner().invoke(cli, base + change).output
        assert "cached already: 0   to embed: 48" in out, (change, out)
    assert len(list_stores(tmp_path / "c")) == 3  # a new pooling is a new column of the same encoder's store
    assert "cached already: 48   to embed: 0" in CliRunner().invoke(cli, base + ["--pooling", "last,mean"]).output


def test_duplicate_pairs_counted_kept_or_dropped(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"chosen": "a", "rejected": "b"}] * 3 + [{"chosen": "a", "rejected": "c"}])
    kept = load_split(DataSpec(data=str(f)))
    dropped = load_split(DataSpec(data=str(f), drop_duplicate_pairs=True))
    assert kept.stats["duplicate_pairs"] == dropped.stats["duplicate_pairs"] == 2
    assert len(kept.pairs) == 4 and len(dropped.pairs) == 2


@pytest.mark.parametrize("name, content, message", [
    ("d.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": 0\n', "d.jsonl:2: malformed JSON"),
    ("d.jsonl", b'{"txt": "a", "label": 1}\n', "d.jsonl:1: neither pairwise columns"),
    ("d.jsonl", b'{"text": "a", "label": 1}\n{"text": "  ", "label": 0}\n', "d.jsonl:2: column 'text' is empty"),
    ("d.jsonl", b'{"text": ["a"], "label": 1}\n', "d.jsonl:1: column 'text' must be a string, got list"),
    ("d.jsonl", b'{"text": "a", "label": "maybe"}\n', "d.jsonl:1: column 'label' must be 0 or 1"),
    ("d.jsonl", b'{"chosen": "same", "rejected": "same"}\n', "d.jsonl:1: chosen and rejected are the same text"),
    ("d.jsonl", b'{"chosen": "a\xff", "rejected": "b"}\n', "d.jsonl:1: bytes are not valid UTF-8"),
    ("d.csv", b'text,label\nok,1\n\xfe\xff,0\n', "d.csv: bytes are not valid UTF-8"),
    ("d.xml", b'<a/>', "unknown format '.xml'"),
])
def test_bad_input_is_one_line_nonzero_no_traceback(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    r = CliRunner().invoke(cli, ["embed", "--data", str(tmp_path / name), "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.output


@pytest.mark.slow
def test_compact_merges_small_shards_and_keeps_every_vector(tiny_opt_dir, big_dir, tmp_path):
    cache = tmp_path / "c"
    data, ref = _reference(tiny_opt_dir, big_dir, tmp_path / "ref")
    args = ["embed", "--data", str(big_dir), "--model", str(tiny_opt_dir), "--cache-dir", str(cache),
            "--shard-rows", "16", "--max-batch-size", "16", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = _store(cache)
    assert len(before.shards) >= 30
    r = CliRunner().invoke(cli, ["cache", "compact", "--cache-dir", str(cache), "--target-rows", "256"])
    assert r.exit_code == 0, r.output
    after = _store(cache)
    assert len(after.shards) == 3 and not after.skipped  # 600 rows in shards of at most 256
    keys = sorted(data.texts)
    assert sorted(after.keys()) == keys and sum(t.num_rows for t in after._tables) == len(keys)
    np.testing.assert_array_equal(after.vectors(keys), before.vectors(keys))
    np.testing.assert_allclose(after.vectors(keys), ref.vectors(keys), atol=1e-5, rtol=0)
    assert CliRunner().invoke(cli, ["cache", "check", "--cache-dir", str(cache)]).exit_code == 0
    assert "to embed: 0" in CliRunner().invoke(cli, args).output
