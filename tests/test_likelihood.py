"""The frozen LM's likelihood of each response: `embed --likelihood` stores the mean, min and sum
of the response tokens' log-probabilities (LM head at those positions only, one forward pass);
they equal a full causal-LM forward pass, leave the other columns untouched, are checksummed,
work as a feature through every door, and `orm-cache likelihood` reports the card's data check."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import ok, run, write_jsonl, write_pointwise_splits
from orm_cache.encode.pooling import response_logprob


def reference_logprob(hidden, ids, mask, start, W):
    """A row at a time: full log-softmax at every position, then the response's tokens."""
    out = []
    for b in range(ids.shape[0]):
        pos = torch.nonzero(mask[b]).flatten()  # real positions, in order
        lp = torch.log_softmax(hidden[b, pos].double() @ W.double().T, dim=-1)  # (n, V)
        if start is not None and start[b] < 0:  # the response was not found: nothing is scored
            out.append([0.0, 0.0, 0.0])
            continue
        first = 0 if start is None else int(start[b])
        vals = [float(lp[k - 1, ids[b, pos[k]]]) for k in range(max(first, 1), len(pos))]
        out.append([np.mean(vals), min(vals), sum(vals)] if vals else [0.0, 0.0, 0.0])
    return np.array(out)


@pytest.mark.parametrize("side", ["right", "left"])
def test_response_logprob_equals_a_row_by_row_reference(side):
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 5, 9, 6, 11
    lengths = [9, 4, 6, 1, 7]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, T - n:] = 1
    ids = torch.randint(0, V, (B, T), generator=g) * mask
    hidden = torch.randn(B, T, D, generator=g)
    W = torch.randn(V, D, generator=g)
    start = torch.tensor([0, 2, -1, 0, 5])  # 0: every token; -1: not found, none; 5: the last two of seven
    got, count = response_logprob(hidden, ids, mask, start, lambda h: h @ W.T, chunk=3)
    want = reference_logprob(hidden, ids, mask, start, W)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    assert count.tolist() == [8, 2, 0, 0, 2]  # one token: nothing is predicted; not found: nothing scored


@pytest.fixture(scope="module")
def lp_world(tmp_path_factory, tiny_opt_dir):
    d = tmp_path_factory.mktemp("lp")
    model = d / "model"
    shutil.copytree(tiny_opt_dir, model)
    data = write_pointwise_splits(d / "data", transform=lambda rows: [{**r, "prompt": f"Q{r['group']}: add"}
                                                                       for r in rows])
    cache = d / "cache"
    ok("embed", "--data", data, "--split", "train,validation,test", "--model", model, "--pooling", "mean",
       "--likelihood", "--cache-dir", cache, "-q")
    return {"d": d, "model": model, "data": data, "cache": cache}


def test_stored_logprob_equals_a_full_causal_lm_pass_on_each_text_alone(lp_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orm_cache.config import DataSpec, EncoderSpec
    from orm_cache.data import load_split
    from orm_cache.pipeline.vectors import split_vectors
    from orm_cache.store import find_store

    spec = EncoderSpec(model=str(lp_world["model"]))
    vs = find_store(lp_world["cache"], spec, "logprob")
    data = load_split(DataSpec(data=str(lp_world["data"]), split="test"))
    sv = split_vectors(data, vs, "logprob")
    got = sv.X.take(np.arange(len(sv.X)), dtype=np.float64)  # (U, 3)
    tok = AutoTokenizer.from_pretrained(lp_world["model"])
    lm = AutoModelForCausalLM.from_pretrained(lp_world["model"], dtype=torch.float32).eval()
    for i, k in enumerate(sv.keys[:8]):
        text, start = data.texts[k], data.response_starts[k]
        enc = tok(text, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(lm(ids).logits[0].double(), dim=-1)  # (T, V)
        first = next(j for j, (a, b) in enumerate(enc["offset_mapping"]) if b > start)  # first response token
        vals = [float(lp[j - 1, ids[0, j]]) for j in range(max(first, 1), ids.shape[1])]
        np.testing.assert_allclose(got[i], [np.mean(vals), min(vals), sum(vals)], rtol=1e-4, atol=1e-4)


def test_likelihood_leaves_the_vectors_as_they_were(lp_world, tmp_path):
    from orm_cache.config import EncoderSpec
    from orm_cache.store import find_store

    plain = tmp_path / "plain"
    ok("embed", "--data", lp_world["data"], "--split", "test", "--model", lp_world["model"], "--pooling", "mean",
       "--cache-dir", plain, "-q")
    spec = EncoderSpec(model=str(lp_world["model"]))
    a, b = find_store(plain, spec, "mean@-1"), find_store(lp_world["cache"], spec, "mean@-1")
    assert a.fp == b.fp  # the same encoder: likelihood is a column, not another identity
    keys = list(a.keys())
    assert np.array_equal(a.vectors(keys, "mean@-1"), b.vectors(keys, "mean@-1"))
    assert "logprob" not in a.columns and "logprob" in b.columns


def test_logprob_is_a_feature_through_every_door(lp_world, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    head = tmp_path / "h.pt"
    ok("fit-head", "--data", lp_world["data"], "--model", lp_world["model"], "--cache-dir", lp_world["cache"],
       "--feature", "mean@-1+logprob", "--solver", "lbfgs", "--out", head)
    out = tmp_path / "s.jsonl"
    r = ok("score", "--head", head, "--input", lp_world["data"] / "test.jsonl", "--output", out,
           "--cache-dir", lp_world["cache"])
    assert "(no model loaded)" in r.output
    rows = [json.loads(x) for x in open(out)]
    live = LiveScorer(str(head), device="cpu").score([x["text"] for x in rows], prompts=[x["prompt"] for x in rows])
    np.testing.assert_allclose([x["score"] for x in rows], live, atol=1e-4)
    ok("verify", "--head", head, "--data", lp_world["data"], "--split", "validation", "--cache-dir", lp_world["cache"],
       "--sample", 6)
    # new texts: the encoder computes their likelihood too, and stores it
    new = write_jsonl(tmp_path / "new.jsonl", [{"prompt": "Q: add", "text": f"New {i}: {i} + 1 = {i + 1}."}
                                              for i in range(3)])
    cache = tmp_path / "c"
    shutil.copytree(lp_world["cache"], cache)
    assert "3 embedded now" in ok("score", "--head", head, "--input", new, "--output", tmp_path / "n.jsonl",
                                  "--cache-dir", cache).output
    assert "0 embedded now" in ok("score", "--head", head, "--input", new, "--output", tmp_path / "n2.jsonl",
                                  "--cache-dir", cache).output
    r = run("export", "--head", head, "--out", tmp_path / "rm")
    assert r.exit_code == 1 and "logprob is the LM's likelihood" in r.output


def test_the_card_data_check_table(lp_world, tmp_path):
    from scipy.stats import pearsonr

    from orm_cache.config import DataSpec, EncoderSpec
    from orm_cache.data import load_split
    from orm_cache.store import find_store

    js = tmp_path / "t.json"
    r = ok("likelihood", "--data", lp_world["data"], "--split", "validation", "--model", lp_world["model"],
           "--cache-dir", lp_world["cache"], "--json", js)
    assert "mean logprob" in r.output and "pairwise acc" in r.output
    t = json.loads(js.read_text())
    d = load_split(DataSpec(data=str(lp_world["data"]), split="validation"))
    vs = find_store(lp_world["cache"], EncoderSpec(model=str(lp_world["model"])), "logprob")
    X = vs.vectors(d.keys, "logprob").astype(np.float64)  # (N, 3) per labelled trace
    y = d.labels.astype(float)
    assert t["stats"]["mean"]["pearson"] == pytest.approx(pearsonr(X[:, 0], y).statistic)
    assert t["stats"]["sum"]["positive_mean"] == pytest.approx(X[y == 1, 2].mean(), rel=1e-6)
    pos = {k: i for i, k in enumerate(d.keys)}
    acc = np.mean([X[pos[c], 0] > X[pos[rj], 0] for c, rj in zip(d.pairs.chosen, d.pairs.rejected)])
    assert t["stats"]["mean"]["pairwise_accuracy"] == pytest.approx(acc)


def test_a_bidirectional_encoder_is_refused_in_one_line(minilm_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b", "label": 1, "group": 0}])
    r = run("embed", "--data", data, "--model", minilm_dir, "--likelihood", "--cache-dir", tmp_path / "c")
    assert r.exit_code == 1 and "needs a causal (decoder) LM" in r.output and "Traceback" not in r.output


def test_a_changed_logprob_value_is_refused_by_its_checksum(lp_world, tmp_path):
    from orm_cache.config import EncoderSpec
    from orm_cache.store import find_store

    cache = tmp_path / "c"
    shutil.copytree(lp_world["cache"], cache)
    vs = find_store(cache, EncoderSpec(model=str(lp_world["model"])), "logprob")
    shard = vs.shards[0]
    table = pa.ipc.open_file(pa.BufferReader(shard.read_bytes())).read_all()  # in memory: the file is replaced
    col = table.column("logprob_mean").to_numpy().copy()
    col[0] += 0.5  # a silent change of one value, the metadata (and its digests) kept
    changed = table.set_column(table.schema.get_field_index("logprob_mean"), "logprob_mean",
                               pa.array(col, pa.float32()))
    tmp = shard.with_name("rewritten.tmp")
    with pa.OSFile(str(tmp), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(changed.cast(table.schema))
    os.replace(tmp, shard)
    r = run("likelihood", "--data", lp_world["data"], "--split", "validation", "--model", lp_world["model"],
            "--cache-dir", cache)
    # the shard is set aside (its rows embedded again by the next embed); its changed value is never read
    assert f"{shard.name}: checksum mismatch" in r.output and "embedded again" in r.output, r.output
    assert "Traceback" not in r.output


def test_the_reward_function_and_server_path_score_a_logprob_head_and_write_it_back(lp_world, tmp_path):
    from orm_cache.pipeline.live import LiveScorer
    from orm_cache.pipeline.reward import OrmReward

    head = tmp_path / "h.pt"
    ok("fit-head", "--data", lp_world["data"], "--model", lp_world["model"], "--cache-dir", lp_world["cache"],
       "--feature", "logprob+mean@-1", "--solver", "lbfgs", "--out", head)
    cache = tmp_path / "c"
    shutil.copytree(lp_world["cache"], cache)
    prompts, completions = ["Q: add 2 and 5"] * 3, ["2 + 5 = 7.", "2 + 5 = 8.", "It is 7."]
    reward = OrmReward(str(head), cache_dir=cache, device="cpu")
    first = reward(prompts=prompts, completions=completions)  # misses: embedded with their likelihood
    reward.close()
    live = LiveScorer(str(head), device="cpu").score(completions, prompts=prompts)
    np.testing.assert_allclose(first, live, atol=1e-5)
    again = OrmReward(str(head), cache_dir=cache, device="cpu")
    assert again(prompts=prompts, completions=completions) == first  # hits now: the written-back columns
    assert again.cache.model_loaded is False
    again.close()


def test_a_response_with_no_token_to_score_is_said_and_left_out(lp_world, tmp_path):
    cache = tmp_path / "c"
    r = ok("embed", "--data", lp_world["data"], "--split", "validation", "--model", lp_world["model"], "--pooling",
           "mean", "--likelihood", "--max-length", "12", "--cache-dir", cache)  # every response truncated away
    assert "logprob: " in r.output and "no response token to score" in r.output
    assert "response_mean:" not in r.output  # not pooled: not its warning
    js = tmp_path / "t.json"
    r = ok("likelihood", "--data", lp_world["data"], "--split", "validation", "--model", lp_world["model"],
           "--max-length", "12", "--cache-dir", cache, "--json", js)
    t = json.loads(js.read_text())
    assert t["left_out"] > 0 and "left out:" in r.output
    assert t["occurrences"] + t["left_out"] <= 30


def test_logprob_messages_name_the_real_reason(lp_world, minilm_dir, tmp_path):
    r = run("fit-head", "--data", lp_world["data"], "--model", lp_world["model"], "--cache-dir", lp_world["cache"],
            "--feature", "logprob@-1")
    assert r.exit_code == 1 and "logprob takes no layer" in r.output
    r = run("likelihood", "--data", lp_world["data"], "--model", minilm_dir, "--cache-dir", lp_world["cache"])
    assert r.exit_code == 1 and "needs a causal (decoder) LM" in r.output
