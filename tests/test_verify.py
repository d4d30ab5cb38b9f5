"""Cached scores equal live end-to-end scores (fp32 CPU), both padding sides and a real encoder."""

import numpy as np
import pytest
from click.testing import CliRunner

from orm_cache.cli import cli
from orm_cache.config import DataSpec
from orm_cache.evaluate.verify import verify
from orm_cache.pipeline.live import LiveScorer
from orm_cache.pipeline.bind import load_vectors, store_for_head
from orm_cache.head import Head


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _embed_and_fit(data, model, cache, head, pooling="last"):
    for split in ("train", "validation"):
        r = run("embed", "--data", data, "--split", split, "--model", model, "--cache-dir", cache,
                "--pooling", pooling, "-q")
        assert r.exit_code == 0, r.output
    r = run("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head, "--solver", "lbfgs", "-q")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("side", ["right", "left"])
def test_verify_passes_on_tiny_opt_both_padding_sides(side, pointwise_dir, tmp_path):
    from orm_cache.testing import tiny_opt

    model = tiny_opt(tmp_path / f"opt-{side}", padding_side=side)
    cache, head = tmp_path / "c", tmp_path / "h.pt"
    _embed_and_fit(pointwise_dir, model, cache, head)
    r = run("verify", "--head", head, "--data", pointwise_dir, "--split", "validation", "--cache-dir", cache,
            "--sample", 16)
    assert r.exit_code == 0, r.output
    assert "OK: cached scores equal live scores" in r.output and "float32 on cpu" in r.output


@pytest.mark.slow
def test_verify_with_bundled_minilm(minilm_dir, pointwise_dir, tmp_path):
    cache, head = tmp_path / "c", tmp_path / "h.pt"
    _embed_and_fit(pointwise_dir, "bundled-minilm", cache, head, pooling="mean")
    r = run("verify", "--head", head, "--data", pointwise_dir, "--split", "validation", "--cache-dir", cache)
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_a_disagreeing_row_is_caught_and_named(tiny_opt_dir, pointwise_dir, tmp_path):
    cache, head_path = tmp_path / "c", tmp_path / "h.pt"
    _embed_and_fit(pointwise_dir, tiny_opt_dir, cache, head_path)
    head = Head.load(head_path)
    vs = store_for_head(head, cache)
    sv = load_vectors(DataSpec(data=str(pointwise_dir), split="validation"), vs, head.feature, cache)
    scorer = LiveScorer(head, "cpu")
    assert verify(head, sv, scorer, sample=1000).ok
    bad_row = int(sv.ci[0])
    sv.X[bad_row] += 0.5 * np.sign(head.weight)  # a cached vector that no longer matches its text
    res = verify(head, sv, scorer, sample=1000)
    assert not res.ok
    worst = res.report["batched"]["worst"][0]
    assert worst["key"] == sv.keys[bad_row] and worst["n_tokens"] == sv.n_tokens[bad_row]
    assert worst["pooled_position"] == worst["n_tokens"] - 1


def test_live_scorer_api(tiny_opt_dir, pointwise_dir, tmp_path):
    cache, head_path = tmp_path / "c", tmp_path / "h.pt"
    _embed_and_fit(pointwise_dir, tiny_opt_dir, cache, head_path)
    scorer = LiveScorer(str(head_path), "cpu")
    texts = ["Step 1: 2 + 2 = 4. Answer: 4", "Step 1: 2 + 2 = 5. Answer: 5", "no steps"]
    s = scorer.score(texts)
    assert s.shape == (3,) and np.isfinite(s).all()
    np.testing.assert_allclose(scorer.score(texts, one_at_a_time=True), s, atol=1e-5)
    ranked = scorer.rank(texts)
    assert [i for i, _ in ranked] == list(np.argsort(-s, kind="stable"))
    p = scorer.prefer(texts[0], texts[1])
    T = scorer.head.temperature or 1.0
    assert p == pytest.approx(1 / (1 + np.exp(-(s[0] - s[1]) / T)), rel=1e-5)
    assert scorer.prefer(texts[1], texts[0]) == pytest.approx(1 - p, rel=1e-5)
