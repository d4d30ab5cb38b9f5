"""The store's tools never damage good data: a lost or broken encoder.json is rebuilt from the
shards (never a reason to quarantine them), and `compact` never makes a reader miss a vector,
whatever the interleaving of the reader's steps with the compaction's."""

import itertools
import json
import os
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import orm_cache.store.layout as layout
import orm_cache.store.shards as shards
from orm_cache.cli import cli
from orm_cache.store import ShardWriter, StoreError, VectorStore, fingerprint, list_stores, short, store_dir
from orm_cache.store.check import compact_store
from orm_cache.store.fingerprint import encoder_identity
from orm_cache.store.resolve import store_by_prefix

IDENT = {"schema_version": 1, "model": {"source": "hub", "id": "fake/model", "revision": "r1"}, "dtype": "float16",
         "max_length": 32, "truncation_side": "left", "pooling": ["last"], "layers": [-1]}
FP = fingerprint(IDENT)
SPEC = {"model": "fake/model", "dtype": "float16", "pooling": ["last"], "layers": [-1]}
OTHER = {**IDENT, "dtype": "float32"}
REAL_WRITE_SHARD, REAL_UNLINK, REAL_GLOB, REAL_OPEN_SHARD = shards.write_shard, Path.unlink, Path.glob, shards.open_shard


def _write(cache, keys, seed, fp=FP, ident=IDENT):
    """One shard of ``keys`` with random float16 vectors; returns (path, {key: vector})."""
    VectorStore.open(cache, fp, ident, create=True, spec=SPEC)
    w = ShardWriter(store_dir(cache, fp), fp, ident, ("last@-1",), 4, "float16", spec=SPEC)
    vecs = np.random.default_rng(seed).standard_normal((len(keys), 4)).astype(np.float16)
    w.add(keys, np.arange(len(keys)), np.zeros(len(keys), bool), {"last@-1": vecs})
    return w.flush(), dict(zip(keys, vecs))


def _three_shards(cache):
    expected = {}
    for i in range(3):
        expected.update(_write(cache, [f"k{i}{j}" for j in range(2)], seed=i)[1])
    return expected


def _shards(d) -> list[Path]:
    return sorted(p for p in Path(d).glob("*.arrow") if not p.name.startswith(".tmp-"))


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# -- compact beside a reader ------------------------------------------------------------------
class SteppedCompaction:
    """``compact_store`` in a thread that stops before each step that changes the directory
    (writing the merged shard, deleting an original) until the test lets it take that step."""

    STEPS = 4  # three shards merge into one: one write, three deletions

    def __init__(self, store: dict, monkeypatch):
        self.go, self.done, self.taken, self.error = threading.Semaphore(0), threading.Semaphore(0), 0, None
        self.thread = threading.Thread(target=self._run, args=(store,), daemon=True)
        monkeypatch.setattr(shards, "write_shard", self._gated(REAL_WRITE_SHARD))  # compact writes through it
        monkeypatch.setattr(Path, "unlink", self._gated(REAL_UNLINK))
        self.thread.start()

    def _gated(self, fn):
        def step(*a, **k):
            if threading.current_thread() is not self.thread:
                return fn(*a, **k)
            self.go.acquire()
            try:
                return fn(*a, **k)
            finally:
                self.taken += 1
                self.done.release()
        return step

    def _run(self, store):
        try:
            compact_store(store, target_rows=1000)
        except BaseException as e:  # re-raised in the test's thread by finish()
            self.error = e

    def advance(self, steps: int) -> None:
        """Let the compaction take its steps up to ``steps`` (no more than it has)."""
        while self.taken < min(steps, self.STEPS):
            self.go.release()
            assert self.done.acquire(timeout=60), "the compaction stopped before its next step"

    def finish(self) -> None:
        self.advance(self.STEPS)
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


# How many compaction steps are done before each of the reader's first six steps (listing the
# directory, opening a shard, listing again…): every non-decreasing sequence, so every
# interleaving of those reader steps with the compaction's four.
SCHEDULES = list(itertools.combinations_with_replacement(range(SteppedCompaction.STEPS + 1), 6))


def test_compact_beside_a_reader_loses_nothing_in_any_interleaving(tmp_path, monkeypatch):
    relisted = 0  # schedules in which the reader found a listed shard gone and listed again
    for n, schedule in enumerate(SCHEDULES):
        cache = tmp_path / str(n)
        expected = _three_shards(cache)
        (store,) = list_stores(cache)
        compaction = SteppedCompaction(store, monkeypatch)
        events, listings = iter(schedule), []

        def reader_step():
            if threading.current_thread() is threading.main_thread():
                compaction.advance(next(events, 0))

        def listing(self, pattern):  # the reader lists the directory in one step
            reader_step()
            listings.append(pattern)
            return iter(list(REAL_GLOB(self, pattern)))

        def opening(path, fp):
            reader_step()
            return REAL_OPEN_SHARD(path, fp)

        monkeypatch.setattr(Path, "glob", listing)
        monkeypatch.setattr(shards, "open_shard", opening)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reader = VectorStore(Path(store["dir"]), FP)
        monkeypatch.setattr(Path, "glob", REAL_GLOB)
        monkeypatch.setattr(shards, "open_shard", REAL_OPEN_SHARD)
        compaction.finish()
        assert not caught and not reader.skipped, (schedule, [str(w.message) for w in caught])
        assert len(reader) == 6, schedule  # before any lookup could refresh it again
        keys = sorted(expected)
        np.testing.assert_array_equal(reader.vectors(keys, dtype=np.float16), np.stack([expected[k] for k in keys]))
        assert len(_shards(store["dir"])) == 1  # the compaction did run
        relisted += len(listings) > 1
    assert relisted > 0


def test_fit_head_while_compact_runs(tiny_opt_dir, pointwise_dir, tmp_path, monkeypatch):
    """The reported failure: fit-head lists the shards, compact merges and deletes them, fit-head
    opens them. Here compact runs to completion just after fit-head's listing."""
    cache = tmp_path / "c"
    assert _cli("embed", "--data", pointwise_dir, "--model", tiny_opt_dir, "--cache-dir", cache,
                "--shard-rows", "8", "--max-batch-size", "8", "-q").exit_code == 0
    (store,) = list_stores(cache)
    assert store["shards"] == 6 and store["problem"] is None  # a real encoder's encoder.json is accepted
    real_open, compacted = shards.open_shard, []

    def compact_first(path, fp):
        if not compacted:
            compacted.append(True)
            compact_store(store, target_rows=1000)
        return real_open(path, fp)

    monkeypatch.setattr(shards, "open_shard", compact_first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = _cli("fit-head", "--data", pointwise_dir, "--model", tiny_opt_dir, "--cache-dir", cache,
                 "--solver", "lbfgs", "--eval-split", "", "--out", tmp_path / "h.pt", "-q")
    assert r.exit_code == 0, r.output
    assert compacted and not [w for w in caught if "skipping shard" in str(w.message)]
    assert list_stores(cache)[0]["shards"] == 1


def test_a_reader_stops_with_a_clear_error_when_shards_keep_vanishing(tmp_path, monkeypatch):
    _write(tmp_path, ["a"], seed=0)

    def always_gone(path, fp):
        raise FileNotFoundError(path)

    monkeypatch.setattr(shards, "open_shard", always_gone)
    with pytest.raises(StoreError, match="kept disappearing while being opened"):
        VectorStore.open(tmp_path, FP)


def test_a_reader_looks_for_new_shards_before_calling_keys_missing(tmp_path):
    _write(tmp_path, ["a"], seed=0)
    reader = VectorStore.open(tmp_path, FP)
    _, later = _write(tmp_path, ["b"], seed=1)  # another process adds a shard
    assert reader.missing(["a", "b", "zzz"]) == ["zzz"]
    np.testing.assert_array_equal(reader.vectors(["b"], dtype=np.float16)[0], later["b"])


# -- encoder.json lost, broken or edited ------------------------------------------------------
def _edit(field, value):
    def edit(enc: Path):
        info = json.loads(enc.read_text())
        info[field] = value
        enc.write_text(json.dumps(info))
    return edit


BREAKS = {
    "deleted": lambda enc: enc.unlink(),
    "not JSON": lambda enc: enc.write_text('{"fingerprint": "3f2a'),
    "not UTF-8": lambda enc: enc.write_bytes(b"\xff\xfe\x00garbage"),
    "fingerprint of another encoder": _edit("fingerprint", fingerprint(OTHER)),
    "fingerprint tail edited": _edit("fingerprint", FP[:16] + "0" * 48),
    "identity edited": _edit("identity", OTHER),
}


@pytest.mark.parametrize("damage", list(BREAKS))
def test_check_fix_rebuilds_encoder_json_from_the_shards_and_keeps_them(tmp_path, damage):
    cache = tmp_path / "c"
    _three_shards(cache)
    d = store_dir(cache, FP)
    foreign, _ = _write(tmp_path / "other", ["z"], seed=9, fp=fingerprint(OTHER), ident=OTHER)
    foreign = foreign.rename(d / foreign.name)  # the odd one out: its fingerprint is not d's
    good = sorted(set(_shards(d)) - {foreign})
    enc = d / "encoder.json"
    original = json.loads(enc.read_text())
    assert original == {"fingerprint": FP, "identity": IDENT, "spec": SPEC}
    BREAKS[damage](enc)

    r = _cli("cache", "check", "--cache-dir", cache)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"BAD {enc}" in r.output and f"fingerprint {short(FP)}" in r.output and "3/4 shards ok" in r.output
    r = _cli("cache", "check", "--cache-dir", cache, "--fix")
    assert r.exit_code == 0, r.output
    assert sorted(_shards(d)) == good and [p.name for p in (d / "corrupt").iterdir()] == [foreign.name]
    assert json.loads(enc.read_text()) == original
    assert _cli("cache", "check", "--cache-dir", cache).exit_code == 0


@pytest.mark.parametrize("damage", ["deleted", "not JSON", "fingerprint of another encoder"])
def test_readers_use_the_shards_when_encoder_json_is_broken(tmp_path, damage):
    cache = tmp_path / "c"
    expected = _three_shards(cache)
    BREAKS[damage](store_dir(cache, FP) / "encoder.json")
    (s,) = list_stores(cache)
    assert (s["fingerprint"], s["identity"], s["spec"]) == (FP, IDENT, SPEC) and "encoder.json" in s["problem"]
    vs = store_by_prefix(cache, FP[:8])  # --store, as fit-head / eval take it
    assert len(vs) == 6 and vs.identity() == encoder_identity(IDENT) and vs.spec() == SPEC  # a schema-1 store, read across
    r = _cli("cache", "info", "--cache-dir", cache)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "3 shards, 6 texts" in r.output and "cache check --fix rewrites it" in r.output
    keys = sorted(expected)
    np.testing.assert_array_equal(vs.vectors(keys, dtype=np.float16), np.stack([expected[k] for k in keys]))


def test_fit_head_with_encoder_json_lost_or_broken(tiny_opt_dir, pointwise_dir, tmp_path):
    cache = tmp_path / "c"
    assert _cli("embed", "--data", pointwise_dir, "--model", tiny_opt_dir, "--cache-dir", cache, "-q").exit_code == 0
    (store,) = list_stores(cache)
    enc = Path(store["dir"]) / "encoder.json"
    for damage in ("not JSON", "deleted"):
        BREAKS[damage](enc)
        assert list_stores(cache)[0]["spec"] == store["spec"] is not None  # embed records it in every shard
        r = _cli("fit-head", "--data", pointwise_dir, "--model", tiny_opt_dir, "--cache-dir", cache,
                 "--solver", "lbfgs", "--eval-split", "", "--out", tmp_path / "h.pt", "-q")
        assert r.exit_code == 0, (damage, r.output)


def test_embed_rewrites_a_broken_encoder_json(tmp_path):
    _write(tmp_path, ["a"], seed=0)
    enc = store_dir(tmp_path, FP) / "encoder.json"
    enc.write_text("garbage")
    VectorStore.open(tmp_path, FP, IDENT, create=True, spec=SPEC)  # what embed does first
    assert json.loads(enc.read_text()) == {"fingerprint": FP, "identity": IDENT, "spec": SPEC}


def test_a_store_nothing_can_describe_is_named_and_left_alone(tmp_path):
    """No encoder.json and no shard that names the directory: every command says so in one line
    and no command moves anything."""
    cache = tmp_path / "c"
    moved, _ = _write(tmp_path / "elsewhere", ["a"], seed=0)
    d = cache / "vectors" / "0123456789abcdef"  # a store directory renamed by hand
    d.mkdir(parents=True)
    kept = [moved.rename(d / moved.name), d / "junk.00000000.arrow"]
    kept[1].write_bytes(b"not arrow")
    enc = d / "encoder.json"
    for args in (["check", "--fix"], ["compact"], ["info"]):
        r = _cli("cache", *args, "--cache-dir", cache)
        assert r.exit_code == (0 if args == ["info"] else 1), (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and f"{enc} is missing" in lines[0] and "Traceback" not in r.output, (args, r.output)
        assert sorted(_shards(d)) == sorted(kept) and not (d / "corrupt").exists()


# -- damage that keeps a shard's size and mtime (found by a hostile review) ---------------------
def _damage_in_place(path: Path, offset_of, patch: bytes) -> None:
    """Overwrite bytes of a shard in place and restore its modification time, so that a store
    that remembered it as verified (verified.json) does not notice by size or mtime."""
    import os

    st = path.stat()
    data = bytearray(path.read_bytes())
    at = offset_of(bytes(data))
    data[at:at + len(patch)] = patch
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _remembered_store(cache, n=40):
    keys = [f"{i:064x}" for i in range(n)]
    path, vecs = _write(cache, keys, seed=0)
    _write(cache, [f"{i + n:064x}" for i in range(n)], seed=1)  # a second shard, for compact
    d = store_dir(cache, FP)
    memo = {p.name: shards._stat_key(p) for p in _shards(d)}
    (d / shards.VERIFIED).write_text(json.dumps(memo))  # as if verified long ago
    return d, path, keys, vecs


def _vector_bytes_of(vecs):
    return lambda data: data.index(np.asarray(vecs[0], np.float16).tobytes())


def test_compact_and_check_catch_damage_that_kept_size_and_mtime(tmp_path):
    cache = tmp_path / "c"
    d, bad, keys, vecs = _remembered_store(cache)
    nan = np.array([np.nan], np.float16).tobytes()
    _damage_in_place(bad, _vector_bytes_of([vecs[keys[0]]]), np.array([7.0], np.float16).tobytes())
    r = _cli("cache", "check", "--cache-dir", cache)
    assert r.exit_code != 0 and "BAD" in r.output and bad.name in r.output, r.output
    assert bad.name not in json.loads((d / shards.VERIFIED).read_text())  # forgotten: checked again next time
    r = _cli("cache", "compact", "--cache-dir", cache)
    # not merged (merging would give the damage a valid checksum) and not left in use: quarantined, and said so
    assert not bad.exists() and (d / "corrupt" / bad.name).exists(), r.output
    assert f"moved {bad.name} to corrupt/: checksum mismatch" in r.output, r.output
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        vs = VectorStore(d, FP)
    assert keys[0] not in vs  # left out by every later reader
    # a NaN written in place (checksum matched by a writer that never stores NaN) is BAD too
    cache2 = tmp_path / "c2"
    d2, shard2, keys2, vecs2 = _remembered_store(cache2)
    _damage_in_place(shard2, _vector_bytes_of([vecs2[keys2[0]]]), nan)
    shard2.rename(shard2.with_name(shard2.name.replace(layout.shard_checksum(shard2),
                                                       f"{zlib.crc32(shard2.read_bytes()):08x}")))
    r = _cli("cache", "check", "--cache-dir", cache2)
    # caught by the block checksum written with the vectors (a shard without them: by the values)
    assert r.exit_code != 0 and ("non-finite" in r.output or "do not match the checksum" in r.output), r.output


def test_a_remembered_shard_with_damaged_key_offsets_is_left_out_not_a_crash(tmp_path):
    cache = tmp_path / "c"
    d, bad, keys, _ = _remembered_store(cache)
    offsets = np.arange(0, 64 * 5, 64, dtype=np.int32).tobytes()  # the first key offsets: 0, 64, 128, …
    _damage_in_place(bad, lambda data: data.index(offsets) + 8, np.array([2 ** 30], np.int32).tobytes())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        vs = VectorStore(d, FP)
    assert keys[0] not in vs and any(bad.name in str(w.message) for w in seen)


def test_progress_interval_and_slow_rates_read_well(monkeypatch):
    from orm_cache.progress import Progress

    monkeypatch.setenv("ORM_CACHE_PROGRESS_SECONDS", "abc")
    r = _cli("embed", "--data", "nowhere.jsonl", "--model", "nowhere")  # refused before reading anything
    assert r.exit_code != 0 and "ORM_CACHE_PROGRESS_SECONDS='abc'" in r.output, r.output
    monkeypatch.delenv("ORM_CACHE_PROGRESS_SECONDS")
    t = iter([0.0, 50.0])
    p = Progress(2, "sweep", "config", every=1e9, clock=lambda: next(t))
    p.done = 2
    assert "25.0s/config" in p.line(final=True)


def _big_shard(d: Path, n: int = 2500) -> tuple[Path, list[str]]:
    """One shard of ``n`` rows: several record batches (blocks) of keys, token counts, starts and vectors."""
    fp = "f" * 64
    d.mkdir(parents=True, exist_ok=True)
    w = ShardWriter(d, fp, {"x": 1}, ("last@-1", "response_mean@-1"), 8, "float16", shard_rows=10**6)
    import hashlib

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]  # each found once in the file
    rng = np.random.default_rng(0)
    w.add(keys, np.arange(n), np.arange(n) % 3 == 0, {"last@-1": rng.random((n, 8)), "response_mean@-1": rng.random((n, 8))},
          None, [i % 5 for i in range(n)])
    return w.flush(), keys


def test_a_shard_of_several_blocks_reads_back_and_a_changed_key_in_a_later_block_is_named(tmp_path):
    """Shards are written in 1,024-row batches sliced from one table: their key checksums must not
    depend on the slicing (they once hashed the whole table's buffers, and every shard of more than
    one block was refused as changed)."""
    from orm_cache.store import blocks
    from orm_cache.store.check import check_store

    path, keys = _big_shard(tmp_path / "s")
    store = VectorStore(tmp_path / "s", "f" * 64)
    assert not store.skipped and len(store) == 2500
    assert store.vectors(keys, "last@-1").shape == (2500, 8)
    assert store.scalars_at(store.locate(keys[-3:]), "response_start").tolist() == [2497 % 5, 2498 % 5, 2499 % 5]
    assert [s.ok for s in check_store({"dir": str(tmp_path / "s"), "fingerprint": "f" * 64})[0]] == [True]
    assert blocks.read_meta(layout.open_shard(path, "f" * 64)[0].schema)["rows"] == [1024, 1024, 452]
    raw = bytearray(path.read_bytes())
    at = raw.find(keys[2400].encode())
    raw[at + 60] = ord("0") if raw[at + 60] != ord("0") else ord("1")  # another key, same length
    st = path.stat()
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and time kept: only the block checksums can tell
    again = VectorStore(tmp_path / "s", "f" * 64)
    assert len(again) == 0 and "column key of block 2" in again.skipped[0][1]


def test_shards_of_the_first_block_checksums_still_verify(tmp_path, monkeypatch):
    """Shards written before scalar digests were taken by value (each batch recorded the buffers
    of the whole column it was sliced from) are checked that way, not refused."""
    from orm_cache.store import blocks

    old = blocks.batch_digests

    def first_format(batches, columns, algo=blocks.ALGO):
        meta = old(batches, columns, algo)
        del meta["scalar_digest"]
        meta["scalars"] = {c: [blocks._buffer_digest(b.column(c), algo) for b in batches] for c in meta["scalars"]}
        return meta

    monkeypatch.setattr(blocks, "batch_digests", first_format)
    _, keys = _big_shard(tmp_path / "s")
    monkeypatch.setattr(blocks, "batch_digests", old)
    store = VectorStore(tmp_path / "s", "f" * 64)
    assert not store.skipped and store.vectors(keys, "last@-1").shape == (2500, 8)
