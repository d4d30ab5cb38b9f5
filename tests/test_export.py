"""Hugging Face reward models out (`export`) and in (`import-head`): an exported model's logits are
orm-cache's scores minus the head's bias on both padding sides; an imported head scores like the
reward model it came from; whatever cannot be represented is refused with one line."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from orm_cache.head import Head, LinearHead, MLPHead
from orm_cache.outputs import TMP_MARK, OutputError

from conftest import ok, run, write_jsonl

TEXTS = [
    "Step 1: Tom has 3 apples and buys 4 more, so he has 3 + 4 = 7 apples.",
    "72",
    "Each box holds 12 pencils; 6 boxes hold 6 * 12 = 72 pencils. Then 72 - 5 = 67 remain, and 67 + 1 = 68. "
    "Final answer: 68",  # longer than --max-length: truncated the same way by both
    "A train travels 60 miles per hour for 2.5 hours: 60 * 2.5 = 150 miles.",
    "the quick brown fox",
]
MAX_LENGTH = 24


def one_line_error(r, *needles):
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


def hf_logits(directory, texts, side):
    """Logits of the reward model in ``directory`` as a user computes them, with no orm-cache."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    tok.padding_side = side
    model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1).double().numpy(), model


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_opt_dir):
    """Pairwise traces embedded by the tiny OPT (last and mean, layers -1 and -2, max length 24);
    heads on last@-1, mean@-1 and last@-2."""
    root = tmp_path_factory.mktemp("export")
    model = root / "model"
    shutil.copytree(tiny_opt_dir, model)
    rows = [{"chosen": f"Problem {i}: {i} + {2 * i} = {3 * i}. The answer is {3 * i}.",
             "rejected": f"Problem {i}: {i} + {2 * i} = {3 * i + 1 + i % 3}. The answer is {3 * i + 1 + i % 3}."}
            for i in range(20)]
    data = write_jsonl(root / "data" / "train.jsonl", rows).parent
    cache = root / "cache"
    ok("embed", "--data", data, "--model", model, "--cache-dir", cache, "--pooling", "last,mean", "--layers", "-1,-2",
       "--max-length", MAX_LENGTH, "-q")
    heads = {}
    for feature in ("last@-1", "mean@-1", "last@-2"):
        heads[feature] = root / f"{feature.replace('@', '')}.pt"
        ok("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--pooling", "last,mean", "--layers",
           "-1,-2", "--max-length", MAX_LENGTH, "--feature", feature, "--solver", "lbfgs", "--out", heads[feature], "-q")
    inp = write_jsonl(root / "texts.jsonl", [{"text": t} for t in TEXTS])
    ok("score", "--head", heads["last@-1"], "--input", inp, "--output", root / "scored.jsonl", "--cache-dir", cache)
    scores = np.array([json.loads(x)["score"] for x in open(root / "scored.jsonl")])
    return {"root": root, "model": model, "cache": cache, "heads": heads, "scores": scores, "input": inp}


# ------------------------------------------------------------------------------------ export

def test_exported_logits_equal_score_minus_bias_on_both_padding_sides(world, tmp_path):
    out = tmp_path / "rm"
    r = ok("export", "--head", world["heads"]["last@-1"], "--out", out)
    head = Head.load(world["heads"]["last@-1"])
    assert abs(head.bias) > 1e-3  # so a bias left in would show
    sign = "-" if head.bias >= 0 else "+"
    assert f"logits = orm-cache score {sign} {abs(head.bias):.6g}" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_labels"] == 1 if "num_labels" in cfg else len(cfg["id2label"]) == 1
    assert cfg["pad_token_id"] == 1 and cfg["architectures"] == ["OPTForSequenceClassification"]
    assert cfg["orm_cache"]["score_bias"] == pytest.approx(head.bias) and "no bias" in cfg["orm_cache"]["note"]
    expected = world["scores"] - head.bias
    diffs = {}
    for side in ("right", "left"):
        logits, model = hf_logits(out, TEXTS, side)
        assert type(model).__name__ == "OPTForSequenceClassification" and model.score.bias is None
        diffs[side] = float(np.abs(logits - expected).max())
    print(f"max |logit - (score - bias)|: right {diffs['right']:.3g}, left {diffs['left']:.3g}")
    assert max(diffs.values()) < 1e-5, diffs
    # one text at a time (no padding at all) agrees too
    assert abs(hf_logits(out, TEXTS[2:3], "right")[0][0] - expected[2]) < 1e-5
    # and the exported directory imports back as a head that scores score - bias
    imported = tmp_path / "back.pt"
    ok("import-head", "--model", out, "--out", imported, "--cache-dir", tmp_path / "c", "--max-length", MAX_LENGTH)
    from orm_cache.pipeline.live import LiveScorer

    back = LiveScorer(imported, "cpu")
    assert back.head.bias == 0.0
    np.testing.assert_allclose(back.score(TEXTS), expected, atol=1e-5)


def test_export_replaces_only_a_previous_export_and_only_when_complete(world, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    from orm_cache.pipeline.export import export_head

    head = world["heads"]["last@-1"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(run("export", "--head", head, "--out", other), "exists and holds something else")
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1

    out = tmp_path / "rm"
    export_head(head, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full_disk)
    with pytest.raises(OutputError, match="could not write .No space left on device.*previous directory"):
        export_head(head, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]
    monkeypatch.undo()
    export_head(head, out)  # a previous export is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]


def test_export_refuses_what_a_sequence_classification_model_cannot_hold(world, tmp_path):
    heads = world["heads"]
    one_line_error(run("export", "--head", heads["mean@-1"], "--out", tmp_path / "a"),
                   "trained on mean@-1", "mean pooling")
    one_line_error(run("export", "--head", heads["last@-2"], "--out", tmp_path / "b"),
                   "trained on last@-2", "final layer")
    base = Head.load(heads["last@-1"])
    D = base.dim
    mlp = MLPHead(np.ones((1, 4, D)), np.zeros((1, 4)), np.ones((1, 4)), np.zeros(1), base.meta).save(tmp_path / "m.pt")
    one_line_error(run("export", "--head", mlp, "--out", tmp_path / "mlp"), "cannot export a 'mlp' head")
    combined = LinearHead(np.tile(base.weight, 2), base.bias, {**base.meta, "feature": "last@-1+mean@-1"})
    one_line_error(run("export", "--head", combined.save(tmp_path / "c.pt"), "--out", tmp_path / "comb"),
                   "not several concatenated")
    cases = {
        "reference": ({}, "reference-format head"),
        "bert": ({**base.meta, "encoder_identity": {"model": {"model_type": "bert"}}}, "BERT-style encoder"),
        "gpt2": ({**base.meta, "encoder_identity": {"model": {"model_type": "gpt2"}}}, "left-padded text"),
    }
    for name, (meta, needle) in cases.items():
        p = LinearHead(base.weight, base.bias, meta).save(tmp_path / f"{name}.pt")
        one_line_error(run("export", "--head", p, "--out", tmp_path / name), needle)
        assert not (tmp_path / name).exists()


ARCHITECTURES = ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt_neox"]


def _tiny(model_type: str, vocab: int):
    from transformers import AutoConfig

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=vocab, max_position_embeddings=256, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    if model_type != "gpt_neox":
        common["num_key_value_heads"] = 2
    if model_type == "gemma":
        common["head_dim"] = 16
    return AutoConfig.for_model(model_type, **common)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_other_supported_architectures_export_exactly(model_type, tmp_path):
    """Each architecture export accepts: a tiny random model, a head over its last@-1, and the
    exported logits on both padding sides. The tokenizer has no pad token (as Llama's), so orm-cache
    pads with eos and export adds a dedicated pad: a text ending in eos still scores its eos."""
    from transformers import AutoModel

    from orm_cache.config import EncoderSpec
    from orm_cache.encode.model import Encoder
    from orm_cache.pipeline.export import EXPORT_ARCHITECTURES, export_head
    from orm_cache.pipeline.live import LiveScorer
    from orm_cache.testing import build_tokenizer

    assert model_type in EXPORT_ARCHITECTURES
    tok = build_tokenizer()
    tok.pad_token = None
    d = tmp_path / model_type
    torch.manual_seed(0)
    AutoModel.from_config(_tiny(model_type, len(tok))).save_pretrained(d)
    tok.save_pretrained(d)
    enc = Encoder(EncoderSpec(model=str(d), max_length=MAX_LENGTH, dtype="float32"), "cpu")
    rng = np.random.default_rng(0)
    meta = {"fingerprint": enc.fingerprint, "encoder_identity": enc.identity, "encoder_spec": enc.spec_record,
            "feature": "last@-1"}
    head = LinearHead(rng.standard_normal(enc.config.hidden_size).astype(np.float32), 0.75, meta).save(tmp_path / "h.pt")
    texts = TEXTS + ["Final answer: 72</s>"]  # ends in the eos token
    expected = LiveScorer(head, "cpu").score(texts).astype(np.float64) - 0.75
    r = export_head(head, tmp_path / "rm")
    assert r.added_pad_token and r.pad_token_id != 2
    for side in ("right", "left"):
        logits, _ = hf_logits(tmp_path / "rm", texts, side)
        assert np.abs(logits - expected).max() < 1e-5, (model_type, side, logits - expected)


# ------------------------------------------------------------------------------------ import

@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_opt_dir):
    """An OPTForSequenceClassification reward model (num_labels=1, seeded random score layer)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("rm") / "reward-model"
    cfg = AutoConfig.from_pretrained(tiny_opt_dir, num_labels=1)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_opt_dir, config=cfg)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_opt_dir).save_pretrained(d)
    return d


def test_imported_head_scores_like_the_reward_model(reward_model, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    expected = {side: hf_logits(reward_model, TEXTS, side)[0] for side in ("right", "left")}
    np.testing.assert_allclose(expected["right"], expected["left"], atol=1e-5)
    cache, head = tmp_path / "c", tmp_path / "imported.pt"
    r = ok("import-head", "--model", reward_model, "--out", head, "--cache-dir", cache)
    assert "as a head on last@-1" in r.output and "orm-cache embed --model" in r.output
    h = Head.load(head)
    assert h.feature == "last@-1" and h.bias == 0.0 and h.meta["imported"]["score_bias_in_model"] is False
    np.testing.assert_allclose(LiveScorer(h, "cpu").score(TEXTS), expected["right"], atol=1e-5)
    # re-scoring through the cache: misses embedded with the reward model's backbone, then hits
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    for embedded in (5, 0):
        r = ok("score", "--head", head, "--input", inp, "--output", tmp_path / "s.jsonl", "--cache-dir", cache)
        assert f"{embedded} embedded now" in r.output
        got = [json.loads(x)["score"] for x in open(tmp_path / "s.jsonl")]
        np.testing.assert_allclose(got, expected["right"], atol=1e-5)


def test_import_refuses_what_is_not_a_one_output_reward_model(reward_model, tiny_opt_dir, tmp_path):
    one_line_error(run("import-head", "--model", tiny_opt_dir, "--out", tmp_path / "a.pt"),
                   "a OPTModel, not a ...ForSequenceClassification reward model")
    two = tmp_path / "two"
    shutil.copytree(reward_model, two)
    cfg = json.loads((two / "config.json").read_text())
    cfg["id2label"] = {"0": "bad", "1": "good"}
    cfg.pop("num_labels", None)
    (two / "config.json").write_text(json.dumps(cfg))
    one_line_error(run("import-head", "--model", two, "--out", tmp_path / "b.pt"), "num_labels=2")
    one_line_error(run("import-head", "--model", tmp_path / "nothing", "--out", tmp_path / "c.pt"), "no such directory")
    assert not any((tmp_path / n).exists() for n in ("a.pt", "b.pt", "c.pt"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TMP_MARK)]


def test_export_replaces_only_its_own_output_and_keeps_the_truncation_side(world, tmp_path):
    victim = tmp_path / "victim"
    shutil.copytree(world["model"], victim)  # a model folder: it has a config.json, but is no export
    (victim / "NOTES.txt").write_text("mine")
    r = run("export", "--head", world["heads"]["last@-1"], "--out", victim)
    assert r.exit_code == 1 and (victim / "NOTES.txt").read_text() == "mine"
    out = tmp_path / "rm"
    ok("export", "--head", world["heads"]["last@-1"], "--out", out)
    ok("export", "--head", world["heads"]["last@-1"], "--out", out)  # a previous export is replaced
    (out / "extra.txt").write_text("added by hand")
    assert run("export", "--head", world["heads"]["last@-1"], "--out", out).exit_code == 1
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["truncation_side"] == "right" and cfg["model_max_length"] == MAX_LENGTH


def test_import_takes_the_reward_models_own_truncation(world, tmp_path):
    out = tmp_path / "rm"
    ok("export", "--head", world["heads"]["last@-1"], "--out", out)  # its tokenizer keeps MAX_LENGTH tokens
    r = ok("import-head", "--model", out, "--out", tmp_path / "back.pt", "--cache-dir", tmp_path / "c")
    spec = Head.load(tmp_path / "back.pt").meta["encoder_spec"]
    assert spec["max_length"] == MAX_LENGTH and spec["truncation_side"] == "right", r.output


@pytest.mark.parametrize("damage, says", [
    (lambda sd: sd["score.weight"].fill_(float("nan")), "holds NaN or Inf"),
    (lambda sd: sd.__setitem__("score.weight", sd["score.weight"][:, :10].clone()), "10 wide but the backbone"),
    (lambda sd: sd.__setitem__("score.bias", torch.zeros(2)), "score.bias has shape [2]"),
])
def test_import_head_refuses_a_score_layer_that_cannot_score(reward_model, tmp_path, damage, says):
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "rm"
    shutil.copytree(reward_model, d)
    sd = load_file(d / "model.safetensors")
    damage(sd)
    save_file(sd, d / "model.safetensors")
    r = run("import-head", "--model", d, "--out", tmp_path / "h.pt", "--cache-dir", tmp_path / "c")
    assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output and not (tmp_path / "h.pt").exists()
