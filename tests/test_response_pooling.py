"""``--pooling response_mean``: the mean over the response's tokens only, against a slow
per-text reference (each text run alone, its response tokens found by decoding, not offsets)."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import ok, run, write_jsonl

from orm_cache.config import EncoderSpec
from orm_cache.data.ingest import trace_key
from orm_cache.encode.pooling import pool, response_mask
from orm_cache.store import VectorStore

POOLING = "last,mean,response_mean"
LAYERS = (-1, -2)


def prompted_rows(n: int, seed: int = 0, bare_every: int = 4) -> list[dict]:
    """Pairwise rows of mixed lengths; every ``bare_every``-th has an empty prompt (none)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        good = " ".join(f"Step {s}: keep {a} and {b} in mind." for s in range(1 + i % 4)) + f" So {a} + {b} = {a + b}."
        row = {"chosen": good, "rejected": f"{a} + {b} = {a + b + 1 + i}."}
        row["prompt"] = "" if i % bare_every == bare_every - 1 else \
            f"Question {i}: what is {a} + {b}?" + " Think step by step." * (i % 3)
        rows.append(row)
    return rows


def texts_of(rows, template="{prompt}\n\n{response}") -> dict[str, str]:
    """text -> the part of it before the response (the row's prompt joined by ``template``)."""
    out = {}
    for r in rows:
        for side in ("chosen", "rejected"):
            if r.get("prompt"):
                text = template.format(prompt=r["prompt"], response=r[side])
                out.setdefault(text, text[: len(text) - len(r[side])])
            else:
                out.setdefault(r[side], "")
    return out


# -- the slow reference ----------------------------------------------------------------------------
class Reference:
    """Each text alone through ``AutoModel`` (no padding, no batching); its response tokens are
    found by decoding growing prefixes of its ids, independently of offset mappings."""

    def __init__(self, model_dir, max_length: int | None = None, side: str = "right"):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.max_length, self.side = max_length, side

    def first_token(self, content: list[int], prefix: str) -> int | None:
        """Index in ``content`` (ids without added special tokens) of the first token that decodes
        past ``prefix``; None when none does."""
        for i in range(len(content)):
            if len(self.tok.decode(content[: i + 1], clean_up_tokenization_spaces=False)) > len(prefix):
                return i
        return None

    def kept(self, text: str, prefix: str, special: bool = True) -> tuple[list[int], int]:
        """The ids the encoder sees (BOS + content, truncated like the tokenizer would; chat text,
        ``special=False``: the content alone, as apply_chat_template tokenizes it) and the first
        response token among them (0: every token)."""
        full = self.tok(text, add_special_tokens=special)["input_ids"]
        lead = 1 if special and full[0] in self.tok.all_special_ids else 0
        content = full[lead:]
        first = 0 if not prefix else self.first_token(content, prefix)
        L = self.max_length or len(full)
        room = L - lead
        if len(content) > room:  # the tokenizer truncates the content, then adds BOS
            removed = len(content) - room
            if self.side == "left":
                content = content[removed:]
                first = None if first is None else max(first - removed, 0)
            else:
                content = content[:room]
                first = None if first is None or first >= room else first
        ids = full[:lead] + content
        return ids, (0 if not prefix or first is None else lead + first)

    @torch.inference_mode()
    def vectors(self, text: str, prefix: str, special: bool = True) -> dict[str, np.ndarray]:
        ids, first = self.kept(text, prefix, special)
        out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        res = {}
        for layer in LAYERS:
            h = out.hidden_states[layer][0].double()  # (T, D)
            res[f"response_mean@{layer}"] = h[first:].mean(0).numpy()
            res[f"mean@{layer}"] = h.mean(0).numpy()
        return res


def store_for(model_dir, cache, pooling=POOLING, layers=LAYERS, **spec) -> VectorStore:
    from orm_cache.encode.model import Encoder

    fp = Encoder(EncoderSpec(model=str(model_dir), pooling=pooling, layers=layers, **spec), "cpu").fingerprint
    return VectorStore.open(cache, fp)


def embed(data, model_dir, cache, split="train", *extra):
    return ok("embed", "--data", data, "--split", split, "--model", model_dir, "--cache-dir", cache,
              "--pooling", POOLING, "--layers", ",".join(map(str, LAYERS)), "--batch-tokens", 400, *extra)


# -- pure pooling ---------------------------------------------------------------------------------
def test_response_mask_counts_real_tokens_on_either_padding_side():
    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    start = torch.tensor([2, 0, -1])
    assert response_mask(right, start).tolist() == [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert response_mask(left, start).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert response_mask(right, None) is right


def test_pool_response_mean_matches_float64_numpy():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    start = torch.tensor([1, 3, 0])
    hn = h.double().numpy()
    ref = np.stack([hn[0, 1:3].mean(0), hn[1, 4:].mean(0), hn[2].mean(0)])
    np.testing.assert_allclose(pool(h, mask, "response_mean", start).numpy(), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pool(h, mask, "response_mean", torch.zeros(3, dtype=torch.long)),
                                  pool(h, mask, "mean"))  # start 0 is mean, exactly
    with pytest.raises(ValueError, match="response_mean"):
        pool(h, mask, "max")


# -- stage 1 against the reference --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_embed_response_mean_equals_slow_per_text_reference(side, tmp_path):
    """(a) every text of a batched, padded embed equals the text run alone; (b) texts without a
    prompt: response_mean is mean, exactly; texts with one: it is not."""
    from orm_cache.testing import tiny_opt

    from orm_cache.encode.model import Encoder

    model = tiny_opt(tmp_path / f"opt-{side}", padding_side=side)
    assert Encoder(EncoderSpec(model=str(model)), "cpu").padding_side == side
    rows = prompted_rows(12)
    data = write_jsonl(tmp_path / "data" / "train.jsonl", rows).parent
    r = embed(data, model, tmp_path / "c")
    assert "padding 0.0%" not in r.output and "response_mean:" not in r.output  # padded; nothing fell back
    store = store_for(model, tmp_path / "c")
    ref = Reference(model)
    texts = texts_of(rows)
    keys = [trace_key(t) for t in texts]
    for col in (f"{p}@{l}" for p in ("response_mean", "mean") for l in LAYERS):
        got = store.vectors(keys, col)
        want = np.stack([ref.vectors(t, prefix)[col] for t, prefix in texts.items()])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=col)
    bare = [i for i, prefix in enumerate(texts.values()) if not prefix]
    prompted = [i for i, prefix in enumerate(texts.values()) if prefix]
    assert bare and prompted
    for layer in LAYERS:
        rm, m = store.vectors(keys, f"response_mean@{layer}"), store.vectors(keys, f"mean@{layer}")
        np.testing.assert_array_equal(rm[bare], m[bare])
        assert not np.allclose(rm[prompted], m[prompted], atol=1e-3)
    starts = store.scalars_at(store.locate(keys), "response_start")
    assert starts.tolist() == [len(prefix) for prefix in texts.values()]


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_conversation_response_is_the_final_assistant_turn(tiny_opt_dir, tmp_path):
    """(c) a chat-template row pools its final assistant turn (through the template's closing
    tokens), not the earlier turns; found here by rendering the turn as a sentinel."""
    from transformers import AutoTokenizer

    convs = [
        [{"role": "user", "content": "What is 3 + 4?"},
         {"role": "assistant", "content": "3 + 4 = 7. The answer is 7."}],
        [{"role": "user", "content": "Add 12 and 6."}, {"role": "assistant", "content": "12 + 6 = 19."},
         {"role": "user", "content": "Check it again, step by step."},
         {"role": "assistant", "content": "Step 1: 12 + 6 = 18. So the answer is 18."}],
    ]
    rows = [{"messages": c, "label": i % 2, "group": "g"} for i, c in enumerate(convs)]
    data = write_jsonl(tmp_path / "data" / "train.jsonl", rows).parent
    (tmp_path / "chat.jinja").write_text(CHAT)
    embed(data, tiny_opt_dir, tmp_path / "c", "train", "--chat-template", tmp_path / "chat.jinja")
    store = store_for(tiny_opt_dir, tmp_path / "c")
    tok, ref = AutoTokenizer.from_pretrained(tiny_opt_dir), Reference(tiny_opt_dir)
    for conv in convs:
        text = tok.apply_chat_template(conv, chat_template=CHAT, tokenize=False)
        marked = conv[:-1] + [{"role": "assistant", "content": "\x00"}]
        prefix = tok.apply_chat_template(marked, chat_template=CHAT, tokenize=False).split("\x00")[0]
        want = ref.vectors(text, prefix, special=False)  # chat text: the template's own special tokens only
        assert ref.tok(text, add_special_tokens=False)["input_ids"][0] != ref.tok.bos_token_id  # no BOS added
        for layer in LAYERS:
            got = store.vectors([trace_key(text, special_tokens=False)], f"response_mean@{layer}")[0]
            np.testing.assert_allclose(got, want[f"response_mean@{layer}"], atol=1e-5, rtol=0)
            assert not np.allclose(got, want[f"mean@{layer}"], atol=1e-3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation(side, tiny_opt_dir, tmp_path):
    """(e) right truncation that removes the response falls back to every token (== mean) and is
    reported; left truncation keeps the response and cuts the prompt, as the reference does."""
    long_prompt = "Question: " + "the quick brown fox jumps over the lazy dog. " * 3
    rows = [{"prompt": long_prompt, "chosen": "So 3 + 4 = 7.", "rejected": "So 3 + 4 = 8, I think."},
            {"chosen": "Step 1: 3 + 4 = 7.", "rejected": "Step 1: 3 + 4 = 9."}]
    data = write_jsonl(tmp_path / "data" / "train.jsonl", rows).parent
    L = 16
    r = embed(data, tiny_opt_dir, tmp_path / "c", "train", "--max-length", L, "--truncation-side", side)
    store = store_for(tiny_opt_dir, tmp_path / "c", max_length=L, truncation_side=side)
    ref = Reference(tiny_opt_dir, L, side)
    texts = texts_of(rows)
    keys = [trace_key(t) for t in texts]
    assert store.truncated(keys)[:2].all()
    if side == "right":
        assert "response_mean: 2 texts had no response tokens" in r.output
        for layer in LAYERS:  # the two prompted texts lost their responses: mean, exactly
            np.testing.assert_array_equal(store.vectors(keys[:2], f"response_mean@{layer}"),
                                          store.vectors(keys[:2], f"mean@{layer}"))
    else:
        assert "response_mean:" not in r.output
    for col in (f"response_mean@{l}" for l in LAYERS):
        want = np.stack([ref.vectors(t, prefix)[col] for t, prefix in texts.items()])
        np.testing.assert_allclose(store.vectors(keys, col), want, atol=1e-5, rtol=0, err_msg=col)


# -- the store records where responses start --------------------------------------------------------
def test_the_same_text_with_its_response_elsewhere_is_refused(tiny_opt_dir, tmp_path):
    """(d) the prompted split puts the response of "Q\\n\\nR" at character 3; the bare split has
    the same text (same key, same cached vector) with its response at 0."""
    prompted = [{"prompt": "Q: 3 + 4?", "chosen": "3 + 4 = 7.", "rejected": "3 + 4 = 8."}]
    bare = [{"chosen": "Q: 3 + 4?\n\n3 + 4 = 7.", "rejected": "7, surely."}]
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", prompted)
    write_jsonl(d / "test.jsonl", bare)
    cache = tmp_path / "c"
    embed(d, tiny_opt_dir, cache, "train")
    embed(d, tiny_opt_dir, cache, "test")
    common = ["--data", d, "--model", tiny_opt_dir, "--cache-dir", cache, "--pooling", POOLING,
              "--layers", "-1,-2", "--solver", "lbfgs", "--eval-split", "", "-q"]
    r = run("fit-head", "--split", "test", *common, "--feature", "response_mean@-1", "--out", tmp_path / "h.pt")
    assert r.exit_code == 1
    msg = r.output.strip()
    assert msg.count("\n") == 0, msg
    key = trace_key(bare[0]["chosen"])[:16]
    assert key in msg and "character 0 here, character 11 in the store" in msg and "another --cache-dir" in msg
    ok("fit-head", "--split", "test", *common, "--feature", "mean@-1", "--out", tmp_path / "m.pt")  # unaffected
    ok("fit-head", "--split", "train", *common, "--feature", "response_mean@-1", "--out", tmp_path / "t.pt")


def test_verify_and_score_a_response_mean_head_on_prompted_data(tiny_opt_dir, tmp_path):
    """Live re-scoring (verify, LiveScorer, score with misses) pools the same response tokens."""
    from orm_cache.head import Head
    from orm_cache.pipeline.live import LiveScorer

    d = tmp_path / "data"
    train, val = prompted_rows(12, seed=1), prompted_rows(8, seed=2)
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "validation.jsonl", val)
    cache, head = tmp_path / "c", tmp_path / "h.pt"
    for split in ("train", "validation"):
        embed(d, tiny_opt_dir, cache, split)
    ok("fit-head", "--data", d, "--model", tiny_opt_dir, "--cache-dir", cache, "--pooling", POOLING,
       "--layers", "-1,-2", "--solver", "lbfgs", "--feature", "response_mean@-1", "--out", head, "-q")
    r = ok("verify", "--head", head, "--data", d, "--split", "validation", "--cache-dir", cache, "--sample", 8)
    assert "OK: cached scores equal live scores" in r.output and "response_mean@-1" in r.output

    h, store = Head.load(head), store_for(tiny_opt_dir, cache)
    row = val[0]
    live = LiveScorer(h, "cpu").score([row["chosen"]], prompts=[row["prompt"]])
    cached = h.score(store.vectors([trace_key(f"{row['prompt']}\n\n{row['chosen']}")], "response_mean@-1"))
    np.testing.assert_allclose(live, cached, atol=1e-4)

    new = {"prompt": "Question 99: what is 5 + 6?", "text": "5 + 6 = 11."}  # a miss: embedded by score
    inp = write_jsonl(tmp_path / "in.jsonl", [new, {"prompt": row["prompt"], "text": row["chosen"]}])
    ok("score", "--head", head, "--input", inp, "--output", tmp_path / "out.jsonl", "--cache-dir", cache)
    scores = [json.loads(x)["score"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(scores[1], cached[0], atol=1e-6)
    np.testing.assert_allclose(scores[0], LiveScorer(h, "cpu").score([new["text"]], prompts=[new["prompt"]])[0],
                               atol=1e-4)
    store.refresh()
    key = trace_key(f"{new['prompt']}\n\n{new['text']}")
    assert store.scalars_at(store.locate([key]), "response_start").tolist() == [len(new["prompt"]) + 2]


# -- the slow-tokenizer fallback ----------------------------------------------------------------------
def test_counting_prefix_tokens_agrees_with_offsets_where_words_split_cleanly(minilm_dir):
    """A slow tokenizer has no offsets: counting the prefix's tokens gives the same first token
    for a whitespace-splitting tokenizer, with and without left truncation."""
    from transformers import AutoTokenizer

    from orm_cache.encode.response import NOT_FOUND, first_response_token, first_response_token_slow

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    for prompt, response in [("What is 3 + 4?", "3 + 4 = 7."), ("Add twelve and six, then check.", "Eighteen.")]:
        text = f"{prompt}\n\n{response}"
        start = len(prompt) + 2
        for side, L in (("right", 512), ("left", 8), ("right", 6)):
            tok.truncation_side = side
            full = tok(text)["input_ids"]
            enc = tok(text, truncation=True, max_length=L, return_offsets_mapping=True)
            fast = first_response_token(enc["offset_mapping"], start)
            slow = first_response_token_slow(tok, text, start, enc["input_ids"], len(full))
            assert slow == fast, (text, side, L)
            if (side, L) == ("right", 6):
                assert fast == NOT_FOUND
            else:
                assert enc["input_ids"][fast] == tok(response, add_special_tokens=False)["input_ids"][0]
