"""orm-cache's token ids against TRL's, on TRL's own test data, and an export scored through TRL.

TRL's ``scripts/generate_zen_dataset.py`` (in a TRL checkout; it is not in the wheel) builds the
"zen" data sets TRL tests with, offline. This script runs it with ``push_to_hub`` pointed at a
local folder, then for every preference configuration compares

* the chosen/rejected token ids TRL's ``RewardTrainer`` feeds its model (its own preprocessing:
  EOS appended to standard texts, the explicit prompt joined, chat template for conversations),
* the ids orm-cache encodes for the same rows under ``--recipe trl``.

The unpaired configurations (prompt, completion, label) are not RewardTrainer data; their texts
are compared with the same rule TRL's preprocessing applies to a completion (``prompt +
completion + eos``, or the chat template).

Then it trains a head under ``--recipe trl`` on ``standard_preference``, exports it, tokenizes
the test split with RewardTrainer's preprocessing and compares the exported model's logits with
``orm-cache score`` minus the head's bias.

    python benchmarks/trl_tokens.py --trl-repo /path/to/trl [--write]

Needs ``trl`` (``pip install trl``); the models are built offline (a tiny OPT whose tokenizer
carries a Llama-style chat template that writes its own BOS).
"""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish, table  # noqa: E402

CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}")
PAIRED = ("standard_preference", "standard_implicit_prompt_preference", "conversational_preference",
          "conversational_implicit_prompt_preference")
UNPAIRED = ("standard_unpaired_preference", "conversational_unpaired_preference")


def zen(trl_repo: Path, out: Path) -> dict[str, Path]:
    """Run TRL's generator; every configuration it would push is saved under ``out`` instead."""
    from datasets import DatasetDict

    script = trl_repo / "scripts" / "generate_zen_dataset.py"
    if not script.is_file():
        raise SystemExit(f"{script}: not found (give --trl-repo, a checkout of huggingface/trl)")
    saved = {}

    def push(self, repo_id, config_name="default", **kw):
        saved[config_name] = out / config_name
        self.save_to_disk(str(saved[config_name]))

    real = DatasetDict.push_to_hub
    DatasetDict.push_to_hub = push
    argv = sys.argv
    try:
        sys.argv = [str(script), "--push_to_hub", "True"]
        runpy.run_path(str(script), run_name="__main__")
    finally:
        DatasetDict.push_to_hub, sys.argv = real, argv
    return saved


def chat_model(d: Path) -> Path:
    from transformers import AutoTokenizer

    from orm_cache.testing import tiny_opt

    tiny_opt(d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = CHAT
    tok.save_pretrained(d)
    return d


def trainer_ids(model_dir: Path, ds, tmp: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    args = RewardConfig(output_dir=str(tmp / "trl-out"), report_to=[], max_length=None, use_cpu=True)
    t = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    return list(t.train_dataset["chosen_ids"]), list(t.train_dataset["rejected_ids"])


def ours(model_dir: Path, data: Path, split: str):
    """(chosen ids, rejected ids) or (ids of each pointwise row) as orm-cache encodes them."""
    from orm_cache.config import DataSpec, EncoderSpec
    from orm_cache.data import load_split
    from orm_cache.encode.model import Encoder

    d = load_split(DataSpec(data=str(data), split=split, recipe_kind="trl"), EncoderSpec(model=str(model_dir)))
    enc = Encoder(EncoderSpec(model=str(model_dir)), "cpu")

    def ids(keys):
        return enc.tokenize([d.texts[k] for k in keys], special_tokens=d.special_tokens)[0]

    return (ids(d.pairs.chosen), ids(d.pairs.rejected)) if d.kind == "pairwise" else (ids(d.keys),)


def trl_rule_ids(model_dir: Path, ds):
    """Unpaired rows through the rule RewardTrainer applies to a completion."""
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize, is_conversational

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for ex in ds:
        text = ex["prompt"] + ex["completion"]
        if not is_conversational(ex) and not text.endswith(tok.eos_token):
            text += tok.eos_token
        out.append(_tokenize(tok, text)["input_ids"])
    return out


def export_check(model_dir: Path, saved: Path, tmp: Path) -> float:
    """max |logit - (score - bias)| of a head trained and exported under --recipe trl."""
    import numpy as np
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification

    from orm_cache.cli import cli

    def run(*args):
        try:
            cli.main([str(a) for a in args], standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise

    cache, base = tmp / "cache", ("--model", model_dir, "--recipe", "trl")
    run("embed", "--data", saved, "--split", "train,test", *base, "--cache-dir", cache, "-q")
    run("fit-head", "--data", saved, *base, "--cache-dir", cache, "--solver", "lbfgs", "--eval-split", "test",
        "--out", tmp / "h.pt")
    run("export", "--head", tmp / "h.pt", "--out", tmp / "exported")
    test = load_from_disk(str(saved))["test"]
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": ex["prompt"], "text": ex["chosen"]}) + "\n" for ex in test))
    run("score", "--head", tmp / "h.pt", "--input", rows, "--output", tmp / "scored.jsonl", "--cache-dir", cache, "-q")
    scores = np.array([json.loads(x)["score"] for x in (tmp / "scored.jsonl").read_text().splitlines()])
    chosen, _ = trainer_ids(tmp / "exported", test, tmp)
    rm = AutoModelForSequenceClassification.from_pretrained(tmp / "exported").eval()
    bias = rm.config.orm_cache["score_bias"]
    with torch.no_grad():
        logits = np.array([float(rm(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in chosen])
    return float(np.abs(logits - (scores - bias)).max())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trl-repo", type=Path, required=True, help="a checkout of huggingface/trl")
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = p.parse_args()
    import trl
    from datasets import load_from_disk

    tmp = Path(tempfile.mkdtemp(prefix="trl-tokens-"))
    try:
        saved = zen(args.trl_repo, tmp / "zen")
        model = chat_model(tmp / "model")
        rows = []
        for config in PAIRED + UNPAIRED:
            if config not in saved:
                rows.append([config, "—", "not generated by this TRL version", "—"])
                continue
            n_rows = mismatched = 0
            for split in ("train", "test"):
                ds = load_from_disk(str(saved[config]))[split]
                if config in PAIRED:
                    want = trainer_ids(model, ds, tmp)
                    how = "RewardTrainer preprocessing"
                else:
                    want = (trl_rule_ids(model, ds),)
                    how = "RewardTrainer's rule (not RewardTrainer data)"
                got = ours(model, saved[config], split)
                n_rows += len(ds)
                mismatched += sum(a != b for w, g in zip(want, got) for a, b in zip(w, g))
            rows.append([config, n_rows, how, mismatched])
        diff = export_check(model, saved["standard_preference"], tmp)
        body = (f"TRL {trl.__version__}'s zen data sets (built offline by its scripts/generate_zen_dataset.py), "
                "tiny OPT whose chat template writes its own BOS; `--recipe trl`. Texts whose ids differ from "
                "TRL's:\n\n"
                + table(["configuration", "rows", "TRL side", "texts with other ids"], rows)
                + f"\n\nExport trained under `--recipe trl` on standard_preference (L-BFGS), its test split "
                f"tokenized by RewardTrainer's preprocessing and scored by the exported model: max |logit - "
                f"(score - bias)| = {diff:.2e}.\n")
        publish("TRL token ids", body, args.write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
