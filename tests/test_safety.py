"""Nothing lost, nothing silently wrong: outputs replaced only by complete files, heads that
remember their text recipe, checked checkpoints, SIGTERM handled like Ctrl-C, strict JSON,
clear lines for bad inputs, hints that reproduce the store, progress without a terminal."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orm_cache.cli.options import Terminated
from orm_cache.head import Head
from orm_cache.outputs import TMP_MARK, atomic_open, json_safe, write_json
from orm_cache.progress import Progress

from conftest import ok, pointwise_rows, run, write_jsonl, write_pointwise_splits

TEMPLATE = "Question: {prompt}\nWorked answer: {response}"


def prompted(rows):
    """Pointwise rows with the problem statement moved into a prompt column."""
    out = []
    for r in rows:
        q, _, rest = r["text"].partition(". ")
        out.append({"prompt": q, "text": rest, "label": r["label"], "group": r["group"]})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_opt_dir):
    """A tiny OPT store of prompt-bearing data embedded with a custom template, and a head."""
    root = tmp_path_factory.mktemp("safety")
    model = root / "model"
    shutil.copytree(tiny_opt_dir, model)
    data = write_pointwise_splits(root / "data", transform=prompted)
    cache, head = root / "cache", root / "head.pt"
    for split in ("train", "validation", "test"):
        ok("embed", "--data", data, "--split", split, "--model", model, "--cache-dir", cache, "--template", TEMPLATE,
           "--pooling", "last,mean", "--layers", "-1,-2", "-q")
    ok("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--template", TEMPLATE, "--out", head,
       "--solver", "lbfgs", "--feature", "mean@-1", "-q")
    return {"root": root, "model": model, "data": data, "cache": cache, "head": head}


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TMP_MARK)]


def bad_late(tmp_path, n=60, bad_at=55):
    rows = [{"prompt": f"Problem {i}: add {i} and 1", "text": f"Step 1: {i} + 1 = {i + 1}. Answer: {i + 1}"}
            for i in range(n)]
    if bad_at:
        rows[bad_at - 1] = {"prompt": "broken", "text": ""}
    return write_jsonl(tmp_path / "in.jsonl", rows)


# ------------------------------------------------------------------ 1. complete outputs only

@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("bad_at", [1, 55])
def test_a_bad_row_early_or_late_leaves_the_previous_output_byte_identical(world, tmp_path, ext, bad_at):
    src = bad_late(tmp_path, bad_at=bad_at)
    out = tmp_path / f"scored{ext}"
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "Add", "text": "Step 1: 2 + 2 = 4. Answer: 4"}])
    ok("score", "--head", world["head"], "--input", good, "--output", out, "--cache-dir", world["cache"], "-q")
    before = out.read_bytes()
    r = run("score", "--head", world["head"], "--input", src, "--output", out, "--cache-dir", world["cache"],
            "--chunk-rows", 10, "-q")
    assert r.exit_code == 1 and f"in.jsonl:{bad_at}: column 'text' is empty" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_output_equal_to_input_with_a_bad_row_leaves_the_input_intact(world, tmp_path):
    src = bad_late(tmp_path)
    before = src.read_bytes()
    r = run("score", "--head", world["head"], "--input", src, "--output", src, "--cache-dir", world["cache"],
            "--chunk-rows", 7, "-q")
    assert r.exit_code == 1 and src.read_bytes() == before and leftovers(tmp_path) == []
    r = run("rank", "--head", world["head"], "--input", src, "--output", src, "--cache-dir", world["cache"],
            "--group-by", "prompt", "-q")
    assert r.exit_code == 1 and src.read_bytes() == before and leftovers(tmp_path) == []


def test_rank_with_a_late_bad_row_keeps_the_previous_ranking(world, tmp_path):
    out = tmp_path / "ranked.jsonl"
    ok("rank", "--head", world["head"], "--input", world["data"] / "test.jsonl", "--output", out, "--group-by",
       "group", "--cache-dir", world["cache"], "-q")
    before = out.read_bytes()
    rows = [json.loads(x) for x in open(world["data"] / "test.jsonl")]
    rows[-1]["label"] = 7
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = run("rank", "--head", world["head"], "--input", bad, "--output", out, "--group-by", "group",
            "--cache-dir", world["cache"], "-q")
    assert r.exit_code == 1 and "must be 0 or 1" in r.output and out.read_bytes() == before


def test_skip_invalid_side_file_is_replaced_only_with_its_output(world, tmp_path):
    src = bad_late(tmp_path)
    out = tmp_path / "scored.parquet"
    ok("score", "--head", world["head"], "--input", src, "--output", out, "--cache-dir", world["cache"],
       "--skip-invalid", "-q")
    side = tmp_path / "scored.parquet.rejected.jsonl"
    assert [json.loads(x)["row"] for x in open(side)] == [55]
    side_before, out_before = side.read_bytes(), out.read_bytes()
    # the same input plus a row whose type changes after the first chunk: the run fails late
    rows = [json.loads(x) for x in open(src)] + [{"prompt": "p", "text": "Step 1: 1 + 1 = 2", "extra": [1, 2]}] * 3
    rows[0]["extra"] = "a string"
    r = run("score", "--head", world["head"], "--input", write_jsonl(tmp_path / "in2.jsonl", rows), "--output", out,
            "--cache-dir", world["cache"], "--skip-invalid", "--chunk-rows", 20, "-q")
    assert r.exit_code == 1 and "do not fit the columns and types" in r.output
    assert side.read_bytes() == side_before and out.read_bytes() == out_before and leftovers(tmp_path) == []
    # a clean run rewrites the side file: it always describes the output beside it
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "Add", "text": "Step 1: 2 + 2 = 4. Answer: 4"}])
    ok("score", "--head", world["head"], "--input", good, "--output", out, "--cache-dir", world["cache"],
       "--skip-invalid", "-q")
    assert side.read_bytes() == b""


def test_csv_column_first_seen_late_is_refused_not_dropped(world, tmp_path):
    rows = ([{"prompt": "Add", "text": f"Step 1: {i} + 1 = {i + 1}"} for i in range(5)]
            + [{"prompt": "Add", "text": "Step 1: 9", "note": "late"}])
    r = run("score", "--head", world["head"], "--input", write_jsonl(tmp_path / "in.jsonl", rows), "--output",
            tmp_path / "o.csv", "--cache-dir", world["cache"], "--chunk-rows", 2, "-q")
    assert r.exit_code == 1 and "column(s) ['note']" in r.output and not (tmp_path / "o.csv").exists()


def test_interrupt_mid_write_leaves_previous_output_and_no_temp(world, tmp_path, monkeypatch):
    """Ctrl-C and SIGTERM (raised as Terminated) on the second chunk: the old file stays."""
    from orm_cache.pipeline import rescore

    src = bad_late(tmp_path, bad_at=None)
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")
    real = rescore.Rescorer.scores
    calls = {"n": 0}

    def flaky(self, texts, summary, starts, special, steps, exc):
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc
        return real(self, texts, summary, starts, special, steps)

    for exc, code, says in ((Terminated(), 128 + signal.SIGTERM, "terminated (SIGTERM)"),
                            (KeyboardInterrupt(), 1, "Aborted")):
        calls["n"] = 0
        monkeypatch.setattr(rescore.Rescorer, "scores",
                            lambda self, t, s, starts=None, special=True, steps=None, exc=exc: flaky(
                                self, t, s, starts, special, steps, exc))
        r = run("score", "--head", world["head"], "--input", src, "--output", out, "--cache-dir", world["cache"],
                "--chunk-rows", 10, "-q")
        assert r.exit_code == code and says in r.output, r.output
        assert calls["n"] == 2 and out.read_text() == "previous\n" and leftovers(tmp_path) == []


def test_full_disk_mid_output_is_one_line_and_keeps_the_old_file(world, tmp_path, monkeypatch):
    import errno

    from orm_cache.pipeline import rescore

    out = tmp_path / "o.parquet"
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "Add", "text": "Step 1: 2 + 2 = 4. Answer: 4"}])
    ok("score", "--head", world["head"], "--input", good, "--output", out, "--cache-dir", world["cache"], "-q")
    before = out.read_bytes()
    real, n = rescore.OutputWriter.write, {"calls": 0}

    def fill_disk(self, rows):
        n["calls"] += 1
        if n["calls"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, rows)

    monkeypatch.setattr(rescore.OutputWriter, "write", fill_disk)
    r = run("score", "--head", world["head"], "--input", bad_late(tmp_path, bad_at=None), "--output", out,
            "--cache-dir", world["cache"], "--chunk-rows", 10)
    assert r.exit_code == 1 and "No space left on device" in r.output and "previous file" in r.output
    assert "Traceback" not in r.output and out.read_bytes() == before and leftovers(tmp_path) == []


def test_two_runs_writing_one_path_each_leave_a_complete_file(world, tmp_path):
    src = world["data"] / "test.jsonl"
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "orm_cache", "score", "--head", str(world["head"]), "--input", str(src),
           "--output", str(out), "--cache-dir", str(world["cache"]), "--chunk-rows", "3", "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = [json.loads(x) for x in open(out)]
    assert len(rows) == sum(1 for _ in open(src)) and leftovers(tmp_path) == []


def test_nonsense_values_and_bad_output_paths_are_one_line(world, tmp_path):
    src = world["data"] / "test.jsonl"
    common = ["--head", world["head"], "--input", src, "--cache-dir", world["cache"]]
    r = run("score", *common, "--output", tmp_path / "o.jsonl", "--chunk-rows", 0)
    assert r.exit_code == 2 and "--chunk-rows" in r.output
    r = run("rank", *common, "--output", tmp_path / "o.jsonl", "--group-by", "group", "--top-k", 0)
    assert r.exit_code == 2 and "--top-k" in r.output
    (tmp_path / "afile").write_text("x")
    r = run("score", *common, "--output", tmp_path / "afile" / "o.jsonl")
    assert r.exit_code == 1 and "is a file, not a directory" in r.output and "Traceback" not in r.output
    r = run("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir",
            world["cache"], "--json", tmp_path / "afile" / "m.json", "-q")
    assert r.exit_code == 1 and "is a file, not a directory" in r.output
    assert (tmp_path / "afile").read_text() == "x"


def test_atomic_open_keeps_the_old_file_on_error_and_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    def enospc(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(ValueError, match="No space left on device.*previous file, if any, is untouched"):
        write_json(target, {"a": 1})
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_checkpoints_are_written_atomically(world, tmp_path, monkeypatch):
    dst = tmp_path / "h.pt"
    shutil.copy(world["head"], dst)
    before = dst.read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f: (Path(f).write_bytes(b"partial"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        Head.load(dst).save(dst)
    assert dst.read_bytes() == before and leftovers(tmp_path) == []


# ------------------------------------------------------------------ 2. the head's text recipe

def test_head_records_its_recipe_and_scorers_reuse_it(world, tmp_path):
    h = Head.load(world["head"])
    assert h.recipe == {"template": TEMPLATE, "prompt_col": "prompt", "kind": "template", "eos": False}
    model_away = world["root"] / "model-away"
    world["model"].rename(model_away)  # nothing may be embedded: every text must be a cache hit
    try:
        out = tmp_path / "s.jsonl"
        r = ok("score", "--head", world["head"], "--input", world["data"] / "test.jsonl", "--output", out,
               "--cache-dir", world["cache"])
        assert "0 embedded now (no model loaded)" in r.output
        r = ok("rank", "--head", world["head"], "--input", world["data"] / "test.jsonl", "--output", out,
               "--group-by", "group", "--cache-dir", world["cache"])
        assert "0 embedded now (no model loaded)" in r.output
        ok("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir",
           world["cache"], "-q")
        # the same template given explicitly is no conflict
        ok("score", "--head", world["head"], "--input", world["data"] / "test.jsonl", "--output", out,
           "--cache-dir", world["cache"], "--template", TEMPLATE, "-q")
        # another template given explicitly is refused with both shown, before anything is written
        for cmd in (["score", "--input", world["data"] / "test.jsonl", "--output", tmp_path / "new.jsonl"],
                    ["eval", "--data", world["data"], "--split", "test"],
                    ["verify", "--data", world["data"], "--split", "test"]):
            r = run(*cmd, "--head", world["head"], "--cache-dir", world["cache"], "--template", "{prompt} {response}")
            assert r.exit_code == 1, r.output
            assert repr(TEMPLATE) in r.output and "'{prompt} {response}'" in r.output
            assert "--override-recipe" in r.output
        assert not (tmp_path / "new.jsonl").exists()
        r = run("score", "--head", world["head"], "--input", world["data"] / "test.jsonl", "--output", out,
                "--cache-dir", world["cache"], "--prompt-col", "", "-q")
        assert r.exit_code == 1 and "--prompt-col '': the head was trained on prompts from column 'prompt'" in r.output
    finally:
        model_away.rename(world["model"])


def test_live_scorer_uses_the_recipe_and_refuses_a_bare_string(world):
    from orm_cache.pipeline.live import LiveScorer
    from orm_cache.pipeline.bind import store_for_head

    rows = [json.loads(x) for x in open(world["data"] / "test.jsonl")][:4]
    scorer = LiveScorer(world["head"], "cpu")
    live = scorer.score([r["text"] for r in rows], prompts=[r["prompt"] for r in rows])
    from orm_cache.data import trace_key

    keys = [trace_key(TEMPLATE.format(prompt=r["prompt"], response=r["text"])) for r in rows]
    vs = store_for_head(scorer.head, world["cache"])
    np.testing.assert_allclose(live, scorer.head.score(vs.vectors(keys, "mean@-1")), atol=1e-5)
    with pytest.raises(TypeError, match="not a single string"):
        scorer.score("Step 1: a single trace")
    with pytest.raises(TypeError, match="not a single string"):
        scorer.rank("abc")
    with pytest.raises(ValueError, match="2 prompts for 1 texts"):
        scorer.score(["x"], prompts=["a", "b"])
    assert scorer.rank([r["text"] for r in rows], prompt=rows[0]["prompt"])[0][0] in range(4)


# ------------------------------------------------------------------ 3. checked checkpoints

def _save_raw(path, weight, bias, meta=None):
    ckpt = {"model_state": {"score.weight": weight, "score.bias": bias}}
    if meta is not None:
        ckpt["orm_cache"] = meta
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("case,weight,bias,message", [
    ("nan", "nan", [0.0], "score.weight has 1 non-finite value"),
    ("inf bias", None, [float("inf")], "score.bias has 1 non-finite value"),
    ("two rows", (2, 64), [0.0], "score.weight has shape [2, 64], expected [1, D]"),
    ("flat", (64,), [0.0], "score.weight has shape [64], expected [1, D]"),
    ("bias shape", None, [0.0, 1.0], "score.bias has shape [2], expected [1]"),
    ("int", "int", [0.0], "must be a floating-point tensor"),
])
def test_bad_checkpoints_are_refused_naming_file_and_problem(world, tmp_path, case, weight, bias, message):
    good = torch.load(world["head"], weights_only=True)
    w = good["model_state"]["score.weight"].clone()
    if weight == "nan":
        w[0, 3] = float("nan")
    elif weight == "int":
        w = w.to(torch.int64)
    elif isinstance(weight, tuple):
        w = torch.zeros(weight)
    bad = _save_raw(tmp_path / "bad.pt", w, torch.tensor(bias), good["orm_cache"])
    for cmd in (["score", "--input", world["data"] / "test.jsonl", "--output", tmp_path / "o.jsonl"],
                ["eval", "--data", world["data"], "--split", "test"]):
        r = run(*cmd, "--head", bad, "--cache-dir", world["cache"])
        assert r.exit_code == 1 and str(bad) in r.output and message in r.output, r.output
    assert not (tmp_path / "o.jsonl").exists()


def test_head_of_another_width_is_refused(world, tmp_path):
    bad = _save_raw(tmp_path / "wide.pt", torch.zeros(1, 65), torch.zeros(1))
    fp = json.loads(next((world["cache"] / "vectors").glob("*/encoder.json")).read_text())["fingerprint"]
    r = run("eval", "--head", bad, "--data", world["data"], "--split", "test", "--cache-dir", world["cache"],
            "--store", fp[:8])
    assert r.exit_code == 1 and "takes 65-dim vectors" in r.output and "64-dim" in r.output, r.output


def test_reference_format_head_works_with_score_rank_and_verify_through_store(world, tmp_path):
    ref = tmp_path / "reference.pt"
    torch.save({"model_state": torch.load(world["head"], weights_only=True)["model_state"]}, ref)
    fp = json.loads(next((world["cache"] / "vectors").glob("*/encoder.json")).read_text())["fingerprint"]
    src = world["data"] / "test.jsonl"
    r = run("score", "--head", ref, "--input", src, "--output", tmp_path / "a.jsonl", "--cache-dir", world["cache"])
    assert r.exit_code == 1 and "--store" in r.output
    common = ["--cache-dir", world["cache"], "--store", fp[:10], "--template", TEMPLATE]
    ok("score", "--head", ref, "--input", src, "--output", tmp_path / "a.jsonl", *common, "-q")
    ok("score", "--head", world["head"], "--input", src, "--output", tmp_path / "b.jsonl", "--cache-dir",
       world["cache"], "-q")
    scores = lambda p: [json.loads(x)["score"] for x in open(p)]  # noqa: E731
    # without --feature a weights-only head reads last@-1 (the reference recipe); this one was trained on mean@-1
    assert not np.allclose(scores(tmp_path / "a.jsonl"), scores(tmp_path / "b.jsonl"))
    ok("score", "--head", ref, "--input", src, "--output", tmp_path / "a.jsonl", *common, "--feature", "mean@-1", "-q")
    np.testing.assert_allclose(scores(tmp_path / "a.jsonl"), scores(tmp_path / "b.jsonl"), rtol=1e-6)
    ok("rank", "--head", ref, "--input", src, "--output", tmp_path / "r.jsonl", "--group-by", "group", *common,
       "--feature", "mean@-1", "-q")
    ok("rank", "--head", world["head"], "--input", src, "--output", tmp_path / "q.jsonl", "--group-by", "group",
       "--cache-dir", world["cache"], "-q")
    assert [json.loads(x)["rank"] for x in open(tmp_path / "r.jsonl")] == [
        json.loads(x)["rank"] for x in open(tmp_path / "q.jsonl")]
    r = ok("verify", "--head", ref, "--data", world["data"], "--split", "test", *common, "--feature", "mean@-1",
           "--sample", 8)
    assert "OK: cached scores equal live scores" in r.output and "feature mean@-1" in r.output


# ------------------------------------------------------------------ 5. SIGTERM is Ctrl-C

@pytest.mark.slow
def test_sigterm_flushes_what_embed_has_done(tiny_opt_dir, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", pointwise_rows(200, per_group=4, seed=3))
    cache = tmp_path / "c"
    cmd = [sys.executable, "-m", "orm_cache", "embed", "--data", str(data), "--model", str(tiny_opt_dir),
           "--cache-dir", str(cache), "--batch-tokens", "64", "--max-batch-size", "2", "--shard-rows", "100000",
           "--device", "cpu"]
    env = {**os.environ, "ORM_CACHE_PROGRESS_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = 0
    for line in proc.stderr:  # progress lines (stderr is not a terminal): wait for real work
        if line.startswith("embed train: ") and "/800 texts" in line:
            seen += 1
            if seen == 5:
                proc.send_signal(signal.SIGTERM)
                break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, rest
    assert "terminated (SIGTERM)" in rest
    shards = [p for p in cache.glob("vectors/*/*.arrow")]
    assert len(shards) == 1  # one shard: nothing was flushed before the signal (--shard-rows 100000)
    import pyarrow as pa

    n = pa.ipc.open_file(str(shards[0])).read_all().num_rows
    assert 0 < n < 800
    again = subprocess.run(cmd + ["-q"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and f"cached already: {n:,}" in again.stdout


# ------------------------------------------------------------------ 6. eval leaves the head alone

def test_eval_does_not_rewrite_the_head_unless_asked(world, tmp_path):
    head = tmp_path / "h.pt"
    shutil.copy(world["head"], head)
    before = head.read_bytes()
    common = ["--head", head, "--data", world["data"], "--split", "test", "--cache-dir", world["cache"]]
    r = ok("eval", *common)
    assert head.read_bytes() == before and "fitted on validation" in r.output
    r = ok("eval", *common, "--calibrate-on", "nosuchsplit")  # unavailable: never falls back to test
    assert head.read_bytes() == before and "uncalibrated" in r.output
    ok("eval", *common, "--save-calibration")
    assert head.read_bytes() != before
    assert Head.load(head).meta["calibration"]["fitted_on"] == "validation"


def test_eval_json_is_strict_json_with_null_reasons(world, tmp_path):
    out = tmp_path / "m.json"
    ok("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir", world["cache"],
       "--json", out, "-q")

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    json.loads(out.read_text(), parse_constant=refuse)
    reasons = {}
    clean = json_safe({"a": float("inf"), "b": [1.0, float("nan")], "c": np.float32(2.5)}, reasons=reasons)
    assert clean == {"a": None, "b": [1.0, None], "c": 2.5}
    assert set(reasons) == {"a", "b[1]"} and "inf" in reasons["a"]
    write_json(out, {"t": float("inf")})
    assert json.loads(out.read_text(), parse_constant=refuse) == {"t": None, "null_reasons": {"t": reasons["a"]}}


# ------------------------------------------------------------------ 7. clear lines for bad inputs

def test_bad_inputs_give_one_line(world, tmp_path):
    data, model, cache = world["data"], world["model"], tmp_path / "c"
    cases = [
        (["--template", "{question} {response}"], "unknown placeholder(s) {question}"),
        (["--template", "{prompt} {response"], "not a valid format string"),
        (["--template", "{prompt}"], "must contain {response}"),
        (["--max-length", "5000"], "beyond the 1024 positions"),
        (["--model", tmp_path / "nowhere" / "model"], "no such directory"),
    ]
    for extra, message in cases:
        args = ["embed", "--data", data, "--model", model, "--cache-dir", cache, "-q", *map(str, extra)]
        r = run(*args)
        assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output, (extra, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert not cache.exists()


def test_csv_with_byte_order_mark_keeps_its_first_column(tmp_path):
    import csv

    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    rows = pointwise_rows(4, seed=5)
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # what Excel writes
        w = csv.DictWriter(f, ["group", "text", "label"])
        w.writeheader()
        w.writerows(rows)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    data = load_split(DataSpec(data=str(path)))
    assert data.groups == [r["group"] for r in rows]  # groups are seen, not silently dropped
    jl = tmp_path / "bom.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode())
    assert load_split(DataSpec(data=str(jl))).groups == [r["group"] for r in rows]


# ------------------------------------------------------------------ 8. hints that lead somewhere

def test_run_first_hint_reproduces_the_store_and_names_the_cached_model(world, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", prompted(pointwise_rows(3, seed=9, offset=500)))
    write_jsonl(data / "validation.jsonl", prompted(pointwise_rows(3, seed=9, offset=600)))
    r = run("fit-head", "--data", data, "--model", world["model"], "--cache-dir", world["cache"], "--template",
            TEMPLATE, "-q")
    assert r.exit_code == 1 and "run first: orm-cache embed" in r.output
    hint = r.output.split("run first: ")[1].strip()
    assert "--pooling last,mean --layers -1,-2" in hint and f"--model {world['model'].resolve()}" in hint
    assert "--template" in hint
    # the hint, run as printed, fills exactly this store: fit-head then works
    import shlex

    ok(*shlex.split(hint)[1:], "-q")
    assert len(list((world["cache"] / "vectors").iterdir())) == 1
    # without --model (the default is facebook/opt-1.3b) the message names the model in the cache
    r = run("fit-head", "--data", data, "--cache-dir", world["cache"], "-q")
    assert r.exit_code == 1 and f"the cache holds: --model {world['model'].resolve()}" in r.output


# ------------------------------------------------------------------ 9. progress without a terminal

def test_progress_logs_a_line_every_interval_when_no_terminal(caplog):
    import io

    t = [0.0]
    with caplog.at_level(logging.INFO, logger="orm_cache.progress"):
        bar = Progress(100, "embed train", "text", every=30, stream=io.StringIO(), clock=lambda: t[0])
        for _ in range(10):
            t[0] += 10
            bar.update(10)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "embed train: 30/100 texts (30.0%), 1.0 texts/s, ETA 1m10s"
    assert len(lines) == 4 and lines[-1] == "embed train: done, 100 texts in 1m40s (1.0 texts/s)"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="orm_cache.progress"):
        quiet = Progress(100, "x", quiet=True, every=0, stream=io.StringIO())
        quiet.update(50)
        quiet.close()
    assert caplog.records == []


# ------------------------------------------------------------------ found by a hostile review

def test_a_directory_that_refuses_writes_is_one_line(world, tmp_path, monkeypatch):
    """A read-only directory: opening the temporary file fails, and so does removing it."""
    import errno

    out = tmp_path / "m.json"
    out.write_text("old")
    real_unlink = Path.unlink

    def ro_unlink(self, missing_ok=False):
        if self.name.startswith(TMP_MARK):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    real_open = open

    def ro_open(file, mode="r", *a, **kw):
        if Path(str(file)).name.startswith(TMP_MARK) and "w" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(Path, "unlink", ro_unlink)
    monkeypatch.setattr("builtins.open", ro_open)
    r = run("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir",
            world["cache"], "--json", out, "-q")
    assert r.exit_code == 1 and "Read-only file system" in r.output and "Traceback" not in r.output, r.output
    assert out.read_text() == "old"


def test_make_data_replaces_its_files_as_one_set(tmp_path, monkeypatch):
    from orm_cache.data import synthetic

    ok("make-data", "--out", tmp_path / "d", "--train", 3, "--validation", 2, "--test", 2, "--seed", 1)
    files = sorted((tmp_path / "d").rglob("*.jsonl"))
    before = {p: p.read_bytes() for p in files}
    real, calls = synthetic.make_pointwise, {"n": 0}

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # train and validation are done: the test split is interrupted
            raise Terminated()
        return real(*a, **kw)

    monkeypatch.setattr(synthetic, "make_pointwise", interrupted)
    r = run("make-data", "--out", tmp_path / "d", "--train", 3, "--validation", 2, "--test", 2, "--seed", 2)
    assert r.exit_code == 128 + signal.SIGTERM
    assert {p: p.read_bytes() for p in files} == before
    assert leftovers(tmp_path / "d" / "pointwise") == leftovers(tmp_path / "d" / "pairwise") == []
    (tmp_path / "f").write_text("x")
    r = run("make-data", "--out", tmp_path / "f" / "d")
    assert r.exit_code == 1 and "is a file, not a directory" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("temperature", [float("nan"), 0.0, -1.5, float("inf"), "warm"])
def test_a_bad_calibration_temperature_is_refused_on_load(world, tmp_path, temperature):
    ckpt = torch.load(world["head"], weights_only=True)
    ckpt["orm_cache"]["calibration"] = {"temperature": temperature, "fitted_on": "validation"}
    bad = tmp_path / "t.pt"
    torch.save(ckpt, bad)
    r = run("score", "--head", bad, "--input", world["data"] / "test.jsonl", "--output", tmp_path / "o.jsonl",
            "--cache-dir", world["cache"])
    assert r.exit_code == 1 and "calibration temperature" in r.output and str(bad) in r.output
    ckpt["orm_cache"]["calibration"] = {"temperature": 1.3}
    ckpt["orm_cache"]["recipe"] = "{prompt} {response}"
    torch.save(ckpt, bad)
    r = run("score", "--head", bad, "--input", world["data"] / "test.jsonl", "--output", tmp_path / "o.jsonl",
            "--cache-dir", world["cache"])
    assert r.exit_code == 1 and "recorded 'recipe' is a str, not a mapping" in r.output


def test_save_calibration_without_a_fit_says_so_and_saves_nothing(world, tmp_path):
    head = tmp_path / "h.pt"
    shutil.copy(world["head"], head)
    before = head.read_bytes()
    r = run("eval", "--head", head, "--data", world["data"], "--split", "test", "--cache-dir", world["cache"],
            "--calibrate-on", "nosuchsplit", "--save-calibration")
    assert r.exit_code == 1 and "no temperature was fitted" in r.output and head.read_bytes() == before


def test_outputs_that_are_the_commands_inputs_are_refused_before_work(world, tmp_path):
    head = tmp_path / "h.pt"
    shutil.copy(world["head"], head)
    before = head.read_bytes()
    r = run("eval", "--head", head, "--data", world["data"], "--split", "test", "--cache-dir", world["cache"],
            "--json", head)
    assert r.exit_code == 1 and "is the head this command reads" in r.output and head.read_bytes() == before
    data_file = tmp_path / "train.jsonl"
    shutil.copy(world["data"] / "train.jsonl", data_file)
    data_before = data_file.read_bytes()
    r = run("fit-head", "--data", data_file, "--model", world["model"], "--cache-dir", world["cache"],
            "--template", TEMPLATE, "--out", data_file)
    assert r.exit_code == 1 and "is the data file this command reads" in r.output
    assert data_file.read_bytes() == data_before


def test_store_of_another_encoder_is_refused_for_a_head_that_records_its_own(world, tmp_path):
    r = run("score", "--head", world["head"], "--input", world["data"] / "test.jsonl", "--output",
            tmp_path / "o.jsonl", "--cache-dir", world["cache"], "--store", "ffff")
    assert r.exit_code == 1 and "--store ffff is not the store of this head" in r.output


def test_corrupt_weights_are_one_line(tiny_opt_dir, tmp_path):
    model = tmp_path / "broken"
    shutil.copytree(tiny_opt_dir, model)
    w = model / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    data = write_jsonl(tmp_path / "d" / "train.jsonl", pointwise_rows(2))
    r = run("embed", "--data", data, "--model", model, "--cache-dir", tmp_path / "c", "--device", "cpu")
    assert r.exit_code == 1 and "cannot load weights" in r.output and "Traceback" not in r.output
    assert not list((tmp_path / "c").glob("vectors/*"))  # no empty store left for `cache info` or hints to list


def test_list_stores_survives_compact_between_listing_and_stat(world, tmp_path, monkeypatch):
    from orm_cache.store import describe
    from orm_cache.store.check import compact_store

    cache = tmp_path / "c"
    shutil.copytree(world["cache"], cache)
    real, fired = describe.list_shards, {"done": False}

    def list_then_compact(d):
        listed = real(d)
        if not fired["done"] and len(listed) > 1:
            fired["done"] = True
            before, after = compact_store({"dir": str(d), "fingerprint": describe.describe_store(d)["fingerprint"]},
                                          1_000_000)
            assert before > after == 1  # the listed shards are gone before list_stores stats them
        return listed

    monkeypatch.setattr(describe, "list_shards", list_then_compact)
    stores = describe.list_stores(cache)
    assert fired["done"] and len(stores) == 1 and stores[0]["fingerprint"]


def test_rows_without_the_heads_prompt_column_are_refused_not_scored_bare(world, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    rows = [json.loads(x) for x in open(world["data"] / "test.jsonl")]
    renamed = write_jsonl(tmp_path / "q.jsonl", [{"question": r.pop("prompt"), **r} for r in rows])
    common = ["--head", world["head"], "--input", renamed, "--output", tmp_path / "o.jsonl", "--cache-dir",
              world["cache"]]
    for extra in (["score"], ["rank", "--group-by", "group"]):
        r = run(extra[0], *common, *extra[1:])
        assert r.exit_code == 1 and "column 'prompt' is missing, but the head was trained on prompts" in r.output
    ok("score", "--head", world["head"], "--input", renamed, "--output", tmp_path / "o.jsonl", "--cache-dir",
       world["cache"], "--prompt-col", "question", "-q")  # the same texts: every one a cache hit
    data = tmp_path / "d"
    write_jsonl(data / "test.jsonl", [{k: v for k, v in r.items() if k != "question"} for r in
                                      [json.loads(x) for x in open(renamed)]])
    r = run("eval", "--head", world["head"], "--data", data, "--split", "test", "--cache-dir", world["cache"])
    assert r.exit_code == 1 and "column 'prompt' is missing" in r.output
    scorer = LiveScorer(world["head"], "cpu")
    with pytest.raises(ValueError, match="pass prompts="):
        scorer.score(["Step 1: 2 + 2 = 4"])
    assert scorer.score(["Step 1: 2 + 2 = 4"], prompts=[None]).shape == (1,)  # bare on purpose


def test_parquet_and_csv_keep_a_column_absent_from_the_first_row(world, tmp_path):
    import pyarrow.parquet as pq

    rows = [{"prompt": "Add", "text": f"Step 1: {i} + 1 = {i + 1}"} for i in range(6)]
    rows[3]["note"] = {"why": [1, 2]}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    ok("score", "--head", world["head"], "--input", src, "--output", tmp_path / "o.parquet", "--cache-dir",
       world["cache"], "-q")
    t = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [r["note"] for r in t] == [None, None, None, {"why": [1, 2]}, None, None]
    ok("score", "--head", world["head"], "--input", src, "--output", tmp_path / "o.csv", "--cache-dir",
       world["cache"], "-q")
    import csv

    notes = [r["note"] for r in csv.DictReader(open(tmp_path / "o.csv"))]
    assert notes[3] == '{"why": [1, 2]}' and notes[0] == ""  # nested values as JSON, not Python repr


def test_side_file_never_overwrites_the_input_and_outputs_do_not_share_one(world, tmp_path):
    src = bad_late(tmp_path)
    ok("score", "--head", world["head"], "--input", src, "--output", tmp_path / "o.jsonl", "--cache-dir",
       world["cache"], "--skip-invalid", "-q")
    ok("score", "--head", world["head"], "--input", src, "--output", tmp_path / "o.parquet", "--cache-dir",
       world["cache"], "--skip-invalid", "-q")
    assert (tmp_path / "o.jsonl.rejected.jsonl").read_bytes() == (tmp_path / "o.parquet.rejected.jsonl").read_bytes()
    side = tmp_path / "o.jsonl.rejected.jsonl"
    shutil.copy(src, side)  # "fix the rejected rows and run again" on the side file itself
    before = side.read_bytes()
    r = run("score", "--head", world["head"], "--input", side, "--output", tmp_path / "o.jsonl", "--cache-dir",
            world["cache"], "--skip-invalid")
    assert r.exit_code == 1 and "is the input this command reads" in r.output and side.read_bytes() == before

