"""Users' data where it is: TRL's four preference shapes (and pointwise conversations) rendered by
the tokenizer's chat template, datasets folders, hub-style shards, gzipped and Arrow files."""

import gzip
import json
import shutil

import numpy as np
import pytest

from orm_cache.config import DataSpec, EncoderSpec
from orm_cache.data import DataError, load_split, trace_key
from orm_cache.head import Head

from conftest import CHAT, ok, pointwise_rows, run, write_jsonl

# Other chat templates (CHAT, in conftest, uses the tokenizer's special tokens, as real ones do).
NAMED_CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m.name is defined %}({{ m.name }}){% endif %}"
              "{{ m['content'] }}\n{% endfor %}")
OTHER_CHAT = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def problems(n, offset=0):
    """(prompt messages, good assistant turn, bad assistant turn) per problem."""
    out = []
    for i in range(offset, offset + n):
        a, b = 3 + i, 4 + 2 * i
        prompt = [{"role": "system", "content": "Answer with the working."},
                  {"role": "user", "content": f"Problem {i}: what is {a} + {b}?"}]
        good = {"role": "assistant", "content": f"Step 1: {a} + {b} = {a + b}. The answer is {a + b}."}
        bad = {"role": "assistant", "content": f"Step 1: {a} + {b} = {a + b + 1}. The answer is {a + b + 1}."}
        out.append((prompt, good, bad))
    return out


def shapes(tmp_path, model, n=6, offset=0):
    """The same preference pairs as conversational implicit, conversational explicit, and the
    standard implicit shape with the conversations pre-rendered by the tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    ps = problems(n, offset)
    render = lambda m: tok.apply_chat_template(m, tokenize=False)  # noqa: E731
    return {
        "implicit": write_jsonl(tmp_path / f"implicit{offset}.jsonl",
                                [{"chosen": p + [g], "rejected": p + [b], "group": i} for i, (p, g, b) in enumerate(ps)]),
        "explicit": write_jsonl(tmp_path / f"explicit{offset}.jsonl",
                                [{"prompt": p, "chosen": [g], "rejected": [b], "group": i}
                                 for i, (p, g, b) in enumerate(ps)]),
        "strings": write_jsonl(tmp_path / f"strings{offset}.jsonl",
                               [{"chosen": render(p + [g]), "rejected": render(p + [b]), "group": i}
                                for i, (p, g, b) in enumerate(ps)]),
    }


# ------------------------------------------------------------------------------- the shapes

def test_conversational_shapes_give_the_keys_of_the_rendered_strings(chat_model, tiny_opt_dir, tmp_path):
    files = shapes(tmp_path, chat_model)
    enc = EncoderSpec(model=str(chat_model))
    d = {name: load_split(DataSpec(data=str(f)), enc) for name, f in files.items()}
    # pre-rendered strings are chat text only under the chat recipe (tokenized without adding special
    # tokens again); under the default (template) recipe the same string is tokenized with them: another key
    auto = d["strings"]
    assert auto.texts.keys().isdisjoint(d["implicit"].texts) and set(auto.texts.values()) == set(d["implicit"].texts.values())
    d["strings"] = load_split(DataSpec(data=str(files["strings"]), recipe_kind="chat"), enc)
    assert d["implicit"].pairs.chosen == d["explicit"].pairs.chosen == d["strings"].pairs.chosen
    assert d["implicit"].pairs.rejected == d["explicit"].pairs.rejected == d["strings"].pairs.rejected
    assert d["implicit"].texts == d["explicit"].texts == d["strings"].texts
    text = d["explicit"].texts[d["explicit"].pairs.chosen[0]]
    assert text.startswith("</s><|system|>\nAnswer with the working.<|user|>\nProblem 0") and text.endswith("3 + 4 = 7. "
                                                                                                            "The answer is 7.</s>")
    # the recipe records the chat template and the special tokens it rendered with
    for name in ("implicit", "explicit"):
        assert d[name].recipe["chat_template"] == CHAT
        assert d[name].recipe["chat_tokens"]["eos_token"] == "</s>"
    assert "chat_template" not in d["strings"].recipe
    # where the final assistant turn's content starts in the text (for response-only pooling)
    k = d["implicit"].pairs.chosen[0]
    start = d["implicit"].response_starts[k]
    assert d["implicit"].texts[k][start:] == "Step 1: 3 + 4 = 7. The answer is 7.</s>"
    # a chat template given explicitly, for a tokenizer that has none, renders identically
    (tmp_path / "chat.jinja").write_text(CHAT)
    plain = EncoderSpec(model=str(tiny_opt_dir))
    flagged = load_split(DataSpec(data=str(files["explicit"]), chat_template=str(tmp_path / "chat.jinja")), plain)
    assert flagged.pairs.chosen == d["strings"].pairs.chosen


def test_pointwise_messages_and_string_prompt_shapes(chat_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model)
    ps = problems(3)
    f = write_jsonl(tmp_path / "pw.jsonl", [{"messages": p + [t], "label": int(t is g), "group": i}
                                           for i, (p, g, b) in enumerate(ps) for t in (g, b)])
    d = load_split(DataSpec(data=str(f)), EncoderSpec(model=str(chat_model)))
    assert d.kind == "pointwise" and d.labels.tolist() == [1, 0] * 3
    assert d.keys[0] == trace_key(tok.apply_chat_template(ps[0][0] + [ps[0][1]], tokenize=False), special_tokens=False)
    # the standard explicit-prompt shape still joins strings with the template
    f = write_jsonl(tmp_path / "std.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    s = load_split(DataSpec(data=str(f), template="Q: {prompt}\nA: {response}"))
    k = s.pairs.chosen[0]
    assert s.texts[k] == "Q: Q\nA: good" and s.texts[k][s.response_starts[k]:] == "good"


@pytest.mark.parametrize("row, message", [
    ({"chosen": [{"role": "user", "content": "hi"}], "rejected": [{"role": "user", "content": "ho"}]},
     "column 'chosen' ends with a 'user' message; a scored conversation must end with the assistant turn"),
    ({"chosen": [{"content": "hi"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}]},
     "column 'chosen' message 1 has no 'role'"),
    ({"chosen": [{"role": "user"}, {"role": "assistant", "content": "a"}], "rejected": "x"},
     "column 'chosen' message 1 has no 'content'"),
])
def test_bad_conversations_are_one_line(chat_model, tmp_path, row, message):
    f = write_jsonl(tmp_path / "bad.jsonl", [row])
    r = run("embed", "--data", f, "--model", chat_model, "--cache-dir", tmp_path / "c", "-q")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and f"bad.jsonl:1: {message}" in lines[0], r.output


def one_trace_every_shape(q="Problem 7: what is 3 + 4?", a="Step 1: 3 + 4 = 7. The answer is 7.",
                          b="Step 1: 3 + 4 = 8. The answer is 8."):
    """One preference pair in every shape a row can take (TRL's four, the mixed string/message
    ones), and one labelled trace in every pointwise shape (text, messages, TRL unpaired)."""
    u, ga, ba = {"role": "user", "content": q}, {"role": "assistant", "content": a}, {"role": "assistant", "content": b}
    pairs = {
        "standard explicit": {"prompt": q, "chosen": a, "rejected": b},
        "conversational implicit": {"chosen": [u, ga], "rejected": [u, ba]},
        "conversational explicit": {"prompt": [u], "chosen": [ga], "rejected": [ba]},
        "message prompt, string responses": {"prompt": [u], "chosen": a, "rejected": b},
        "string prompt, message responses": {"prompt": q, "chosen": [ga], "rejected": [ba]},
    }
    points = {
        "text + prompt": [{"prompt": q, "text": a, "label": 1}, {"prompt": q, "text": b, "label": 0}],
        "messages": [{"messages": [u, ga], "label": 1}, {"messages": [u, ba], "label": 0}],
        "text as messages + message prompt": [{"prompt": [u], "text": [ga], "label": 1},
                                              {"prompt": [u], "text": [ba], "label": 0}],
        "TRL unpaired": [{"prompt": q, "completion": a, "label": True}, {"prompt": q, "completion": b, "label": False}],
        "TRL unpaired conversational": [{"prompt": [u], "completion": [ga], "label": True},
                                        {"prompt": [u], "completion": [ba], "label": False}],
    }
    return pairs, points


@pytest.mark.parametrize("recipe", ["template", "chat", "trl"])
def test_one_trace_is_one_text_and_key_in_every_shape(chat_model, tmp_path, recipe):
    """Invariant 11: under one recipe every shape of the same trace is the same text and key
    (chosen, rejected, and the labelled traces), whatever the first row's shape."""
    pairs, points = one_trace_every_shape()
    enc = EncoderSpec(model=str(chat_model))
    seen = set()
    for name, row in {**pairs, **{f"pointwise {k}": v for k, v in points.items()}}.items():
        rows = row if isinstance(row, list) else [row]
        f = write_jsonl(tmp_path / f"{len(seen)}-{name.replace(' ', '_')}.jsonl", rows)
        d = load_split(DataSpec(data=str(f), recipe_kind=recipe), enc)
        keys = (d.pairs.chosen[0], d.pairs.rejected[0]) if d.kind == "pairwise" else tuple(d.keys)
        seen.add((keys, tuple(d.texts[k] for k in keys), tuple(d.response_starts[k] for k in keys)))
    good = "Step 1: 3 + 4 = 7. The answer is 7."
    chat_text = f"</s><|user|>\nProblem 7: what is 3 + 4?<|assistant|>\n{good}</s>"
    if recipe == "trl":  # TRL's own rule: the data's shape (its first row) picks standard or conversational
        assert {texts[0] for _, texts, _ in seen} == {f"Problem 7: what is 3 + 4?{good}</s>", chat_text}
        seen = {x for x in seen if x[1][0] != chat_text}
    assert len(seen) == 1, seen
    (keys, texts, starts), = seen
    if recipe == "chat":  # user and assistant turns, the template's own BOS, tokenized without special tokens
        assert texts[0] == chat_text
        assert keys[0] == trace_key(texts[0], special_tokens=False)
    elif recipe == "template":  # the reference card's joiner, tokenized with special tokens
        assert texts[0] == f"Problem 7: what is 3 + 4?\n\n{good}" and keys[0] == trace_key(texts[0])
    else:  # TRL: no separator, EOS appended
        assert texts[0] == f"Problem 7: what is 3 + 4?{good}</s>" and keys[0] == trace_key(texts[0])
    assert texts[0][starts[0]:].startswith(good)


def test_template_recipe_refuses_conversations_it_cannot_write(chat_model, tmp_path):
    sys = {"role": "system", "content": "Be brief."}
    u, a = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    for msgs, why in (([sys, u, a], "a system turn"), ([u, a, u, a], "2 assistant and 2 user turns")):
        f = write_jsonl(tmp_path / "c.jsonl", [{"chosen": "plain", "rejected": "other"},
                                               {"chosen": msgs, "rejected": msgs[:-1] + [{"role": "assistant", "content": "b"}]}])
        r = run("embed", "--data", f, "--model", chat_model, "--cache-dir", tmp_path / "c", "-q")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and "c.jsonl:2: this conversation has " + why in lines[0], r.output
        assert "--recipe chat" in lines[0]


def test_tokenizer_without_chat_template_and_no_flag_is_one_line(tiny_opt_dir, chat_model, tmp_path):
    files = shapes(tmp_path, chat_model, n=2)
    r = run("embed", "--data", files["implicit"], "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "-q")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "Traceback" not in r.output
    assert "renders column" in lines[0] and "but the tokenizer of" in lines[0] and "--chat-template FILE" in lines[0]
    r = run("embed", "--data", files["implicit"], "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "-q",
            "--chat-template", tmp_path / "nope.jinja")
    assert r.exit_code == 1 and "nope.jinja': no such file" in r.output
    (tmp_path / "chat.jinja").write_text(CHAT)
    ok("embed", "--data", files["implicit"], "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "-q",
       "--chat-template", tmp_path / "chat.jinja")


def test_chat_head_records_its_template_and_every_scorer_reuses_it(chat_model, tmp_path):
    """embed -> fit-head on conversations; the head's recipe renders them again for eval, score,
    rank and LiveScorer with no tokenizer at hand (the model is moved away: all cache hits)."""
    from orm_cache.pipeline.live import LiveScorer
    from orm_cache.pipeline.bind import store_for_head

    model = tmp_path / "model"
    shutil.copytree(chat_model, model)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(shapes(tmp_path, model, n=8)["explicit"], data / "train.jsonl")
    shutil.copy(shapes(tmp_path, model, n=4, offset=50)["implicit"], data / "test.jsonl")
    cache, head = tmp_path / "c", tmp_path / "h.pt"
    for split in ("train", "test"):
        ok("embed", "--data", data, "--split", split, "--model", model, "--cache-dir", cache, "-q")
    ok("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head, "--solver", "lbfgs", "-q")
    h = Head.load(head)
    assert h.recipe["chat_template"] == CHAT and h.recipe["chat_tokens"]["bos_token"] == "</s>"
    assert h.recipe["prompt_col"] == "prompt"

    scorer = LiveScorer(head, "cpu")  # before the model goes away: live scores of conversations
    p, g, b = problems(1, offset=50)[0]
    live = scorer.score([p + [g], [b]], prompts=[None, p])  # implicit and explicit shapes
    vs = store_for_head(h, cache)
    texts = load_split(DataSpec(data=str(data), split="test"), EncoderSpec(model=str(model)))
    cached = h.score(vs.vectors([texts.pairs.chosen[0], texts.pairs.rejected[0]], h.feature))
    np.testing.assert_allclose(live, cached, atol=1e-4)
    with pytest.raises(TypeError, match="one conversation"):
        scorer.score(p + [g])

    away = tmp_path / "away"
    model.rename(away)  # from here nothing can load the tokenizer or the model
    rows = [{"messages": pp + [t], "problem": i} for i, (pp, gg, bb) in enumerate(problems(4, offset=50))
            for t in (gg, bb)]
    inp = write_jsonl(tmp_path / "cands.jsonl", rows)
    r = ok("score", "--head", head, "--input", inp, "--output", tmp_path / "s.jsonl", "--cache-dir", cache)
    assert "0 embedded now (no model loaded)" in r.output
    scored = [json.loads(x) for x in open(tmp_path / "s.jsonl")]
    assert scored[0]["score"] == pytest.approx(float(cached[0]), abs=1e-5)
    r = ok("rank", "--head", head, "--input", inp, "--output", tmp_path / "r.jsonl", "--cache-dir", cache,
           "--group-by", "problem")
    assert "0 embedded now (no model loaded)" in r.output
    ok("eval", "--head", head, "--data", data, "--split", "test", "--cache-dir", cache, "-q", "--calibrate-on", "")
    # another chat template given explicitly is refused, both shown
    (tmp_path / "other.jinja").write_text(OTHER_CHAT)
    r = run("score", "--head", head, "--input", inp, "--output", tmp_path / "x.jsonl", "--cache-dir", cache,
            "--chat-template", tmp_path / "other.jinja")
    assert r.exit_code == 1 and "chat_template: head" in r.output and "--override-recipe" in r.output
    assert not (tmp_path / "x.jsonl").exists()


# ------------------------------------------------------------------------ where data lives

@pytest.fixture
def rows():
    return [{"chosen": f"Problem {i}: {i} + 1 = {i + 1}", "rejected": f"Problem {i}: {i} + 1 = {i + 2}", "group": i}
            for i in range(12)]


def test_datasets_folders_hub_shards_gzip_and_arrow_read_as_the_jsonl(rows, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    datasets = pytest.importorskip("datasets")
    ref = load_split(DataSpec(data=str(write_jsonl(tmp_path / "ref.jsonl", rows))))
    keys = (ref.pairs.chosen, ref.pairs.rejected)

    # DatasetDict.save_to_disk: the split chosen with --split
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:3])})
    dd.save_to_disk(str(tmp_path / "dd"))
    got = load_split(DataSpec(data=str(tmp_path / "dd"), split="train"))
    assert (got.pairs.chosen, got.pairs.rejected) == keys
    assert len(load_split(DataSpec(data=str(tmp_path / "dd"), split="test")).pairs) == 3
    with pytest.raises(DataError, match="the DatasetDict has no split 'validation' .splits: train, test."):
        load_split(DataSpec(data=str(tmp_path / "dd"), split="validation"))
    # a single Dataset saved to disk (with rows selected: save_to_disk writes them)
    datasets.Dataset.from_list(rows + rows[:2]).select(range(12)).save_to_disk(str(tmp_path / "one"))
    got = load_split(DataSpec(data=str(tmp_path / "one")))
    assert (got.pairs.chosen, got.pairs.rejected) == keys
    # an Arrow file written by datasets (stream format) read directly
    arrow = next((tmp_path / "one").glob("*.arrow"))
    got = load_split(DataSpec(data=str(arrow)))
    assert (got.pairs.chosen, got.pairs.rejected) == keys

    # hub-style folder: data/train-0000i-of-00003.parquet read as one split, in order
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for i in range(3):
        pq.write_table(pa.Table.from_pylist(rows[4 * i:4 * i + 4]), hub / f"train-{i:05d}-of-00003.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), hub / "test-00000-of-00001.parquet")
    got = load_split(DataSpec(data=str(tmp_path / "hub"), split="train"))
    assert (got.pairs.chosen, got.pairs.rejected) == keys and got.stats["rows"] == 12
    assert len(load_split(DataSpec(data=str(tmp_path / "hub"), split="test")).pairs) == 2
    # train-*.parquet at the top level too; a bad row names its shard and row
    flat = tmp_path / "flat"
    flat.mkdir()
    bad = rows[4:8]
    bad[1] = {"chosen": "same", "rejected": "same"}
    for i, part in enumerate((rows[:4], bad)):
        pq.write_table(pa.Table.from_pylist(part), flat / f"train-{i:05d}-of-00002.parquet")
    with pytest.raises(DataError, match=r"train-00001-of-00002.parquet:2: chosen and rejected are the same text"):
        load_split(DataSpec(data=str(flat)))

    # gzipped JSON lines and a gzipped JSON array
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with gzip.open(tmp_path / "d.json.gz", "wt") as f:
        json.dump(rows, f)
    for name in ("d.jsonl.gz", "d.json.gz"):
        got = load_split(DataSpec(data=str(tmp_path / name)))
        assert (got.pairs.chosen, got.pairs.rejected) == keys, name


def test_conversations_in_a_datasets_folder_render_like_jsonl(chat_model, tmp_path):
    """Arrow gives every message every key of the column's struct (None where absent): those are
    dropped, as apply_chat_template does, so the keys are the JSON lines' keys."""
    datasets = pytest.importorskip("datasets")
    files = shapes(tmp_path, chat_model, n=3)
    rows = [json.loads(x) for x in open(files["implicit"])]
    rows[0]["chosen"][1]["name"] = "student"  # one message has an extra key: all get it in Arrow
    jl = write_jsonl(tmp_path / "x.jsonl", rows)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    enc = EncoderSpec(model=str(chat_model))
    a, b = (load_split(DataSpec(data=str(d), chat_template=NAMED_CHAT), enc) for d in (jl, tmp_path / "ds"))
    assert a.texts == b.texts and a.pairs.chosen == b.pairs.chosen and a.pairs.rejected == b.pairs.rejected
    assert "(student)" in a.texts[a.pairs.chosen[0]] and "()" not in "".join(b.texts.values())


def test_embed_reads_a_dataset_dict_a_hub_folder_and_jsonl_gz(tiny_opt_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    datasets = pytest.importorskip("datasets")
    rows = pointwise_rows(4)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(rows[8 * i:8 * i + 8]), hub / f"train-{i:05d}-of-00002.parquet")
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cache = tmp_path / "c"
    r = ok("embed", "--data", tmp_path / "dd", "--split", "train", "--model", tiny_opt_dir, "--cache-dir", cache, "-q")
    assert "16 distinct texts" in r.output and "to embed: 16" in r.output
    for data in (tmp_path / "hub", tmp_path / "train.jsonl.gz"):
        r = ok("embed", "--data", data, "--model", tiny_opt_dir, "--cache-dir", cache, "-q")
        assert "16 rows" in r.output and "cached already: 16   to embed: 0" in r.output, r.output


# ------------------------------------------------------------------ found by a hostile review

def test_a_head_trained_on_implicit_conversations_scores_explicit_rows_as_the_same_texts(chat_model, tmp_path):
    files = shapes(tmp_path, chat_model)
    data, cache, head = tmp_path / "d", tmp_path / "c", tmp_path / "h.pt"
    data.mkdir()
    shutil.copy(files["implicit"], data / "train.jsonl")
    ok("embed", "--data", data, "--model", chat_model, "--cache-dir", cache, "-q")
    ok("fit-head", "--data", data, "--model", chat_model, "--cache-dir", cache, "--solver", "lbfgs", "--out", head, "-q")
    # explicit rows: the prompt messages in 'prompt', the assistant turn in 'text'
    rows = [{"prompt": p, "text": [g]} for p, g, _ in problems(6)]
    r = ok("score", "--head", head, "--input", write_jsonl(tmp_path / "exp.jsonl", rows), "--output",
           tmp_path / "o.jsonl", "--cache-dir", cache)
    assert "6 distinct texts from the cache, 0 embedded now" in r.output  # the training texts, not bare turns


def test_chat_template_errors_and_corrupt_files_part_way_are_one_line(chat_model, tmp_path):
    import gzip

    files = shapes(tmp_path, chat_model)
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m.content + 1 }}{% endfor %}")
    r = run("embed", "--data", files["implicit"], "--model", chat_model, "--cache-dir", tmp_path / "c",
            "--chat-template", tmp_path / "t.jinja")
    assert r.exit_code == 1 and "does not render this conversation" in r.output and "Traceback" not in r.output
    rows = b"".join(json.dumps({"chosen": f"a{i}", "rejected": f"b{i}"}).encode() + b"\n" for i in range(20000))
    blob = bytearray(gzip.compress(rows))
    blob[len(blob) // 2: len(blob) // 2 + 64] = b"\xff" * 64  # corrupt deflate data, found only part-way
    (tmp_path / "bad.jsonl.gz").write_bytes(bytes(blob))
    r = run("embed", "--data", tmp_path / "bad.jsonl.gz", "--model", chat_model, "--cache-dir", tmp_path / "c")
    assert r.exit_code == 1 and "bad.jsonl.gz" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_columnar_pointwise_rows_mixing_text_and_messages(chat_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ps = problems(3)
    rows = [{"text": "Step 1: 2 + 2 = 4.", "messages": None, "label": 1, "group": "a"},
            {"text": None, "messages": ps[0][0] + [ps[0][1]], "label": 0, "group": "a"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    # the first row decides an auto recipe (a string: template), and the template cannot say a system turn
    with pytest.raises(DataError, match="train.parquet:2: this conversation has a system turn"):
        load_split(DataSpec(data=str(tmp_path / "train.parquet")), EncoderSpec(model=str(chat_model)))
    d = load_split(DataSpec(data=str(tmp_path / "train.parquet"), recipe_kind="chat"), EncoderSpec(model=str(chat_model)))
    assert len(d.keys) == 2 and d.texts[d.keys[1]].startswith("</s><|system|>")
    assert d.texts[d.keys[0]] == "Step 1: 2 + 2 = 4." and d.response_starts[d.keys[0]] is None  # taken as rendered


def test_fit_head_does_not_evaluate_on_its_own_training_rows(tiny_opt_dir, tmp_path):
    rows = [{"chosen": f"Step 1: {i} + 1 = {i + 1}.", "rejected": f"Step 1: {i} + 1 = {i + 2}."} for i in range(12)]
    single = write_jsonl(tmp_path / "all.jsonl", rows)  # one file, no split column: every --split is all of it
    ok("embed", "--data", single, "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "-q")
    r = run("fit-head", "--data", single, "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c", "--solver", "lbfgs",
            "--out", tmp_path / "h.pt")
    assert r.exit_code == 0 and "its pairs are the training pairs" in r.output and "split validation" not in r.output
    assert "calibration" not in Head.load(tmp_path / "h.pt").meta
