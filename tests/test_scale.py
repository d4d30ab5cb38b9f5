"""Memory bounded by a block, not by the data (issue 15): the blockwise arithmetic equals the
whole-matrix arithmetic it replaces, the compact key index equals a dict, a verified shard is
not read again until it changes, stage 1 in chunks equals stage 1 in one piece."""

import json
import os
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest
from scipy.optimize import minimize

from orm_cache.config import HeadConfig
from orm_cache.head.train import standardizer, train_lbfgs_path
from orm_cache.store import ShardWriter, VectorStore, fingerprint, store_dir
from orm_cache.store.index import KeyIndex
from orm_cache.store.rows import ArrayRows
from orm_cache.store.shards import VERIFIED, read_verified

IDENT = {"schema_version": 1, "model": "fake"}
FP = fingerprint(IDENT)


def planted(U=300, D=24, N=900, seed=0, strength=3.0, offset=50.0):
    """Vectors with a large per-feature mean (as LM hidden states have) and a planted direction."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    q = rng.normal(size=U)
    X = (offset * rng.normal(size=D) + rng.normal(size=(U, D)) * rng.uniform(0.5, 3, D)
         + strength * q[:, None] * u).astype(np.float16).astype(np.float32)
    ci, ri = rng.integers(0, U, N), rng.integers(0, U, N)
    keep = ci != ri
    ci, ri = ci[keep], ri[keep]
    flip = (q[ci] < q[ri]) ^ (rng.random(len(ci)) < 0.15)  # label noise: the optimum is finite
    ci[flip], ri[flip] = ri[flip], ci[flip]
    return X, ci, ri


def whole_matrix_lbfgs(X, ci, ri, cfg: HeadConfig):
    """The solver as it was: a float64 standardised copy Z of the whole matrix."""
    mu = X.mean(axis=0, dtype=np.float64)
    sd = X.std(axis=0, dtype=np.float64)
    sd[sd < 1e-12] = 1.0
    Z = (X.astype(np.float64) - mu) / sd  # (U, D)
    N, U = len(ci), len(X)

    def f(v):
        s = Z @ v
        d = s[ci] - s[ri] - cfg.margin
        loss = np.logaddexp(0.0, -d).mean() + 0.5 * cfg.l2 * (v @ v) / N
        g_pair = -0.5 * (1.0 - np.tanh(0.5 * d)) / N
        g_s = np.bincount(ci, g_pair, U) - np.bincount(ri, g_pair, U)
        if cfg.center_coef:
            t = s[ci] + s[ri]
            loss += cfg.center_coef * (t ** 2).mean()
            g_t = 2 * cfg.center_coef * t / N
            g_s += np.bincount(ci, g_t, U) + np.bincount(ri, g_t, U)
        return loss, g_s @ Z + cfg.l2 * v / N

    res = minimize(f, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B",
                   options={"maxiter": cfg.lbfgs_max_iter, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 20})
    return res.x / sd, res


@pytest.mark.parametrize("cfg", [HeadConfig(solver="lbfgs", l2=1.0),
                                 HeadConfig(solver="lbfgs", l2=0.1, margin=0.5, center_coef=0.01)])
def test_blockwise_lbfgs_equals_the_whole_matrix_solve(cfg):
    X, ci, ri = planted()
    ref, res = whole_matrix_lbfgs(X, ci, ri, cfg)
    assert res.success
    for block_rows in (7, 64, len(X)):  # many small blocks, a few, one block
        rows = ArrayRows(X)
        rows.block_rows = block_rows
        (r,) = train_lbfgs_path(rows, ci, ri, [cfg])
        np.testing.assert_allclose(r.weight, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max(), err_msg=str(block_rows))
        assert r.steps == res.nit


def test_standardizer_in_one_blockwise_pass_equals_numpy():
    X, _, _ = planted(U=501, D=13)
    rows = ArrayRows(X)
    rows.block_rows = 10
    mu, sd = standardizer(rows)
    np.testing.assert_allclose(mu, X.mean(axis=0, dtype=np.float64), rtol=1e-13)
    np.testing.assert_allclose(sd, X.std(axis=0, dtype=np.float64), rtol=1e-11)


def _store_of(tmp_path, X, shard_rows=(5, 1, 17, 40), dtype="float16"):
    """A store holding the rows of ``X`` in shards of the given sizes, keys ``k0000``…"""
    d = store_dir(tmp_path, FP)
    VectorStore.open(tmp_path, FP, IDENT, create=True)
    keys = [f"k{i:04d}" for i in range(len(X))]
    start, sizes = 0, list(shard_rows)
    while start < len(X):
        n = sizes[0] if sizes else len(X)
        sizes = sizes[1:]
        w = ShardWriter(d, FP, IDENT, ("last@-1",), X.shape[1], dtype, shard_rows=10 ** 6)
        w.add(keys[start:start + n], np.full(len(keys[start:start + n]), 3), np.zeros(len(keys[start:start + n]), bool),
              {"last@-1": X[start:start + n]})
        w.flush()
        start += n
    return VectorStore.open(tmp_path, FP), keys


@pytest.mark.parametrize("store_order", [True, False])
def test_store_rows_arithmetic_equals_numpy(tmp_path, store_order):
    X, _, _ = planted(U=63, D=9)
    store, keys = _store_of(tmp_path, X)
    perm = np.random.default_rng(1).permutation(len(keys))
    ask = [keys[i] for i in perm]
    if store_order:
        ask = store.in_store_order(ask)
    want = X[[int(k[1:]) for k in ask]]  # (U, D) in the order asked
    M = store.matrix(ask)
    M.block_rows = 4
    assert M.shape == want.shape
    W = np.random.default_rng(2).normal(size=(9, 3)).astype(np.float32)
    np.testing.assert_allclose(M @ W, want @ W, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(M @ W[:, 0], want @ W[:, 0], rtol=1e-5, atol=1e-4)
    g = np.random.default_rng(3).normal(size=len(ask))
    np.testing.assert_allclose(M.rmatmul(g), g @ want.astype(np.float64), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(M.rmatmul(np.stack([g, -g])), np.stack([g, -g]) @ want.astype(np.float64),
                               rtol=1e-12, atol=1e-9)
    rows = [5, 0, 62, 5]
    np.testing.assert_array_equal(M.take(rows), want[rows])
    np.testing.assert_array_equal(M.to_numpy(), want)
    mu, sd = M.mean_std()
    np.testing.assert_allclose(mu, want.mean(axis=0, dtype=np.float64), rtol=1e-12)
    M[3] = M[3] + 1.0  # an edit in memory only
    np.testing.assert_allclose((M @ W)[3], (want[3] + 1) @ W, rtol=1e-5)
    np.testing.assert_array_equal(store.vectors([ask[3]])[0], want[3])  # the store is untouched


def test_split_vectors_reads_the_map_without_copying_it(tmp_path):
    from orm_cache.data.ingest import Pairs, SplitData
    from orm_cache.pipeline.vectors import split_vectors

    X, ci, ri = planted(U=63, D=9)
    store, keys = _store_of(tmp_path, X)
    order = list(np.random.default_rng(0).permutation(63))
    data = SplitData("s", "train", "pairwise", {keys[i]: "" for i in order},
                     Pairs([keys[i] for i in ci], [keys[i] for i in ri]))
    sv = split_vectors(data, store, None)
    assert [int(k[1:]) for k in sv.keys] == sorted(order)  # the store's order
    assert all(np.shares_memory(sv.X.parts[p], store._column_parts("last@-1")[0][p]) for p in range(len(sv.X.parts)))
    np.testing.assert_array_equal(sv.X.to_numpy()[sv.ci], X[ci])
    np.testing.assert_array_equal(sv.X.to_numpy()[sv.ri], X[ri])


# -- the key index ------------------------------------------------------------------------------
@pytest.mark.parametrize("collide", [False, True])
def test_key_index_equals_a_dict_first_row_wins(collide, monkeypatch):
    import orm_cache.store.index as I

    if collide:  # every key hashes to one of 3 values: lookups must compare the keys themselves
        monkeypatch.setattr(I, "key_hashes", lambda keys: np.array([len(k) % 3 for k in keys], dtype=np.int64))
    rng = np.random.default_rng(0)
    stored: list[str] = []
    index = I.KeyIndex(lambda gids: pa.array([stored[g] for g in np.asarray(gids)], pa.string()))
    ref: dict[str, int] = {}
    for batch in range(5):
        keys = [f"key{int(x)}{'x' * int(x % 4)}" for x in rng.integers(0, 300, 80)]  # repeats within and across
        gids = np.arange(len(stored), len(stored) + len(keys))
        stored.extend(keys)
        index.add(I.key_hashes(keys), gids)
        for k, g in zip(keys, gids):
            ref.setdefault(k, int(g))
        assert len(index) == len(ref) and sorted(index) == sorted(ref)
    probe = list(ref) + ["absent", "key1x", "key9999"]
    np.testing.assert_array_equal(index.find(probe), [ref.get(k, -1) for k in probe])
    assert "absent" not in index and next(iter(ref)) in index


# -- opening a store: checksums read once -------------------------------------------------------
def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def _flip_a_vector_bit(path, X):
    """Flip one bit inside the first vector the shard holds (the file keeps its size)."""
    raw = bytearray(path.read_bytes())
    for row in X.astype(np.float16):
        at = raw.find(row.tobytes())
        if at >= 0:
            raw[at] ^= 0x01
            path.write_bytes(bytes(raw))
            return
    raise AssertionError("no vector of X found in " + str(path))


def test_a_verified_shard_is_not_read_again_until_it_changes(tmp_path, monkeypatch):
    import orm_cache.store.layout as S  # where a shard is opened and its checksum computed

    X, _, _ = planted(U=30, D=4)
    store, _ = _store_of(tmp_path, X, shard_rows=(10, 10, 10))
    shards = store.shards
    for p in shards:
        _age(p, 60)
    crcs = []
    real_crc = S.zlib.crc32
    monkeypatch.setattr(S.zlib, "crc32", lambda b, *a: crcs.append(1) or real_crc(b, *a))
    VectorStore.open(tmp_path, FP)
    assert len(crcs) == 3 and set(read_verified(store.dir)) == {p.name for p in shards}
    VectorStore.open(tmp_path, FP)
    assert len(crcs) == 3  # remembered: not read again
    fresh = shards[0]
    fresh.touch()  # modified just now: checked, and not remembered while it is this fresh
    VectorStore.open(tmp_path, FP)
    assert len(crcs) == 4 and fresh.name not in read_verified(store.dir)
    # A bit flipped in a remembered shard (size kept, mtime changed) is found on the next open.
    flipped = shards[1]
    _flip_a_vector_bit(flipped, X)
    _age(flipped, 30)
    with pytest.warns(UserWarning, match="checksum mismatch"):
        s = VectorStore.open(tmp_path, FP)
    assert len(s) == 20
    assert json.loads((store.dir / VERIFIED).read_text()).get(flipped.name) is None


def test_cache_check_reads_every_byte_whatever_was_remembered(tmp_path):
    from click.testing import CliRunner

    from orm_cache.cli import cli

    X, _, _ = planted(U=20, D=4)
    store, _ = _store_of(tmp_path, X, shard_rows=(10, 10))
    for p in store.shards:
        _age(p, 60)
    VectorStore.open(tmp_path, FP)
    victim = store.shards[0]
    st = victim.stat()
    _flip_a_vector_bit(victim, X)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and mtime: the memo cannot tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VectorStore.open(tmp_path, FP)  # trusted by its name, size and mtime
    r = CliRunner().invoke(cli, ["cache", "check", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 1 and "checksum mismatch" in r.output and victim.name in r.output


# -- stage 1 in chunks ---------------------------------------------------------------------------
def test_stage1_in_chunks_equals_one_piece_and_tokenizes_a_chunk_at_a_time(tiny_opt_dir, pointwise_dir, tmp_path):
    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.data.ingest import SplitTexts
    from orm_cache.encode import embed_texts
    from orm_cache.encode.model import Encoder

    spec = DataSpec(data=str(pointwise_dir), split="train")
    reports, stores = [], []
    for chunk in (5, 10 ** 6):
        enc = Encoder(EncoderSpec(model=str(tiny_opt_dir)), "cpu")
        sizes, real = [], enc.tokenize
        enc.tokenize = lambda texts, *more, real=real, sizes=sizes: sizes.append(len(texts)) or real(texts, *more)
        run = RunSpec(cache_dir=str(tmp_path / str(chunk)), quiet=True, chunk_texts=chunk, batch_tokens=256)
        stream = SplitTexts(spec)
        doubled = [kt for kt in stream] * 2  # every text twice, the repeats far apart
        reports.append(embed_texts(doubled, enc, run))
        assert max(sizes) == min(chunk, 48) and sum(sizes) == 48
        stores.append(VectorStore.open(run.cache_dir, enc.fingerprint))
    a, b = reports
    assert a.texts == b.texts == a.embedded == b.embedded == 48 and a.cached == b.cached == 0
    keys = sorted(stores[1].keys())
    assert sorted(stores[0].keys()) == keys
    np.testing.assert_allclose(stores[0].vectors(keys), stores[1].vectors(keys), atol=1e-5, rtol=0)
    assert a.padded_tokens >= b.padded_tokens  # sorting 5 texts at a time pads at least as much


def test_a_bad_row_stops_stage1_before_the_store_is_created(tiny_opt_dir, tmp_path):
    from conftest import pointwise_rows, write_jsonl

    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.data import DataError
    from orm_cache.pipeline.embed import embed_split

    rows = pointwise_rows(20)
    rows[-1]["label"] = 7
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    with pytest.raises(DataError, match="must be 0 or 1"):
        embed_split(DataSpec(data=str(tmp_path / "d")), EncoderSpec(model=str(tiny_opt_dir)),
                    RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True))
    assert not (tmp_path / "c").exists()


def test_bootstrap_in_chunks_draws_the_same_resamples(monkeypatch):
    import orm_cache.evaluate.metrics as M

    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.7
    groups = [f"g{i // 4}" for i in range(300)]
    whole = [M.bootstrap_ci(correct, g, n_boot=500, seed=3) for g in (None, groups)]
    monkeypatch.setattr(M, "BOOTSTRAP_DRAWS", 700)  # 2-9 resamples per chunk
    assert [M.bootstrap_ci(correct, g, n_boot=500, seed=3) for g in (None, groups)] == whole


def test_group_codes_equal_numpy_unique_inverse():
    from orm_cache.evaluate.metrics import group_codes

    for groups in (["b", "a", "b", "c"], [3, 1, "x", None, 1.5, 3, "x"], [f"g{i % 7}" for i in range(50)],
                   ["é", "e", "z", "Z"]):
        np.testing.assert_array_equal(group_codes(groups), np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1])


@pytest.mark.parametrize("collide", [False, True])
def test_rows_of_finds_each_key_with_and_without_hash_collisions(collide, monkeypatch):
    import orm_cache.pipeline.vectors as V

    if collide:
        monkeypatch.setattr(V, "key_hashes", lambda keys: np.array([len(k) for k in keys], dtype=np.int64))
    keys = [f"k{i}" * (1 + i % 3) for i in range(50)]
    side = [keys[i] for i in np.random.default_rng(0).integers(0, 50, 200)]
    (got,) = V.rows_of(keys, side)
    assert [keys[i] for i in got] == side
