"""One trace, one score: the same trace through every shape and door; and adding a column to a store.

1. A head is trained under a string recipe (template) and under a chat recipe (TRL's
   conversational explicit shape). One validation trace (and its wrong twin) is then scored in
   every pointwise shape through CLI ``score`` and ``rank``, and in every call shape of
   ``LiveScorer``; the table shows each door's score and the largest difference from the cached one.
2. A store of N texts (``last@-1``) gets a new pooling (``mean``) and then a new layer: how many
   texts the encoder runs on each time (N once per new column set, 0 when nothing is missing),
   how long it takes, and that the earlier heads still evaluate.

    python benchmarks/identity.py [--texts 10000] [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish, table  # noqa: E402

CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}")


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def problem(i):
    s = 7 + 3 * i
    return (f"Problem {i}: what is {3 + i} + {4 + 2 * i}?", f"Step 1: {3 + i} + {4 + 2 * i} = {s}. The answer is {s}.",
            f"Step 1: {3 + i} + {4 + 2 * i} = {s + 1}.")


SHAPES = {
    "prompt + text": lambda q, t: {"prompt": q, "text": t},
    "messages (implicit)": lambda q, t: {"messages": [u(q), a(t)]},
    "prompt messages + text messages": lambda q, t: {"prompt": [u(q)], "text": [a(t)]},
    "TRL unpaired (prompt, completion)": lambda q, t: {"prompt": q, "completion": t},
    "TRL unpaired conversational": lambda q, t: {"prompt": [u(q)], "completion": [a(t)]},
}


def cli(*args) -> str:
    from click.testing import CliRunner

    from orm_cache.cli import cli as main

    r = CliRunner().invoke(main, [str(x) for x in args])
    if r.exit_code:
        raise SystemExit(f"orm-cache {' '.join(map(str, args))}: {r.output}")
    return r.output


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shapes_table(model: Path, tmp: Path) -> str:
    import numpy as np

    from orm_cache.head import Head
    from orm_cache.pipeline.live import LiveScorer

    out = []
    for recipe, shape in (("template", lambda q, g, b: {"prompt": q, "chosen": g, "rejected": b}),
                          ("chat", lambda q, g, b: {"prompt": [u(q)], "chosen": [a(g)], "rejected": [a(b)]})):
        d, cache, head = tmp / recipe / "data", tmp / recipe / "c", tmp / recipe / "h.pt"
        write_jsonl(d / "train.jsonl", [shape(*problem(i)) for i in range(40)])
        write_jsonl(d / "validation.jsonl", [shape(*problem(i)) for i in range(100, 110)])
        cli("embed", "--data", d, "--split", "train,validation", "--model", model, "--cache-dir", cache, "-q")
        cli("fit-head", "--data", d, "--model", model, "--cache-dir", cache, "--solver", "lbfgs", "--out", head, "-q")
        q, good, bad = problem(100)
        scores = {}
        for name, make in SHAPES.items():
            f = write_jsonl(tmp / recipe / "in.jsonl", [{**make(q, good), "g": 0}, {**make(q, bad), "g": 0}])
            for door in ("score", "rank"):
                o = tmp / recipe / f"{door}.jsonl"
                cli(door, "--head", head, "--input", f, "--output", o, "--cache-dir", cache, "-q",
                    *(("--group-by", "g") if door == "rank" else ()))
                scores[(f"CLI {door}", name)] = [json.loads(x)["score"] for x in o.read_text().splitlines()]
        sc = LiveScorer(Head.load(head), device="cpu")
        scores[("LiveScorer.score", "strings, prompts=[q]")] = sc.score([good, bad], prompts=[q, q]).tolist()
        scores[("LiveScorer.score", "[conversation]")] = sc.score([[u(q), a(good)], [u(q), a(bad)]]).tolist()
        scores[("LiveScorer.score", "[[turn]], prompts=[[user]]")] = sc.score([[a(good)], [a(bad)]],
                                                                                prompts=[[u(q)], [u(q)]]).tolist()
        scores[("LiveScorer.rank", "candidates, prompt=q")] = [s for _, s in sorted(sc.rank([good, bad], prompt=q))]
        ref = np.array(scores[("CLI score", "prompt + text")])
        for (door, name), s in scores.items():
            out.append([recipe, door, name, f"{s[0]:+.6f}", f"{s[1]:+.6f}", f"{np.abs(np.array(s) - ref).max():.1e}"])
    return table(["recipe", "door", "shape", "score (right)", "score (wrong)", "max |Δ| vs CLI score"], out)


def add_columns(model: Path, tmp: Path, n: int) -> str:
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n // 4):
        x, y = rng.randint(2, 99), rng.randint(2, 99)
        for j in range(4):
            ans = x + y + (0 if j == 0 else rng.choice([-2, -1, 1, 3]))
            rows.append({"prompt": f"Problem {i}: add {x} and {y}.", "text": f"Step 1: {x} + {y} = {ans}. Answer: {ans}",
                         "label": int(j == 0), "group": i})
    d, cache = tmp / "big", tmp / "big-cache"
    write_jsonl(d / "train.jsonl", rows[: int(0.8 * len(rows))])
    write_jsonl(d / "validation.jsonl", rows[int(0.8 * len(rows)):])
    base = ("--data", d, "--split", "train,validation", "--model", model, "--cache-dir", cache)
    steps = []

    def embed(label, *extra):
        t0 = time.perf_counter()
        o = cli("embed", *base, *extra)
        import re

        ran = sum(int(x.replace(",", "")) for x in re.findall(r"embedded ([\d,]+) texts in ", o))
        steps.append([label, f"{ran:,}", f"{time.perf_counter() - t0:.1f}"])

    embed("embed --pooling last (a new store)", "--pooling", "last")
    cli("fit-head", "--data", d, "--model", model, "--cache-dir", cache, "--solver", "lbfgs", "--feature", "last@-1",
        "--out", tmp / "last.pt", "-q")
    embed("embed --pooling last,mean (adds mean@-1)", "--pooling", "last,mean")
    embed("embed --pooling last,mean again", "--pooling", "last,mean")
    embed("embed --pooling mean --layers -2 (adds mean@-2)", "--pooling", "mean", "--layers", "-2")
    embed("embed --pooling last --layers -1 (the first run's columns)", "--pooling", "last")
    ok = []
    for feature in ("last@-1", "mean@-1", "mean@-2+last@-1"):
        cli("fit-head", "--data", d, "--model", model, "--cache-dir", cache, "--solver", "lbfgs", "--feature", feature,
            "--out", tmp / "h.pt", "-q")
        ok.append(feature)
    cli("eval", "--head", tmp / "last.pt", "--data", d, "--split", "validation", "--cache-dir", cache)
    stores = len(list((cache / "vectors").iterdir()))
    info = cli("cache", "info", "--cache-dir", cache)
    return (table(["step", "texts the encoder ran on", "seconds"], steps)
            + f"\n\n{n:,} texts; {stores} store directory afterwards; fit-head on {', '.join(ok)} and eval of the "
              "head trained before the columns were added all run. `cache info`:\n\n```\n" + info.strip() + "\n```\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=10_000)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    from transformers import AutoTokenizer

    from orm_cache.testing import tiny_opt

    tmp = Path(tempfile.mkdtemp(prefix="identity-"))
    try:
        model = tiny_opt(tmp / "model")
        tok = AutoTokenizer.from_pretrained(model)
        tok.chat_template = CHAT
        tok.save_pretrained(model)
        body = ("Tiny OPT (random weights) whose chat template writes its own BOS. A validation trace and its wrong "
                "twin, scored through every shape and door (CLI rows are cache hits; LiveScorer encodes live):\n\n"
                + shapes_table(model, tmp)
                + "\n\nAdding columns to one encoder's store:\n\n" + add_columns(model, tmp, args.texts))
        publish("One trace, one score; columns added to one store", body, args.write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
