"""Heads over several frozen encoders: ``--feature last@-1+OTHER:mean@-1`` reads two stores side
by side, the checkpoint records both encoders, and every door (fit-head, sweep, eval, score,
rank, verify, LiveScorer) gives the score of the concatenated vectors; export and the server
refuse in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ok, run, write_jsonl, write_pointwise_splits
from orm_cache.head import Head


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_opt_dir):
    from orm_cache.testing import tiny_opt

    d = tmp_path_factory.mktemp("joined")
    first = d / "first"
    shutil.copytree(tiny_opt_dir, first)
    second = tiny_opt(d / "second", seed=7)  # another encoder: other weights, another fingerprint
    data = write_pointwise_splits(d / "data")
    cache = d / "cache"
    for split in ("train", "validation", "test"):
        ok("embed", "--data", data, "--split", split, "--model", first, "--cache-dir", cache, "-q")
        ok("embed", "--data", data, "--split", split, "--model", second, "--pooling", "mean", "--cache-dir", cache, "-q")
    feature = f"last@-1+{second}:mean@-1"
    head = d / "h.pt"
    r = ok("fit-head", "--data", data, "--model", first, "--cache-dir", cache, "--feature", feature,
           "--solver", "lbfgs", "--out", head)
    return {"d": d, "first": first, "second": second, "data": data, "cache": cache, "feature": feature, "head": head,
            "fit_output": r.output}


def stores(two):
    from orm_cache.config import EncoderSpec
    from orm_cache.store import find_store

    a = find_store(two["cache"], EncoderSpec(model=str(two["first"])), "last@-1")
    b = find_store(two["cache"], EncoderSpec(model=str(two["second"])), "mean@-1")
    return a, b


def concat_scores(two, keys):
    """The head applied by hand to [first's last@-1 | second's mean@-1] read from each store."""
    a, b = stores(two)
    X = np.hstack([a.vectors(keys, "last@-1"), b.vectors(keys, "mean@-1")])
    return Head.load(two["head"]).score(X)


def test_the_checkpoint_records_both_encoders_and_reads_both_stores(two):
    h = Head.load(two["head"])
    a, b = stores(two)
    assert h.feature == two["feature"] and h.fingerprint == a.fp
    assert [(e["model"], e["fingerprint"]) for e in h.meta["encoders"]] == [(str(two["second"]), b.fp)]
    assert h.dim == a.dim + b.dim
    assert f"{h.dim}-dim {two['feature']}" in two["fit_output"]


def test_score_and_rank_from_both_caches_with_no_model_loaded(two, tmp_path):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    shutil.move(two["first"], tmp_path / "gone1")  # neither encoder can run: only the stores answer
    shutil.move(two["second"], tmp_path / "gone2")
    try:
        out = tmp_path / "scored.jsonl"
        r = ok("score", "--head", two["head"], "--input", two["data"] / "test.jsonl", "--output", out,
               "--cache-dir", two["cache"])
        assert "0 embedded now (no model loaded)" in r.output
        ok("rank", "--head", two["head"], "--input", two["data"] / "test.jsonl", "--output", tmp_path / "r.jsonl",
           "--cache-dir", two["cache"], "--group-by", "group")
        js = tmp_path / "e.json"
        ok("eval", "--head", two["head"], "--data", two["data"], "--cache-dir", two["cache"], "--json", js)
    finally:
        shutil.move(tmp_path / "gone1", two["first"])
        shutil.move(tmp_path / "gone2", two["second"])
    keys = load_split(DataSpec(data=str(two["data"]), split="test")).keys
    want = concat_scores(two, keys)
    got = [json.loads(x)["score"] for x in open(out)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert [json.loads(x)["score"] for x in open(tmp_path / "r.jsonl")] == got
    rep = json.loads(js.read_text())
    assert rep["feature"] == two["feature"] and rep["pairs"] > 0


def test_live_scores_and_verify_run_both_encoders(two):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split
    from orm_cache.pipeline.live import LiveScorer

    d = load_split(DataSpec(data=str(two["data"]), split="validation"))
    keys = d.keys[:6]
    live = LiveScorer(str(two["head"]), device="cpu").score([d.texts[k] for k in keys])
    np.testing.assert_allclose(live, concat_scores(two, keys), atol=1e-4)
    r = ok("verify", "--head", two["head"], "--data", two["data"], "--split", "validation", "--cache-dir", two["cache"],
           "--sample", 8)
    assert "Traceback" not in r.output


def test_misses_are_embedded_by_each_encoder_into_its_own_store(two, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    cache = tmp_path / "cache"
    shutil.copytree(two["cache"], cache)
    texts = [f"A brand new trace {i}: {i} + 2 = {i + 2}. Answer: {i + 2}" for i in range(5)]
    inp = write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in texts])
    r = ok("score", "--head", two["head"], "--input", inp, "--output", tmp_path / "o.jsonl", "--cache-dir", cache)
    assert "5 embedded now" in r.output
    r = ok("score", "--head", two["head"], "--input", inp, "--output", tmp_path / "o2.jsonl", "--cache-dir", cache)
    assert "0 embedded now (no model loaded)" in r.output  # both stores have them now
    first = [json.loads(x)["score"] for x in open(tmp_path / "o.jsonl")]
    assert [json.loads(x)["score"] for x in open(tmp_path / "o2.jsonl")] == first
    live = LiveScorer(str(two["head"]), device="cpu").score(texts)
    np.testing.assert_allclose(first, live, atol=1e-4)


def test_sweep_mixes_one_and_two_encoder_features_and_records_what_the_best_reads(two, tmp_path):
    grid = f"solver=lbfgs l2=1 feature=last@-1,{two['feature']}"
    out = tmp_path / "best.pt"
    res = tmp_path / "rows"
    ok("sweep", "--data", two["data"], "--model", two["first"], "--cache-dir", two["cache"], "--grid", grid,
       "--out", out, "--results", res)
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {r["feature"] for r in rows} == {"last@-1", two["feature"]}
    best = Head.load(out)
    assert bool(best.meta.get("encoders")) == (best.feature == two["feature"])


def test_a_feature_order_is_canonical_and_bad_features_are_one_line(two, tmp_path):
    flipped = tmp_path / "flipped.pt"
    ok("fit-head", "--data", two["data"], "--model", two["first"], "--cache-dir", two["cache"], "--feature",
       f"{two['second']}:mean@-1+last@-1", "--solver", "lbfgs", "--out", flipped)
    a, b = Head.load(flipped), Head.load(two["head"])
    assert a.feature == b.feature and np.allclose(a.weight, b.weight, atol=1e-6)
    base = ("fit-head", "--data", two["data"], "--model", two["first"], "--cache-dir", two["cache"], "--solver",
            "lbfgs", "--out", tmp_path / "x.pt")
    for feature, says in [(f"{two['second']}:mean@-1", "name at least one column of --model's"),
                          (":mean@-1+last@-1", "no model before it"),
                          (f"last@-1+{two['second']}:last@-1", "no cached vectors"),  # never pooled last by it
                          ("last@-1+bundled-nope:mean@-1", "bundled-nope")]:
        r = run(*base, "--feature", feature)
        assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output, (feature, r.output)


def test_export_and_the_server_refuse_a_head_over_two_encoders(two, tmp_path):
    r = run("export", "--head", two["head"], "--out", tmp_path / "rm")
    assert r.exit_code == 1 and "several encoders" in r.output and not (tmp_path / "rm").exists()
    from orm_cache.errors import ConfigError
    from orm_cache.pipeline.reward import RewardCache

    with pytest.raises(ConfigError, match="several encoders"):
        RewardCache(str(two["head"]), two["cache"])


def test_a_lost_store_of_the_other_encoder_is_filled_again_by_score(two, tmp_path):
    from orm_cache.config import EncoderSpec
    from orm_cache.store import find_store

    h = Head.load(two["head"])
    assert h.meta["encoders"][0]["encoder_spec"]["model"] == str(two["second"])  # as the head names it
    cache = tmp_path / "cache"
    shutil.copytree(two["cache"], cache)
    lost = find_store(cache, EncoderSpec(model=str(two["second"])), "mean@-1").dir
    shutil.rmtree(lost)
    out = tmp_path / "s.jsonl"
    r = ok("score", "--head", two["head"], "--input", two["data"] / "test.jsonl", "--output", out, "--cache-dir", cache)
    assert "embedded now" in r.output and "(no model loaded)" not in r.output
    want = [json.loads(x)["score"] for x in open(out)]
    ok("score", "--head", two["head"], "--input", two["data"] / "test.jsonl", "--output", tmp_path / "t.jsonl",
       "--cache-dir", two["cache"])
    np.testing.assert_allclose(want, [json.loads(x)["score"] for x in open(tmp_path / "t.jsonl")], atol=1e-6)
    r = run("eval", "--head", two["head"], "--data", two["data"], "--cache-dir", tmp_path / "empty")
    assert r.exit_code == 1 and "Traceback" not in r.output
