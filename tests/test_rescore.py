"""score and rank: cache hits need no model, misses are added, order kept, bad rows explained."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from orm_cache.cli import cli
from orm_cache.config import DataSpec
from orm_cache.head import Head
from orm_cache.pipeline.rank import rank_rows
from orm_cache.pipeline.bind import load_vectors, store_for_head

from conftest import write_jsonl


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def trained(tiny_opt_dir, pointwise_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_opt_dir, model)
    cache, head = tmp_path / "c", tmp_path / "h.pt"
    for split in ("train", "validation", "test"):
        assert run("embed", "--data", pointwise_dir, "--split", split, "--model", model, "--cache-dir", cache,
                   "-q").exit_code == 0
    assert run("fit-head", "--data", pointwise_dir, "--model", model, "--cache-dir", cache, "--out", head,
               "--solver", "lbfgs", "-q").exit_code == 0
    return pointwise_dir, model, cache, head


def read_jsonl(p):
    return [json.loads(line) for line in open(p)]


def test_cache_hits_need_no_model_and_equal_eval_scores(trained, tmp_path):
    data, model, cache, head = trained
    shutil.rmtree(model)  # the encoder is gone: only cached vectors can answer
    out = tmp_path / "scored.jsonl"
    r = run("score", "--head", head, "--input", data / "test.jsonl", "--output", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert "0 embedded now (no model loaded)" in r.output
    rows = read_jsonl(out)
    src = read_jsonl(data / "test.jsonl")
    assert [r["text"] for r in rows] == [s["text"] for s in src]  # input order, every column kept
    assert set(rows[0]) == set(src[0]) | {"score", "p_beats_average"}
    h = Head.load(head)
    sv = load_vectors(DataSpec(data=str(data), split="test"), store_for_head(h, cache), h.feature, cache)
    expected = h.score(sv.X)[sv.rows(sv.data.keys)]
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-6, atol=1e-6)


def test_misses_are_embedded_once_then_hit(trained, tmp_path):
    data, model, cache, head = trained
    new = write_jsonl(tmp_path / "new.jsonl", [{"text": f"Brand new trace {i}: 1 + {i} = {i + 1}"} for i in range(7)]
                      + [{"text": "Brand new trace 0: 1 + 0 = 1"}])  # a duplicate text
    r = run("score", "--head", head, "--input", new, "--output", tmp_path / "o.csv", "--cache-dir", cache,
            "--chunk-rows", 3)
    assert r.exit_code == 0, r.output
    # chunks of 3 rows: 3 + 3 new texts, then text 6 is new and the repeat of text 0 is a hit
    assert "1 distinct texts from the cache, 7 embedded now" in r.output
    r = run("score", "--head", head, "--input", new, "--output", tmp_path / "o.parquet", "--cache-dir", cache)
    assert "0 embedded now (no model loaded)" in r.output
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "o.parquet").num_rows == 8


def test_bad_rows_stop_with_one_line_or_go_to_a_side_file(trained, tmp_path):
    data, model, cache, head = trained
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "Step 1: fine"}, {"text": ""}, {"txt": "x"}, {"text": 3}])
    r = run("score", "--head", head, "--input", bad, "--output", tmp_path / "o.jsonl", "--cache-dir", cache)
    assert r.exit_code == 1 and f"{bad}:2: column 'text' is empty" in r.output and "Traceback" not in r.output
    r = run("score", "--head", head, "--input", bad, "--output", tmp_path / "o.jsonl", "--cache-dir", cache,
            "--skip-invalid")
    assert r.exit_code == 0, r.output
    assert "rejected 3 invalid rows" in r.output
    side = read_jsonl(tmp_path / "o.jsonl.rejected.jsonl")
    assert [s["row"] for s in side] == [2, 3, 4]
    assert "missing" in side[1]["reason"] and "must be a string" in side[2]["reason"]
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 1
    r = run("score", "--head", head, "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o.jsonl",
            "--cache-dir", cache)
    assert r.exit_code == 1 and "no such file" in r.output


def test_rank_rows_hand_made_order_and_ties():
    scores = [0.5, 2.0, 2.0, -1.0, 3.0, 1.0]
    groups = ["a", "a", "a", "a", "b", "b"]
    assert rank_rows(scores, groups).tolist() == [3, 1, 1, 4, 1, 2]


def test_rank_cli_best_of_n_and_top_k(trained, tmp_path):
    data, model, cache, head = trained
    out = tmp_path / "top.jsonl"
    r = run("rank", "--head", head, "--input", data / "test.jsonl", "--output", out, "--group-by", "group",
            "--top-k", "1", "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert "best-of-N accuracy" in r.output and "random" in r.output and "oracle" in r.output
    rows = read_jsonl(out)
    assert all(r["rank"] == 1 for r in rows) and len({r["group"] for r in rows}) == 6
    full = tmp_path / "all.jsonl"
    run("rank", "--head", head, "--input", data / "test.jsonl", "--output", full, "--group-by", "group",
        "--cache-dir", cache)
    ranked = read_jsonl(full)
    for g in {r["group"] for r in ranked}:
        grp = [r for r in ranked if r["group"] == g]
        best = max(r["score"] for r in grp)
        assert all((r["rank"] == 1) == (r["score"] == best) for r in grp)
    r = run("rank", "--head", head, "--input", data / "test.jsonl", "--output", full, "--group-by", "nogroup",
            "--cache-dir", cache)
    assert r.exit_code == 1 and "group column 'nogroup' is missing" in r.output
